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
