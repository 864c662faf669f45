//! vhost-user-blk: every request type, data integrity in the image file, config space,
//! multi-queue, EVENT_IDX on and off, indirect and multi-descriptor chains, read-only,
//! O_DIRECT, and front-end disconnect/reconnect.

use std::time::Duration;

use splitvm_tests::blk::{
    features, id_string, req_type, status, BlkOptions, BlkRequest, Segment, CONFIG_LEN, SECTOR_SIZE,
};
use splitvm_tests::frontend::{
    VhostUserProtocolFeatures, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX,
    VIRTIO_RING_F_INDIRECT_DESC,
};
use splitvm_tests::util::{assert_bytes_eq, pattern, read_at};
use splitvm_tests::BlkFixture;

const MIB: usize = 1 << 20;

#[test]
fn features_and_config_space() {
    let mut f = BlkFixture::new("cfg", 8 * MIB, &["--num-queues", "3", "--queue-size", "64"]);
    let mut drv = f.connect_with(&BlkOptions {
        queue_size: 64,
        ..Default::default()
    });
    let n = drv.negotiated;
    for (bit, name) in [
        (VIRTIO_F_VERSION_1, "VERSION_1"),
        (VIRTIO_RING_F_EVENT_IDX, "EVENT_IDX"),
        (VIRTIO_RING_F_INDIRECT_DESC, "INDIRECT_DESC"),
        (features::SEG_MAX, "SEG_MAX"),
        (features::SIZE_MAX, "SIZE_MAX"),
        (features::BLK_SIZE, "BLK_SIZE"),
        (features::FLUSH, "FLUSH"),
        (features::MQ, "MQ"),
        (features::DISCARD, "DISCARD"),
        (features::WRITE_ZEROES, "WRITE_ZEROES"),
    ] {
        assert!(
            n.offered & bit != 0,
            "feature {name} not offered: {:#x}",
            n.offered
        );
    }
    assert!(
        n.offered & features::RO == 0,
        "RO offered without --readonly"
    );
    for p in [
        VhostUserProtocolFeatures::MQ,
        VhostUserProtocolFeatures::REPLY_ACK,
        VhostUserProtocolFeatures::CONFIG,
        VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS,
    ] {
        assert!(
            n.offered_protocol.contains(p),
            "protocol feature {p:?} not offered"
        );
    }
    assert_eq!(n.queue_num, 3, "GET_QUEUE_NUM");

    let c = drv.config;
    assert_eq!(
        c.capacity,
        (8 * MIB) as u64 / SECTOR_SIZE,
        "capacity: {c:?}"
    );
    assert_eq!(c.blk_size, 512, "blk_size: {c:?}");
    assert_eq!(c.num_queues, 3, "num_queues: {c:?}");
    assert!(c.seg_max >= 1 && c.seg_max <= 64, "seg_max: {c:?}");
    assert!(c.size_max >= 4096, "size_max: {c:?}");
    assert!(c.max_discard_sectors > 0, "max_discard_sectors: {c:?}");
    assert!(c.max_discard_seg > 0, "max_discard_seg: {c:?}");
    assert!(
        c.discard_sector_alignment > 0,
        "discard_sector_alignment: {c:?}"
    );
    assert!(
        c.max_write_zeroes_sectors > 0,
        "max_write_zeroes_sectors: {c:?}"
    );
    assert!(c.max_write_zeroes_seg > 0, "max_write_zeroes_seg: {c:?}");

    // A partial read of the config space agrees with the full one.
    let full = drv.conn.get_config(0, CONFIG_LEN).unwrap();
    let part = drv.conn.get_config(34, 2).unwrap();
    assert_eq!(part, full[34..36].to_vec());
    assert_eq!(u16::from_le_bytes([part[0], part[1]]), 3);

    // All three queues work.
    for q in 0..3 {
        f.assert_serving(&mut drv, q, "config checks");
    }
    f.assert_image("after config checks");
}

