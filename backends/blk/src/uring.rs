//! Batched block I/O with io_uring: a queue worker turns every read and write it takes off
//! the ring in one pass into a submission entry pointing straight at guest memory, then
//! submits the whole batch and waits for it with one `io_uring_enter`, instead of one
//! preadv/pwritev system call per request.
//!
//! One `IoUring` per request queue, created at set-up (before the sandbox), used only by
//! that queue's worker. System calls needed at run time: io_uring_enter (and
//! io_uring_setup / io_uring_register at set-up). Where io_uring is unavailable (old kernel,
//! seccomp, ENOMEM) the back end keeps using preadv/pwritev.

use io_uring::{opcode, types, IoUring};
use std::io;
use std::os::fd::RawFd;
use vm_memory::GuestAddress;

/// Entries of each submission queue; also the most requests in one batch.
pub const DEPTH: u32 = 128;

/// A read or write waiting in the current batch.
pub struct Pending {
    pub head: u16,
    pub status: GuestAddress,
    pub iovs: Vec<libc::iovec>,
    pub offset: u64,
    pub len: u64,
    pub read: bool,
}

/// What became of one entry of a batch.
pub struct Done {
    pub pending: Pending,
    /// The CQE result: bytes moved, or a negative errno.
    pub result: i32,
}

/// One queue's ring and its batch.
pub struct Batch {
    ring: IoUring,
    fd: RawFd,
    pending: Vec<Option<Pending>>,
    count: usize,
}

// SAFETY: the iovecs point into guest memory that stays mapped while the batch is in
// flight (the worker holds the memory guard across submit and completion); a Batch is used
// by one worker at a time (behind a Mutex).
unsafe impl Send for Batch {}

impl Batch {
    /// A ring for I/O on `fd`.
    pub fn new(fd: RawFd) -> io::Result<Self> {
        let ring = IoUring::builder()
            .setup_single_issuer()
            .build(DEPTH)
            .or_else(|_| IoUring::new(DEPTH))?;
        Ok(Batch {
            ring,
            fd,
            pending: (0..DEPTH).map(|_| None).collect(),
            count: 0,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    pub fn is_full(&self) -> bool {
        self.count >= DEPTH as usize
    }

    /// Queue a read or write (not yet submitted). The batch must not be full.
    pub fn push(&mut self, p: Pending) -> io::Result<()> {
        let slot = self
            .pending
            .iter()
            .position(Option::is_none)
            .ok_or_else(|| io::Error::other("io_uring batch full"))?;
        let fd = types::Fd(self.fd);
        let sqe = if p.read {
            opcode::Readv::new(fd, p.iovs.as_ptr(), p.iovs.len() as u32)
                .offset(p.offset)
                .build()
        } else {
            opcode::Writev::new(fd, p.iovs.as_ptr(), p.iovs.len() as u32)
                .offset(p.offset)
                .build()
        }
        .user_data(slot as u64);
        // SAFETY: the iovec array and the buffers it points to live in `self.pending` /
        // guest memory until the completion is reaped in `run`.
        unsafe { self.ring.submission().push(&sqe) }
            .map_err(|_| io::Error::other("io_uring submission queue full"))?;
        self.pending[slot] = Some(p);
        self.count += 1;
        Ok(())
    }

    /// Submit everything queued, wait for all of it, and hand back each entry with its
    /// result (in completion order).
    pub fn run(&mut self, out: &mut Vec<Done>) -> io::Result<()> {
        while self.count > 0 {
            match self.ring.submit_and_wait(self.count) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e) => return Err(e),
            }
            for cqe in self.ring.completion() {
                let slot = cqe.user_data() as usize;
                if let Some(p) = self.pending.get_mut(slot).and_then(Option::take) {
                    self.count -= 1;
                    out.push(Done {
                        pending: p,
                        result: cqe.result(),
                    });
                }
            }
        }
        Ok(())
    }
}

impl Batch {
    /// Everything still queued (after a failed `run`), for the caller to redo synchronously.
    pub fn take_all(&mut self) -> Vec<Pending> {
        self.count = 0;
        // Drop whatever completions arrived; the caller redoes these requests.
        for _ in self.ring.completion() {}
        self.pending.iter_mut().filter_map(Option::take).collect()
    }
}
