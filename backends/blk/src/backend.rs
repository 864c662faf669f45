//! The vhost-user-blk device: features, config space, and the queue workers
//! that take requests off the rings, run them against the image and complete
//! them. One worker thread per queue.

use crate::config::BlkConfig;
use crate::image::Image;
use crate::request::{self, Invalid, Request, RequestType};
#[path = "uring.rs"]
mod uring;
use splitvm_common::daemon::{GuestMemoryHandle, Vring};
use std::io;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use uring::{Batch, Done, Pending};
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost_user_backend::{VhostUserBackend, VringT};
use virtio_bindings::virtio_blk::*;
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestAddressSpace, GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;

/// What the operator chose on the command line.
#[derive(Debug, Clone)]
pub struct BlkOptions {
    pub num_queues: u16,
    pub queue_size: u16,
    pub serial: Vec<u8>,
}

/// The device back end; cheap to clone (one clone per front-end connection).
#[derive(Clone)]
pub struct BlkBackend {
    image: Arc<Image>,
    opts: Arc<BlkOptions>,
    config: BlkConfig,
    mem: Arc<RwLock<Option<GuestMemoryHandle>>>,
    event_idx: Arc<std::sync::atomic::AtomicBool>,
    /// Adaptive busy-poll window (0: off): see [`BlkBackend::with_poll`].
    poll: Duration,
    /// One io_uring batch per queue when `--aio io_uring` (empty: preadv/pwritev).
    uring: Arc<Vec<Mutex<Batch>>>,
}

/// How reads and writes reach the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Aio {
    /// One preadv/pwritev per request, in the queue worker.
    #[default]
    Preadv,
    /// Every request taken in one pass submitted as one io_uring batch.
    IoUring,
}

impl BlkBackend {
    pub fn new(image: Image, opts: BlkOptions) -> Self {
        let config = BlkConfig {
            capacity_sectors: image.size() / crate::image::SECTOR_SIZE,
            // Two descriptors carry the header and the status.
            seg_max: u32::from(opts.queue_size).saturating_sub(2).max(1),
            num_queues: opts.num_queues,
        };
        BlkBackend {
            image: Arc::new(image),
            opts: Arc::new(opts),
            config,
            mem: Arc::new(RwLock::new(None)),
            event_idx: Arc::new(Default::default()),
            poll: Duration::ZERO,
            uring: Arc::new(Vec::new()),
        }
    }

    /// Use `aio` for reads and writes. io_uring falls back to preadv/pwritev (with a
    /// warning) where the kernel refuses a ring, and is not used with O_DIRECT (requests
    /// then go through an aligned bounce buffer).
    pub fn with_aio(mut self, aio: Aio) -> Self {
        if aio != Aio::IoUring {
            return self;
        }
        if self.image.direct() {
            log::warn!("io_uring is not used with O_DIRECT; using preadv/pwritev");
            return self;
        }
        let mut rings = Vec::new();
        for _ in 0..self.opts.num_queues {
            match Batch::new(self.image.raw_fd()) {
                Ok(b) => rings.push(Mutex::new(b)),
                Err(e) => {
                    log::warn!("io_uring unavailable ({e}); using preadv/pwritev");
                    return self;
                }
            }
        }
        log::info!("block I/O through io_uring, batched per queue pass");
        self.uring = Arc::new(rings);
        self
    }

    /// Checks a read or write and maps its buffers; the offset and the host iovecs.
    fn prepare_rw(
        &self,
        mem: &GuestMemoryMmap<()>,
        req: &Request,
    ) -> Result<(u64, Vec<libc::iovec>), Status> {
        if !req.data_len.is_multiple_of(crate::image::SECTOR_SIZE) {
            return Err(Status::IoErr("length is not a multiple of 512".into()));
        }
        let offset = request::byte_range(req.sector, req.data_len, self.image.size())
            .ok_or_else(|| Status::IoErr("past the end of the image".into()))?;
        if req.kind == RequestType::Out && self.image.readonly() {
            return Err(Status::IoErr("write to a read-only device".into()));
        }
        Ok((offset, iovecs(mem, req)?))
    }

