//! vhost-user-blk as a library: the modules behind the `vhost-user-blk` binary,
//! public so that the fuzz targets (fuzz/) and tests can reach them.

pub mod backend;
pub mod config;
pub mod image;
pub mod request;
