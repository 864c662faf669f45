//! vhost-user-blk against a hostile guest: bad descriptors, loops, wrong directions, bad
//! lengths, requests past the end of the image. Each request must be completed with IOERR
//! (or, where there is no usable status byte, returned with nothing written), nothing may
//! land in the image, and the daemon must keep serving on the same queue.

use splitvm_tests::blk::{header_bytes, req_type, status, BlkOptions, BlkRequest, HEADER_LEN};
use splitvm_tests::virtq::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use splitvm_tests::{BlkDriver, BlkFixture, Desc, RawDesc, UsedElem};

const MIB: usize = 1 << 20;

fn setup(tag: &str) -> (BlkFixture, BlkDriver) {
    let mut f = BlkFixture::new(tag, MIB, &[]);
    let drv = f.connect();
    (f, drv)
}

/// Wait for `head` to come back; panic with the daemon's stderr if it does not.
#[track_caller]
fn completed(f: &mut BlkFixture, drv: &mut BlkDriver, head: u16, what: &str) -> UsedElem {
    match drv.wait_head(0, head) {
        Ok(e) => e,
        Err(e) => panic!(
            "{what}: request not completed: {e}; daemon alive: {}; stderr:\n{}",
            f.daemon.is_alive(),
            f.daemon.stderr()
        ),
    }
}

/// After a bad request: image untouched, daemon alive, a good request works on queue 0.
#[track_caller]
fn still_fine(f: &mut BlkFixture, drv: &mut BlkDriver, what: &str) {
    f.assert_image(what);
    f.assert_serving(drv, 0, what);
}

#[test]
fn data_outside_guest_memory() {
    let (mut f, mut drv) = setup("oob");
    let end = drv.mem.end();
    for (what, t, addr, len, write) in [
        (
            "read into past-the-end buffer",
            req_type::IN,
            end + 0x1000,
            512u32,
            true,
        ),
        (
            "read into buffer straddling the end",
            req_type::IN,
            end - 256,
            512,
            true,
        ),
        (
            "write from past-the-end buffer",
            req_type::OUT,
            end + 0x1000,
            512,
            false,
        ),
        (
            "write from buffer straddling the end",
            req_type::OUT,
            end - 256,
            512,
            false,
        ),
        (
            "write from address near u64::MAX",
            req_type::OUT,
            u64::MAX - 100,
            512,
            false,
        ),
    ] {
        let h = drv.alloc_header(t, 0).unwrap();
        let s = drv.alloc_status().unwrap();
        let head = drv
            .submit_chain(
                0,
                &[
                    Desc::readable(h, HEADER_LEN),
                    Desc { addr, len, write },
                    Desc::writable(s, 1),
                ],
            )
            .unwrap();
        completed(&mut f, &mut drv, head, what);
        assert_eq!(drv.status_at(s).unwrap(), status::IOERR, "{what}");
        still_fine(&mut f, &mut drv, what);
    }
}

#[test]
fn data_in_a_hole_between_regions() {
    let mut f = BlkFixture::new("hole", MIB, &[]);
    // Two regions with a 1 MiB hole at [16 MiB, 17 MiB).
    let mut drv = f.connect_with(&BlkOptions {
        mem_layout: vec![(0, 16 * MIB), (17 * MIB as u64, 16 * MIB)],
        ..Default::default()
    });
    assert_eq!(drv.mem.regions().len(), 2);
    let hole = 16 * MIB as u64 + 4096;
    // Also a buffer spanning the end of region 0 into the hole.
    for (addr, what) in [
        (hole, "in the hole"),
        (16 * MIB as u64 - 256, "into the hole"),
    ] {
        let h = drv.alloc_header(req_type::OUT, 0).unwrap();
        let s = drv.alloc_status().unwrap();
        let head = drv
            .submit_chain(
                0,
                &[
                    Desc::readable(h, HEADER_LEN),
                    Desc::readable(addr, 512),
                    Desc::writable(s, 1),
                ],
            )
            .unwrap();
        completed(&mut f, &mut drv, head, what);
        assert_eq!(drv.status_at(s).unwrap(), status::IOERR, "{what}");
        still_fine(&mut f, &mut drv, what);
    }
    // Buffers in the second region work.
    let a = 17 * MIB as u64 + 8192;
    drv.mem.write(a, &[0x42; 512]).unwrap();
    let h = drv.alloc_header(req_type::OUT, 9).unwrap();
    let s = drv.alloc_status().unwrap();
    let head = drv
        .submit_chain(
            0,
            &[
                Desc::readable(h, HEADER_LEN),
                Desc::readable(a, 512),
                Desc::writable(s, 1),
            ],
        )
        .unwrap();
    completed(&mut f, &mut drv, head, "second region");
    assert_eq!(drv.status_at(s).unwrap(), status::OK);
    f.expect_written(9, &[0x42; 512]);
    f.assert_image("second region write");
}