    /// process_queue with io_uring: reads and writes of one pass go out as one batch;
    /// anything else first completes the batch (so a flush follows the writes before it).
    fn process_queue_batched(&self, vring: &Vring, batch: &mut Batch) -> io::Result<()> {
        let Some(atomic) = self.mem.read().unwrap_or_else(|p| p.into_inner()).clone() else {
            log::warn!("kick before SET_MEM_TABLE; ignored");
            return Ok(());
        };
        let mem = atomic.memory();
        let mut completed = 0usize;
        let mut done = Vec::new();
        loop {
            let Some(chain) = vring.pop_chain(mem.clone()) else {
                break;
            };
            let head = chain.head_index();
            let used_len = match request::parse(chain, self.max_data()) {
                Ok(req) if matches!(req.kind, RequestType::In | RequestType::Out) => {
                    match self.prepare_rw(&mem, &req) {
                        Ok((offset, iovs)) => {
                            let p = Pending {
                                head,
                                status: req.status,
                                iovs,
                                offset,
                                len: req.data_len,
                                read: req.kind == RequestType::In,
                            };
                            if let Err(e) = batch.push(p) {
                                // Not expected (we flush when full); run it directly.
                                log::warn!("io_uring: {e}");
                                self.execute(&mem, &req)
                            } else {
                                if batch.is_full() {
                                    completed += self.finish_batch(vring, &mem, batch, &mut done);
                                }
                                continue;
                            }
                        }
                        Err(st) => self.finish(&mem, &req, Err(st)),
                    }
                }
                Ok(req) => {
                    completed += self.finish_batch(vring, &mem, batch, &mut done);
                    self.execute(&mem, &req)
                }
                Err(Invalid { status, reason }) => {
                    log::warn!("bad request (head {head}): {reason}");
                    match status {
                        Some(addr) => write_status(&mem, addr, VIRTIO_BLK_S_IOERR as u8, 0),
                        None => 0,
                    }
                }
            };
            if let Err(e) = vring.add_used(head, used_len) {
                log::warn!("cannot complete request (head {head}): {e}");
            }
            completed += 1;
        }
        completed += self.finish_batch(vring, &mem, batch, &mut done);
        if completed > 0 && vring.needs_notification().unwrap_or(true) {
            vring.signal_used_queue()?;
        }
        Ok(())
    }

    /// Submits and reaps the batch; completes each request. Returns how many.
    fn finish_batch(
        &self,
        vring: &Vring,
        mem: &GuestMemoryMmap<()>,
        batch: &mut Batch,
        done: &mut Vec<Done>,
    ) -> usize {
        if batch.is_empty() {
            return 0;
        }
        done.clear();
        let mut redo = Vec::new();
        if let Err(e) = batch.run(done) {
            log::warn!("io_uring_enter failed ({e}); redoing the batch with preadv/pwritev");
            redo = batch.take_all();
        }
        let mut n = 0;
        let results = done
            .drain(..)
            .map(|d| (d.pending, Some(d.result)))
            .chain(redo.into_iter().map(|p| (p, None)));
        for (mut p, result) in results {
            let res = match result {
                Some(r) if r >= 0 && r as u64 == p.len => Ok(()),
                Some(r) if r < 0 && r != -libc::EAGAIN && r != -libc::EINTR => {
                    Err(io::Error::from_raw_os_error(-r))
                }
                // Short, interrupted or not run: do it (again) synchronously.
                _ if p.read => self.image.read_vectored_at(&mut p.iovs, p.offset),
                _ => self.image.write_vectored_at(&mut p.iovs, p.offset),
            };
            let (st, written) = match res {
                Ok(()) => (VIRTIO_BLK_S_OK, if p.read { p.len as u32 } else { 0 }),
                Err(e) => {
                    log::warn!(
                        "{} at byte {}: {e}",
                        if p.read { "read" } else { "write" },
                        p.offset
                    );
                    (VIRTIO_BLK_S_IOERR, 0)
                }
            };
            let used_len = write_status(mem, p.status, st as u8, written);
            if let Err(e) = vring.add_used(p.head, used_len) {
                log::warn!("cannot complete request (head {}): {e}", p.head);
            }
            n += 1;
        }
        n
    }