#[test]
fn read_returns_image_bytes() {
    let mut f = BlkFixture::new("read", 4 * MIB, &[]);
    let mut drv = f.connect();
    let cap = drv.config.capacity;
    for (sector, len) in [
        (0u64, 512u32),
        (1, 4096),
        (7, 512 * 3),
        (cap - 1, 512),
        (cap - 128, 65536),
        (100, 1 << 20),
    ] {
        let c = drv.run(&BlkRequest::read(sector, len)).unwrap();
        assert_eq!(c.status, status::OK, "read {len} at sector {sector}");
        let o = (sector * 512) as usize;
        assert_bytes_eq(&c.data, &f.expected[o..o + len as usize], "read data");
        assert_eq!(c.used_len, len + 1, "used len = data + status");
    }
    // Many descriptors, and the same through an indirect table.
    for req in [
        BlkRequest::read(33, 8192).split(512),
        BlkRequest::read(33, 8192).split(1000),
        BlkRequest::read(33, 8192).split(512).indirect(),
    ] {
        let c = drv.run(&req).unwrap();
        assert_eq!(c.status, status::OK);
        assert_bytes_eq(
            &c.data,
            &f.expected[33 * 512..33 * 512 + 8192],
            "split read",
        );
    }
    f.assert_image("reads only");
}

#[test]
fn writes_land_in_the_image_and_nowhere_else() {
    let mut f = BlkFixture::new("write", 4 * MIB, &[]);
    let mut drv = f.connect();
    let cap = drv.config.capacity;
    for (i, (sector, len)) in [(0u64, 512usize), (9, 4096), (cap - 1, 512), (1000, 1 << 20)]
        .into_iter()
        .enumerate()
    {
        let data = pattern(i as u64 + 1, len);
        assert_eq!(drv.write(sector, &data).unwrap(), status::OK);
        f.expect_written(sector, &data);
        f.assert_image(&format!("after write of {len} at {sector}"));
    }
    // Multi-descriptor and indirect writes, odd split sizes.
    let data = pattern(77, 12 * 512);
    let c = drv
        .run(&BlkRequest::write(2000, &data).split(1536).indirect())
        .unwrap();
    assert_eq!(c.status, status::OK);
    f.expect_written(2000, &data);
    let data = pattern(78, 6 * 512);
    let c = drv.run(&BlkRequest::write(3000, &data).split(700)).unwrap();
    assert_eq!(c.status, status::OK);
    f.expect_written(3000, &data);
    assert_eq!(drv.flush().unwrap(), status::OK);
    f.assert_image("after multi-descriptor writes");
    // Read back through the device too.
    let (st, back) = drv.read(2000, 12 * 512).unwrap();
    assert_eq!(st, status::OK);
    assert_bytes_eq(&back, &pattern(77, 12 * 512), "read back");
}

#[test]
fn flush_and_get_id() {
    let mut f = BlkFixture::new("id", MIB, &["--serial", "splitvm-serial-01"]);
    let mut drv = f.connect();
    assert!(drv.has_feature(features::FLUSH));
    assert_eq!(drv.flush().unwrap(), status::OK);
    let (st, id) = drv.get_id().unwrap();
    assert_eq!(st, status::OK);
    assert_eq!(id_string(&id), "splitvm-serial-01");
    assert!(
        id[17..].iter().all(|&b| b == 0),
        "id padded with NUL: {id:?}"
    );
    drv.close();

    // Without --serial: the image's file name.
    let mut g = BlkFixture::new("id2", MIB, &[]);
    let mut drv = g.connect();
    let (st, id) = drv.get_id().unwrap();
    assert_eq!(st, status::OK);
    assert_eq!(id_string(&id), "disk.img");
    g.assert_image("after get-id");
}

