//! The vring every back end uses: vhost-user-backend's `VringRwLock` plus the
//! in-flight tracking of the restart design. Back ends take requests with
//! [`Vring::pop_chain`] and complete them with `add_used`; both keep the
//! shared in-flight region up to date when the front end gave one.

use crate::inflight::InflightQueue;
use std::fs::File;
use std::io;
use std::ops::Deref;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard, RwLockReadGuard, RwLockWriteGuard};
use vhost_user_backend::{VringRwLock, VringState, VringStateGuard, VringStateMutGuard, VringT};
use virtio_queue::{DescriptorChain, Error as VirtQueError, QueueT};
use vm_memory::{GuestAddressSpace, GuestMemory, GuestMemoryAtomic, GuestMemoryMmap};

/// The guest memory handle the vrings use.
pub type GuestMemoryHandle = GuestMemoryAtomic<GuestMemoryMmap<()>>;

/// A split virtqueue as a back end sees it.
#[derive(Clone)]
pub struct Vring {
    inner: VringRwLock<GuestMemoryHandle>,
    /// The memory `inner` reads the rings from (the same handle).
    mem: GuestMemoryHandle,
    inflight: Arc<Mutex<Option<InflightQueue>>>,
    /// Held by the worker while it processes this ring, so stopping a ring
    /// waits for the request in hand.
    busy: Arc<Mutex<()>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Vring {
    /// Takes the next available descriptor chain, marking it in flight.
    pub fn pop_chain<M>(&self, mem: M) -> Option<DescriptorChain<M>>
    where
        M: Clone + Deref,
        M::Target: GuestMemory,
    {
        let mut inflight = lock(&self.inflight);
        let chain = self
            .inner
            .get_mut()
            .get_queue_mut()
            .pop_descriptor_chain(mem)?;
        if let Some(q) = inflight.as_mut() {
            q.begin(chain.head_index());
        }
        Some(chain)
    }

    /// Starts tracking in-flight requests in `q` (see `InflightQueue::attach`).
    pub(crate) fn set_inflight(&self, q: Option<InflightQueue>) {
        *lock(&self.inflight) = q;
    }

    pub(crate) fn busy(&self) -> MutexGuard<'_, ()> {
        lock(&self.busy)
    }

    /// Whether the ring is started (addresses set, kick fd given) and enabled.
    pub fn is_running(&self) -> bool {
        let st = self.inner.get_ref();
        st.get_queue().ready() && st.is_enabled()
    }
}

impl<'a> VringStateGuard<'a, GuestMemoryHandle> for Vring {
    type G = RwLockReadGuard<'a, VringState<GuestMemoryHandle>>;
}

impl<'a> VringStateMutGuard<'a, GuestMemoryHandle> for Vring {
    type G = RwLockWriteGuard<'a, VringState<GuestMemoryHandle>>;
}

impl VringT<GuestMemoryHandle> for Vring {
    fn new(mem: GuestMemoryHandle, max_queue_size: u16) -> Result<Self, VirtQueError> {
        Ok(Vring {
            inner: VringRwLock::new(mem.clone(), max_queue_size)?,
            mem,
            inflight: Arc::new(Mutex::new(None)),
            busy: Arc::new(Mutex::new(())),
        })
    }

