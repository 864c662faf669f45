//! vhost-user-blk against a hostile or broken front end: garbage, truncated and oversized
//! messages, invalid parameters, messages out of order, and front ends that vanish in the
//! middle of a message or of a request. Each must be refused (NACK or closed connection)
//! or survived, and the daemon must then serve a new front end correctly.

use std::os::fd::AsRawFd;
use std::time::Duration;

use splitvm_tests::blk::{status, BlkOptions, BlkRequest};
use splitvm_tests::frontend::{
    hdr_flags, req, FrontendConn, Outcome, VhostUserProtocolFeatures, REPLY_TIMEOUT,
};
use splitvm_tests::util::pattern;
use splitvm_tests::{BlkFixture, GuestMem, RawChannel};

const MIB: usize = 1 << 20;
const WAIT: Duration = Duration::from_secs(3);
const NEED: u32 = hdr_flags::VERSION | hdr_flags::NEED_REPLY;

fn fixture(tag: &str) -> BlkFixture {
    BlkFixture::new(tag, MIB, &["--num-queues", "2"])
}

/// A connection that went through the usual negotiation, with REPLY_ACK.
fn negotiated(f: &mut BlkFixture) -> FrontendConn {
    let mut c = FrontendConn::connect(&f.socket, WAIT).expect("connect");
    let d = BlkOptions::default();
    let n = c.negotiate(d.features, d.protocol).expect("negotiate");
    assert!(n.protocol.contains(VhostUserProtocolFeatures::REPLY_ACK));
    c
}

