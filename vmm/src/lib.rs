//! `vmm` as a library: the modules behind the `vmm` binary, public so that the
//! fuzz targets (fuzz/) and tests can reach them.

pub mod api;
pub mod boot;
pub mod bus;
pub mod cli;
pub mod cpu;
pub mod devices;
pub mod exit;
pub mod memory;
pub mod sandbox;
pub mod vhost_user;
pub mod vm;