    /// Writes the status of a request that failed before any I/O.
    fn finish(&self, mem: &GuestMemoryMmap<()>, req: &Request, res: Result<u32, Status>) -> u32 {
        let (status, written) = match res {
            Ok(w) => (VIRTIO_BLK_S_OK, w),
            Err(Status::IoErr(why)) => {
                log::warn!("{:?} at sector {}: {why}", req.kind, req.sector);
                (VIRTIO_BLK_S_IOERR, 0)
            }
            Err(Status::Unsupp(why)) => {
                log::warn!("{:?}: {why}", req.kind);
                (VIRTIO_BLK_S_UNSUPP, 0)
            }
        };
        write_status(mem, req.status, status as u8, written)
    }

    /// Adaptive busy-poll: after a kick, keep looking at the avail ring (with guest
    /// notifications still suppressed) until it has been empty for `window`, then go
    /// back to sleeping on the kick eventfd. Saves the guest's kick and our wake-up per
    /// request while busy, costs at most `window` of spinning per burst when idle.
    pub fn with_poll(mut self, window: Duration) -> Self {
        self.poll = window;
        self
    }

    /// Whether the guest has published requests we have not taken yet.
    /// (An avail.idx more than a ring ahead is not "published": no chain can be
    /// taken, and counting it would keep busy_poll spinning for good.)
    fn has_avail(&self, vring: &Vring) -> bool {
        let Some(atomic) = self.mem.read().unwrap_or_else(|p| p.into_inner()).clone() else {
            return false;
        };
        let mem = atomic.memory();
        let st = vring.get_ref();
        let q = st.get_queue();
        q.avail_idx(&*mem, Ordering::Acquire)
            .map(|i| (1..=q.size()).contains(&i.0.wrapping_sub(q.next_avail())))
            .unwrap_or(false)
    }

    /// Spins (up to the poll window after the last request seen) processing what comes.
    fn busy_poll(&self, vring: &Vring, qi: usize) -> io::Result<()> {
        let mut deadline = Instant::now() + self.poll;
        loop {
            if self.has_avail(vring) {
                self.process_queue(vring, qi)?;
                deadline = Instant::now() + self.poll;
            } else if Instant::now() >= deadline {
                return Ok(());
            } else {
                std::hint::spin_loop();
            }
        }
    }

    /// Largest data payload of one request: seg_max segments of size_max.
    fn max_data(&self) -> u64 {
        u64::from(self.config.seg_max) * u64::from(crate::config::SIZE_MAX)
    }

    /// Takes every available request off `vring`, runs it and completes it.
    /// `qi` is the queue's index (one queue per worker thread).
    fn process_queue(&self, vring: &Vring, qi: usize) -> io::Result<()> {
        if let Some(b) = self.uring.get(qi) {
            let mut b = b.lock().unwrap_or_else(|p| p.into_inner());
            return self.process_queue_batched(vring, &mut b);
        }
        let Some(atomic) = self.mem.read().unwrap_or_else(|p| p.into_inner()).clone() else {
            log::warn!("kick before SET_MEM_TABLE; ignored");
            return Ok(());
        };
        let mem = atomic.memory();
        let mut completed = 0usize;
        loop {
            let Some(chain) = vring.pop_chain(mem.clone()) else {
                break;
            };
            let head = chain.head_index();
            let used_len = match request::parse(chain, self.max_data()) {
                Ok(req) => self.execute(&mem, &req),
                Err(Invalid { status, reason }) => {
                    log::warn!("bad request (head {head}): {reason}");
                    match status {
                        Some(addr) => write_status(&mem, addr, VIRTIO_BLK_S_IOERR as u8, 0),
                        None => 0,
                    }
                }
            };
            if let Err(e) = vring.add_used(head, used_len) {
                log::warn!("cannot complete request (head {head}): {e}");
            }
            completed += 1;
        }
        if completed > 0 && vring.needs_notification().unwrap_or(true) {
            vring.signal_used_queue()?;
        }
        Ok(())
    }

