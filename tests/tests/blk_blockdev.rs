//! vhost-user-blk serving a host block device (a loop device over a file):
//! the capacity comes from BLKGETSIZE64, data lands on the device, and
//! discard and write-zeroes go through BLKDISCARD / BLKZEROOUT.

use splitvm_tests::blk::{status, Segment};
use splitvm_tests::util::pattern;
use splitvm_tests::{BlkDriver, Daemon, TempDir};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A loop device over a file, detached on drop.
struct Loop {
    dev: PathBuf,
}

impl Loop {
    fn attach(file: &Path) -> Option<Self> {
        let out = Command::new("losetup")
            .args(["-f", "--show"])
            .arg(file)
            .output()
            .ok()?;
        if !out.status.success() {
            eprintln!(
                "SKIPPED: cannot attach a loop device here: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            return None;
        }
        let dev = String::from_utf8_lossy(&out.stdout).trim().to_string();
        Some(Loop { dev: dev.into() })
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.dev).status();
    }
}

#[test]
fn serves_a_host_block_device() {
    let dir = TempDir::new("blockdev");
    let backing = dir.path().join("backing.img");
    let size: u64 = 8 << 20;
    let init = pattern(7, size as usize);
    std::fs::write(&backing, &init).unwrap();
    let Some(lo) = Loop::attach(&backing) else {
        return;
    };
    let socket = dir.path().join("blk.sock");
    let mut daemon = Daemon::blk(dir.path(), &socket, &lo.dev, &[]);
    let mut drv = BlkDriver::connect(&socket).unwrap();
    assert_eq!(
        drv.config.capacity,
        size / 512,
        "capacity from BLKGETSIZE64"
    );

    // Reads see the device's bytes.
    let (st, data) = drv.read(100, 4096).unwrap();
    assert_eq!(st, status::OK);
    assert_eq!(data, &init[100 * 512..100 * 512 + 4096]);

    // Writes land on the device (read back through the backing file after a flush).
    let new = pattern(8, 8192);
    assert_eq!(drv.write(200, &new).unwrap(), status::OK);
    assert_eq!(drv.flush().unwrap(), status::OK);

    // Write-zeroes and discard use the block-device ioctls.
    let zero = Segment {
        sector: 400,
        num_sectors: 16,
        flags: 0,
    };
    assert_eq!(drv.write_zeroes(&[zero]).unwrap(), status::OK);
    let disc = Segment {
        sector: 1000,
        num_sectors: 64,
        flags: 0,
    };
    assert_eq!(drv.discard(&[disc]).unwrap(), status::OK);
    let (st, z) = drv.read(400, 16 * 512).unwrap();
    assert_eq!(st, status::OK);
    assert!(
        z.iter().all(|&b| b == 0),
        "write-zeroes range reads back zero"
    );
    drv.close();

    // The backing file holds the write and the zeroes, and nothing else changed
    // outside the written, zeroed and discarded ranges.
    let _ = Command::new("blockdev")
        .arg("--flushbufs")
        .arg(&lo.dev)
        .status();
    let f = std::fs::File::open(&backing).unwrap();
    let mut got = vec![0u8; size as usize];
    f.read_exact_at(&mut got, 0).unwrap();
    assert_eq!(
        &got[200 * 512..200 * 512 + 8192],
        &new[..],
        "write on the device"
    );
    assert!(got[400 * 512..416 * 512].iter().all(|&b| b == 0));
    assert_eq!(&got[..100 * 512], &init[..100 * 512]);
    assert_eq!(&got[1064 * 512..], &init[1064 * 512..]);
    daemon.assert_alive("after block-device I/O");
}
