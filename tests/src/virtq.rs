//! A split virtqueue as the driver (guest) side sees it: descriptor table, avail ring and used
//! ring in guest memory, the kick and call eventfds, optional EVENT_IDX.

use std::collections::HashMap;
use std::os::fd::AsRawFd;
use std::sync::atomic::{fence, Ordering};
use std::time::{Duration, Instant};

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::mem::{GuestMem, MemError};

/// Descriptor flag: the chain continues at `next`.
pub const VRING_DESC_F_NEXT: u16 = 1;
/// Descriptor flag: the device writes this buffer.
pub const VRING_DESC_F_WRITE: u16 = 2;
/// Descriptor flag: the buffer is a table of indirect descriptors.
pub const VRING_DESC_F_INDIRECT: u16 = 4;

/// Errors of queue operations.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// Guest memory access failed.
    #[error(transparent)]
    Mem(#[from] MemError),
    /// Not enough free descriptors for the chain.
    #[error("no free descriptors: need {need}, have {have}")]
    Full { need: usize, have: usize },
    /// No used entry came within the time limit.
    #[error("timed out after {0:?} waiting for a used entry")]
    Timeout(Duration),
    /// An empty chain.
    #[error("empty descriptor chain")]
    Empty,
    /// The device put something odd in the used ring.
    #[error("device returned unknown descriptor id {0}")]
    BadUsedId(u32),
    /// Eventfd or poll failure.
    #[error("eventfd: {0}")]
    Io(#[from] std::io::Error),
}

/// One buffer of a chain as a test describes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Desc {
    /// Guest address.
    pub addr: u64,
    /// Length in bytes.
    pub len: u32,
    /// Device-writable (VRING_DESC_F_WRITE).
    pub write: bool,
}

impl Desc {
    /// A device-readable buffer.
    pub fn readable(addr: u64, len: u32) -> Self {
        Desc {
            addr,
            len,
            write: false,
        }
    }
    /// A device-writable buffer.
    pub fn writable(addr: u64, len: u32) -> Self {
        Desc {
            addr,
            len,
            write: true,
        }
    }
}

/// A descriptor written exactly as given (for malformed chains). `next` is an index into the
/// slice passed to [`SplitQueue::add_raw`] (translated to the table slot), or, inside an
/// indirect table, the raw table index.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RawDesc {
    /// Guest address.
    pub addr: u64,
    /// Length.
    pub len: u32,
    /// VRING_DESC_F_* flags.
    pub flags: u16,
    /// Next descriptor (see the type's doc).
    pub next: u16,
}

/// One used-ring element.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UsedElem {
    /// Head descriptor index of the chain.
    pub id: u32,
    /// Bytes the device says it wrote.
    pub len: u32,
}

/// Guest addresses of a queue's three parts.
#[derive(Clone, Copy, Debug)]
pub struct RingAddrs {
    /// Descriptor table.
    pub desc: u64,
    /// Available ring.
    pub avail: u64,
    /// Used ring.
    pub used: u64,
}

/// The driver side of a split virtqueue.
pub struct SplitQueue {
    size: u16,
    addrs: RingAddrs,
    next_avail: u16,
    last_used: u16,
    free: Vec<u16>,
    chains: HashMap<u16, Vec<u16>>,
    event_idx: bool,
    kick: EventFd,
    call: EventFd,
}

impl SplitQueue {
    /// Allocate a queue of `size` entries (a power of two) in guest memory.
    pub fn new(mem: &mut GuestMem, size: u16) -> Result<Self, QueueError> {
        assert!(size.is_power_of_two(), "queue size must be a power of two");
        let n = size as u64;
        let desc = mem.alloc(16 * n, 16)?;
        let avail = mem.alloc(6 + 2 * n, 2)?;
        let used = mem.alloc(6 + 8 * n, 4)?;
        Ok(SplitQueue {
            size,
            addrs: RingAddrs { desc, avail, used },
            next_avail: 0,
            last_used: 0,
            free: (0..size).rev().collect(),
            chains: HashMap::new(),
            event_idx: false,
            kick: EventFd::new(EFD_NONBLOCK)?,
            call: EventFd::new(EFD_NONBLOCK)?,
        })
    }