    /// Runs a parsed request; returns the bytes written to guest memory.
    fn execute(&self, mem: &GuestMemoryMmap<()>, req: &Request) -> u32 {
        let (status, written) = match self.run(mem, req) {
            Ok(written) => (VIRTIO_BLK_S_OK, written),
            Err(Status::IoErr(why)) => {
                log::warn!("{:?} at sector {}: {why}", req.kind, req.sector);
                (VIRTIO_BLK_S_IOERR, 0)
            }
            Err(Status::Unsupp(why)) => {
                log::warn!("{:?}: {why}", req.kind);
                (VIRTIO_BLK_S_UNSUPP, 0)
            }
        };
        write_status(mem, req.status, status as u8, written)
    }

    fn run(&self, mem: &GuestMemoryMmap<()>, req: &Request) -> Result<u32, Status> {
        let ro = self.image.readonly();
        match req.kind {
            RequestType::In | RequestType::Out => {
                if !req.data_len.is_multiple_of(crate::image::SECTOR_SIZE) {
                    return Err(Status::IoErr("length is not a multiple of 512".into()));
                }
                let offset = request::byte_range(req.sector, req.data_len, self.image.size())
                    .ok_or_else(|| Status::IoErr("past the end of the image".into()))?;
                if req.kind == RequestType::Out && ro {
                    return Err(Status::IoErr("write to a read-only device".into()));
                }
                let mut iovs = iovecs(mem, req)?;
                if req.kind == RequestType::In {
                    self.image
                        .read_vectored_at(&mut iovs, offset)
                        .map_err(|e| Status::IoErr(e.to_string()))?;
                    Ok(req.data_len as u32)
                } else {
                    self.image
                        .write_vectored_at(&mut iovs, offset)
                        .map_err(|e| Status::IoErr(e.to_string()))?;
                    Ok(0)
                }
            }
            RequestType::Flush => {
                self.image
                    .flush()
                    .map_err(|e| Status::IoErr(e.to_string()))?;
                Ok(0)
            }
            RequestType::GetId => {
                let mut left = self.opts.serial.len().min(VIRTIO_BLK_ID_BYTES as usize);
                let mut pos = 0;
                let mut written = 0u32;
                for seg in &req.data {
                    let n = (seg.len as usize).min(left);
                    let mut chunk = vec![0u8; seg.len as usize];
                    chunk[..n].copy_from_slice(&self.opts.serial[pos..pos + n]);
                    mem.write_slice(&chunk, seg.addr)
                        .map_err(|e| Status::IoErr(e.to_string()))?;
                    pos += n;
                    left -= n;
                    written += seg.len;
                }
                Ok(written)
            }
            RequestType::Discard | RequestType::WriteZeroes => {
                if ro {
                    return Err(Status::IoErr(
                        "discard or write-zeroes on a read-only device".into(),
                    ));
                }
                self.discard_or_zero(mem, req)?;
                Ok(0)
            }
            RequestType::Unsupported(t) => Err(Status::Unsupp(format!("unknown request type {t}"))),
        }
    }

