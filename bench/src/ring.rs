//! A lean driver-side split ring for load generation. The rings, eventfds and vhost-user
//! set-up come from splitvm-tests' `SplitQueue`; the hot path here writes descriptors and
//! ring indexes straight through host pointers (no allocation, no hash map per request),
//! so the load generator costs as little as possible and the same for every back end.

use std::os::fd::AsRawFd;
use std::sync::atomic::{fence, AtomicU16, Ordering};
use std::time::Duration;

use splitvm_tests::virtq::{QueueError, RingAddrs, SplitQueue};
use splitvm_tests::GuestMem;

pub const F_NEXT: u16 = 1;
pub const F_WRITE: u16 = 2;

/// One ring, driven from one thread.
pub struct Ring {
    q: SplitQueue,
    base: usize,
    addrs: RingAddrs,
    size: u16,
    next_avail: u16,
    last_used: u16,
    /// Entries published since the last notify.
    unkicked: u16,
    event_idx: bool,
    pub kicks: u64,
    pub waits: u64,
}

// SAFETY: the raw address refers to guest memory that outlives every Ring (owned by the
// bench's GuestMem), and a Ring is used by exactly one thread at a time.
unsafe impl Send for Ring {}

impl Ring {
    /// Wrap a queue already announced to the back end; `mem` must be one region at 0.
    pub fn new(q: SplitQueue, mem: &GuestMem) -> Result<Self, QueueError> {
        let base = mem.host_addr(0)? as usize;
        let addrs = q.addrs();
        let size = q.size();
        let used = q.used_idx(mem)?;
        let event_idx = q.event_idx();
        Ok(Ring {
            q,
            base,
            addrs,
            size,
            next_avail: used,
            last_used: used,
            unkicked: 0,
            event_idx,
            kicks: 0,
            waits: 0,
        })
    }

    pub fn size(&self) -> u16 {
        self.size
    }

    fn p<T>(&self, gpa: u64) -> *mut T {
        (self.base + gpa as usize) as *mut T
    }

    /// Write descriptor `i`.
    pub fn set_desc(&mut self, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let d = self.addrs.desc + 16 * i as u64;
        // SAFETY: inside the descriptor table in mapped guest memory.
        unsafe {
            self.p::<u64>(d).write_volatile(addr.to_le());
            self.p::<u32>(d + 8).write_volatile(len.to_le());
            self.p::<u16>(d + 12).write_volatile(flags.to_le());
            self.p::<u16>(d + 14).write_volatile(next.to_le());
        }
    }

    /// Change only the flags of descriptor `i`.
    pub fn set_desc_flags(&mut self, i: u16, flags: u16) {
        // SAFETY: as in set_desc.
        unsafe {
            self.p::<u16>(self.addrs.desc + 16 * i as u64 + 12)
                .write_volatile(flags.to_le())
        };
    }

    /// Change only the length of descriptor `i`.
    pub fn set_desc_len(&mut self, i: u16, len: u32) {
        // SAFETY: as in set_desc.
        unsafe {
            self.p::<u32>(self.addrs.desc + 16 * i as u64 + 8)
                .write_volatile(len.to_le())
        };
    }

    fn idx(&self, gpa: u64) -> &AtomicU16 {
        // SAFETY: ring indexes are 2-byte aligned u16 in mapped guest memory.
        unsafe { &*self.p::<AtomicU16>(gpa) }
    }

    /// Put `head` in the avail ring and publish it (no kick).
    pub fn publish(&mut self, head: u16) {
        let slot = (self.next_avail % self.size) as u64;
        // SAFETY: inside the avail ring.
        unsafe {
            self.p::<u16>(self.addrs.avail + 4 + 2 * slot)
                .write_volatile(head.to_le())
        };
        self.next_avail = self.next_avail.wrapping_add(1);
        self.idx(self.addrs.avail + 2)
            .store(self.next_avail.to_le(), Ordering::Release);
        self.unkicked = self.unkicked.wrapping_add(1);
    }

    /// Kick if the device wants one for what was published since the last call.
    pub fn notify(&mut self) -> std::io::Result<()> {
        if self.unkicked == 0 {
            return Ok(());
        }
        fence(Ordering::SeqCst);
        let new = self.next_avail;
        let old = new.wrapping_sub(self.unkicked);
        self.unkicked = 0;
        let need = if self.event_idx {
            let ev = u16::from_le(
                self.idx(self.addrs.used + 4 + 8 * self.size as u64)
                    .load(Ordering::Acquire),
            );
            new.wrapping_sub(ev).wrapping_sub(1) < new.wrapping_sub(old)
        } else {
            u16::from_le(self.idx(self.addrs.used).load(Ordering::Acquire)) & 1 == 0
        };
        if need {
            self.kicks += 1;
            self.q.kick_fd().write(1)?;
        }
        Ok(())
    }

    /// Next used element `(id, len)`, if any.
    pub fn pop_used(&mut self) -> Option<(u32, u32)> {
        let used = u16::from_le(self.idx(self.addrs.used + 2).load(Ordering::Acquire));
        if used == self.last_used {
            return None;
        }
        let slot = (self.last_used % self.size) as u64;
        let e = self.addrs.used + 4 + 8 * slot;
        // SAFETY: inside the used ring; the Acquire load above orders these reads.
        let (id, len) = unsafe {
            (
                u32::from_le(self.p::<u32>(e).read_volatile()),
                u32::from_le(self.p::<u32>(e + 4).read_volatile()),
            )
        };
        self.last_used = self.last_used.wrapping_add(1);
        Some((id, len))
    }

    /// Wait (up to `timeout`) until the used ring has something: asks for an interrupt
    /// (used_event / no NO_INTERRUPT) and sleeps on the call eventfd, re-checking used.idx
    /// first (a call may come early, late or not at all).
    pub fn wait(&mut self, timeout: Duration) {
        if self.event_idx {
            let ue = self.addrs.avail + 4 + 2 * self.size as u64;
            self.idx(ue)
                .store(self.last_used.to_le(), Ordering::Release);
        }
        fence(Ordering::SeqCst);
        let used = u16::from_le(self.idx(self.addrs.used + 2).load(Ordering::Acquire));
        if used != self.last_used {
            return;
        }
        self.waits += 1;
        let mut pfd = libc::pollfd {
            fd: self.q.call_fd().as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let r = unsafe { libc::poll(&mut pfd, 1, timeout.as_millis().max(1) as i32) };
        if r > 0 {
            let _ = self.q.call_fd().read();
        }
    }
}

impl Ring {
    /// Host pointer of a guest address (guest memory is one region at 0, mapped for the
    /// whole run).
    #[inline]
    pub fn ptr(&self, gpa: u64) -> *mut u8 {
        (self.base + gpa as usize) as *mut u8
    }
}
