//! The back-end side of the vhost-user protocol, for every device: owner,
//! features, memory table, vring set-up and teardown, config space, and
//! in-flight tracking (GET/SET_INFLIGHT_FD).
//!
//! Written on the `vhost` crate's back-end request handler instead of
//! vhost-user-backend's, because that one answers GET_INFLIGHT_FD with "not
//! supported", keeps owner and ring state across a front end's disconnect,
//! and stops a queue for good when the device returns an error. The device
//! interface stays vhost-user-backend's `VhostUserBackend` trait.

use crate::inflight::{InflightQueue, InflightRegion};
use crate::vring::{GuestMemoryHandle, Vring};
use crate::worker::{Worker, WorkerHandle};
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use vhost::vhost_user::message::*;
use vhost::vhost_user::{Backend, Error as VhostUserError, Result as VhostUserResult};
use vhost::vhost_user::{GpuBackend, VhostUserBackendReqHandlerMut};
use vhost::VhostUserMemoryRegionBase;
use vhost_user_backend::{VhostUserBackend, VringT};
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::QueueT;
use vm_memory::{
    GuestAddress, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap, GuestRegionMmap,
    MmapRegion,
};

/// How many memory regions a front end may add (VHOST_USER_GET_MAX_MEM_SLOTS).
const MAX_MEM_SLOTS: u64 = 64;

/// Where a front end's virtual addresses fall in guest memory.
#[derive(Debug, Clone, Copy)]
struct Mapping {
    vmm_addr: u64,
    size: u64,
    gpa: u64,
}

/// Per-queue state the protocol needs beside the vring itself.
#[derive(Debug, Default, Clone, Copy)]
struct QueueState {
    addr_set: bool,
    running: bool,
    worker: usize,
    local: usize,
}

/// The protocol state of one back end, kept across front ends.
pub struct Handler<B: VhostUserBackend<Bitmap = (), Vring = Vring>> {
    backend: B,
    vrings: Vec<Vring>,
    queues: Vec<QueueState>,
    workers: Vec<WorkerHandle>,
    mem: GuestMemoryHandle,
    mappings: Vec<Mapping>,
    owned: bool,
    acked_features: u64,
    acked_protocol_features: u64,
    inflight: Option<Arc<InflightRegion>>,
    /// The front end sent SET_VRING_ENABLE before SET_FEATURES (QEMU 7.2's
    /// virtio-net does, and does not repeat it afterwards).
    enable_before_features: bool,
}

fn invalid(why: &'static str) -> VhostUserError {
    log::warn!("front end request refused: {why}");
    VhostUserError::InvalidOperation(why)
}

fn bad_param(why: &str) -> VhostUserError {
    log::warn!("front end request refused: {why}");
    VhostUserError::InvalidParam
}