    /// Queue size.
    pub fn size(&self) -> u16 {
        self.size
    }
    /// Ring guest addresses.
    pub fn addrs(&self) -> RingAddrs {
        self.addrs
    }
    /// The eventfd the driver writes to kick the device.
    pub fn kick_fd(&self) -> &EventFd {
        &self.kick
    }
    /// The eventfd the device writes when it used buffers.
    pub fn call_fd(&self) -> &EventFd {
        &self.call
    }
    /// The next avail index the driver will publish (what SET_VRING_BASE starts from).
    pub fn next_avail(&self) -> u16 {
        self.next_avail
    }
    /// The used index the driver has consumed up to.
    pub fn last_used(&self) -> u16 {
        self.last_used
    }
    /// Number of free descriptors.
    pub fn free_descs(&self) -> usize {
        self.free.len()
    }
    /// Use VIRTIO_F_EVENT_IDX semantics (set once it is negotiated).
    pub fn set_event_idx(&mut self, on: bool) {
        self.event_idx = on;
    }
    /// Whether EVENT_IDX is in use.
    pub fn event_idx(&self) -> bool {
        self.event_idx
    }

    /// Start over at avail/used index `base` (after a reconnect the rings are re-announced).
    pub fn reset_indexes(&mut self, mem: &GuestMem, base: u16) -> Result<(), QueueError> {
        self.next_avail = base;
        self.last_used = base;
        mem.store_u16(self.addrs.avail + 2, base)?;
        mem.store_u16(self.addrs.used + 2, base)?;
        self.free = (0..self.size).rev().collect();
        self.chains.clear();
        Ok(())
    }

    fn write_desc(
        &self,
        mem: &GuestMem,
        table: u64,
        idx: u16,
        d: RawDesc,
    ) -> Result<(), QueueError> {
        let mut b = [0u8; 16];
        b[0..8].copy_from_slice(&d.addr.to_le_bytes());
        b[8..12].copy_from_slice(&d.len.to_le_bytes());
        b[12..14].copy_from_slice(&d.flags.to_le_bytes());
        b[14..16].copy_from_slice(&d.next.to_le_bytes());
        mem.write(table + 16 * idx as u64, &b)?;
        Ok(())
    }

    fn take(&mut self, n: usize) -> Result<Vec<u16>, QueueError> {
        if n == 0 {
            return Err(QueueError::Empty);
        }
        if self.free.len() < n {
            return Err(QueueError::Full {
                need: n,
                have: self.free.len(),
            });
        }
        let at = self.free.len() - n;
        let mut v = self.free.split_off(at);
        v.reverse();
        Ok(v)
    }

    /// Write a chain into the descriptor table and publish it (no kick). Returns the head.
    pub fn add_chain(&mut self, mem: &GuestMem, chain: &[Desc]) -> Result<u16, QueueError> {
        let raw: Vec<RawDesc> = chain
            .iter()
            .enumerate()
            .map(|(i, d)| RawDesc {
                addr: d.addr,
                len: d.len,
                flags: if d.write { VRING_DESC_F_WRITE } else { 0 }
                    | if i + 1 < chain.len() {
                        VRING_DESC_F_NEXT
                    } else {
                        0
                    },
                next: if i + 1 < chain.len() {
                    (i + 1) as u16
                } else {
                    0
                },
            })
            .collect();
        self.add_raw(mem, &raw)
    }

    /// Write descriptors exactly as given (flags untouched; `next` is an index into `descs`)
    /// and publish the first as a chain head. Allows loops, bad addresses, odd flags.
    pub fn add_raw(&mut self, mem: &GuestMem, descs: &[RawDesc]) -> Result<u16, QueueError> {
        let slots = self.take(descs.len())?;
        for (i, d) in descs.iter().enumerate() {
            let mut d = *d;
            d.next = if (d.next as usize) < slots.len() {
                slots[d.next as usize]
            } else {
                d.next
            };
            self.write_desc(mem, self.addrs.desc, slots[i], d)?;
        }
        let head = slots[0];
        self.chains.insert(head, slots);
        self.publish(mem, head)?;
        Ok(head)
    }