fn u32s(v: &[u32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn u64s(v: &[u64]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn vring_state(index: u32, num: u32) -> Vec<u8> {
    u32s(&[index, num])
}

fn mem_table(regions: &[[u64; 4]]) -> Vec<u8> {
    let mut b = u32s(&[regions.len() as u32, 0]);
    for r in regions {
        b.extend(u64s(r));
    }
    b
}

/// After a refused or survived message: a new front end gets correct service.
#[track_caller]
fn serves_again(f: &mut BlkFixture, what: &str) {
    // Give the daemon a moment to notice a closed connection.
    std::thread::sleep(Duration::from_millis(20));
    f.assert_serving_fresh(what);
    f.assert_image(what);
}

#[test]
fn garbage_and_truncated_messages_before_negotiation() {
    let mut f = fixture("garbage");
    // Random bytes.
    let mut raw = RawChannel::connect(&f.socket, WAIT).unwrap();
    raw.send_bytes(&pattern(1, 64), &[]).unwrap();
    let o = raw.outcome(WAIT);
    assert!(
        matches!(o, Outcome::Closed | Outcome::Silent),
        "garbage got a reply: {o:?}"
    );
    raw.close();
    serves_again(&mut f, "random bytes");

    // A header cut short, then the front end goes away.
    let mut raw = RawChannel::connect(&f.socket, WAIT).unwrap();
    raw.send_bytes(&u32s(&[req::GET_FEATURES, 1])[..6], &[])
        .unwrap();
    raw.close();
    serves_again(&mut f, "truncated header");

    // A header announcing 100 bytes of body, 10 sent, then gone.
    let mut raw = RawChannel::connect(&f.socket, WAIT).unwrap();
    raw.send_sized(req::SET_FEATURES, 1, 100, &[0u8; 10], &[])
        .unwrap();
    raw.close();
    serves_again(&mut f, "truncated body");

    // A body size far beyond any message.
    let mut raw = RawChannel::connect(&f.socket, WAIT).unwrap();
    raw.send_sized(req::SET_MEM_TABLE, NEED, 0xffff_fff0, &[0u8; 64], &[])
        .unwrap();
    let o = raw.outcome(WAIT);
    assert!(
        o.refused() || o == Outcome::Silent,
        "huge size accepted: {o:?}"
    );
    raw.close();
    serves_again(&mut f, "oversized body");

    // Unknown request codes, request 0, and a wrong protocol version.
    for (what, code, flags) in [
        ("unknown request 9999", 9999u32, NEED),
        ("request code 0", 0, NEED),
        ("protocol version 2", req::GET_FEATURES, 0x2),
        (
            "reply flag on a request",
            req::GET_FEATURES,
            hdr_flags::VERSION | hdr_flags::REPLY,
        ),
        ("reserved flag bits", req::GET_FEATURES, 0xffff_fff1),
    ] {
        let mut raw = RawChannel::connect(&f.socket, WAIT).unwrap();
        raw.send(code, flags, &[], &[]).unwrap();
        let o = raw.outcome(WAIT);
        assert!(
            !matches!(&o, Outcome::Reply(r) if r.u64() == Some(0)),
            "{what}: acked as success: {o:?}"
        );
        raw.close();
        serves_again(&mut f, what);
    }

    // Messages with a body size that does not match the request.
    for (what, code, body) in [
        (
            "SET_FEATURES with a 4-byte body",
            req::SET_FEATURES,
            vec![0u8; 4],
        ),
        ("GET_FEATURES with a body", req::GET_FEATURES, vec![0u8; 8]),
        ("SET_OWNER with a body", req::SET_OWNER, vec![0u8; 16]),
    ] {
        let mut raw = RawChannel::connect(&f.socket, WAIT).unwrap();
        raw.send(code, NEED, &body, &[]).unwrap();
        let o = raw.outcome(WAIT);
        assert!(
            !matches!(&o, Outcome::Reply(r) if r.body.len() == 8 && code != req::GET_FEATURES && r.u64() == Some(0)),
            "{what}: acked as success: {o:?}"
        );
        raw.close();
        serves_again(&mut f, what);
    }
}

#[test]
fn invalid_parameters_are_refused() {
    let mut f = fixture("params");
    let dev_null = std::fs::File::open("/dev/null").unwrap();
    let cases: Vec<(&str, u32, Vec<u8>)> = vec![
        (
            "SET_VRING_NUM on ring 100",
            req::SET_VRING_NUM,
            vring_state(100, 64),
        ),
        ("SET_VRING_NUM of 0", req::SET_VRING_NUM, vring_state(0, 0)),
        (
            "SET_VRING_NUM above the maximum",
            req::SET_VRING_NUM,
            vring_state(0, 1 << 15),
        ),
        (
            "SET_VRING_NUM of 2^32-1",
            req::SET_VRING_NUM,
            vring_state(0, u32::MAX),
        ),
        (
            "SET_VRING_BASE on ring 100",
            req::SET_VRING_BASE,
            vring_state(100, 0),
        ),
        (
            "SET_VRING_ENABLE on ring 100",
            req::SET_VRING_ENABLE,
            vring_state(100, 1),
        ),
        (
            "SET_VRING_NUM with a short body",
            req::SET_VRING_NUM,
            u32s(&[0]),
        ),
        (
            "SET_VRING_ADDR with unmapped addresses",
            req::SET_VRING_ADDR,
            {
                let mut b = u32s(&[0, 0]);
                b.extend(u64s(&[0xdead_0000, 0xdead_1000, 0xdead_2000, 0]));
                b
            },
        ),
        ("SET_VRING_ADDR on ring 100", req::SET_VRING_ADDR, {
            let mut b = u32s(&[100, 0]);
            b.extend(u64s(&[0, 0, 0, 0]));
            b
        }),
        (
            "SET_FEATURES with bits never offered",
            req::SET_FEATURES,
            u64s(&[u64::MAX]),
        ),
        (
            "SET_MEM_TABLE with no regions",
            req::SET_MEM_TABLE,
            mem_table(&[]),
        ),
        (
            "SET_MEM_TABLE with a region and no fd",
            req::SET_MEM_TABLE,
            mem_table(&[[0, 1 << 20, 0x7000_0000_0000, 0]]),
        ),
        (
            "SET_MEM_TABLE claiming 2 regions, carrying 1",
            req::SET_MEM_TABLE,
            {
                let mut b = mem_table(&[[0, 1 << 20, 0x7000_0000_0000, 0]]);
                b[0] = 2;
                b
            },
        ),
        ("SET_MEM_TABLE claiming 200 regions", req::SET_MEM_TABLE, {
            let mut b = mem_table(&[[0, 1 << 20, 0x7000_0000_0000, 0]]);
            b[0] = 200;
            b
        }),
        (
            "SET_VRING_KICK for ring 100",
            req::SET_VRING_KICK,
            u64s(&[100 | 0x100]),
        ),
        (
            "SET_VRING_CALL without fd and without the no-fd flag",
            req::SET_VRING_CALL,
            u64s(&[0]),
        ),
        ("GET_CONFIG of 4096 bytes", req::GET_CONFIG, {
            let mut b = u32s(&[0, 4096, 0]);
            b.extend(vec![0u8; 4096]);
            b
        }),
        (
            "GET_CONFIG whose size disagrees with its payload",
            req::GET_CONFIG,
            {
                let mut b = u32s(&[0, 60, 0]);
                b.extend(vec![0u8; 8]);
                b
            },
        ),
        (
            "REM_MEM_REG of a region never added",
            req::REM_MEM_REG,
            u64s(&[0, 0x4000_0000, 4096, 0x7000_0000_0000, 0]),
        ),
        (
            "ADD_MEM_REG without fd",
            req::ADD_MEM_REG,
            u64s(&[0, 0x4000_0000, 4096, 0x7000_0000_0000, 0]),
        ),
    ];
    for (what, code, body) in cases {
        let mut c = negotiated(&mut f);
        c.raw().send(code, NEED, &body, &[]).unwrap();
        let o = c.raw().outcome(WAIT);
        if code == req::GET_CONFIG {
            // A config reply of the wrong size, an empty reply, a NACK or a close are all
            // refusals; a well-formed full reply is not.
            assert!(
                !matches!(&o, Outcome::Reply(r) if r.body.len() == body.len() && body.len() > 12 + 8),
                "{what}: answered in full: {o:?}"
            );
        } else {
            assert!(o.refused(), "{what}: not refused: {o:?}");
        }
        c.close();
        serves_again(&mut f, what);
    }
    // An fd that is not an eventfd as kick: must not crash or spin.
    let mut c = negotiated(&mut f);
    c.raw()
        .send(
            req::SET_VRING_KICK,
            NEED,
            &u64s(&[0]),
            &[dev_null.as_raw_fd()],
        )
        .unwrap();
    let _ = c.raw().outcome(WAIT);
    c.close();
    serves_again(&mut f, "/dev/null as kick fd");
}

#[test]
fn memory_region_larger_than_its_file() {
    let mut f = fixture("bigreg");
    // A 1 MiB memfd announced as a 64 MiB region, rings placed beyond the file's end: a
    // back end that maps it without checking takes SIGBUS when it touches the ring.
    let mem = GuestMem::new(MIB).unwrap();
    let mut info = mem.region_infos();
    info[0].memory_size = 64 * MIB as u64;
    let mut c = negotiated(&mut f);
    let r = c.set_mem_table_regions(&info);
    if r.is_ok() {
        let base = info[0].userspace_addr;
        // Descriptor table, avail, used at 32 MiB (beyond the file).
        let at = 32 * MIB as u64;
        let mut addr = u32s(&[0, 0]);
        addr.extend(u64s(&[
            base + at,
            base + at + 0x2000,
            base + at + 0x1000,
            0,
        ]));
        let kick = vmm_sys_util::eventfd::EventFd::new(0).unwrap();
        let call = vmm_sys_util::eventfd::EventFd::new(0).unwrap();
        let steps: Vec<(u32, Vec<u8>, Vec<i32>)> = vec![
            (req::SET_VRING_NUM, vring_state(0, 16), vec![]),
            (req::SET_VRING_ADDR, addr, vec![]),
            (req::SET_VRING_BASE, vring_state(0, 0), vec![]),
            (req::SET_VRING_CALL, u64s(&[0]), vec![call.as_raw_fd()]),
            (req::SET_VRING_KICK, u64s(&[0]), vec![kick.as_raw_fd()]),
            (req::SET_VRING_ENABLE, vring_state(0, 1), vec![]),
        ];
        for (code, body, fds) in steps {
            c.raw().send(code, NEED, &body, &fds).unwrap();
            if c.raw().outcome(WAIT).refused() {
                break;
            }
        }
        let _ = kick.write(1);
        std::thread::sleep(Duration::from_millis(300));
    }
    c.close();
    serves_again(&mut f, "region larger than its file");
}

#[test]
fn messages_out_of_order() {
    let mut f = fixture("order");

    // Rings started and kicked before any memory table.
    let mut c = negotiated(&mut f);
    let kick = vmm_sys_util::eventfd::EventFd::new(0).unwrap();
    let call = vmm_sys_util::eventfd::EventFd::new(0).unwrap();
    for (code, body, fds) in [
        (req::SET_VRING_NUM, vring_state(0, 16), vec![]),
        (req::SET_VRING_KICK, u64s(&[0]), vec![kick.as_raw_fd()]),
        (req::SET_VRING_CALL, u64s(&[0]), vec![call.as_raw_fd()]),
        (req::SET_VRING_ENABLE, vring_state(0, 1), vec![]),
    ] {
        c.raw().send(code, NEED, &body, &fds).unwrap();
        let _ = c.raw().outcome(WAIT);
    }
    kick.write(1).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    c.close();
    serves_again(&mut f, "kick before SET_MEM_TABLE");

    // Ring messages before features and owner.
    let mut raw = RawChannel::connect(&f.socket, WAIT).unwrap();
    let kick = vmm_sys_util::eventfd::EventFd::new(0).unwrap();
    let _ = raw.send(req::SET_VRING_KICK, 1, &u64s(&[0]), &[kick.as_raw_fd()]);
    let _ = raw.send(req::SET_VRING_ENABLE, 1, &vring_state(0, 1), &[]);
    let _ = kick.write(1);
    let _ = raw.send(req::GET_VRING_BASE, 1, &vring_state(0, 0), &[]);
    let _ = raw.outcome(WAIT);
    raw.close();
    serves_again(&mut f, "ring messages before negotiation");

    // GET_VRING_BASE on a ring that never started, twice.
    let mut c = negotiated(&mut f);
    for _ in 0..2 {
        c.raw()
            .send(req::GET_VRING_BASE, 1, &vring_state(1, 0), &[])
            .unwrap();
        let o = c.raw().outcome(WAIT);
        assert!(
            !matches!(o, Outcome::Silent),
            "GET_VRING_BASE got no answer"
        );
        if o == Outcome::Closed {
            break;
        }
    }
    c.close();
    serves_again(&mut f, "GET_VRING_BASE on an idle ring");

    // SET_PROTOCOL_FEATURES before GET_FEATURES, SET_FEATURES twice, SET_OWNER twice.
    let mut raw = RawChannel::connect(&f.socket, WAIT).unwrap();
    let _ = raw.send(req::SET_PROTOCOL_FEATURES, 1, &u64s(&[u64::MAX]), &[]);
    let _ = raw.send(req::SET_OWNER, 1, &[], &[]);
    let _ = raw.send(req::SET_OWNER, 1, &[], &[]);
    let _ = raw.send(req::SET_FEATURES, 1, &u64s(&[1 << 32]), &[]);
    let _ = raw.send(req::SET_FEATURES, 1, &u64s(&[1 << 32]), &[]);
    let _ = raw.outcome(Duration::from_millis(300));
    raw.close();
    serves_again(&mut f, "negotiation out of order");
}

#[test]
fn rings_restarted_and_memory_remapped_on_a_live_connection() {
    // Legal but unusual sequences a VMM does (memory hot-plug, ring stop/start): requests
    // keep working.
    let mut f = fixture("remap");
    let mut drv = f.connect();
    f.assert_serving(&mut drv, 0, "start");
    // SET_MEM_TABLE again with the same memory.
    let mem = std::mem::replace(&mut drv.mem, GuestMem::new(4096).unwrap());
    drv.conn.set_mem_table(&mem).unwrap();
    drv.mem = mem;
    f.assert_serving(&mut drv, 0, "second SET_MEM_TABLE");
    // Stop ring 0, queue a request while stopped, restart it at the returned base: the
    // request is picked up from the avail ring.
    let base = drv.conn.get_vring_base(0).unwrap();
    assert_eq!(
        base as u16,
        drv.queues[0].next_avail(),
        "GET_VRING_BASE = requests taken"
    );
    let data = pattern(5, 512);
    let b = drv.build(&BlkRequest::write(3, &data)).unwrap();
    drv.queues[0].add_chain(&drv.mem, &b.chain).unwrap();
    drv.queues[0].kick().unwrap();
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(
        drv.status_at(b.status).unwrap(),
        status::UNWRITTEN,
        "request processed on a stopped ring"
    );
    // Restart at the base GET_VRING_BASE returned: the queued request is picked up.
    drv.conn
        .setup_vring_at(0, &drv.queues[0], &drv.mem, base as u16)
        .and_then(|_| drv.conn.set_vring_enable(0, true))
        .unwrap_or_else(|e| panic!("restart ring: {e}; stderr:\n{}", f.daemon.stderr()));
    drv.queues[0].kick().unwrap();
    drv.wait(0).unwrap_or_else(|e| {
        panic!(
            "queued request after restart: {e}; stderr:\n{}",
            f.daemon.stderr()
        )
    });
    assert_eq!(drv.status_at(b.status).unwrap(), status::OK);
    f.expect_written(3, &data);
    f.assert_serving(&mut drv, 0, "ring restart");
    f.assert_image("ring restart");
}

#[test]
fn disconnect_mid_request() {
    let mut f = BlkFixture::new("midreq", 8 * MIB, &["--num-queues", "2"]);
    for round in 0..3u64 {
        let mut drv = f.connect();
        // 32 x 64 KiB writes in flight on both queues, then the front end vanishes
        // (socket closed, its memory unmapped) without waiting.
        for q in 0..2 {
            for i in 0..16u64 {
                let sector = (q as u64 * 16 + i) * 128;
                let b = drv
                    .build(&BlkRequest::write(sector, &vec![round as u8 + 1; 65536]))
                    .unwrap();
                drv.queues[q].add_chain(&drv.mem, &b.chain).unwrap();
            }
            drv.queues[q].kick().unwrap();
        }
        drop(drv);
        f.daemon.assert_alive("front end vanished mid-request");
    }
    // A new front end is served only once the old connection is torn down: after that no
    // late write of the vanished front end may land. Which of the abandoned requests ran
    // is not defined, so take the image as it is then as the expectation.
    let mut drv = f.connect();
    f.assert_serving(&mut drv, 0, "after front ends vanished mid-request");
    f.expected = std::fs::read(&f.image).unwrap();
    // Each abandoned 64 KiB request ran whole or not at all, sector by sector: every sector
    // of the written area holds one round's bytes or the original contents.
    let original = splitvm_tests::util::pattern(0x5eed, 8 * MIB);
    for (i, sector) in f.expected[..32 * 65536].chunks(512).enumerate() {
        let uniform = sector.iter().all(|&b| b == sector[0]) && (1..=3).contains(&sector[0]);
        assert!(
            uniform || sector == &original[i * 512..(i + 1) * 512],
            "sector {i} is neither written nor original"
        );
    }
    std::thread::sleep(Duration::from_millis(200));
    f.assert_serving(&mut drv, 1, "late writes check");
    f.assert_image("no late writes from vanished front ends");
    drv.close();
    serves_again(&mut f, "disconnect mid-request");

    // Disconnect in the middle of a vhost-user message carrying fds.
    let mut c = negotiated(&mut f);
    let mem = GuestMem::new(MIB).unwrap();
    let info = mem.region_infos();
    let body = mem_table(&[[
        info[0].guest_phys_addr,
        info[0].memory_size,
        info[0].userspace_addr,
        info[0].mmap_offset,
    ]]);
    c.raw()
        .send_sized(
            req::SET_MEM_TABLE,
            NEED,
            body.len() as u32,
            &body[..20],
            &[info[0].mmap_handle],
        )
        .unwrap();
    c.close();
    serves_again(&mut f, "disconnect mid-message");
    let _ = REPLY_TIMEOUT;
}