#[test]
fn discard_and_write_zeroes() {
    let mut f = BlkFixture::new("dz", 4 * MIB, &[]);
    let mut drv = f.connect();
    assert!(drv.has_feature(features::DISCARD | features::WRITE_ZEROES));

    let st = drv
        .write_zeroes(&[
            Segment {
                sector: 10,
                num_sectors: 3,
                flags: 0,
            },
            Segment {
                sector: 4000,
                num_sectors: 8,
                flags: 1, // unmap allowed
            },
        ])
        .unwrap();
    assert_eq!(st, status::OK);
    f.expect_zeroed(10, 3);
    f.expect_zeroed(4000, 8);
    f.assert_image("after write-zeroes");

    // Discard: must succeed; the contents of discarded sectors are unspecified, so only
    // check that nothing outside them changed and that they can still be read.
    let st = drv
        .discard(&[Segment {
            sector: 2048,
            num_sectors: 2048,
            flags: 0,
        }])
        .unwrap();
    assert_eq!(st, status::OK);
    let now = std::fs::read(&f.image).unwrap();
    assert_bytes_eq(
        &now[..2048 * 512],
        &f.expected[..2048 * 512],
        "before discard range",
    );
    assert_bytes_eq(
        &now[4096 * 512..],
        &f.expected[4096 * 512..],
        "after discard range",
    );
    f.expected = now;
    let (st, _) = drv.read(2048, 4096).unwrap();
    assert_eq!(st, status::OK);

    // Spec: discard with the unmap flag, or any unknown flag -> UNSUPP.
    let st = drv
        .discard(&[Segment {
            sector: 0,
            num_sectors: 1,
            flags: 1,
        }])
        .unwrap();
    assert_eq!(st, status::UNSUPP, "discard with unmap flag");
    let st = drv
        .write_zeroes(&[Segment {
            sector: 0,
            num_sectors: 1,
            flags: 0x2,
        }])
        .unwrap();
    assert_eq!(st, status::UNSUPP, "write-zeroes with an unknown flag");
    // Past the end of the image -> IOERR, nothing zeroed.
    let cap = drv.config.capacity;
    let st = drv
        .write_zeroes(&[Segment {
            sector: cap - 1,
            num_sectors: 2,
            flags: 0,
        }])
        .unwrap();
    assert_eq!(st, status::IOERR, "write-zeroes past the end");
    // More sectors than max_write_zeroes_sectors -> not OK.
    let max = drv.config.max_write_zeroes_sectors;
    if max < u32::MAX {
        let st = drv
            .write_zeroes(&[Segment {
                sector: 0,
                num_sectors: max + 1,
                flags: 0,
            }])
            .unwrap();
        assert_ne!(
            st,
            status::OK,
            "write-zeroes above max_write_zeroes_sectors"
        );
    }
    // A segment list that is not a multiple of 16 bytes.
    let c = drv
        .run(&BlkRequest::new(req_type::WRITE_ZEROES, 0).with_out(vec![0u8; 10]))
        .unwrap();
    assert_ne!(c.status, status::OK, "10-byte write-zeroes segment");
    f.assert_image("after rejected write-zeroes/discard");
    f.assert_serving(&mut drv, 0, "discard and write-zeroes");
}

#[test]
fn unknown_request_types_get_unsupp() {
    let mut f = BlkFixture::new("unk", MIB, &[]);
    let mut drv = f.connect();
    for t in [
        2u32,
        3,
        5,
        7,
        9,
        10,
        12,
        14,
        15,
        0x77,
        0x8000_0000,
        u32::MAX,
    ] {
        // With data in both directions, and with none.
        let c = drv
            .run(&BlkRequest::new(t, 0).with_out(vec![0xee; 512]))
            .unwrap();
        assert_eq!(c.status, status::UNSUPP, "type {t:#x} with out data");
        let c = drv.run(&BlkRequest::new(t, 3).with_in(512)).unwrap();
        assert_eq!(c.status, status::UNSUPP, "type {t:#x} with in data");
        let c = drv.run(&BlkRequest::new(t, 0)).unwrap();
        assert_eq!(c.status, status::UNSUPP, "type {t:#x} without data");
    }
    f.assert_image("after unknown types");
    f.assert_serving(&mut drv, 0, "unknown types");
}