    /// Put the chain in an indirect table (allocated in guest memory) pointed to by one
    /// descriptor with VRING_DESC_F_INDIRECT, and publish it. Returns the head.
    pub fn add_indirect(&mut self, mem: &mut GuestMem, chain: &[Desc]) -> Result<u16, QueueError> {
        let table: Vec<RawDesc> = chain
            .iter()
            .enumerate()
            .map(|(i, d)| RawDesc {
                addr: d.addr,
                len: d.len,
                flags: if d.write { VRING_DESC_F_WRITE } else { 0 }
                    | if i + 1 < chain.len() {
                        VRING_DESC_F_NEXT
                    } else {
                        0
                    },
                next: if i + 1 < chain.len() {
                    (i + 1) as u16
                } else {
                    0
                },
            })
            .collect();
        self.add_indirect_raw(mem, &table)
    }

    /// Write `table` verbatim as an indirect descriptor table (`next` are table indexes) and
    /// publish a head pointing at it.
    pub fn add_indirect_raw(
        &mut self,
        mem: &mut GuestMem,
        table: &[RawDesc],
    ) -> Result<u16, QueueError> {
        if table.is_empty() {
            return Err(QueueError::Empty);
        }
        let t = mem.alloc(16 * table.len() as u64, 16)?;
        for (i, d) in table.iter().enumerate() {
            self.write_desc(mem, t, i as u16, *d)?;
        }
        self.add_raw(
            mem,
            &[RawDesc {
                addr: t,
                len: 16 * table.len() as u32,
                flags: VRING_DESC_F_INDIRECT,
                next: 0,
            }],
        )
    }

    /// Append `head` to the avail ring and advance avail.idx (with the needed barriers).
    pub fn publish(&mut self, mem: &GuestMem, head: u16) -> Result<(), QueueError> {
        let slot = self.next_avail % self.size;
        fence(Ordering::SeqCst);
        mem.store_u16(self.addrs.avail + 4 + 2 * slot as u64, head)?;
        self.next_avail = self.next_avail.wrapping_add(1);
        fence(Ordering::SeqCst);
        mem.store_u16(self.addrs.avail + 2, self.next_avail)?;
        fence(Ordering::SeqCst);
        Ok(())
    }

    /// Set avail.idx to any value (for bad-input tests).
    pub fn set_avail_idx_raw(&mut self, mem: &GuestMem, idx: u16) -> Result<(), QueueError> {
        self.next_avail = idx;
        mem.store_u16(self.addrs.avail + 2, idx)?;
        Ok(())
    }

    /// Kick the device unconditionally.
    pub fn kick(&self) -> Result<(), QueueError> {
        self.kick.write(1)?;
        Ok(())
    }

    /// Kick only if the device asked for it: with EVENT_IDX, by avail_event relative to the
    /// last `published` entries; without, unless VRING_USED_F_NO_NOTIFY is set. Returns
    /// whether it kicked.
    pub fn notify(&self, mem: &GuestMem, published: u16) -> Result<bool, QueueError> {
        fence(Ordering::SeqCst);
        let new = self.next_avail;
        let old = new.wrapping_sub(published);
        let need = if self.event_idx {
            let ev = self.avail_event(mem)?;
            new.wrapping_sub(ev).wrapping_sub(1) < new.wrapping_sub(old)
        } else {
            mem.load_u16(self.addrs.used)? & 1 == 0
        };
        if need {
            self.kick()?;
        }
        Ok(need)
    }

    /// The device's used.idx.
    pub fn used_idx(&self, mem: &GuestMem) -> Result<u16, QueueError> {
        Ok(mem.load_u16(self.addrs.used + 2)?)
    }