    /// Runs the struct virtio_blk_discard_write_zeroes segments of a request.
    fn discard_or_zero(&self, mem: &GuestMemoryMmap<()>, req: &Request) -> Result<(), Status> {
        const SEG_LEN: u64 = 16;
        let zeroes = req.kind == RequestType::WriteZeroes;
        if req.data_len == 0 || !req.data_len.is_multiple_of(SEG_LEN) {
            return Err(Status::IoErr(
                "segment list is not a multiple of 16 bytes".into(),
            ));
        }
        if req.data_len / SEG_LEN > u64::from(crate::config::MAX_DISCARD_SEG) {
            return Err(Status::IoErr("too many segments".into()));
        }
        let mut bytes = vec![0u8; req.data_len as usize];
        let mut pos = 0;
        for seg in &req.data {
            mem.read_slice(&mut bytes[pos..pos + seg.len as usize], seg.addr)
                .map_err(|e| Status::IoErr(e.to_string()))?;
            pos += seg.len as usize;
        }
        for rec in bytes.chunks_exact(SEG_LEN as usize) {
            let sector = u64::from_le_bytes(rec[0..8].try_into().unwrap_or_default());
            let num = u32::from_le_bytes(rec[8..12].try_into().unwrap_or_default());
            let flags = u32::from_le_bytes(rec[12..16].try_into().unwrap_or_default());
            let unmap = flags & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP != 0;
            if flags & !VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP != 0 || (!zeroes && unmap) {
                return Err(Status::Unsupp(format!("segment flags {flags:#x}")));
            }
            if num > crate::config::MAX_DISCARD_SECTORS {
                return Err(Status::IoErr(
                    "segment larger than the device's limit".into(),
                ));
            }
            let len = u64::from(num) * crate::image::SECTOR_SIZE;
            let offset = request::byte_range(sector, len, self.image.size())
                .ok_or_else(|| Status::IoErr("past the end of the image".into()))?;
            let res = if zeroes {
                self.image.write_zeroes(offset, len, unmap)
            } else {
                self.image.discard(offset, len)
            };
            res.map_err(|e| Status::IoErr(e.to_string()))?;
        }
        Ok(())
    }
}

/// How a request failed.
enum Status {
    IoErr(String),
    Unsupp(String),
}

/// Host iovecs for a request's data buffers (already range-checked).
fn iovecs(mem: &GuestMemoryMmap<()>, req: &Request) -> Result<Vec<libc::iovec>, Status> {
    let mut iovs = Vec::with_capacity(req.data.len());
    for seg in &req.data {
        for slice in mem.get_slices(seg.addr, seg.len as usize) {
            let slice = slice.map_err(|e| Status::IoErr(e.to_string()))?;
            iovs.push(libc::iovec {
                iov_base: slice.ptr_guard_mut().as_ptr().cast(),
                iov_len: slice.len(),
            });
        }
    }
    Ok(iovs)
}

/// Writes the status byte; returns the used length (data written + status),
/// or 0 if the status byte cannot be written.
fn write_status(
    mem: &GuestMemoryMmap<()>,
    addr: vm_memory::GuestAddress,
    status: u8,
    written: u32,
) -> u32 {
    match mem.write_obj(status, addr) {
        Ok(()) => written.saturating_add(1),
        Err(e) => {
            log::warn!("cannot write request status: {e}");
            0
        }
    }
}

impl VhostUserBackend for BlkBackend {
    type Bitmap = ();
    type Vring = Vring;

    fn num_queues(&self) -> usize {
        usize::from(self.opts.num_queues)
    }

    fn max_queue_size(&self) -> usize {
        usize::from(self.opts.queue_size)
    }