    fn get_ref(&self) -> <Self as VringStateGuard<'_, GuestMemoryHandle>>::G {
        self.inner.get_ref()
    }

    fn get_mut(&self) -> <Self as VringStateMutGuard<'_, GuestMemoryHandle>>::G {
        self.inner.get_mut()
    }

    fn add_used(&self, desc_index: u16, len: u32) -> Result<(), VirtQueError> {
        let mut inflight = lock(&self.inflight);
        if let Some(q) = inflight.as_mut() {
            q.pre_complete(desc_index);
        }
        let mut st = self.inner.get_mut();
        st.add_used(desc_index, len)?;
        if let Some(q) = inflight.as_mut() {
            q.post_complete(desc_index, st.get_queue().next_used());
        }
        Ok(())
    }

    fn signal_used_queue(&self) -> io::Result<()> {
        self.inner.signal_used_queue()
    }
    /// Also fails when the guest's avail.idx is more than a ring ahead of
    /// the next request: no chain can be popped then, yet "more work" would
    /// be the answer for ever, and every back end's EVENT_IDX loop (process,
    /// re-enable, repeat while more) would spin on it (found by fuzzing).
    fn enable_notification(&self) -> Result<bool, VirtQueError> {
        let more = self.inner.enable_notification()?;
        if more {
            let mem = self.mem.memory();
            let st = self.inner.get_ref();
            let q = st.get_queue();
            let avail = q.avail_idx(&*mem, Ordering::Acquire)?;
            if avail.0.wrapping_sub(q.next_avail()) > q.size() {
                return Err(VirtQueError::InvalidAvailRingIndex);
            }
        }
        Ok(more)
    }
    fn disable_notification(&self) -> Result<(), VirtQueError> {
        self.inner.disable_notification()
    }
    fn needs_notification(&self) -> Result<bool, VirtQueError> {
        self.inner.needs_notification()
    }
    fn set_enabled(&self, enabled: bool) {
        self.inner.set_enabled(enabled)
    }
    fn set_queue_info(&self, desc: u64, avail: u64, used: u64) -> Result<(), VirtQueError> {
        self.inner.set_queue_info(desc, avail, used)
    }
    fn queue_next_avail(&self) -> u16 {
        self.inner.queue_next_avail()
    }
    fn set_queue_next_avail(&self, base: u16) {
        self.inner.set_queue_next_avail(base)
    }
    fn set_queue_next_used(&self, idx: u16) {
        self.inner.set_queue_next_used(idx)
    }
    fn queue_used_idx(&self) -> Result<u16, VirtQueError> {
        self.inner.queue_used_idx()
    }
    fn set_queue_size(&self, num: u16) {
        self.inner.set_queue_size(num)
    }
    fn set_queue_event_idx(&self, enabled: bool) {
        self.inner.set_queue_event_idx(enabled)
    }
    fn set_queue_ready(&self, ready: bool) {
        self.inner.set_queue_ready(ready)
    }
    fn set_kick(&self, file: Option<File>) {
        self.inner.set_kick(file)
    }
    fn read_kick(&self) -> io::Result<bool> {
        self.inner.read_kick()
    }
    fn set_call(&self, file: Option<File>) {
        self.inner.set_call(file)
    }
    fn set_err(&self, file: Option<File>) {
        self.inner.set_err(file)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestAddress};

    /// Fuzzing regression (blk_request, an EVENT_IDX ring whose avail.idx is
    /// 2 with the device at 256 on a ring of 16): enable_notification said
    /// "more" for ever and the back end's worker spun at 100% CPU.
    #[test]
    fn avail_index_more_than_a_ring_ahead_is_an_error_not_more_work() {
        let mem = GuestMemoryAtomic::new(
            GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap(),
        );
        let v = Vring::new(mem.clone(), 256).unwrap();
        v.set_queue_size(16);
        v.set_queue_info(0, 0x1000, 0x2000).unwrap();
        v.set_queue_event_idx(true);
        v.set_queue_ready(true);
        v.set_enabled(true);
        mem.memory().write_obj(2u16, GuestAddress(0x1002)).unwrap(); // avail.idx
        v.set_queue_next_avail(256);
        assert!(v.pop_chain(mem.memory()).is_none());
        assert!(matches!(
            v.enable_notification(),
            Err(VirtQueError::InvalidAvailRingIndex)
        ));
        // In range: "more" as before.
        v.set_queue_next_avail(0);
        assert!(v.enable_notification().unwrap());
        v.set_queue_next_avail(2);
        assert!(!v.enable_notification().unwrap());
    }
}