#[test]
fn header_outside_guest_memory() {
    let (mut f, mut drv) = setup("hdroob");
    let end = drv.mem.end();
    let buf = drv.mem.alloc(512, 8).unwrap();
    let s = drv.alloc_status().unwrap();
    let head = drv
        .submit_chain(
            0,
            &[
                Desc::readable(end + 4096, HEADER_LEN),
                Desc::readable(buf, 512),
                Desc::writable(s, 1),
            ],
        )
        .unwrap();
    completed(&mut f, &mut drv, head, "header outside memory");
    assert_eq!(drv.status_at(s).unwrap(), status::IOERR);
    still_fine(&mut f, &mut drv, "header outside memory");
}

#[test]
fn status_outside_guest_memory() {
    let (mut f, mut drv) = setup("stoob");
    let end = drv.mem.end();
    let h = drv.alloc_header(req_type::IN, 0).unwrap();
    let buf = drv.mem.alloc(512, 8).unwrap();
    let head = drv
        .submit_chain(
            0,
            &[
                Desc::readable(h, HEADER_LEN),
                Desc::writable(buf, 512),
                Desc::writable(end + 4096, 1),
            ],
        )
        .unwrap();
    // Nothing to report the status in: the chain must still come back.
    completed(&mut f, &mut drv, head, "status outside memory");
    still_fine(&mut f, &mut drv, "status outside memory");
}

#[test]
fn descriptor_loops() {
    let (mut f, mut drv) = setup("loop");
    let h = drv.alloc_header(req_type::OUT, 0).unwrap();
    let d = drv.mem.alloc_bytes(&[0x11; 512], 8).unwrap();
    let s = drv.alloc_status().unwrap();
    let cases: Vec<(&str, Vec<RawDesc>)> = vec![
        (
            "header -> data -> header",
            vec![
                RawDesc {
                    addr: h,
                    len: 16,
                    flags: VRING_DESC_F_NEXT,
                    next: 1,
                },
                RawDesc {
                    addr: d,
                    len: 512,
                    flags: VRING_DESC_F_NEXT,
                    next: 0,
                },
            ],
        ),
        (
            "status descriptor points to itself",
            vec![
                RawDesc {
                    addr: h,
                    len: 16,
                    flags: VRING_DESC_F_NEXT,
                    next: 1,
                },
                RawDesc {
                    addr: d,
                    len: 512,
                    flags: VRING_DESC_F_NEXT,
                    next: 2,
                },
                RawDesc {
                    addr: s,
                    len: 1,
                    flags: VRING_DESC_F_WRITE | VRING_DESC_F_NEXT,
                    next: 2,
                },
            ],
        ),
        (
            "next index past the queue size",
            vec![
                RawDesc {
                    addr: h,
                    len: 16,
                    flags: VRING_DESC_F_NEXT,
                    next: 1,
                },
                RawDesc {
                    addr: d,
                    len: 512,
                    flags: VRING_DESC_F_NEXT,
                    next: 0xfff0,
                },
            ],
        ),
    ];
    for (what, descs) in cases {
        drv.mem.write(s, &[status::UNWRITTEN]).unwrap();
        let head = drv.submit_raw(0, &descs).unwrap();
        completed(&mut f, &mut drv, head, what);
        let st = drv.status_at(s).unwrap();
        assert!(
            st == status::IOERR || st == status::UNWRITTEN,
            "{what}: status {st:#x}"
        );
        still_fine(&mut f, &mut drv, what);
    }
}