    fn features(&self) -> u64 {
        let mut f = 1u64 << VIRTIO_F_VERSION_1
            | 1 << VIRTIO_RING_F_EVENT_IDX
            | 1 << VIRTIO_RING_F_INDIRECT_DESC
            | 1 << VIRTIO_BLK_F_SIZE_MAX
            | 1 << VIRTIO_BLK_F_SEG_MAX
            | 1 << VIRTIO_BLK_F_BLK_SIZE
            | 1 << VIRTIO_BLK_F_TOPOLOGY
            | 1 << VIRTIO_BLK_F_FLUSH
            | 1 << VIRTIO_BLK_F_MQ
            | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        if self.image.readonly() {
            f |= 1 << VIRTIO_BLK_F_RO;
        } else {
            f |= 1 << VIRTIO_BLK_F_DISCARD | 1 << VIRTIO_BLK_F_WRITE_ZEROES;
        }
        f
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
    }

    fn set_event_idx(&self, enabled: bool) {
        self.event_idx
            .store(enabled, std::sync::atomic::Ordering::Relaxed);
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        self.config.read(offset, size)
    }

    fn update_memory(&self, mem: GuestMemoryHandle) -> io::Result<()> {
        *self.mem.write().unwrap_or_else(|p| p.into_inner()) = Some(mem);
        Ok(())
    }

    fn queues_per_thread(&self) -> Vec<u64> {
        (0..self.opts.num_queues).map(|q| 1u64 << q).collect()
    }

    fn handle_event(
        &self,
        device_event: u16,
        evset: EventSet,
        vrings: &[Vring],
        thread_id: usize,
    ) -> io::Result<()> {
        let qi = thread_id;
        if evset != EventSet::IN {
            return Err(io::Error::other(format!("unexpected event set {evset:?}")));
        }
        let vring = vrings
            .get(usize::from(device_event))
            .ok_or_else(|| io::Error::other(format!("unknown event {device_event}")))?;
        if self.event_idx.load(std::sync::atomic::Ordering::Relaxed) || !self.poll.is_zero() {
            // Process until the guest has nothing more queued after we re-enable
            // notifications, so no request slips between the two.
            loop {
                vring.disable_notification().map_err(io::Error::other)?;
                self.process_queue(vring, qi)?;
                if !self.poll.is_zero() {
                    self.busy_poll(vring, qi)?;
                }
                if !vring.enable_notification().map_err(io::Error::other)? {
                    break;
                }
            }
        } else {
            self.process_queue(vring, qi)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use vm_memory::{GuestAddress, GuestMemoryAtomic};

    /// Fuzzing regression (blk_request with busy-polling on): an avail.idx
    /// more than a ring ahead counted as "published", so busy_poll found work
    /// it could never take and spun for good. Now the poll window runs out
    /// and the worker reports the broken ring.
    #[test]
    fn busy_poll_ends_on_an_avail_index_more_than_a_ring_ahead() {
        let path = std::env::temp_dir().join(format!("blk-poll-test-{}", std::process::id()));
        std::fs::write(&path, vec![0u8; 64 * 1024]).unwrap();
        let image = Image::open(&path, false, false).unwrap();
        let _ = std::fs::remove_file(&path);
        let backend = BlkBackend::new(
            image,
            BlkOptions {
                num_queues: 1,
                queue_size: 256,
                serial: Vec::new(),
            },
        )
        .with_poll(Duration::from_millis(1));
        let mem = GuestMemoryAtomic::new(
            GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap(),
        );
        backend.update_memory(mem.clone()).unwrap();
        let v = Vring::new(mem.clone(), 256).unwrap();
        v.set_queue_size(16);
        v.set_queue_info(0, 0x1000, 0x2000).unwrap();
        v.set_queue_ready(true);
        v.set_enabled(true);
        mem.memory()
            .write_obj(1000u16, GuestAddress(0x1002))
            .unwrap(); // avail.idx

        let (done_tx, done_rx) = mpsc::channel();
        std::thread::spawn(move || {
            let r = backend.handle_event(0, EventSet::IN, std::slice::from_ref(&v), 0);
            let _ = done_tx.send(r.is_err());
        });
        let refused = done_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("busy_poll spun on a broken avail index");
        assert!(refused, "the broken ring is reported");
    }
}