    /// avail_event (written by the device after the used ring; EVENT_IDX).
    pub fn avail_event(&self, mem: &GuestMem) -> Result<u16, QueueError> {
        Ok(mem.load_u16(self.addrs.used + 4 + 8 * self.size as u64)?)
    }

    /// Set used_event (read by the device after the avail ring; EVENT_IDX).
    pub fn set_used_event(&self, mem: &GuestMem, v: u16) -> Result<(), QueueError> {
        Ok(mem.store_u16(self.addrs.avail + 4 + 2 * self.size as u64, v)?)
    }

    /// Take the next used element if the device has produced one; frees its descriptors.
    pub fn pop_used(&mut self, mem: &GuestMem) -> Result<Option<UsedElem>, QueueError> {
        let idx = self.used_idx(mem)?;
        if idx == self.last_used {
            return Ok(None);
        }
        fence(Ordering::SeqCst);
        let slot = (self.last_used % self.size) as u64;
        let b = mem.read(self.addrs.used + 4 + 8 * slot, 8)?;
        let e = UsedElem {
            id: u32::from_le_bytes(b[0..4].try_into().unwrap()),
            len: u32::from_le_bytes(b[4..8].try_into().unwrap()),
        };
        self.last_used = self.last_used.wrapping_add(1);
        if self.event_idx {
            self.set_used_event(mem, self.last_used)?;
        }
        if e.id >= self.size as u32 {
            return Err(QueueError::BadUsedId(e.id));
        }
        match self.chains.remove(&(e.id as u16)) {
            Some(slots) => self.free.extend(slots),
            None => return Err(QueueError::BadUsedId(e.id)),
        }
        Ok(Some(e))
    }