#[test]
fn multi_queue_parallel_io() {
    const Q: usize = 4;
    let mut f = BlkFixture::new("mq", 8 * MIB, &["--num-queues", "4"]);
    let mut drv = f.connect();
    assert_eq!(drv.queues.len(), Q);
    // 8 writes in flight on each queue at once, each to its own 8 KiB.
    let mut pending = Vec::new();
    for q in 0..Q {
        for i in 0..8u64 {
            let sector = (q as u64 * 8 + i) * 16;
            let data = pattern(sector + 1, 8192);
            let b = drv.build(&BlkRequest::write(sector, &data)).unwrap();
            let head = drv.queues[q].add_chain(&drv.mem, &b.chain).unwrap();
            pending.push((q, head, b.status, sector, data));
        }
    }
    for q in 0..Q {
        drv.queues[q].kick().unwrap();
    }
    for q in 0..Q {
        let used = drv.queues[q]
            .wait_used_n(&drv.mem, 8, Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("queue {q}: {e}"));
        let mut heads: Vec<u32> = used.iter().map(|u| u.id).collect();
        heads.sort();
        let mut want: Vec<u32> = pending
            .iter()
            .filter(|p| p.0 == q)
            .map(|p| p.1 as u32)
            .collect();
        want.sort();
        assert_eq!(heads, want, "queue {q} completed its own requests");
    }
    for (q, _h, s, sector, data) in &pending {
        assert_eq!(
            drv.status_at(*s).unwrap(),
            status::OK,
            "queue {q} sector {sector}"
        );
        f.expect_written(*sector, data);
    }
    f.assert_image("after parallel writes");
    // Read each back on a different queue.
    for (q, _h, _s, sector, data) in &pending {
        let c = drv
            .run_on((q + 1) % Q, &BlkRequest::read(*sector, 8192))
            .unwrap();
        assert_eq!(c.status, status::OK);
        assert_bytes_eq(&c.data, data, "cross-queue read");
    }
}

#[test]
fn event_idx_on_and_off() {
    let mut f = BlkFixture::new("evidx", MIB, &[]);
    for event_idx in [false, true] {
        let mut opts = BlkOptions::default();
        if !event_idx {
            opts.features &= !VIRTIO_RING_F_EVENT_IDX;
        }
        let mut drv = f.connect_with(&opts);
        assert_eq!(drv.has_feature(VIRTIO_RING_F_EVENT_IDX), event_idx);
        for i in 0..40u64 {
            let data = pattern(i + 100 * event_idx as u64, 512);
            assert_eq!(drv.write(i, &data).unwrap(), status::OK);
            f.expect_written(i, &data);
        }
        if event_idx {
            // The device publishes avail_event as it consumes the ring (it may do so just
            // after signalling the last completion, so allow it a moment).
            let next = drv.queues[0].next_avail();
            let caught_up = splitvm_tests::util::wait_until(Duration::from_secs(2), || {
                drv.queues[0].avail_event(&drv.mem).unwrap() == next
            });
            let ev = drv.queues[0].avail_event(&drv.mem).unwrap();
            assert!(caught_up, "avail_event {ev} after {next} requests");
            // Batches with a single notify decided by avail_event.
            let mut stats = Vec::new();
            for i in 0..16u64 {
                let b = drv.build(&BlkRequest::read(i, 512)).unwrap();
                drv.queues[0].add_chain(&drv.mem, &b.chain).unwrap();
                stats.push(b.status);
            }
            let kicked = drv.queues[0].notify(&drv.mem, 16).unwrap();
            assert!(kicked, "device asked for a kick");
            drv.queues[0]
                .wait_used_n(&drv.mem, 16, Duration::from_secs(5))
                .unwrap();
            for s in stats {
                assert_eq!(drv.status_at(s).unwrap(), status::OK);
            }
        }
        f.assert_image(&format!("event_idx={event_idx}"));
        drv.stop().unwrap();
        drv.close();
    }
}

