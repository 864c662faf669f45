//! Why the VM ended, and the one-shot signal that tells the main thread.

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex};

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Why the VMM stops.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitReason {
    /// The guest pulsed the reset line through the i8042 (0xFE to port 0x64).
    Reset,
    /// The guest reset the CPU by triple fault (KVM_EXIT_SHUTDOWN).
    TripleFault,
    /// The guest powered off (power-off port or KVM system event).
    PowerOff,
    /// `shutdown` on the API socket.
    ApiShutdown,
    /// SIGTERM, SIGINT or SIGHUP.
    Signal(i32),
    /// A fatal vCPU error.
    Error(String),
}

impl ExitReason {
    /// Process exit status.
    pub fn code(&self) -> i32 {
        match self {
            ExitReason::Error(_) => 1,
            _ => 0,
        }
    }

    /// The line printed when the VMM ends.
    pub fn describe(&self) -> String {
        match self {
            ExitReason::Reset => "guest requested a reset (i8042), exiting".into(),
            ExitReason::TripleFault => "guest reset the CPU (triple fault), exiting".into(),
            ExitReason::PowerOff => "guest powered off, exiting".into(),
            ExitReason::ApiShutdown => "shutdown requested on the API socket, exiting".into(),
            ExitReason::Signal(n) => format!("terminating on signal {n}"),
            ExitReason::Error(e) => format!("error: {e}"),
        }
    }
}

/// Shared "the VM is over" flag: the first reason wins.
#[derive(Clone)]
pub struct ExitSignal {
    reason: Arc<Mutex<Option<ExitReason>>>,
    evt: Arc<EventFd>,
}

impl ExitSignal {
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            reason: Arc::new(Mutex::new(None)),
            evt: Arc::new(EventFd::new(EFD_NONBLOCK)?),
        })
    }

    pub fn trigger(&self, reason: ExitReason) {
        let mut r = self.reason.lock().unwrap_or_else(|e| e.into_inner());
        if r.is_none() {
            *r = Some(reason);
        }
        let _ = self.evt.write(1);
    }

    pub fn reason(&self) -> Option<ExitReason> {
        self.reason
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn eventfd(&self) -> &EventFd {
        &self.evt
    }
}

static SIGNAL_FD: AtomicI32 = AtomicI32::new(-1);
static SIGNAL_NUM: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(sig: libc::c_int) {
    SIGNAL_NUM.store(sig, Ordering::SeqCst);
    let fd = SIGNAL_FD.load(Ordering::SeqCst);
    if fd >= 0 {
        let one: u64 = 1;
        // SAFETY: write(2) is async-signal-safe; the buffer is valid.
        unsafe { libc::write(fd, &one as *const u64 as *const libc::c_void, 8) };
    }
}

/// SIGTERM, SIGINT and SIGHUP end the VM through `exit` (so the API socket
/// is removed and the reason printed) instead of killing the process.
pub fn install_signal_handlers(exit: &ExitSignal) {
    SIGNAL_FD.store(exit.evt.as_raw_fd(), Ordering::SeqCst);
    for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
        // SAFETY: installing a handler that only does async-signal-safe work.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as *const () as usize;
            sa.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
}

/// The signal that asked us to stop, if any.
pub fn pending_signal() -> Option<i32> {
    match SIGNAL_NUM.load(Ordering::SeqCst) {
        0 => None,
        n => Some(n),
    }
}