    /// Wait up to `timeout` for the next used element. Waits on the call eventfd but always
    /// re-checks used.idx (calls may be spurious, early, or suppressed).
    pub fn wait_used(&mut self, mem: &GuestMem, timeout: Duration) -> Result<UsedElem, QueueError> {
        let deadline = Instant::now() + timeout;
        if self.event_idx {
            self.set_used_event(mem, self.last_used)?;
            fence(Ordering::SeqCst);
        }
        loop {
            if let Some(e) = self.pop_used(mem)? {
                return Ok(e);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(QueueError::Timeout(timeout));
            }
            // Short polls: a back end that skipped a call is still noticed through used.idx.
            let left = (deadline - now).min(Duration::from_millis(50));
            let mut pfd = libc::pollfd {
                fd: self.call.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            let r = unsafe { libc::poll(&mut pfd, 1, left.as_millis().max(1) as i32) };
            if r > 0 {
                let _ = self.call.read();
            }
        }
    }

    /// Whether the call eventfd has been signalled (consumes the signal).
    pub fn take_call(&self) -> bool {
        self.call.read().is_ok()
    }

    /// Wait up to `timeout` for `n` used elements (in used-ring order).
    pub fn wait_used_n(
        &mut self,
        mem: &GuestMem,
        n: usize,
        timeout: Duration,
    ) -> Result<Vec<UsedElem>, QueueError> {
        let deadline = Instant::now() + timeout;
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.wait_used(mem, left) {
                Ok(e) => out.push(e),
                Err(QueueError::Timeout(_)) => return Err(QueueError::Timeout(timeout)),
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desc_at(mem: &GuestMem, table: u64, i: u16) -> RawDesc {
        let b = mem.read(table + 16 * i as u64, 16).unwrap();
        RawDesc {
            addr: u64::from_le_bytes(b[0..8].try_into().unwrap()),
            len: u32::from_le_bytes(b[8..12].try_into().unwrap()),
            flags: u16::from_le_bytes(b[12..14].try_into().unwrap()),
            next: u16::from_le_bytes(b[14..16].try_into().unwrap()),
        }
    }

    /// Play the device: complete the chain in avail slot `slot` with `len`.
    fn device_complete(mem: &GuestMem, q: &SplitQueue, slot: u16, len: u32) {
        let a = q.addrs();
        let head = mem
            .load_u16(a.avail + 4 + 2 * (slot % q.size()) as u64)
            .unwrap();
        let used = mem.load_u16(a.used + 2).unwrap();
        let e = a.used + 4 + 8 * (used % q.size()) as u64;
        mem.write(e, &(head as u32).to_le_bytes()).unwrap();
        mem.write(e + 4, &len.to_le_bytes()).unwrap();
        mem.store_u16(a.used + 2, used.wrapping_add(1)).unwrap();
    }

    #[test]
    fn chain_layout_and_completion() {
        let mut mem = GuestMem::new(1 << 20).unwrap();
        let mut q = SplitQueue::new(&mut mem, 8).unwrap();
        let head = q
            .add_chain(
                &mem,
                &[Desc::readable(0x1000, 16), Desc::writable(0x2000, 1)],
            )
            .unwrap();
        let a = q.addrs();
        assert_eq!(mem.load_u16(a.avail + 2).unwrap(), 1);
        assert_eq!(mem.load_u16(a.avail + 4).unwrap(), head);
        let d0 = desc_at(&mem, a.desc, head);
        assert_eq!((d0.addr, d0.len, d0.flags), (0x1000, 16, VRING_DESC_F_NEXT));
        let d1 = desc_at(&mem, a.desc, d0.next);
        assert_eq!((d1.addr, d1.len, d1.flags), (0x2000, 1, VRING_DESC_F_WRITE));
        assert_eq!(q.free_descs(), 6);
        assert!(matches!(
            q.wait_used(&mem, Duration::from_millis(30)),
            Err(QueueError::Timeout(_))
        ));
        device_complete(&mem, &q, 0, 1);
        let e = q.wait_used(&mem, Duration::from_secs(1)).unwrap();
        assert_eq!(
            e,
            UsedElem {
                id: head as u32,
                len: 1
            }
        );
        assert_eq!(q.free_descs(), 8);
    }

    #[test]
    fn indirect_and_wrap() {
        let mut mem = GuestMem::new(1 << 20).unwrap();
        let mut q = SplitQueue::new(&mut mem, 2).unwrap();
        q.reset_indexes(&mem, 65534).unwrap();
        for i in 0..6u16 {
            let head = q
                .add_indirect(
                    &mut mem,
                    &[Desc::readable(0x1000, 16), Desc::writable(0x2000, 1)],
                )
                .unwrap();
            let d = desc_at(&mem, q.addrs().desc, head);
            assert_eq!(d.flags, VRING_DESC_F_INDIRECT);
            assert_eq!(d.len, 32);
            let t1 = desc_at(&mem, d.addr, 1);
            assert_eq!((t1.addr, t1.flags), (0x2000, VRING_DESC_F_WRITE));
            device_complete(&mem, &q, 65534u16.wrapping_add(i), 0);
            assert_eq!(q.pop_used(&mem).unwrap().unwrap().id, head as u32);
        }
        assert_eq!(q.next_avail(), 4);
        assert_eq!(q.last_used(), 4);
    }

    #[test]
    fn full_queue_and_event_idx_notify() {
        let mut mem = GuestMem::new(1 << 20).unwrap();
        let mut q = SplitQueue::new(&mut mem, 4).unwrap();
        q.set_event_idx(true);
        for _ in 0..4 {
            q.add_chain(&mem, &[Desc::readable(0x1000, 16)]).unwrap();
        }
        assert!(matches!(
            q.add_chain(&mem, &[Desc::readable(0x1000, 16)]),
            Err(QueueError::Full { .. })
        ));
        // avail_event 0: the device wants a kick once idx passes 0 -> 4 published: kick.
        assert!(q.notify(&mem, 4).unwrap());
        // avail_event 10: not yet.
        mem.store_u16(q.addrs().used + 4 + 8 * 4, 10).unwrap();
        assert!(!q.notify(&mem, 4).unwrap());
    }
}