#[test]
fn reconnect_keeps_state_and_image() {
    let mut f = BlkFixture::new("recon", 2 * MIB, &["--num-queues", "2"]);
    for round in 0..4u64 {
        let mut drv = f.connect();
        // What the previous connection wrote is there.
        if round > 0 {
            let (st, back) = drv.read(round - 1, 512).unwrap();
            assert_eq!(st, status::OK);
            assert_bytes_eq(
                &back,
                &pattern(round + 500 - 1, 512),
                "previous round's data",
            );
        }
        let data = pattern(round + 500, 512);
        let q = (round % 2) as usize;
        let c = drv.run_on(q, &BlkRequest::write(round, &data)).unwrap();
        assert_eq!(c.status, status::OK);
        f.expect_written(round, &data);
        if round % 2 == 0 {
            // Orderly stop: GET_VRING_BASE tells how far the device got on each ring.
            let bases = drv.stop().unwrap();
            let q0 = 1 + u32::from(round > 0);
            assert_eq!(bases, vec![q0, 0], "vring bases");
        }
        // Odd rounds: just drop the connection, as a crashing VMM would.
        drv.close();
        f.daemon.assert_alive("after disconnect");
    }
    f.assert_image("after reconnects");
    // A second front end waits while the first is connected, then gets served.
    let mut first = f.connect();
    let sock = f.socket.clone();
    let t = std::thread::spawn(move || {
        splitvm_tests::BlkDriver::connect_with(
            &sock,
            &BlkOptions {
                connect_timeout: Duration::from_secs(10),
                ..Default::default()
            },
        )
        .map(|mut d| d.read(0, 512).map(|r| r.0))
    });
    std::thread::sleep(Duration::from_millis(300));
    f.assert_serving(&mut first, 0, "while a second front end waits");
    first.close();
    let r = t.join().unwrap();
    assert!(
        matches!(r, Ok(Ok(status::OK))),
        "second front end after the first left: {:?}",
        r.map(|x| x.map_err(|e| e.to_string()))
            .map_err(|e| e.to_string())
    );
}

#[test]
fn readonly_refuses_writes() {
    let mut f = BlkFixture::new("ro", MIB, &["--readonly"]);
    let mut drv = f.connect();
    assert!(drv.negotiated.offered & features::RO != 0, "RO offered");
    let (st, data) = drv.read(5, 1024).unwrap();
    assert_eq!(st, status::OK);
    assert_bytes_eq(&data, &f.expected[5 * 512..7 * 512], "read-only read");
    assert_eq!(drv.write(5, &[0u8; 512]).unwrap(), status::IOERR, "write");
    let c = drv
        .run(
            &BlkRequest::write(0, &pattern(1, 4096))
                .split(512)
                .indirect(),
        )
        .unwrap();
    assert_eq!(c.status, status::IOERR, "indirect write");
    let seg = [Segment {
        sector: 0,
        num_sectors: 4,
        flags: 0,
    }];
    assert_ne!(drv.write_zeroes(&seg).unwrap(), status::OK, "write-zeroes");
    assert_ne!(drv.discard(&seg).unwrap(), status::OK, "discard");
    assert_eq!(drv.flush().unwrap(), status::OK, "flush");
    f.assert_image("read-only device");
    f.daemon.assert_alive("read-only");
    let (st, _) = drv.read(0, 512).unwrap();
    assert_eq!(st, status::OK);
}

#[test]
fn direct_io_with_unaligned_guest_buffers() {
    let mut f = BlkFixture::new("direct", 2 * MIB, &["--direct"]);
    let mut drv = f.connect();
    // Buffers at odd guest addresses and odd split sizes: the back end must cope under
    // O_DIRECT (bounce or fall back), not fail.
    let data = pattern(4242, 8192);
    let c = drv.run(&BlkRequest::write(16, &data).split(1000)).unwrap();
    assert_eq!(c.status, status::OK);
    f.expect_written(16, &data);
    // Misalign the allocator by one byte, then a single-buffer write and read.
    drv.mem.alloc(1, 1).unwrap();
    let data2 = pattern(4243, 4096);
    assert_eq!(drv.write(40, &data2).unwrap(), status::OK);
    f.expect_written(40, &data2);
    let (st, back) = drv.read(16, 8192).unwrap();
    assert_eq!(st, status::OK);
    assert_bytes_eq(&back, &data, "direct read");
    assert_eq!(drv.flush().unwrap(), status::OK);
    f.assert_image("O_DIRECT writes");
}

#[test]
fn large_requests_across_many_segments() {
    let mut f = BlkFixture::new("big", 8 * MIB, &[]);
    let mut drv = f.connect();
    let seg_max = drv.config.seg_max as usize;
    let n = seg_max.min(100);
    let data = pattern(9, n * 4096);
    let c = drv.run(&BlkRequest::write(64, &data).split(4096)).unwrap();
    assert_eq!(c.status, status::OK, "{n} segments");
    f.expect_written(64, &data);
    let c = drv
        .run(
            &BlkRequest::read(64, data.len() as u32)
                .split(4096)
                .indirect(),
        )
        .unwrap();
    assert_eq!(c.status, status::OK);
    assert_bytes_eq(&c.data, &data, "many-segment read");
    f.assert_image("many segments");
    let _ = read_at(&f.image, 0, 1);
}

