//! Why the VM ended, and the one-shot signal that tells the main thread.

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
