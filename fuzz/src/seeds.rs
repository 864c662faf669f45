//! Seed inputs for every target, in each target's input format: a few valid
//! requests and message sequences, so fuzzing starts from inputs that get
//! deep into the code. `tests/corpus.rs` writes them to `corpus/<target>/`
//! (`cargo test --test corpus -- --ignored write_seeds`) and replays them.

use crate::guest::DATA_GPA;
use crate::vhost_user::{message, ram, wait, FD_EVENTFD, FD_MEMFD_1M, FD_MEMFD_64K};

const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;
const F_INDIRECT: u16 = 4;

/// A descriptor (addr, len, flags, next) as 16 bytes.
fn desc(addr: u64, len: u32, flags: u16, next: u16) -> Vec<u8> {
    let mut d = addr.to_le_bytes().to_vec();
    d.extend_from_slice(&len.to_le_bytes());
    d.extend_from_slice(&flags.to_le_bytes());
    d.extend_from_slice(&next.to_le_bytes());
    d
}

/// A ring of 16 ([`crate::guest::QueueSetup::load`]) with `descs` at the start
/// of the table and `heads` in the avail ring.
fn ring(event_idx: bool, descs: &[Vec<u8>], heads: &[u16]) -> Vec<u8> {
    let size = 16usize;
    let mut r = vec![3 | if event_idx { 8 } else { 0 }];
    r.extend_from_slice(&0u16.to_le_bytes()); // avail.flags
    r.extend_from_slice(&(heads.len() as u16).to_le_bytes()); // avail.idx
    r.extend_from_slice(&0u16.to_le_bytes()); // used_event
    r.extend_from_slice(&0u16.to_le_bytes()); // next avail
    r.extend_from_slice(&0u16.to_le_bytes()); // next used
    let mut table: Vec<u8> = descs.concat();
    table.resize(16 * size, 0);
    r.extend_from_slice(&table);
    let mut avail: Vec<u8> = heads.iter().flat_map(|h| h.to_le_bytes()).collect();
    avail.resize(2 * size, 0);
    r.extend_from_slice(&avail);
    r
}

/// Guest memory contents from DATA_GPA on, with `parts` placed at their addresses.
fn data(parts: &[(u64, Vec<u8>)]) -> Vec<u8> {
    let end = parts
        .iter()
        .map(|(a, b)| a - DATA_GPA + b.len() as u64)
        .max()
        .unwrap_or(0);
    let mut d = vec![0u8; end as usize];
    for (a, b) in parts {
        let o = (a - DATA_GPA) as usize;
        d[o..o + b.len()].copy_from_slice(b);
    }
    d
}

fn blk_header(kind: u32, sector: u64) -> Vec<u8> {
    let mut h = kind.to_le_bytes().to_vec();
    h.extend_from_slice(&0u32.to_le_bytes());
    h.extend_from_slice(&sector.to_le_bytes());
    h
}