#[test]
fn ring_indexes_wrap_around() {
    // Start the ring at avail/used index 65530 (SET_VRING_BASE) with a 4-entry queue, and
    // run enough requests to cross 65535 -> 0 several ring laps over.
    let mut f = BlkFixture::new("wrap", MIB, &[]);
    for event_idx in [true, false] {
        let mut opts = BlkOptions {
            queue_size: 4,
            num_queues: Some(1),
            ..Default::default()
        };
        if !event_idx {
            opts.features &= !VIRTIO_RING_F_EVENT_IDX;
        }
        let mut drv = f.connect_with(&opts);
        drv.conn.get_vring_base(0).unwrap();
        let base = 65530u16;
        drv.queues[0].reset_indexes(&drv.mem, base).unwrap();
        drv.conn
            .setup_vring_at(0, &drv.queues[0], &drv.mem, base)
            .unwrap();
        drv.conn.set_vring_enable(0, true).unwrap();
        for i in 0..20u64 {
            let data = pattern(i * 7 + event_idx as u64, 512);
            assert_eq!(drv.write(i, &data).unwrap(), status::OK, "write {i}");
            f.expect_written(i, &data);
            let (st, back) = drv.read(i, 512).unwrap();
            assert_eq!(st, status::OK);
            assert_bytes_eq(&back, &data, "read back across the wrap");
        }
        assert_eq!(drv.queues[0].next_avail(), base.wrapping_add(40));
        let b = drv.conn.get_vring_base(0).unwrap();
        assert_eq!(b as u16, base.wrapping_add(40), "GET_VRING_BASE after wrap");
        drv.close();
    }
    f.assert_image("after index wrap");
}

#[test]
fn fewer_queues_and_memory_above_4g() {
    let mut f = BlkFixture::new("layout", 2 * MIB, &["--num-queues", "4"]);
    // A front end that starts only one of four queues, with guest memory at 4 GiB and
    // a second region at 8 GiB.
    let mut drv = f.connect_with(&BlkOptions {
        num_queues: Some(1),
        mem_layout: vec![(1 << 32, 16 * MIB), (2 << 32, 16 * MIB)],
        ..Default::default()
    });
    assert_eq!(drv.config.num_queues, 4);
    assert_eq!(drv.queues.len(), 1);
    f.assert_serving(&mut drv, 0, "one of four queues, memory at 4 GiB");
    // Data buffers in the region at 8 GiB.
    let data = pattern(8, 4096);
    let a = 2u64 << 32;
    drv.mem.write(a, &data).unwrap();
    let h = drv.alloc_header(req_type::OUT, 50).unwrap();
    let s = drv.alloc_status().unwrap();
    drv.submit_chain(
        0,
        &[
            splitvm_tests::Desc::readable(h, 16),
            splitvm_tests::Desc::readable(a, 4096),
            splitvm_tests::Desc::writable(s, 1),
        ],
    )
    .unwrap();
    drv.wait(0).unwrap();
    assert_eq!(drv.status_at(s).unwrap(), status::OK);
    f.expect_written(50, &data);
    f.assert_image("memory above 4 GiB");
}

/// Connect, negotiate and map memory, but leave the rings unstarted.
fn connect_unstarted(
    f: &mut BlkFixture,
) -> (
    splitvm_tests::FrontendConn,
    splitvm_tests::GuestMem,
    splitvm_tests::SplitQueue,
) {
    let opts = BlkOptions::default();
    let mut conn = splitvm_tests::FrontendConn::connect(&f.socket, Duration::from_secs(5)).unwrap();
    let n = conn.negotiate(opts.features, opts.protocol).unwrap();
    let mut mem = splitvm_tests::GuestMem::new(16 * MIB).unwrap();
    let mut q = splitvm_tests::SplitQueue::new(&mut mem, 64).unwrap();
    q.set_event_idx(n.acked & VIRTIO_RING_F_EVENT_IDX != 0);
    conn.set_mem_table(&mem).unwrap();
    (conn, mem, q)
}