impl<B: VhostUserBackend<Bitmap = (), Vring = Vring> + Clone + 'static> Handler<B> {
    /// Creates the vrings and starts one worker per `queues_per_thread` mask.
    pub fn new(backend: B) -> io::Result<(Self, Vec<Worker>)> {
        let mem = GuestMemoryAtomic::new(GuestMemoryMmap::new());
        let num_queues = backend.num_queues();
        let max = u16::try_from(backend.max_queue_size())
            .map_err(|_| io::Error::other("queue size above 32768"))?;
        let vrings = (0..num_queues)
            .map(|_| Vring::new(mem.clone(), max).map_err(io::Error::other))
            .collect::<io::Result<Vec<_>>>()?;
        let mut queues = vec![QueueState::default(); num_queues];
        let mut workers = Vec::new();
        for (thread, mask) in backend.queues_per_thread().into_iter().enumerate() {
            let mut mine = Vec::new();
            for (q, state) in queues.iter_mut().enumerate() {
                if mask & (1u64 << q) != 0 {
                    *state = QueueState {
                        worker: thread,
                        local: mine.len(),
                        ..Default::default()
                    };
                    mine.push(vrings[q].clone());
                }
            }
            workers.push(Worker::spawn(backend.clone(), mine, thread)?);
        }
        let handles = workers.iter().map(|w| w.handle().clone()).collect();
        Ok((
            Handler {
                backend,
                vrings,
                queues,
                workers: handles,
                mem,
                mappings: Vec::new(),
                owned: false,
                acked_features: 0,
                acked_protocol_features: 0,
                inflight: None,
                enable_before_features: false,
            },
            workers,
        ))
    }

    /// Forgets the front end that went away: rings stopped, memory unmapped,
    /// features and owner cleared. The device's own state (image...) stays.
    pub fn disconnect(&mut self) {
        for i in 0..self.vrings.len() {
            self.stop_ring(i);
            let v = &self.vrings[i];
            v.set_kick(None);
            v.set_call(None);
            v.set_err(None);
            v.set_enabled(false);
            v.set_inflight(None);
            v.get_mut().get_queue_mut().reset();
            self.queues[i].addr_set = false;
        }
        self.mem
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .replace(GuestMemoryMmap::new());
        self.mappings.clear();
        self.owned = false;
        self.acked_features = 0;
        self.acked_protocol_features = 0;
        self.inflight = None;
        self.enable_before_features = false;
        self.backend.reset_device();
    }

    /// See `enable_before_features`: the request itself is refused by the
    /// vhost crate before it reaches us, so the rings are enabled at
    /// SET_FEATURES instead.
    pub fn note_enable_before_features(&mut self) {
        self.enable_before_features = true;
    }

    fn vring(&self, index: u32) -> VhostUserResult<&Vring> {
        self.vrings
            .get(index as usize)
            .ok_or_else(|| bad_param(&format!("queue {index} does not exist")))
    }

    fn vmm_va_to_gpa(&self, va: u64) -> VhostUserResult<u64> {
        self.mappings
            .iter()
            .find(|m| va >= m.vmm_addr && va - m.vmm_addr < m.size)
            .map(|m| va - m.vmm_addr + m.gpa)
            .ok_or_else(|| bad_param(&format!("ring address {va:#x} is not in the memory table")))
    }

    /// Starts or stops ring `i` to match its state: it runs once it has
    /// addresses and a kick fd and is enabled.
    fn update_ring(&mut self, i: usize) {
        let v = &self.vrings[i];
        let should_run = {
            let st = v.get_ref();
            self.queues[i].addr_set && st.get_kick().is_some() && st.is_enabled()
        };
        if should_run && !self.queues[i].running {
            self.start_ring(i);
        } else if !should_run && self.queues[i].running {
            self.stop_ring(i);
        }
    }

    fn start_ring(&mut self, i: usize) {
        let v = self.vrings[i].clone();
        if let Some(region) = &self.inflight {
            if i < usize::from(region.num_queues()) {
                self.attach_inflight(&v, region.clone(), i);
            }
        }
        v.set_queue_ready(true);
        let q = self.queues[i];
        let kick = v.get_ref().get_kick().as_ref().map(|k| k.as_raw_fd());
        if let Some(fd) = kick {
            if let Err(e) = self.workers[q.worker].add_kick(fd, q.local) {
                log::error!("queue {i}: cannot watch its kick fd: {e}");
                return;
            }
            // Look at the avail ring now: a kick sent while no back end was
            // listening is not replayed by every front end.
            // SAFETY: writing 8 bytes to an eventfd we hold.
            unsafe { libc::write(fd, 1u64.to_ne_bytes().as_ptr().cast(), 8) };
        }
        self.queues[i].running = true;
        log::debug!("queue {i} started at avail index {}", v.queue_next_avail());
    }

    /// Picks up the in-flight state a previous back end left for queue `i`.
    /// Our devices complete each queue in order, so what was in flight is the
    /// run of the avail ring from used.idx on: processing restarts there.
    fn attach_inflight(&self, v: &Vring, region: Arc<InflightRegion>, i: usize) {
        let used = match v.queue_used_idx() {
            Ok(u) => u,
            Err(e) => {
                log::warn!("queue {i}: cannot read used.idx, in-flight tracking off: {e}");
                return;
            }
        };
        let (tracker, pending) = InflightQueue::attach(region, i as u16, used);
        if !pending.is_empty() {
            log::info!(
                "queue {i}: resubmitting {} request(s) in flight at the last back end's end",
                pending.len()
            );
            v.set_queue_next_avail(used);
        }
        v.set_inflight(Some(tracker));
    }

    fn stop_ring(&mut self, i: usize) {
        if !self.queues[i].running {
            return;
        }
        let v = self.vrings[i].clone();
        let q = self.queues[i];
        if let Some(k) = v.get_ref().get_kick().as_ref() {
            self.workers[q.worker].remove_kick(k.as_raw_fd());
        }
        // Wait for the request the worker may be processing.
        let _busy = v.busy();
        v.set_queue_ready(false);
        self.queues[i].running = false;
    }

    fn map_region(
        region: &VhostUserMemoryRegion,
        file: File,
    ) -> VhostUserResult<(GuestRegionMmap<()>, Mapping)> {
        // A file shorter than the region would fault (SIGBUS) on access.
        let len = file
            .metadata()
            .map_err(VhostUserError::ReqHandlerError)?
            .len();
        if region
            .mmap_offset
            .checked_add(region.memory_size)
            .is_none_or(|end| end > len)
        {
            return Err(bad_param(&format!(
                "memory region at {:#x} ({} bytes at offset {}) is larger than its {len}-byte file",
                { region.guest_phys_addr },
                { region.memory_size },
                { region.mmap_offset }
            )));
        }
        let mmap: MmapRegion<()> = region.mmap_region::<()>(file)?;
        let guest = GuestRegionMmap::new(mmap, GuestAddress(region.guest_phys_addr))
            .ok_or_else(|| bad_param("memory region wraps around the address space"))?;
        Ok((
            guest,
            Mapping {
                vmm_addr: region.user_addr,
                size: region.memory_size,
                gpa: region.guest_phys_addr,
            },
        ))
    }

    fn install_memory(&mut self, mem: GuestMemoryMmap<()>) -> VhostUserResult<()> {
        self.mem
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .replace(mem);
        self.backend
            .update_memory(self.mem.clone())
            .map_err(VhostUserError::ReqHandlerError)
    }
}

