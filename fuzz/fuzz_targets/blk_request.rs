//! See fuzz/src/blk.rs for the input format and what is checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| splitvm_fuzz::blk::run(data));