#[test]
fn bad_indirect_tables() {
    let (mut f, mut drv) = setup("indir");
    let h = drv.alloc_header(req_type::OUT, 0).unwrap();
    let d = drv.mem.alloc_bytes(&[0x22; 512], 8).unwrap();
    let s = drv.alloc_status().unwrap();
    let end = drv.mem.end();
    let good_table = [
        RawDesc {
            addr: h,
            len: 16,
            flags: VRING_DESC_F_NEXT,
            next: 1,
        },
        RawDesc {
            addr: d,
            len: 512,
            flags: VRING_DESC_F_NEXT,
            next: 2,
        },
        RawDesc {
            addr: s,
            len: 1,
            flags: VRING_DESC_F_WRITE,
            next: 0,
        },
    ];
    // Loops inside an indirect table.
    let mut looped = good_table;
    looped[1].next = 0;
    // An indirect descriptor inside an indirect table (not allowed).
    let nested_t = drv.mem.alloc(48, 16).unwrap();
    let mut nested = good_table;
    nested[1] = RawDesc {
        addr: nested_t,
        len: 48,
        flags: VRING_DESC_F_INDIRECT | VRING_DESC_F_NEXT,
        next: 2,
    };
    // Next index past the table.
    let mut past = good_table;
    past[1].next = 7;
    for (what, table) in [
        ("loop in indirect table", looped),
        ("nested indirect table", nested),
        ("next past the indirect table", past),
    ] {
        drv.mem.write(s, &[status::UNWRITTEN]).unwrap();
        let head = drv.queues[0]
            .add_indirect_raw(&mut drv.mem, &table)
            .unwrap();
        drv.queues[0].kick().unwrap();
        completed(&mut f, &mut drv, head, what);
        let st = drv.status_at(s).unwrap();
        assert!(
            st == status::IOERR || st == status::UNWRITTEN,
            "{what}: status {st:#x}"
        );
        still_fine(&mut f, &mut drv, what);
    }
    // Table descriptors themselves broken.
    let t = drv.mem.alloc(48, 16).unwrap();
    for (what, addr, len, flags) in [
        (
            "indirect table outside memory",
            end + 4096,
            48u32,
            VRING_DESC_F_INDIRECT,
        ),
        (
            "indirect table length not a multiple of 16",
            t,
            40,
            VRING_DESC_F_INDIRECT,
        ),
        ("zero-length indirect table", t, 0, VRING_DESC_F_INDIRECT),
        (
            "indirect table also marked NEXT",
            t,
            48,
            VRING_DESC_F_INDIRECT | VRING_DESC_F_NEXT,
        ),
    ] {
        for (i, dsc) in good_table.iter().enumerate() {
            let mut b = [0u8; 16];
            b[0..8].copy_from_slice(&dsc.addr.to_le_bytes());
            b[8..12].copy_from_slice(&dsc.len.to_le_bytes());
            b[12..14].copy_from_slice(&dsc.flags.to_le_bytes());
            b[14..16].copy_from_slice(&dsc.next.to_le_bytes());
            drv.mem.write(t + 16 * i as u64, &b).unwrap();
        }
        drv.mem.write(s, &[status::UNWRITTEN]).unwrap();
        let head = drv
            .submit_raw(
                0,
                &[RawDesc {
                    addr,
                    len,
                    flags,
                    next: 5,
                }],
            )
            .unwrap();
        completed(&mut f, &mut drv, head, what);
        let st = drv.status_at(s).unwrap();
        if flags & VRING_DESC_F_NEXT != 0 {
            // Only the driver is forbidden to set both flags; a device may follow the
            // table and ignore NEXT. Either way the request is answered.
            assert!(
                st == status::OK || st == status::IOERR,
                "{what}: status {st:#x}"
            );
            if st == status::OK {
                f.expect_written(0, &[0x22; 512]);
            }
        } else {
            assert!(st != status::OK, "{what}: status OK");
        }
        still_fine(&mut f, &mut drv, what);
    }
}

