//! A ready-made test set-up: a temp dir, an image file with known contents, a back end
//! serving it, and helpers to check the image and the daemon's health.

use std::path::PathBuf;
use std::time::Duration;

use crate::blk::{status, BlkDriver, BlkOptions, SECTOR_SIZE};
use crate::daemon::Daemon;
use crate::util::{assert_bytes_eq, make_image, pattern, TempDir};

/// A `vhost-user-blk` under test.
pub struct BlkFixture {
    /// Temp dir (socket, image, stderr capture). Dropped last.
    pub dir: TempDir,
    /// The image file.
    pub image: PathBuf,
    /// The socket.
    pub socket: PathBuf,
    /// The daemon.
    pub daemon: Daemon,
    /// What the image should hold now (tests update it as they write).
    pub expected: Vec<u8>,
}

impl BlkFixture {
    /// An image of `size` bytes filled with a pattern, served by `vhost-user-blk` with
    /// `extra` arguments.
    pub fn new(tag: &str, size: usize, extra: &[&str]) -> Self {
        let dir = TempDir::new(tag);
        let image = dir.join("disk.img");
        let expected = make_image(&image, size, 0x5eed);
        let socket = dir.join("blk.sock");
        let daemon = Daemon::blk(dir.path(), &socket, &image, extra);
        BlkFixture {
            dir,
            image,
            socket,
            daemon,
            expected,
        }
    }

    /// Connect a driver with default options.
    pub fn connect(&mut self) -> BlkDriver {
        self.connect_with(&BlkOptions::default())
    }

    /// Connect a driver with `opts`.
    #[track_caller]
    pub fn connect_with(&mut self, opts: &BlkOptions) -> BlkDriver {
        match BlkDriver::connect_with(&self.socket, opts) {
            Ok(d) => d,
            Err(e) => panic!(
                "connecting to vhost-user-blk: {e}; alive: {}; stderr:\n{}",
                self.daemon.is_alive(),
                self.daemon.stderr()
            ),
        }
    }

    /// Record that `data` was written at `sector` (for [`BlkFixture::assert_image`]).
    pub fn expect_written(&mut self, sector: u64, data: &[u8]) {
        let o = (sector * SECTOR_SIZE) as usize;
        self.expected[o..o + data.len()].copy_from_slice(data);
    }

    /// Record that `n` sectors at `sector` are now zero.
    pub fn expect_zeroed(&mut self, sector: u64, n: u64) {
        let o = (sector * SECTOR_SIZE) as usize;
        let l = (n * SECTOR_SIZE) as usize;
        self.expected[o..o + l].fill(0);
    }

    /// The image file on the host equals what we expect, byte for byte (so nothing was
    /// written outside the requested sectors).
    #[track_caller]
    pub fn assert_image(&self, what: &str) {
        let got = std::fs::read(&self.image).expect("reading image");
        assert_bytes_eq(&got, &self.expected, &format!("image file ({what})"));
    }

    /// The daemon is running, and `drv` still gets a good write + read done on queue `q`
    /// (the write goes to the image's last sector and is recorded).
    #[track_caller]
    pub fn assert_serving(&mut self, drv: &mut BlkDriver, q: usize, what: &str) {
        self.daemon.assert_alive(what);
        let last = self.expected.len() as u64 / SECTOR_SIZE - 1;
        let data = pattern(
            last ^ 0xabc ^ q as u64 ^ what.len() as u64,
            SECTOR_SIZE as usize,
        );
        let c = drv
            .run_on(q, &crate::blk::BlkRequest::write(last, &data))
            .unwrap_or_else(|e| {
                panic!(
                    "good write after {what} failed: {e}; stderr:\n{}",
                    self.daemon.stderr()
                )
            });
        assert_eq!(c.status, status::OK, "good write after {what}");
        self.expect_written(last, &data);
        let c = drv
            .run_on(q, &crate::blk::BlkRequest::read(last, SECTOR_SIZE as u32))
            .unwrap_or_else(|e| panic!("good read after {what} failed: {e}"));
        assert_eq!(c.status, status::OK, "good read after {what}");
        assert_bytes_eq(&c.data, &data, &format!("read back after {what}"));
    }

    /// The daemon is running and a brand-new connection gets a good request done.
    #[track_caller]
    pub fn assert_serving_fresh(&mut self, what: &str) {
        self.daemon.assert_alive(what);
        let mut drv = BlkDriver::connect_with(
            &self.socket,
            &BlkOptions {
                connect_timeout: Duration::from_secs(5),
                ..Default::default()
            },
        )
        .unwrap_or_else(|e| {
            panic!(
                "fresh connection after {what} failed: {e}; stderr:\n{}",
                self.daemon.stderr()
            )
        });
        self.assert_serving(&mut drv, 0, what);
        drv.close();
    }
}
