//! Host-side vhost-user driver that plays the guest in cross-process tests.
//!
//! - [`mem`]: memfd-backed guest memory and an allocator in it.
//! - [`virtq`]: the driver side of a split virtqueue (descriptors, rings, eventfds).
//! - [`frontend`]: a vhost-user front end (`vhost::vhost_user::Frontend`) plus raw messages.
//! - [`blk`]: virtio-blk requests, config space and a ready-to-use `BlkDriver`.
//! - [`daemon`]: finding our binaries, running back ends with captured stderr.
//! - [`fixture`]: a vhost-user-blk with a known image, and health checks.
//! - [`util`]: temp dirs, image files, byte patterns.

pub mod blk;
pub mod daemon;
pub mod fixture;
pub mod frontend;
pub mod mem;
pub mod util;
pub mod virtq;

pub use blk::{BlkConfig, BlkDriver, BlkOptions, BlkRequest, Segment};
pub use daemon::{bin_path, Daemon};
pub use fixture::BlkFixture;
pub use frontend::{FrontendConn, RawChannel};
pub use mem::GuestMem;
pub use util::TempDir;
pub use virtq::{Desc, RawDesc, SplitQueue, UsedElem};