#[test]
fn short_or_zero_length_header_and_status() {
    let (mut f, mut drv) = setup("short");
    let hdr = header_bytes(req_type::OUT, 0);
    for (what, hlen) in [
        ("8-byte header", 8u32),
        ("15-byte header", 15),
        ("zero-length header", 0),
    ] {
        let h = drv.mem.alloc_bytes(&hdr, 16).unwrap();
        let d = drv.mem.alloc_bytes(&[0x33; 512], 8).unwrap();
        let s = drv.alloc_status().unwrap();
        let head = drv
            .submit_chain(
                0,
                &[
                    Desc::readable(h, hlen),
                    Desc::readable(d, 512),
                    Desc::writable(s, 1),
                ],
            )
            .unwrap();
        completed(&mut f, &mut drv, head, what);
        assert_eq!(drv.status_at(s).unwrap(), status::IOERR, "{what}");
        still_fine(&mut f, &mut drv, what);
    }
    // Zero-length status descriptor: the device must not write it.
    let h = drv.alloc_header(req_type::IN, 0).unwrap();
    let d = drv.mem.alloc(512, 8).unwrap();
    let s = drv.alloc_status().unwrap();
    let head = drv
        .submit_chain(
            0,
            &[
                Desc::readable(h, 16),
                Desc::writable(d, 512),
                Desc::writable(s, 0),
            ],
        )
        .unwrap();
    completed(&mut f, &mut drv, head, "zero-length status");
    assert_eq!(
        drv.status_at(s).unwrap(),
        status::UNWRITTEN,
        "zero-length status written"
    );
    still_fine(&mut f, &mut drv, "zero-length status");
    // Only a header, no status at all.
    let h = drv.alloc_header(req_type::FLUSH, 0).unwrap();
    let head = drv.submit_chain(0, &[Desc::readable(h, 16)]).unwrap();
    completed(&mut f, &mut drv, head, "no status descriptor");
    still_fine(&mut f, &mut drv, "no status descriptor");
    // A single descriptor too short for header + status.
    let h = drv.alloc_header(req_type::FLUSH, 0).unwrap();
    let head = drv.submit_chain(0, &[Desc::writable(h, 4)]).unwrap();
    completed(&mut f, &mut drv, head, "4-byte single descriptor");
    still_fine(&mut f, &mut drv, "4-byte single descriptor");
}

#[test]
fn wrong_direction() {
    let (mut f, mut drv) = setup("dir");
    // Header device-writable.
    let h = drv.alloc_header(req_type::OUT, 0).unwrap();
    let d = drv.mem.alloc_bytes(&[0x44; 512], 8).unwrap();
    let s = drv.alloc_status().unwrap();
    let head = drv
        .submit_chain(
            0,
            &[
                Desc::writable(h, 16),
                Desc::readable(d, 512),
                Desc::writable(s, 1),
            ],
        )
        .unwrap();
    completed(&mut f, &mut drv, head, "writable header");
    assert_eq!(drv.status_at(s).unwrap(), status::IOERR, "writable header");
    still_fine(&mut f, &mut drv, "writable header");

    // Read whose data buffer is device-readable: IOERR and the buffer is left alone.
    let h = drv.alloc_header(req_type::IN, 0).unwrap();
    let d = drv.mem.alloc_bytes(&[0x55; 512], 8).unwrap();
    let s = drv.alloc_status().unwrap();
    let head = drv
        .submit_chain(
            0,
            &[
                Desc::readable(h, 16),
                Desc::readable(d, 512),
                Desc::writable(s, 1),
            ],
        )
        .unwrap();
    completed(&mut f, &mut drv, head, "read into readable buffer");
    assert_eq!(
        drv.status_at(s).unwrap(),
        status::IOERR,
        "read into readable buffer"
    );
    assert_eq!(
        drv.mem.read(d, 512).unwrap(),
        vec![0x55; 512],
        "device wrote a readable buffer"
    );
    still_fine(&mut f, &mut drv, "read into readable buffer");

    // Write whose data buffer is device-writable: IOERR, image untouched.
    let h = drv.alloc_header(req_type::OUT, 0).unwrap();
    let d = drv.mem.alloc_bytes(&[0x66; 512], 8).unwrap();
    let s = drv.alloc_status().unwrap();
    let head = drv
        .submit_chain(
            0,
            &[
                Desc::readable(h, 16),
                Desc::writable(d, 512),
                Desc::writable(s, 1),
            ],
        )
        .unwrap();
    completed(&mut f, &mut drv, head, "write from writable buffer");
    assert_eq!(
        drv.status_at(s).unwrap(),
        status::IOERR,
        "write from writable buffer"
    );
    still_fine(&mut f, &mut drv, "write from writable buffer");

    // Status byte device-readable: must not be written.
    let h = drv.alloc_header(req_type::IN, 0).unwrap();
    let d = drv.mem.alloc(512, 8).unwrap();
    let s = drv.alloc_status().unwrap();
    let head = drv
        .submit_chain(
            0,
            &[
                Desc::readable(h, 16),
                Desc::writable(d, 512),
                Desc::readable(s, 1),
            ],
        )
        .unwrap();
    completed(&mut f, &mut drv, head, "readable status");
    assert_eq!(
        drv.status_at(s).unwrap(),
        status::UNWRITTEN,
        "device wrote a readable status"
    );
    still_fine(&mut f, &mut drv, "readable status");

    // Mixed directions inside the data (write, then read buffers in one write request).
    let h = drv.alloc_header(req_type::OUT, 0).unwrap();
    let d1 = drv.mem.alloc_bytes(&[0x77; 512], 8).unwrap();
    let d2 = drv.mem.alloc(512, 8).unwrap();
    let s = drv.alloc_status().unwrap();
    let head = drv
        .submit_chain(
            0,
            &[
                Desc::readable(h, 16),
                Desc::readable(d1, 512),
                Desc::writable(d2, 512),
                Desc::writable(s, 1),
            ],
        )
        .unwrap();
    completed(&mut f, &mut drv, head, "mixed-direction data");
    assert_eq!(
        drv.status_at(s).unwrap(),
        status::IOERR,
        "mixed-direction data"
    );
    still_fine(&mut f, &mut drv, "mixed-direction data");
}

