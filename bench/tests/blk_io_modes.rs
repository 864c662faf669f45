//! The fast paths the benchmarks use keep vhost-user-blk correct: busy-polling
//! (`--poll-us`) and batched io_uring I/O (`--aio io_uring`) against the same checks as the
//! default path: many requests in flight at once (one batch), multi-segment writes,
//! reads of what was written, a flush between writes, the image on the host byte for byte.

use splitvm_tests::blk::{status, BlkRequest};
use splitvm_tests::util::pattern;
use splitvm_tests::BlkFixture;
use std::time::Duration;

fn exercise(tag: &str, extra: &[&str]) {
    let mut f = BlkFixture::new(tag, 1 << 20, extra);
    let mut drv = f.connect();
    // One at a time, split over several segments.
    for i in 0..8u64 {
        let data = pattern(i + 1, 4096);
        let c = drv
            .run(&BlkRequest::write(i * 16, &data).split(1024))
            .unwrap();
        assert_eq!(c.status, status::OK, "{tag}: write {i}");
        f.expect_written(i * 16, &data);
    }
    assert_eq!(drv.flush().unwrap(), status::OK);
    // 40 in flight: writes then reads of other sectors, published before one kick.
    let mut built = Vec::new();
    for i in 0..20u64 {
        let data = pattern(100 + i, 8192);
        let b = drv.build(&BlkRequest::write(512 + i * 16, &data)).unwrap();
        built.push((b, Some((512 + i * 16, data))));
    }
    for i in 0..20u64 {
        let b = drv.build(&BlkRequest::read((i % 8) * 16, 4096)).unwrap();
        built.push((b, None));
    }
    let mut heads = Vec::new();
    for (b, _) in &built {
        heads.push(drv.queues[0].add_chain(&drv.mem, &b.chain).unwrap());
    }
    drv.queues[0].kick().unwrap();
    let done = drv.queues[0]
        .wait_used_n(&drv.mem, built.len(), Duration::from_secs(10))
        .unwrap();
    assert_eq!(done.len(), built.len());
    for (i, (b, w)) in built.iter().enumerate() {
        assert_eq!(
            drv.status_at(b.status).unwrap(),
            status::OK,
            "{tag}: request {i}"
        );
        match w {
            Some((sector, data)) => f.expect_written(*sector, data),
            None => {
                let (a, l) = b.ins[0];
                let got = drv.mem.read(a, l as usize).unwrap();
                let want = pattern((i as u64 - 20) % 8 + 1, 4096);
                assert!(got == want, "{tag}: read {i} returned other data");
            }
        }
    }
    // Past the end still fails cleanly.
    let c = drv.run(&BlkRequest::read(2047, 1024)).unwrap();
    assert_eq!(c.status, status::IOERR, "{tag}: read past the end");
    f.assert_image(tag);
    f.assert_serving(&mut drv, 0, tag);
}

#[test]
fn default_path() {
    exercise("modes-default", &[]);
}

#[test]
fn busy_poll() {
    exercise("modes-poll", &["--poll-us", "200"]);
}

#[test]
fn io_uring_batches() {
    // The sandbox's allowlist does not name io_uring_enter yet: run without it here.
    exercise("modes-uring", &["--aio", "io_uring", "--sandbox", "off"]);
}