impl<B: VhostUserBackend<Bitmap = (), Vring = Vring> + Clone + 'static>
    VhostUserBackendReqHandlerMut for Handler<B>
{
    fn set_owner(&mut self) -> VhostUserResult<()> {
        if self.owned {
            return Err(invalid("SET_OWNER twice on one connection"));
        }
        self.owned = true;
        Ok(())
    }

    fn reset_owner(&mut self) -> VhostUserResult<()> {
        self.owned = false;
        self.acked_features = 0;
        self.acked_protocol_features = 0;
        Ok(())
    }

    fn reset_device(&mut self) -> VhostUserResult<()> {
        for i in 0..self.vrings.len() {
            self.vrings[i].set_enabled(false);
            self.update_ring(i);
        }
        self.acked_features = 0;
        self.backend.reset_device();
        Ok(())
    }

    fn get_features(&mut self) -> VhostUserResult<u64> {
        Ok(self.backend.features())
    }

    fn set_features(&mut self, features: u64) -> VhostUserResult<()> {
        let offered = self.backend.features();
        if features & !offered != 0 {
            return Err(bad_param(&format!(
                "features {:#x} were not offered",
                features & !offered
            )));
        }
        self.acked_features = features;
        // Without VHOST_USER_F_PROTOCOL_FEATURES rings are enabled from the start.
        let protocol = features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() != 0;
        let event_idx = features & (1 << VIRTIO_RING_F_EVENT_IDX) != 0;
        for v in &self.vrings {
            if !protocol || self.enable_before_features {
                v.set_enabled(true);
            }
            v.set_queue_event_idx(event_idx);
        }
        self.backend.set_event_idx(event_idx);
        self.backend.acked_features(features);
        for i in 0..self.vrings.len() {
            self.update_ring(i);
        }
        Ok(())
    }

    fn set_mem_table(
        &mut self,
        ctx: &[VhostUserMemoryRegion],
        files: Vec<File>,
        _postcopy_listening: Option<bool>,
    ) -> VhostUserResult<Option<Vec<VhostUserMemoryRegionBase>>> {
        let mut regions = Vec::with_capacity(ctx.len());
        let mut mappings = Vec::with_capacity(ctx.len());
        for (region, file) in ctx.iter().zip(files) {
            let (r, m) = Self::map_region(region, file)?;
            regions.push(r);
            mappings.push(m);
        }
        let mem = GuestMemoryMmap::from_regions(regions)
            .map_err(|e| bad_param(&format!("bad memory table: {e}")))?;
        self.install_memory(mem)?;
        self.mappings = mappings;
        Ok(None)
    }

    fn set_vring_num(&mut self, index: u32, num: u32) -> VhostUserResult<()> {
        let max = self.backend.max_queue_size() as u32;
        if num == 0 || num > max || !num.is_power_of_two() {
            return Err(bad_param(&format!(
                "queue {index} size {num} (must be a power of two up to {max})"
            )));
        }
        self.vring(index)?.set_queue_size(num as u16);
        Ok(())
    }

    fn set_vring_addr(
        &mut self,
        index: u32,
        _flags: VhostUserVringAddrFlags,
        descriptor: u64,
        used: u64,
        available: u64,
        _log: u64,
    ) -> VhostUserResult<()> {
        self.vring(index)?;
        let desc = self.vmm_va_to_gpa(descriptor)?;
        let avail = self.vmm_va_to_gpa(available)?;
        let used = self.vmm_va_to_gpa(used)?;
        let v = &self.vrings[index as usize];
        v.set_queue_info(desc, avail, used)
            .map_err(|e| bad_param(&format!("queue {index} addresses: {e}")))?;
        // The guest's used index is where completions continue.
        let idx = v
            .queue_used_idx()
            .map_err(|e| bad_param(&format!("queue {index} used ring: {e}")))?;
        v.set_queue_next_used(idx);
        self.queues[index as usize].addr_set = true;
        self.update_ring(index as usize);
        Ok(())
    }

    fn set_vring_base(&mut self, index: u32, base: u32) -> VhostUserResult<()> {
        let base = u16::try_from(base).map_err(|_| bad_param("vring base above 65535"))?;
        self.vring(index)?.set_queue_next_avail(base);
        Ok(())
    }

    fn get_vring_base(&mut self, index: u32) -> VhostUserResult<VhostUserVringState> {
        self.vring(index)?;
        let i = index as usize;
        self.stop_ring(i);
        self.backend
            .stop_vring(index)
            .map_err(VhostUserError::ReqHandlerError)?;
        let v = &self.vrings[i];
        let next_avail = v.queue_next_avail();
        v.set_kick(None);
        v.set_call(None);
        v.set_inflight(None);
        Ok(VhostUserVringState::new(index, u32::from(next_avail)))
    }

    fn set_vring_kick(&mut self, index: u8, fd: Option<File>) -> VhostUserResult<()> {
        self.vring(u32::from(index))?;
        let i = usize::from(index);
        if fd.is_none() {
            log::warn!("queue {i}: polling mode (no kick fd) is not supported");
        }
        self.stop_ring(i);
        self.vrings[i].set_kick(fd);
        self.update_ring(i);
        Ok(())
    }

    fn set_vring_call(&mut self, index: u8, fd: Option<File>) -> VhostUserResult<()> {
        self.vring(u32::from(index))?.set_call(fd);
        Ok(())
    }

    fn set_vring_err(&mut self, index: u8, fd: Option<File>) -> VhostUserResult<()> {
        self.vring(u32::from(index))?.set_err(fd);
        Ok(())
    }

    fn get_protocol_features(&mut self) -> VhostUserResult<VhostUserProtocolFeatures> {
        Ok(self.backend.protocol_features() | VhostUserProtocolFeatures::INFLIGHT_SHMFD)
    }

    fn set_protocol_features(&mut self, features: u64) -> VhostUserResult<()> {
        self.acked_protocol_features = features;
        Ok(())
    }

    fn get_queue_num(&mut self) -> VhostUserResult<u64> {
        Ok(self.vrings.len() as u64)
    }

    fn set_vring_enable(&mut self, index: u32, enable: bool) -> VhostUserResult<()> {
        if self.acked_features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() == 0 {
            return Err(invalid(
                "SET_VRING_ENABLE without VHOST_USER_F_PROTOCOL_FEATURES",
            ));
        }
        self.vring(index)?.set_enabled(enable);
        self.update_ring(index as usize);
        Ok(())
    }

    fn get_config(
        &mut self,
        offset: u32,
        size: u32,
        _flags: VhostUserConfigFlags,
    ) -> VhostUserResult<Vec<u8>> {
        Ok(self.backend.get_config(offset, size))
    }

    fn set_config(
        &mut self,
        offset: u32,
        buf: &[u8],
        _flags: VhostUserConfigFlags,
    ) -> VhostUserResult<()> {
        self.backend
            .set_config(offset, buf)
            .map_err(VhostUserError::ReqHandlerError)
    }

    fn set_backend_req_fd(&mut self, backend: Backend) {
        self.backend.set_backend_req_fd(backend);
    }

    fn set_gpu_socket(&mut self, _gpu_backend: GpuBackend) -> VhostUserResult<()> {
        Err(invalid("GPU socket not supported"))
    }

    fn get_shared_object(&mut self, _uuid: VhostUserSharedMsg) -> VhostUserResult<File> {
        Err(invalid("shared objects not supported"))
    }

    fn get_inflight_fd(
        &mut self,
        req: &VhostUserInflight,
    ) -> VhostUserResult<(VhostUserInflight, File)> {
        if usize::from(req.num_queues) > self.vrings.len()
            || usize::from(req.queue_size) > self.backend.max_queue_size()
        {
            return Err(bad_param(&format!(
                "in-flight region for {} queues of {}: the device has {} of at most {}",
                req.num_queues,
                req.queue_size,
                self.vrings.len(),
                self.backend.max_queue_size()
            )));
        }
        let (region, file, size) = InflightRegion::create(req.num_queues, req.queue_size)
            .map_err(|e| bad_param(&crate::report(&e)))?;
        log::info!(
            "in-flight tracking: new region for {} queue(s) of {}",
            req.num_queues,
            req.queue_size
        );
        self.inflight = Some(region);
        Ok((
            VhostUserInflight {
                mmap_size: size,
                mmap_offset: 0,
                num_queues: req.num_queues,
                queue_size: req.queue_size,
            },
            file,
        ))
    }

    fn set_inflight_fd(&mut self, req: &VhostUserInflight, file: File) -> VhostUserResult<()> {
        if usize::from(req.num_queues) > self.vrings.len() {
            return Err(bad_param(
                "in-flight region for more queues than the device has",
            ));
        }
        let region = InflightRegion::open(
            &file,
            req.mmap_offset,
            req.mmap_size,
            req.num_queues,
            req.queue_size,
        )
        .map_err(|e| bad_param(&crate::report(&e)))?;
        log::info!(
            "in-flight tracking: new region for {} queue(s) of {}",
            req.num_queues,
            req.queue_size
        );
        self.inflight = Some(region);
        Ok(())
    }

    fn get_max_mem_slots(&mut self) -> VhostUserResult<u64> {
        Ok(MAX_MEM_SLOTS)
    }

    fn add_mem_region(
        &mut self,
        region: &VhostUserSingleMemoryRegion,
        fd: File,
        _postcopy_listening: Option<bool>,
    ) -> VhostUserResult<Option<VhostUserMemoryRegionBase>> {
        if self.mappings.len() as u64 >= MAX_MEM_SLOTS {
            return Err(bad_param("too many memory regions"));
        }
        let (r, m) = Self::map_region(region, fd)?;
        let mem = self
            .mem
            .memory()
            .insert_region(Arc::new(r))
            .map_err(|e| bad_param(&format!("bad memory region: {e}")))?;
        self.install_memory(mem)?;
        self.mappings.push(m);
        Ok(None)
    }

    fn remove_mem_region(&mut self, region: &VhostUserSingleMemoryRegion) -> VhostUserResult<()> {
        let (mem, _) = self
            .mem
            .memory()
            .remove_region(GuestAddress(region.guest_phys_addr), region.memory_size)
            .map_err(|e| bad_param(&format!("cannot remove memory region: {e}")))?;
        self.install_memory(mem)?;
        self.mappings.retain(|m| m.gpa != region.guest_phys_addr);
        Ok(())
    }

    fn set_device_state_fd(
        &mut self,
        _direction: VhostTransferStateDirection,
        _phase: VhostTransferStatePhase,
        _fd: File,
    ) -> VhostUserResult<Option<File>> {
        Err(invalid("device state transfer not supported"))
    }

    fn check_device_state(&mut self) -> VhostUserResult<()> {
        Err(invalid("device state transfer not supported"))
    }

    fn get_shmem_config(&mut self) -> VhostUserResult<VhostUserShMemConfig> {
        Err(invalid("shared memory regions not supported"))
    }

    fn set_log_base(&mut self, _log: &VhostUserLog, _file: File) -> VhostUserResult<()> {
        Err(invalid("dirty-page logging not supported"))
    }
}
