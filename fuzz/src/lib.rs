//! The harnesses behind splitvm's fuzz targets (fuzz/fuzz_targets/), kept in a
//! library so the seed generator, the corpus replay test and the regression
//! tests run exactly the code the fuzzer runs.
//!
//! Every harness takes arbitrary bytes and must never panic, abort or hang;
//! the ones that hand guest memory to device code also check that nothing was
//! written outside it (guard bytes around every region).

pub mod blk;
pub mod guest;
pub mod input;
pub mod mmio;
pub mod net;
pub mod seeds;
pub mod server;
pub mod vhost_user;

/// Whether SPLITVM_FUZZ_DEBUG is set: harnesses then say on stderr what
/// happened (how a connection ended, the device state), to check that a
/// seed gets where it is meant to.
pub fn debug() -> bool {
    static D: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *D.get_or_init(|| std::env::var_os("SPLITVM_FUZZ_DEBUG").is_some())
}

/// Process set-up every harness needs once: SIGPIPE ignored, as the Rust
/// runtime does before a daemon's `main` (libFuzzer's `main` is C, so
/// without this a back end writing to a socket whose peer is gone, e.g. a
/// call fd the front end made from a closed socketpair, would kill the
/// fuzzer instead of getting EPIPE as the real daemon does).
pub fn init() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: setting a signal's disposition to "ignore".
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    });
}