/// (name, input) seeds for `blk_request`.
pub fn blk() -> Seeds {
    let hdr = 0x3000;
    let buf = 0x4000;
    let st = 0x5000;
    let three = |len: u32, data_flags: u16| {
        vec![
            desc(hdr, 16, F_NEXT, 1),
            desc(buf, len, F_NEXT | data_flags, 2),
            desc(st, 1, F_WRITE, 0),
        ]
    };
    let seed = |ctl: u8, ev: bool, descs: Vec<Vec<u8>>, heads: &[u16], mem: Vec<(u64, Vec<u8>)>| {
        let mut s = vec![ctl];
        s.extend(ring(ev, &descs, heads));
        s.extend(data(&mem));
        s
    };
    let mut discard_seg = 8u64.to_le_bytes().to_vec();
    discard_seg.extend_from_slice(&4u32.to_le_bytes());
    discard_seg.extend_from_slice(&0u32.to_le_bytes());
    let mut zero_seg = discard_seg.clone();
    zero_seg[12] = 1; // UNMAP
    vec![
        (
            "read",
            seed(
                0,
                false,
                three(1024, F_WRITE),
                &[0],
                vec![(hdr, blk_header(0, 1))],
            ),
        ),
        (
            "write",
            seed(
                0,
                false,
                three(512, 0),
                &[0],
                vec![(hdr, blk_header(1, 2)), (buf, vec![0x5a; 512])],
            ),
        ),
        (
            "write_readonly",
            seed(1, false, three(512, 0), &[0], vec![(hdr, blk_header(1, 2))]),
        ),
        (
            "flush",
            seed(
                0,
                false,
                vec![desc(hdr, 16, F_NEXT, 1), desc(st, 1, F_WRITE, 0)],
                &[0],
                vec![(hdr, blk_header(4, 0))],
            ),
        ),
        (
            "get_id",
            seed(
                0,
                false,
                three(20, F_WRITE),
                &[0],
                vec![(hdr, blk_header(8, 0))],
            ),
        ),
        (
            "discard",
            seed(
                0,
                false,
                three(16, 0),
                &[0],
                vec![(hdr, blk_header(11, 0)), (buf, discard_seg)],
            ),
        ),
        (
            "write_zeroes",
            seed(
                0,
                false,
                three(16, 0),
                &[0],
                vec![(hdr, blk_header(13, 0)), (buf, zero_seg)],
            ),
        ),
        (
            "past_end",
            seed(
                0,
                false,
                three(1024, F_WRITE),
                &[0],
                vec![(hdr, blk_header(0, 127))],
            ),
        ),
        // Header, data and status in one descriptor each way; data across the hole.
        (
            "one_desc",
            seed(
                0,
                false,
                vec![desc(hdr, 16 + 512 + 1, F_WRITE, 0)],
                &[0],
                vec![(hdr, blk_header(0, 0))],
            ),
        ),
        (
            "across_hole",
            seed(
                0,
                false,
                three(0x1200, F_WRITE),
                &[0],
                vec![(hdr, blk_header(0, 0))],
            ),
        ),
        (
            "indirect",
            seed(
                0,
                false,
                vec![desc(0x6000, 48, F_INDIRECT, 0)],
                &[0],
                vec![
                    (hdr, blk_header(0, 3)),
                    (
                        0x6000,
                        [
                            desc(hdr, 16, F_NEXT, 1),
                            desc(buf, 512, F_NEXT | F_WRITE, 2),
                            desc(st, 1, F_WRITE, 0),
                        ]
                        .concat(),
                    ),
                ],
            ),
        ),
        (
            "event_idx_two",
            seed(
                0,
                true,
                [
                    three(512, F_WRITE),
                    vec![desc(0x3100, 16, F_NEXT, 4), desc(st + 1, 1, F_WRITE, 0)],
                ]
                .concat(),
                &[0, 3],
                vec![(hdr, blk_header(0, 1)), (0x3100, blk_header(4, 0))],
            ),
        ),
    ]
}

const VERSION_1: u64 = 1 << 32;
const NET_CSUM: u64 = 1 << 0;
const NET_GUEST_CSUM: u64 = 1 << 1;
const NET_HOST_TSO4: u64 = 1 << 11;
const NET_MRG_RXBUF: u64 = 1 << 15;
const NET_CTRL_VQ: u64 = 1 << 17;

fn net_seed(
    ctl: u8,
    acked: u64,
    frames: &[Vec<u8>],
    ev: bool,
    descs: Vec<Vec<u8>>,
    heads: &[u16],
    mem: Vec<(u64, Vec<u8>)>,
) -> Vec<u8> {
    let mut s = vec![ctl];
    s.extend_from_slice(&acked.to_le_bytes());
    s.push(frames.len() as u8);
    for f in frames {
        s.extend_from_slice(&(f.len() as u16).to_le_bytes());
    }
    s.extend(ring(ev, &descs, heads));
    for f in frames {
        s.extend_from_slice(f);
    }
    s.extend(data(&mem));
    s
}