#[test]
fn requests_past_the_end_of_the_image() {
    let (mut f, mut drv) = setup("eoi");
    let cap = drv.config.capacity;
    for (what, sector, len) in [
        ("read at capacity", cap, 512u32),
        ("read straddling the end", cap - 1, 1024),
        ("read at huge sector", u64::MAX / 512 + 5, 512),
        ("read at u64::MAX", u64::MAX, 512),
    ] {
        let c = drv.run(&BlkRequest::read(sector, len)).unwrap();
        assert_eq!(c.status, status::IOERR, "{what}");
        still_fine(&mut f, &mut drv, what);
    }
    for (what, sector, len) in [
        ("write at capacity", cap, 512usize),
        ("write straddling the end", cap - 1, 1024),
        ("write at huge sector", u64::MAX / 512 + 5, 512),
        ("write at u64::MAX", u64::MAX, 512),
    ] {
        let c = drv
            .run(&BlkRequest::write(sector, &vec![0x99; len]))
            .unwrap();
        assert_eq!(c.status, status::IOERR, "{what}");
        // Nothing at all written, not even the part that fits.
        still_fine(&mut f, &mut drv, what);
    }
}

#[test]
fn a_batch_mixing_bad_and_good_requests() {
    let (mut f, mut drv) = setup("batch");
    let end = drv.mem.end();
    let mut good = Vec::new();
    let mut bad = Vec::new();
    for i in 0..24u64 {
        if i % 3 == 1 {
            let h = drv.alloc_header(req_type::OUT, i).unwrap();
            let s = drv.alloc_status().unwrap();
            let chain = [
                Desc::readable(h, 16),
                Desc::readable(end + 8192, 512),
                Desc::writable(s, 1),
            ];
            drv.queues[0].add_chain(&drv.mem, &chain).unwrap();
            bad.push(s);
        } else {
            let data = vec![i as u8; 512];
            let b = drv.build(&BlkRequest::write(i, &data)).unwrap();
            drv.queues[0].add_chain(&drv.mem, &b.chain).unwrap();
            good.push((b.status, i, data));
        }
    }
    drv.queues[0].kick().unwrap();
    drv.queues[0]
        .wait_used_n(&drv.mem, 24, std::time::Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("batch: {e}; stderr:\n{}", f.daemon.stderr()));
    for s in bad {
        assert_eq!(drv.status_at(s).unwrap(), status::IOERR);
    }
    for (s, i, data) in good {
        assert_eq!(drv.status_at(s).unwrap(), status::OK, "good request {i}");
        f.expect_written(i, &data);
    }
    still_fine(&mut f, &mut drv, "mixed batch");
}