/// Put a write of `data` at `sector` in the avail ring (no kick); returns the status address.
fn queue_write(
    mem: &mut splitvm_tests::GuestMem,
    q: &mut splitvm_tests::SplitQueue,
    sector: u64,
    data: &[u8],
) -> u64 {
    use splitvm_tests::blk::header_bytes;
    use splitvm_tests::Desc;
    let h = mem
        .alloc_bytes(&header_bytes(req_type::OUT, sector), 16)
        .unwrap();
    let d = mem.alloc_bytes(data, 8).unwrap();
    let s = mem.alloc_bytes(&[status::UNWRITTEN], 1).unwrap();
    q.add_chain(
        mem,
        &[
            Desc::readable(h, 16),
            Desc::readable(d, data.len() as u32),
            Desc::writable(s, 1),
        ],
    )
    .unwrap();
    s
}

#[test]
fn requests_already_queued_run_when_the_ring_starts() {
    // A front end (or a restarted back end) may find requests in the avail ring before any
    // kick arrives; they must be processed when the ring starts, without a kick.
    let mut f = BlkFixture::new("prequeued", MIB, &[]);
    let (mut conn, mut mem, mut q) = connect_unstarted(&mut f);
    let mut stats = Vec::new();
    for i in 0..3u64 {
        let data = pattern(300 + i, 512);
        stats.push(queue_write(&mut mem, &mut q, 20 + i, &data));
        f.expect_written(20 + i, &data);
    }
    conn.setup_vring(0, &q, &mem).unwrap();
    conn.set_vring_enable(0, true).unwrap();
    // No kick.
    let r = q.wait_used_n(&mem, 3, Duration::from_secs(3));
    assert!(
        r.is_ok(),
        "requests queued before the ring started were not processed without a kick: {r:?}"
    );
    for s in stats {
        assert_eq!(mem.read(s, 1).unwrap()[0], status::OK);
    }
    f.assert_image("pre-queued requests");
}

#[test]
fn backend_restart_resumes_pending_requests() {
    // The back end is killed; requests sit in the avail ring. A new back end on the same
    // image and socket is given the rings again at the last used index: the requests run.
    let mut f = BlkFixture::new("restart", MIB, &[]);
    let (mut conn, mut mem, mut q) = connect_unstarted(&mut f);
    conn.setup_vring(0, &q, &mem).unwrap();
    conn.set_vring_enable(0, true).unwrap();
    let first = pattern(400, 512);
    let s = queue_write(&mut mem, &mut q, 30, &first);
    q.kick().unwrap();
    q.wait_used(&mem, Duration::from_secs(5)).unwrap();
    assert_eq!(mem.read(s, 1).unwrap()[0], status::OK);
    f.expect_written(30, &first);

    f.daemon.kill();
    conn.close();
    // Two requests queued while no back end runs; their kick is lost with the old back
    // end (it had the eventfd), so none is pending for the new one.
    let mut stats = Vec::new();
    for i in 0..2u64 {
        let data = pattern(410 + i, 512);
        stats.push(queue_write(&mut mem, &mut q, 31 + i, &data));
        f.expect_written(31 + i, &data);
    }

    f.daemon = splitvm_tests::Daemon::blk(f.dir.path(), &f.socket, &f.image, &[]);
    let opts = BlkOptions::default();
    let mut conn = splitvm_tests::FrontendConn::connect(&f.socket, Duration::from_secs(5)).unwrap();
    conn.negotiate(opts.features, opts.protocol).unwrap();
    conn.set_mem_table(&mem).unwrap();
    // Resume at the used index: everything after it is still to do.
    let base = q.used_idx(&mem).unwrap();
    conn.setup_vring_at(0, &q, &mem, base).unwrap();
    conn.set_vring_enable(0, true).unwrap();
    let r = q.wait_used_n(&mem, 2, Duration::from_secs(3));
    assert!(
        r.is_ok(),
        "pending requests not resumed after a back-end restart: {r:?}"
    );
    for s in stats {
        assert_eq!(mem.read(s, 1).unwrap()[0], status::OK);
    }
    f.assert_image("after back-end restart");
}
