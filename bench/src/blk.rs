//! The virtio-blk load: every request is header + one data buffer + status byte, always in
//! the same three descriptors per slot; every status byte is checked.

use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use splitvm_tests::blk::{req_type, BlkConfig, CONFIG_LEN};
use splitvm_tests::frontend::{
    VhostUserProtocolFeatures, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX,
};
use splitvm_tests::GuestMem;

use crate::ring::{Ring, F_NEXT, F_WRITE};
use crate::stats::{Latencies, RunResult};
use crate::{parse_size, Backend, Common, QueueOutcome, Window};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Rw {
    Read,
    Write,
    Randread,
    Randwrite,
    /// Random, --rwmixread percent reads.
    Randrw,
}

#[derive(Args, Clone, Debug)]
pub struct BlkArgs {
    #[command(flatten)]
    pub common: Common,
    /// Access pattern.
    #[arg(long, value_enum, default_value = "randread")]
    rw: Rw,
    /// Request size (multiple of 512), e.g. 4k or 64k.
    #[arg(long, default_value = "4k", value_parser = parse_size)]
    bs: usize,
    /// Percentage of reads with --rw randrw.
    #[arg(long, default_value_t = 70, value_parser = clap::value_parser!(u32).range(0..=100))]
    rwmixread: u32,
}

const VIRTIO_BLK_F_MQ: u64 = 1 << 12;
const VIRTIO_BLK_F_BLK_SIZE: u64 = 1 << 6;
const VIRTIO_BLK_F_FLUSH: u64 = 1 << 9;
const VIRTIO_BLK_F_SEG_MAX: u64 = 1 << 2;

#[derive(Clone, Copy)]
struct Slot {
    hdr: u64,
    data: u64,
    status: u64,
}

