//! SIGTERM/SIGINT handling: the signals are blocked in every thread and taken
//! by one watcher thread with sigwait, so no handler runs in async context.

use crate::error::{Error, Result};
use nix::sys::signal::{SigSet, Signal};

/// The signals that ask a daemon to stop.
fn stop_signals() -> SigSet {
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    set
}

/// Blocks the stop signals in the calling thread (and so in every thread it
/// spawns later): call it first thing in `main`.
pub fn block() -> Result<()> {
    stop_signals()
        .thread_block()
        .map_err(|e| Error::Signals(e.into()))
}

/// Starts the watcher thread; `on_signal` runs once, on the first stop signal.
pub fn watch(on_signal: impl FnOnce(Signal) + Send + 'static) -> Result<()> {
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if let Ok(sig) = stop_signals().wait() {
                on_signal(sig);
            }
        })
        .map(|_| ())
        .map_err(Error::Signals)
}
