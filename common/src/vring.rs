//! The vring every back end uses: vhost-user-backend's `VringRwLock` plus the
//! in-flight tracking of the restart design. Back ends take requests with
//! [`Vring::pop_chain`] and complete them with `add_used`; both keep the
//! shared in-flight region up to date when the front end gave one.

use crate::inflight::InflightQueue;
use std::fs::File;
use std::io;
use std::ops::Deref;
use std::sync::{Arc, Mutex, MutexGuard, RwLockReadGuard, RwLockWriteGuard};
use vhost_user_backend::{VringRwLock, VringState, VringStateGuard, VringStateMutGuard, VringT};
use virtio_queue::{DescriptorChain, Error as VirtQueError, QueueT};
use vm_memory::{GuestMemory, GuestMemoryAtomic, GuestMemoryMmap};

/// The guest memory handle the vrings use.
pub type GuestMemoryHandle = GuestMemoryAtomic<GuestMemoryMmap<()>>;

/// A split virtqueue as a back end sees it.
#[derive(Clone)]
pub struct Vring {
    inner: VringRwLock<GuestMemoryHandle>,
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
            inner: VringRwLock::new(mem, max_queue_size)?,
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
    fn enable_notification(&self) -> Result<bool, VirtQueError> {
        self.inner.enable_notification()
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
