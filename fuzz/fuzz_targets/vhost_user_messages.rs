//! See fuzz/src/vhost_user.rs for the input format and what is checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| splitvm_fuzz::vhost_user::run(data));
