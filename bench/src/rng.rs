//! The virtio-rng load: qd device-writable buffers per queue, refilled as they come back.

use std::time::{Duration, Instant};

use clap::Args;
use splitvm_tests::frontend::{
    VhostUserProtocolFeatures, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX,
};
use splitvm_tests::GuestMem;

use crate::ring::{Ring, F_WRITE};
use crate::stats::{Latencies, RunResult};
use crate::{parse_size, Backend, Common, QueueOutcome, Window};

#[derive(Args, Clone, Debug)]
pub struct RngArgs {
    #[command(flatten)]
    pub common: Common,
    /// Size of each request buffer.
    #[arg(long, default_value = "4k", value_parser = parse_size)]
    bs: usize,
}

pub fn run(a: &RngArgs) -> Result<RunResult, String> {
    let c = &a.common;
    if a.bs == 0 || a.bs > 1 << 20 || c.qd == 0 || c.qd > 4096 {
        return Err("--bs must be 1..=1m and --qd 1..=4096".into());
    }
    let ring_size = c.qd.next_power_of_two().max(8);
    let mut be = Backend::start(c, "", None)?;
    let mut conn = be.connect(c.connect_timeout)?;
    let mem_size =
        (c.queues * c.qd * a.bs.next_multiple_of(64) + (4 << 20)).next_multiple_of(2 << 20);
    let mut mem = GuestMem::new(mem_size).map_err(|e| e.to_string())?;
    let mut want = VIRTIO_F_VERSION_1;
    if !c.no_event_idx {
        want |= VIRTIO_RING_F_EVENT_IDX;
    }
    let proto = VhostUserProtocolFeatures::MQ | VhostUserProtocolFeatures::REPLY_ACK;
    let (rings, _) =
        crate::start_rings(&mut conn, &mut mem, want, proto, c.queues, ring_size as u16)?;
    let mut bufs = Vec::new();
    for _ in 0..c.queues {
        let mut v = Vec::new();
        for _ in 0..c.qd {
            v.push(mem.alloc(a.bs as u64, 64).map_err(|e| e.to_string())?);
        }
        bufs.push(v);
    }
    let workload = format!(
        "rng {} qd{} q{}",
        crate::blk::size_name(a.bs),
        c.qd,
        c.queues
    );
    let bs = a.bs as u32;
    let expect = 1_000_000usize.min((c.duration.as_secs_f64() * 200_000.0) as usize + 1024);
    let res = crate::measure(c, &mut be, workload, rings, move |ring, qi, w| {
        queue_load(ring, &bufs[qi], bs, expect, w)
    });
    drop(mem);
    Ok(res)
}

fn queue_load(mut ring: Ring, bufs: &[u64], bs: u32, expect: usize, w: &Window) -> QueueOutcome {
    let mut out = QueueOutcome {
        lat: Latencies::with_capacity(expect),
        ..Default::default()
    };
    let mut start = vec![Instant::now(); bufs.len()];
    for (k, &b) in bufs.iter().enumerate() {
        ring.set_desc(k as u16, b, bs, F_WRITE, 0);
        start[k] = Instant::now();
        ring.publish(k as u16);
    }
    let _ = ring.notify();
    let mut inflight = bufs.len();
    let mut last = Instant::now();
    while inflight > 0 {
        let mut n = 0;
        while let Some((id, len)) = ring.pop_used() {
            let now = Instant::now();
            let k = id as usize;
            if k >= bufs.len() || len > bs {
                out.failure = Some(format!("device returned id {id} len {len}"));
                return out;
            }
            if len == 0 {
                out.errors += 1;
            }
            if w.counts(now) {
                out.ops += 1;
                out.bytes += len as u64;
                out.lat.record(now - start[k]);
            }
            if w.over(now) {
                inflight -= 1;
            } else {
                start[k] = now;
                ring.publish(k as u16);
            }
            n += 1;
        }
        if n > 0 {
            last = Instant::now();
            let _ = ring.notify();
        } else {
            if last.elapsed() > Duration::from_secs(10) {
                out.failure = Some(format!("no completion for 10 s ({inflight} in flight)"));
                break;
            }
            ring.wait(Duration::from_millis(100));
        }
    }
    out.kicks = ring.kicks;
    out.waits = ring.waits;
    out
}