fn xorshift(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

pub fn run(a: &BlkArgs) -> Result<RunResult, String> {
    let c = &a.common;
    if a.bs == 0 || !a.bs.is_multiple_of(512) {
        return Err("--bs must be a non-zero multiple of 512".into());
    }
    if c.qd == 0 || c.qd > 1024 {
        return Err("--qd must be 1..=1024".into());
    }
    let ring_size = (3 * c.qd).next_power_of_two().max(8);
    if ring_size > 32768 {
        return Err("--qd too large".into());
    }
    let mut be = Backend::start(c, "", None)?;
    let mut conn = be.connect(c.connect_timeout)?;
    let per_queue = c.qd * (a.bs.next_multiple_of(4096) + 4096) + ring_size * 32 + 8192;
    let mem_size = (per_queue * c.queues + (4 << 20)).next_multiple_of(2 << 20);
    let mut mem = GuestMem::new(mem_size).map_err(|e| e.to_string())?;
    let mut want =
        VIRTIO_F_VERSION_1 | VIRTIO_BLK_F_BLK_SIZE | VIRTIO_BLK_F_FLUSH | VIRTIO_BLK_F_SEG_MAX;
    if !c.no_event_idx {
        want |= VIRTIO_RING_F_EVENT_IDX;
    }
    if c.queues > 1 {
        want |= VIRTIO_BLK_F_MQ;
    }
    let proto = VhostUserProtocolFeatures::CONFIG
        | VhostUserProtocolFeatures::MQ
        | VhostUserProtocolFeatures::REPLY_ACK;
    // Config before rings (as a VMM does); the capacity bounds the offsets.
    let (rings, acked) =
        crate::start_rings(&mut conn, &mut mem, want, proto, c.queues, ring_size as u16)?;
    let cfg = conn
        .get_config(0, CONFIG_LEN)
        .map(|b| BlkConfig::parse(&b))
        .map_err(|e| format!("GET_CONFIG: {e}"))?;
    if c.queues > 1 && (acked & VIRTIO_BLK_F_MQ == 0 || (cfg.num_queues as usize) < c.queues) {
        return Err(format!(
            "back end offers {} queue(s), asked for {}",
            cfg.num_queues.max(1),
            c.queues
        ));
    }
    let capacity = cfg.capacity * 512;
    let blocks = capacity / a.bs as u64;
    if blocks < 2 {
        return Err(format!(
            "device of {capacity} bytes is too small for --bs {}",
            a.bs
        ));
    }
    let mut layouts = Vec::new();
    for _ in 0..c.queues {
        let mut v = Vec::new();
        for _ in 0..c.qd {
            v.push(Slot {
                hdr: mem.alloc(16, 16).map_err(|e| e.to_string())?,
                status: mem.alloc(1, 1).map_err(|e| e.to_string())?,
                data: mem.alloc(a.bs as u64, 4096).map_err(|e| e.to_string())?,
            });
        }
        layouts.push(v);
    }
    let workload = format!(
        "blk {:?} {} qd{} q{}",
        a.rw,
        size_name(a.bs),
        c.qd,
        c.queues
    )
    .to_lowercase();
    let (rw, bs, mix, nq) = (a.rw, a.bs, a.rwmixread, c.queues as u64);
    let expect = 2_000_000usize.min((c.duration.as_secs_f64() * 400_000.0) as usize + 1024);
    let res = crate::measure(c, &mut be, workload, rings, move |ring, qi, w| {
        queue_load(
            ring,
            &layouts[qi],
            qi as u64,
            nq,
            rw,
            bs,
            mix,
            blocks,
            expect,
            w,
        )
    });
    drop(mem);
    Ok(res)
}

pub fn size_name(n: usize) -> String {
    if n.is_multiple_of(1 << 20) {
        format!("{}m", n >> 20)
    } else if n.is_multiple_of(1024) {
        format!("{}k", n >> 10)
    } else {
        format!("{n}")
    }
}

#[allow(clippy::too_many_arguments)]
fn queue_load(
    mut ring: Ring,
    slots: &[Slot],
    qi: u64,
    nq: u64,
    rw: Rw,
    bs: usize,
    mix: u32,
    blocks: u64,
    expect: usize,
    w: &Window,
) -> QueueOutcome {
    let mut out = QueueOutcome {
        lat: Latencies::with_capacity(expect),
        ..Default::default()
    };
    let qd = slots.len();
    let mut g = Gen {
        seed: 0x9e37_79b9_7f4a_7c15u64 ^ (qi + 1).wrapping_mul(0x2545_f491_4f6c_dd1d),
        cursor: blocks / nq * qi,
        start: vec![Instant::now(); qd],
        // Matches the descriptor flags written below (data device-readable).
        is_read: vec![false; qd],
        rw,
        bs,
        mix,
        blocks,
    };
    for (k, s) in slots.iter().enumerate() {
        let d = 3 * k as u16;
        ring.set_desc(d, s.hdr, 16, F_NEXT, d + 1);
        ring.set_desc(d + 1, s.data, bs as u32, F_NEXT, d + 2);
        ring.set_desc(d + 2, s.status, 1, F_WRITE, 0);
    }
    for k in 0..qd {
        g.submit(&mut ring, slots, k);
    }
    if let Err(e) = ring.notify() {
        out.failure = Some(format!("kick: {e}"));
        return out;
    }
    let mut inflight = qd;
    let mut last_progress = Instant::now();
    while inflight > 0 {
        let mut n = 0;
        while let Some((id, _len)) = ring.pop_used() {
            let now = Instant::now();
            let k = id as usize / 3;
            if id % 3 != 0 || k >= qd {
                out.failure = Some(format!("device returned descriptor id {id}"));
                return out;
            }
            // SAFETY: status byte of slot k.
            let st = unsafe { ring.ptr(slots[k].status).read_volatile() };
            if st != 0 {
                out.errors += 1;
                if out.errors <= 3 {
                    eprintln!(
                        "vhost-user-bench: queue {qi}: status {st:#x} for a {} request",
                        if g.is_read[k] { "read" } else { "write" }
                    );
                }
            }
            if w.counts(now) {
                out.ops += 1;
                out.bytes += bs as u64;
                out.lat.record(now - g.start[k]);
            }
            if w.over(now) {
                inflight -= 1;
            } else {
                g.submit(&mut ring, slots, k);
            }
            n += 1;
        }
        if n > 0 {
            last_progress = Instant::now();
            if let Err(e) = ring.notify() {
                out.failure = Some(format!("kick: {e}"));
                return out;
            }
        } else {
            if last_progress.elapsed() > Duration::from_secs(10) {
                out.failure = Some(format!(
                    "queue {qi}: no completion for 10 s ({inflight} in flight)"
                ));
                break;
            }
            ring.wait(Duration::from_millis(100));
        }
    }
    out.kicks = ring.kicks;
    out.waits = ring.waits;
    out
}

/// Request generator of one queue.
struct Gen {
    seed: u64,
    cursor: u64,
    start: Vec<Instant>,
    is_read: Vec<bool>,
    rw: Rw,
    bs: usize,
    mix: u32,
    blocks: u64,
}

impl Gen {
    /// Fill slot `k`'s header and status, fix the data direction, publish it.
    fn submit(&mut self, ring: &mut Ring, slots: &[Slot], k: usize) {
        let r = xorshift(&mut self.seed);
        let read = match self.rw {
            Rw::Read | Rw::Randread => true,
            Rw::Write | Rw::Randwrite => false,
            Rw::Randrw => (r >> 40) % 100 < self.mix as u64,
        };
        let block = match self.rw {
            Rw::Read | Rw::Write => {
                let b = self.cursor;
                self.cursor = (self.cursor + 1) % self.blocks;
                b
            }
            _ => (r >> 11) % self.blocks,
        };
        let s = slots[k];
        let sector = block * self.bs as u64 / 512;
        let ty = if read { req_type::IN } else { req_type::OUT };
        // SAFETY: header and status lie in guest memory owned by this queue's slot.
        unsafe {
            ring.ptr(s.hdr).cast::<u32>().write_volatile(ty.to_le());
            ring.ptr(s.hdr + 4).cast::<u32>().write_volatile(0);
            ring.ptr(s.hdr + 8)
                .cast::<u64>()
                .write_volatile(sector.to_le());
            ring.ptr(s.status).write_volatile(0xff);
        }
        if self.is_read[k] != read {
            ring.set_desc_flags(3 * k as u16 + 1, F_NEXT | if read { F_WRITE } else { 0 });
            self.is_read[k] = read;
        }
        self.start[k] = Instant::now();
        ring.publish(3 * k as u16);
    }
}
