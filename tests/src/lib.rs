//! Host-side vhost-user driver that plays the guest in cross-process tests.
//!
//! ```no_run
//! use splitvm_tests::blk::{status, BlkRequest};
//! use splitvm_tests::{BlkDriver, BlkFixture};
//!
//! // A vhost-user-blk serving a 1 MiB image with known contents, killed on drop.
//! let mut f = BlkFixture::new("example", 1 << 20, &["--num-queues", "2"]);
//! // Negotiate, read the config space, map 64 MiB of memfd guest memory, start the rings.
//! let mut drv: BlkDriver = f.connect();
//! let c = drv.run_on(1, &BlkRequest::write(8, &[0xab; 1024]).split(512).indirect()).unwrap();
//! assert_eq!(c.status, status::OK);
//! f.expect_written(8, &[0xab; 1024]);
//! f.assert_image("after write"); // the image file on the host, byte for byte
//! f.assert_serving(&mut drv, 0, "example"); // daemon alive, a good write+read works
//! ```
//!
//! Lower levels, for malformed input: `drv.mem` (guest memory + allocator),
//! `drv.queues[i]` (`add_chain`, `add_raw`, `add_indirect_raw`, `kick`, `wait_used`),
//! `drv.conn` (vhost-user messages) and `drv.conn.raw()` (any bytes and fds).
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