/// An Ethernet frame of `len` bytes after a 12-byte virtio-net header.
fn eth(hdr: [u8; 12], len: usize) -> Vec<u8> {
    let mut f = hdr.to_vec();
    let mut e = vec![0xffu8; 6];
    e.extend_from_slice(&[0x52, 0x54, 0, 0x12, 0x34, 0x57, 0x08, 0x00]);
    e.resize(len, 0x11);
    f.extend(e);
    f
}

/// (name, input) seeds for `net_request`.
pub fn net() -> Seeds {
    let base = VERSION_1 | NET_CSUM | NET_GUEST_CSUM | NET_CTRL_VQ;
    let mut csum_hdr = [0u8; 12];
    csum_hdr[0] = 1; // NEEDS_CSUM
    csum_hdr[6..8].copy_from_slice(&34u16.to_le_bytes()); // csum_start
    csum_hdr[8..10].copy_from_slice(&16u16.to_le_bytes()); // csum_offset
    let mut gso_hdr = csum_hdr;
    gso_hdr[1] = 1; // GSO_TCPV4
    gso_hdr[2..4].copy_from_slice(&54u16.to_le_bytes()); // hdr_len
    gso_hdr[4..6].copy_from_slice(&1448u16.to_le_bytes()); // gso_size
    let tx = eth([0; 12], 60);
    vec![
        (
            "tx",
            net_seed(
                1,
                base,
                &[],
                false,
                vec![desc(0x3000, tx.len() as u32, 0, 0)],
                &[0],
                vec![(0x3000, tx.clone())],
            ),
        ),
        (
            "tx_split_header",
            net_seed(
                1,
                base,
                &[],
                false,
                vec![desc(0x3000, 12, F_NEXT, 1), desc(0x3100, 60, 0, 0)],
                &[0],
                vec![(0x3000, vec![0; 12]), (0x3100, tx[12..].to_vec())],
            ),
        ),
        (
            "tx_csum",
            net_seed(
                1,
                base,
                &[],
                true,
                vec![desc(0x3000, 72, 0, 0)],
                &[0],
                vec![(0x3000, eth(csum_hdr, 60))],
            ),
        ),
        (
            "tx_gso",
            net_seed(
                1,
                base | NET_HOST_TSO4,
                &[],
                false,
                vec![desc(0x3000, 12 + 3000, 0, 0)],
                &[0],
                vec![(0x3000, eth(gso_hdr, 3000))],
            ),
        ),
        (
            "rx",
            net_seed(
                0,
                base,
                &[eth([0; 12], 62)],
                false,
                vec![desc(0x3000, 2048, F_WRITE, 0)],
                &[0],
                vec![],
            ),
        ),
        (
            "rx_mergeable",
            net_seed(
                0,
                base | NET_MRG_RXBUF,
                &[eth([0; 12], 100)],
                false,
                vec![desc(0x3000, 64, F_WRITE, 0), desc(0x3100, 64, F_WRITE, 0)],
                &[0, 1],
                vec![],
            ),
        ),
        (
            "rx_tap_event",
            net_seed(
                3,
                base,
                &[eth([0; 12], 62), eth([0; 12], 80)],
                true,
                vec![
                    desc(0x3000, 1024, F_WRITE, 0),
                    desc(0x3400, 1024, F_WRITE, 0),
                ],
                &[0, 1],
                vec![],
            ),
        ),
        (
            "ctrl_mq",
            net_seed(
                2,
                base,
                &[],
                false,
                vec![desc(0x3000, 4, F_NEXT, 1), desc(0x3100, 1, F_WRITE, 0)],
                &[0],
                vec![(0x3000, vec![4, 0, 1, 0])],
            ),
        ),
        (
            "ctrl_rx_mode",
            net_seed(
                2,
                base,
                &[],
                false,
                vec![desc(0x3000, 3, F_NEXT, 1), desc(0x3100, 1, F_WRITE, 0)],
                &[0],
                vec![(0x3000, vec![0, 0, 1])],
            ),
        ),
    ]
}

