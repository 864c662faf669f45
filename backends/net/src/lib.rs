//! vhost-user-net as a library: the modules behind the `vhost-user-net` binary,
//! public so that the fuzz targets (fuzz/) and tests can reach them.

pub mod backend;
pub mod tap;
pub mod vnet;
