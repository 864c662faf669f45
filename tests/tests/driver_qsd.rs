//! Proves the host-side driver against a third-party vhost-user-blk back end
//! (qemu-storage-daemon). Skips with a message if it is not installed.

use std::time::Duration;

use splitvm_tests::blk::{features, req_type, status, BlkOptions, BlkRequest, Segment};
use splitvm_tests::frontend::{VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX};
use splitvm_tests::util::{assert_bytes_eq, make_image, pattern, read_at};
use splitvm_tests::{BlkDriver, Daemon, TempDir};

const IMG_SIZE: usize = 4 << 20;

fn setup(tag: &str, queues: u16) -> Option<(TempDir, Daemon, Vec<u8>)> {
    let dir = TempDir::new(tag);
    let img = dir.join("disk.img");
    let data = make_image(&img, IMG_SIZE, 7);
    let d = Daemon::qemu_storage_daemon(dir.path(), &dir.join("s.sock"), &img, queues)?;
    Some((dir, d, data))
}

#[test]
fn qsd_read_write_flush_config() {
    let Some((dir, mut d, data)) = setup("qsd1", 2) else {
        return;
    };
    let mut drv = BlkDriver::connect(d.socket()).expect("connect");
    assert!(drv.has_feature(VIRTIO_F_VERSION_1));
    assert_eq!(
        drv.config.capacity,
        (IMG_SIZE / 512) as u64,
        "{:?}",
        drv.config
    );
    assert_eq!(drv.config.num_queues, 2);
    assert_eq!(drv.queues.len(), 2);

    // Read what the image holds.
    let (st, got) = drv.read(8, 4096).unwrap();
    assert_eq!(st, status::OK);
    assert_bytes_eq(&got, &data[8 * 512..8 * 512 + 4096], "read sectors 8..16");

    // Write on queue 1, split into 3 descriptors, through an indirect table.
    let w = pattern(99, 3 * 512);
    let c = drv
        .run_on(1, &BlkRequest::write(100, &w).split(512).indirect())
        .unwrap();
    assert_eq!(c.status, status::OK);
    assert_eq!(drv.flush().unwrap(), status::OK);
    let img = dir.join("disk.img");
    assert_bytes_eq(&read_at(&img, 100 * 512, w.len()), &w, "image after write");
    // Neighbours untouched.
    assert_bytes_eq(
        &read_at(&img, 99 * 512, 512),
        &data[99 * 512..100 * 512],
        "sector before",
    );
    assert_bytes_eq(
        &read_at(&img, 103 * 512, 512),
        &data[103 * 512..104 * 512],
        "sector after",
    );

    // Many requests in flight at once.
    let mut heads = Vec::new();
    let mut stats = Vec::new();
    for i in 0..16u64 {
        let b = drv.build(&BlkRequest::read(i * 8, 4096)).unwrap();
        heads.push(drv.queues[0].add_chain(&drv.mem, &b.chain).unwrap());
        stats.push(b.status);
    }
    drv.queues[0].kick().unwrap();
    let used = drv.queues[0]
        .wait_used_n(&drv.mem, 16, Duration::from_secs(5))
        .unwrap();
    assert_eq!(used.len(), 16);
    for s in stats {
        assert_eq!(drv.status_at(s).unwrap(), status::OK);
    }

    // Unknown type and get-id.
    let c = drv.run(&BlkRequest::new(0x77, 0)).unwrap();
    assert_eq!(c.status, status::UNSUPP);
    let (st, _id) = drv.get_id().unwrap();
    assert_eq!(st, status::OK);

    if drv.has_feature(features::WRITE_ZEROES) {
        let st = drv
            .write_zeroes(&[Segment {
                sector: 200,
                num_sectors: 2,
                flags: 0,
            }])
            .unwrap();
        assert_eq!(st, status::OK);
        assert_eq!(read_at(&img, 200 * 512, 1024), vec![0u8; 1024]);
    }
    let bases = drv.stop().unwrap();
    assert_eq!(bases.len(), 2);
    drv.close();
    d.assert_alive("after a clean disconnect");
    let _ = req_type::IN;
}

#[test]
fn qsd_reconnect_without_event_idx() {
    let Some((dir, mut d, _data)) = setup("qsd2", 1) else {
        return;
    };
    let opts = BlkOptions {
        features: BlkOptions::default().features & !VIRTIO_RING_F_EVENT_IDX,
        ..Default::default()
    };
    for round in 0..3u64 {
        let mut drv = BlkDriver::connect_with(d.socket(), &opts).expect("connect");
        let w = pattern(round, 512);
        assert_eq!(drv.write(round, &w).unwrap(), status::OK);
        let (st, r) = drv.read(round, 512).unwrap();
        assert_eq!(st, status::OK);
        assert_bytes_eq(&r, &w, "read back");
        drv.stop().unwrap();
        drv.close();
        d.assert_alive("after disconnect");
    }
    for round in 0..3u64 {
        assert_bytes_eq(
            &read_at(&dir.join("disk.img"), round * 512, 512),
            &pattern(round, 512),
            "image",
        );
    }
}