fn u32s(v: &[u32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn u64s(v: &[u64]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// One fd of `kind` attached.
fn one(kind: u8) -> u8 {
    1 | (kind << 3)
}

/// The front end's start-up up to a running queue 0 (QEMU's order), with a
/// 64 KiB memory region at guest address 0 mapped at user address 0x7000_0000.
fn bring_up(features: u64) -> Vec<u8> {
    let va = 0x7000_0000u64;
    let mut s = Vec::new();
    s.extend(message(3, 0, &[])); // SET_OWNER
    s.extend(message(1, 0, &[])); // GET_FEATURES
    s.extend(message(15, 0, &[])); // GET_PROTOCOL_FEATURES
                                   // CONFIG | MQ | REPLY_ACK | INFLIGHT_SHMFD | CONFIGURE_MEM_SLOTS
    s.extend(message(
        16,
        0,
        &u64s(&[(1 << 9) | 1 | (1 << 3) | (1 << 12) | (1 << 15)]),
    ));
    s.extend(message(17, 0, &[])); // GET_QUEUE_NUM
    s.extend(message(24, 0, &[u32s(&[0, 60, 0]), vec![0; 60]].concat())); // GET_CONFIG
    s.extend(message(
        31,
        0,
        &[u64s(&[0, 0]), vec![1, 0, 0, 1, 0, 0, 0, 0]].concat(),
    )); // GET_INFLIGHT_FD: 1 queue of 256
    s.extend(message(2, 0, &u64s(&[features]))); // SET_FEATURES
    s.extend(message(
        5,
        one(FD_MEMFD_64K),
        &[u32s(&[1, 0]), u64s(&[0, 0x1_0000, va, 0])].concat(),
    )); // SET_MEM_TABLE
    s.extend(message(8, 0, &u32s(&[0, 16]))); // SET_VRING_NUM
    s.extend(message(
        9,
        0,
        &[u32s(&[0, 0]), u64s(&[va, va + 0x2000, va + 0x1000, 0])].concat(),
    )); // SET_VRING_ADDR
    s.extend(message(10, 0, &u32s(&[0, 0]))); // SET_VRING_BASE
    s.extend(message(12, one(FD_EVENTFD), &u64s(&[0]))); // SET_VRING_KICK
    s.extend(message(13, one(FD_EVENTFD), &u64s(&[0]))); // SET_VRING_CALL
    s.extend(message(18, 0, &u32s(&[0, 1]))); // SET_VRING_ENABLE
    s
}

/// SET_OWNER, GET_FEATURES, SET_FEATURES, GET/SET_PROTOCOL_FEATURES.
fn negotiate(features: u64, protocol: u64) -> Vec<u8> {
    let mut s = Vec::new();
    s.extend(message(3, 0, &[]));
    s.extend(message(1, 0, &[]));
    s.extend(message(2, 0, &u64s(&[features])));
    s.extend(message(15, 0, &[]));
    s.extend(message(16, 0, &u64s(&[protocol])));
    s
}

/// Guest RAM with a ring of 16 (descriptors at 0, avail at 0x1000, used at
/// 0x2000, as `bring_up` sets it) holding a blk read and a blk write.
fn ram_with_requests() -> Vec<u8> {
    let descs = [
        desc(0x3000, 16, F_NEXT, 1),
        desc(0x4000, 512, F_NEXT | F_WRITE, 2),
        desc(0x5000, 1, F_WRITE, 0),
        desc(0x3100, 16, F_NEXT, 4),
        desc(0x4400, 1024, F_NEXT, 5),
        desc(0x5001, 1, F_WRITE, 0),
    ]
    .concat();
    let mut avail = 0u16.to_le_bytes().to_vec();
    avail.extend_from_slice(&2u16.to_le_bytes());
    avail.extend_from_slice(&[0, 0, 3, 0]);
    let mut r = Vec::new();
    r.extend(ram(0, &descs));
    r.extend(ram(0x1000, &avail));
    r.extend(ram(0x3000, &blk_header(0, 1)));
    r.extend(ram(0x3100, &blk_header(1, 4)));
    r
}

/// (name, input) seeds for `vhost_user_messages`.
pub fn vhost_user() -> Seeds {
    let features = VERSION_1 | (1 << 29) | (1 << 28) | (1 << 30); // + EVENT_IDX, INDIRECT, PROTOCOL_FEATURES
    let mut requests = ram_with_requests();
    requests.extend(bring_up(features));
    requests.extend(wait());
    let mut requests_then_stop = ram_with_requests();
    requests_then_stop.extend(bring_up(VERSION_1 | (1 << 30)));
    requests_then_stop.extend(wait());
    requests_then_stop.extend(message(11, 0, &u32s(&[0, 0])));
    let mut stop = bring_up(features);
    stop.extend(message(18, 0, &u32s(&[0, 0]))); // SET_VRING_ENABLE off
    stop.extend(message(11, 0, &u32s(&[0, 0]))); // GET_VRING_BASE
    let mut mem_slots = negotiate(features, 1 << 15);
    mem_slots.extend(message(36, 0, &[])); // GET_MAX_MEM_SLOTS
    mem_slots.extend(message(
        37,
        one(FD_MEMFD_1M),
        &u64s(&[0, 0x10_0000, 0x10_0000, 0x8000_0000, 0]),
    )); // ADD_MEM_REG
    mem_slots.extend(message(
        37,
        one(FD_MEMFD_64K),
        &u64s(&[0, 0, 0x1_0000, 0x9000_0000, 0]),
    ));
    mem_slots.extend(message(
        38,
        0,
        &u64s(&[0, 0x10_0000, 0x10_0000, 0x8000_0000, 0]),
    )); // REM_MEM_REG
    let mut inflight = negotiate(features, 1 << 12);
    // SET_INFLIGHT_FD: a region the front end kept from the last back end.
    inflight.extend(message(
        32,
        one(FD_MEMFD_64K),
        &[u64s(&[0x4000, 0]), vec![1, 0, 16, 0, 0, 0, 0, 0]].concat(),
    ));
    let mut config = negotiate(features, 1 << 9);
    config.extend(message(25, 0, &[u32s(&[0, 8, 0]), vec![0; 8]].concat())); // SET_CONFIG
    config.extend(message(4, 0, &[])); // RESET_OWNER
    config.extend(message(34, 0, &[])); // RESET_DEVICE (not offered: refused)
    vec![
        ("bring_up", bring_up(features)),
        ("bring_up_no_protocol", bring_up(VERSION_1)),
        ("bring_up_and_stop", stop),
        ("mem_slots", mem_slots),
        ("inflight", inflight),
        ("config_and_reset", config),
        ("requests", requests),
        ("requests_then_stop", requests_then_stop),
        (
            "raw_split_header",
            vec![0xf0, 6, 3, 0, 0, 0, 1, 0, 0xf0, 6, 0, 0, 0, 0, 0, 0],
        ),
    ]
}

/// Named seed inputs of one target.
pub type Seeds = Vec<(&'static str, Vec<u8>)>;

/// One virtio-mmio operation: kind (0 read, 1 write, 2 named register, 3
/// hang-up), width log2, offset (or register index), value.
fn op(kind: u8, width_log2: u8, off: u16, value: u32) -> Vec<u8> {
    let mut o = vec![(kind << 6) | width_log2];
    o.extend_from_slice(&off.to_le_bytes());
    o.extend_from_slice(&value.to_le_bytes());
    o
}

/// A Linux-like driver bring-up of queue 0 at 1 MiB, then DRIVER_OK.
fn driver_bring_up(ctl: u8) -> Vec<u8> {
    let w = |off: u64, v: u32| op(1, 2, off as u16, v);
    let r = |off: u64| op(0, 2, off as u16, 0);
    use vmm::devices::virtio_mmio::*;
    let mut s = vec![ctl];
    for o in [
        r(REG_MAGIC),
        r(REG_VERSION),
        r(REG_DEVICE_ID),
        w(REG_STATUS, 0),
        w(REG_STATUS, 1),
        w(REG_STATUS, 3),
        w(REG_DEVICE_FEATURES_SEL, 1),
        r(REG_DEVICE_FEATURES),
        w(REG_DEVICE_FEATURES_SEL, 0),
        r(REG_DEVICE_FEATURES),
        w(REG_DRIVER_FEATURES_SEL, 1),
        w(REG_DRIVER_FEATURES, 1),
        w(REG_DRIVER_FEATURES_SEL, 0),
        w(REG_DRIVER_FEATURES, 0),
        w(REG_STATUS, 11),
        r(REG_STATUS),
        w(REG_QUEUE_SEL, 0),
        r(REG_QUEUE_READY),
        r(REG_QUEUE_NUM_MAX),
        w(REG_QUEUE_NUM, 16),
        w(REG_QUEUE_DESC_LOW, 0x10_0000),
        w(REG_QUEUE_DESC_HIGH, 0),
        w(REG_QUEUE_DRIVER_LOW, 0x10_1000),
        w(REG_QUEUE_DRIVER_HIGH, 0),
        w(REG_QUEUE_DEVICE_LOW, 0x10_2000),
        w(REG_QUEUE_DEVICE_HIGH, 0),
        w(REG_QUEUE_READY, 1),
        r(REG_CONFIG_GENERATION),
        op(0, 3, REG_CONFIG as u16, 0),
        w(REG_STATUS, 15),
        r(REG_INTERRUPT_STATUS),
        w(REG_INTERRUPT_ACK, 1),
    ] {
        s.extend(o);
    }
    s
}

/// (name, input) seeds for `virtio_mmio_registers`.
pub fn mmio() -> Seeds {
    use vmm::devices::virtio_mmio::*;
    let mut reset = driver_bring_up(0);
    reset.extend(op(1, 2, REG_STATUS as u16, 0));
    let mut gone = driver_bring_up(0);
    gone.extend(op(3, 0, 0, 0));
    gone.extend(op(0, 2, REG_STATUS as u16, 0));
    gone.extend(op(1, 2, REG_STATUS as u16, 0));
    let mut config = vec![0u8];
    config.extend(op(0, 0, REG_CONFIG as u16 + 20, 0));
    config.extend(op(1, 0, REG_CONFIG as u16 + 20, 1));
    config.extend(op(1, 3, REG_CONFIG as u16 + 56, 0));
    vec![
        ("blk_bring_up", driver_bring_up(0)),
        ("net_bring_up", driver_bring_up(1)),
        ("rng_bring_up", driver_bring_up(2)),
        ("stub_bring_up", driver_bring_up(4)),
        ("bring_up_reset", reset),
        ("backend_gone", gone),
        ("config", config),
    ]
}

/// Every target's seeds.
pub fn all() -> Vec<(&'static str, Seeds)> {
    vec![
        ("blk_request", blk()),
        ("net_request", net()),
        ("vhost_user_messages", vhost_user()),
        ("virtio_mmio_registers", mmio()),
    ]
}

/// Runs `data` through `target`'s harness.
pub fn run(target: &str, data: &[u8]) {
    match target {
        "blk_request" => crate::blk::run(data),
        "net_request" => crate::net::run(data),
        "vhost_user_messages" => crate::vhost_user::run(data),
        "virtio_mmio_registers" => crate::mmio::run(data),
        t => panic!("unknown fuzz target {t}"),
    }
}
