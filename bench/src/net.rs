//! The virtio-net load through a tap in a network namespace the bench creates: TX sends
//! frames guest->tap (counted by the tap's rx_packets, so frames a back end completes but
//! drops do not count), RX injects frames into the tap with an AF_PACKET socket inside the
//! namespace and counts what arrives in the guest's receive buffers.

use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use splitvm_tests::frontend::{
    VhostUserProtocolFeatures, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX,
};
use splitvm_tests::GuestMem;

use crate::ring::{Ring, F_WRITE};
use crate::stats::{Latencies, RunResult};
use crate::{parse_size, Backend, Common, QueueOutcome, Window};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Dir {
    /// Guest -> tap.
    Tx,
    /// Tap -> guest.
    Rx,
}

#[derive(Args, Clone, Debug)]
pub struct NetArgs {
    #[command(flatten)]
    pub common: Common,
    /// Direction.
    #[arg(long, value_enum, default_value = "tx")]
    dir: Dir,
    /// Ethernet frame size without the virtio-net header (64, 1514; above 1514 TX sends
    /// TCP/IPv4 TSO frames with VIRTIO_NET_F_HOST_TSO4 + CSUM).
    #[arg(long, default_value = "64", value_parser = parse_size)]
    frame: usize,
    /// Tap interface name ({tap} in --spawn).
    #[arg(long, default_value = "svbtap0")]
    tap: String,
    /// Network namespace to create (and delete at the end); default svb-<pid>.
    #[arg(long)]
    netns: Option<String>,
}

const VIRTIO_NET_F_CSUM: u64 = 1 << 0;
const VIRTIO_NET_F_HOST_TSO4: u64 = 1 << 11;
const VIRTIO_NET_F_MAC: u64 = 1 << 5;
const HDR: usize = 12;
const GSO_MSS: u16 = 1448;

/// A network namespace, deleted on drop.
struct Netns(String);

impl Netns {
    fn create(name: &str) -> Result<Self, String> {
        let _ = Command::new("ip").args(["netns", "del", name]).output();
        ip(&["netns", "add", name])?;
        let ns = Netns(name.to_string());
        ip(&["-n", name, "link", "set", "lo", "up"])?;
        // No IPv6 chatter (router solicitations, DAD) on the tap.
        let _ = Command::new("ip")
            .args([
                "netns",
                "exec",
                name,
                "sysctl",
                "-qw",
                "net.ipv6.conf.all.disable_ipv6=1",
                "net.ipv6.conf.default.disable_ipv6=1",
            ])
            .output();
        Ok(ns)
    }
    fn counter(&self, tap: &str, what: &str) -> Option<u64> {
        let o = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.0,
                "cat",
                &format!("/sys/class/net/{tap}/statistics/{what}"),
            ])
            .output()
            .ok()?;
        String::from_utf8_lossy(&o.stdout).trim().parse().ok()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

fn ip(args: &[&str]) -> Result<(), String> {
    let o = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip: {e}"))?;
    if !o.status.success() {
        return Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&o.stderr).trim()
        ));
    }
    Ok(())
}

fn csum(data: &[u8]) -> u16 {
    let mut s: u32 = 0;
    for c in data.chunks(2) {
        s += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

/// An Ethernet/IPv4 frame of `len` bytes to a MAC nobody has (the stack drops it at once):
/// UDP up to 1514 bytes, TCP beyond (for TSO).
fn frame(len: usize) -> Vec<u8> {
    let mut f = vec![0u8; len];
    f[0..6].copy_from_slice(&[0x02, 0x00, 0x00, 0x00, 0x00, 0x02]);
    f[6..12].copy_from_slice(&[0x52, 0x54, 0x00, 0x12, 0x34, 0x56]);
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let tcp = len > 1514;
    let ip_len = (len - 14) as u16;
    let ipb = &mut f[14..34];
    ipb[0] = 0x45;
    ipb[2..4].copy_from_slice(&ip_len.to_be_bytes());
    ipb[8] = 64;
    ipb[9] = if tcp { 6 } else { 17 };
    ipb[12..16].copy_from_slice(&[10, 99, 0, 2]);
    ipb[16..20].copy_from_slice(&[10, 99, 0, 1]);
    let c = csum(&f[14..34]);
    f[24..26].copy_from_slice(&c.to_be_bytes());
    if tcp {
        f[34..36].copy_from_slice(&5001u16.to_be_bytes());
        f[36..38].copy_from_slice(&5002u16.to_be_bytes());
        f[46] = 5 << 4;
        f[47] = 0x10; // ACK
        f[48..50].copy_from_slice(&65535u16.to_be_bytes());
    } else if len >= 42 {
        f[34..36].copy_from_slice(&5001u16.to_be_bytes());
        f[36..38].copy_from_slice(&5002u16.to_be_bytes());
        f[38..40].copy_from_slice(&((len - 34) as u16).to_be_bytes());
    }
    f
}

/// The 12-byte virtio_net_hdr_v1: plain, or TSO with partial checksum.
fn vnet_hdr(len: usize) -> [u8; HDR] {
    let mut h = [0u8; HDR];
    if len > 1514 {
        h[0] = 1; // NEEDS_CSUM
        h[1] = 1; // GSO_TCPV4
        h[2..4].copy_from_slice(&54u16.to_le_bytes()); // hdr_len
        h[4..6].copy_from_slice(&GSO_MSS.to_le_bytes());
        h[6..8].copy_from_slice(&34u16.to_le_bytes()); // csum_start
        h[8..10].copy_from_slice(&16u16.to_le_bytes()); // csum_offset
    }
    h
}

pub fn run(a: &NetArgs) -> Result<RunResult, String> {
    let c = &a.common;
    if c.queues != 1 {
        return Err("net: only --queues 1 (one pair) is supported".into());
    }
    if a.frame < 60 || a.frame > 65549 || (a.dir == Dir::Rx && a.frame > 1514) {
        return Err("--frame must be 60..=65549 for tx and 60..=1514 for rx".into());
    }
    let ns_name = a
        .netns
        .clone()
        .unwrap_or_else(|| format!("svb-{}", std::process::id()));
    let ns = Netns::create(&ns_name)?;
    let qsize = c.qd.next_power_of_two().clamp(8, 32768);
    let mut be = Backend::start(c, &a.tap, Some(&ns.0))?;
    let mut conn = be.connect(c.connect_timeout)?;
    let buf_len = HDR + a.frame.max(1514);
    let mem_size = (2 * qsize * buf_len.next_multiple_of(64) + (4 << 20)).next_multiple_of(2 << 20);
    let mut mem = GuestMem::new(mem_size).map_err(|e| e.to_string())?;
    let mut want = VIRTIO_F_VERSION_1 | VIRTIO_NET_F_MAC;
    if !c.no_event_idx {
        want |= VIRTIO_RING_F_EVENT_IDX;
    }
    if a.frame > 1514 {
        want |= VIRTIO_NET_F_CSUM | VIRTIO_NET_F_HOST_TSO4;
    }
    let proto = VhostUserProtocolFeatures::MQ | VhostUserProtocolFeatures::REPLY_ACK;
    let (mut rings, acked) = crate::start_rings(&mut conn, &mut mem, want, proto, 2, qsize as u16)?;
    if a.frame > 1514 && acked & VIRTIO_NET_F_HOST_TSO4 == 0 {
        return Err("the back end does not offer VIRTIO_NET_F_HOST_TSO4: no TSO frames".into());
    }
    // The tap shows up once the back end has it (DPDK's net_tap creates it at start).
    let deadline = Instant::now() + Duration::from_secs(10);
    while let Err(e) = ip(&["-n", &ns.0, "link", "set", &a.tap, "up"]) {
        if Instant::now() > deadline {
            return Err(e);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let n = qsize.min(c.qd.max(1));
    let mut bufs = Vec::new();
    for _ in 0..n {
        bufs.push(mem.alloc(buf_len as u64, 64).map_err(|e| e.to_string())?);
    }
    // The idle ring of the pair stays set up (and owned here) for the whole run.
    let mut tx = rings.pop();
    let mut rx = rings.pop();
    let workload = format!("net {:?} {}B qd{}", a.dir, a.frame, c.qd).to_lowercase();
    let fl = a.frame;
    let expect = 2_000_000usize.min((c.duration.as_secs_f64() * 500_000.0) as usize + 1024);
    let counter = if a.dir == Dir::Tx {
        "rx_packets"
    } else {
        "tx_packets"
    };
    let res = match a.dir {
        Dir::Tx => {
            let f = frame(fl);
            let h = vnet_hdr(fl);
            for &b in &bufs {
                mem.write(b, &h).map_err(|e| e.to_string())?;
                mem.write(b + HDR as u64, &f).map_err(|e| e.to_string())?;
            }
            let win_probe = Probe::new(&ns, &a.tap, counter, c);
            let r = crate::measure(
                c,
                &mut be,
                workload,
                tx.take().into_iter().collect(),
                move |ring, _, w| tx_load(ring, &bufs, (HDR + fl) as u32, fl as u64, expect, w),
            );
            (r, win_probe.finish())
        }
        Dir::Rx => {
            let ifindex = ifindex(&ns.0, &a.tap)?;
            let win = crate::Window::new(c);
            let inj = spawn_injector(&ns.0, ifindex, frame(fl), win.clone(), c.cpu.clone())?;
            let win_probe = Probe::new(&ns, &a.tap, counter, c);
            let r = crate::measure_with(
                c,
                &mut be,
                workload,
                rx.take().into_iter().collect(),
                win,
                move |ring, _, w| rx_load(ring, &bufs, buf_len as u32, expect, w),
            );
            let sent = inj.join().unwrap_or(0);
            eprintln!("vhost-user-bench: injected {sent} frames");
            (r, win_probe.finish())
        }
    };
    let (mut r, tap_frames) = res;
    if let Some(t) = tap_frames {
        // TX: what the tap really got; RX: what the tap sent towards the back end.
        if a.dir == Dir::Tx {
            if t * 100 < r.ops * 95 {
                eprintln!(
                    "vhost-user-bench: the back end completed {} frames but the tap received {t}",
                    r.ops
                );
            }
            r.ops = t.min(r.ops.max(t));
            r.bytes = t * fl as u64;
        }
    }
    drop((tx, rx));
    drop(mem);
    Ok(r)
}

/// Reads a tap counter at the start and end of the measured window (in a thread).
struct Probe(Option<std::thread::JoinHandle<Option<u64>>>);

impl Probe {
    fn new(ns: &Netns, tap: &str, what: &str, c: &Common) -> Self {
        let ns = Netns(ns.0.clone());
        let (tap, what) = (tap.to_string(), what.to_string());
        let (warm, dur) = (c.warmup, c.duration);
        let t0 = Instant::now();
        Probe(Some(std::thread::spawn(move || {
            std::thread::sleep(warm.saturating_sub(t0.elapsed()));
            let a = ns.counter(&tap, &what);
            std::thread::sleep((warm + dur).saturating_sub(t0.elapsed()));
            let b = ns.counter(&tap, &what);
            std::mem::forget(ns); // not ours to delete
            Some(b? - a?)
        })))
    }
    fn finish(mut self) -> Option<u64> {
        self.0.take()?.join().ok()?
    }
}

fn ifindex(ns: &str, tap: &str) -> Result<i32, String> {
    let o = Command::new("ip")
        .args([
            "netns",
            "exec",
            ns,
            "cat",
            &format!("/sys/class/net/{tap}/ifindex"),
        ])
        .output()
        .map_err(|e| e.to_string())?;
    String::from_utf8_lossy(&o.stdout)
        .trim()
        .parse()
        .map_err(|_| format!("no ifindex for {tap} in {ns}"))
}

/// A thread in the namespace that sends `f` on the tap with AF_PACKET until the window ends.
fn spawn_injector(
    ns: &str,
    ifindex: i32,
    f: Vec<u8>,
    w: Window,
    cpu: Option<String>,
) -> Result<std::thread::JoinHandle<u64>, String> {
    let nsf = std::fs::File::open(format!("/var/run/netns/{ns}")).map_err(|e| e.to_string())?;
    let _ = cpu;
    Ok(std::thread::spawn(move || {
        // SAFETY: setns on this thread only (CLONE_NEWNET applies per thread).
        if unsafe { libc::setns(nsf.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            eprintln!(
                "vhost-user-bench: setns: {}",
                std::io::Error::last_os_error()
            );
            return 0;
        }
        // SAFETY: plain socket call.
        let s = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
        if s < 0 {
            eprintln!(
                "vhost-user-bench: AF_PACKET: {}",
                std::io::Error::last_os_error()
            );
            return 0;
        }
        // SAFETY: zeroed sockaddr_ll is valid; fields set below.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_ifindex = ifindex;
        sll.sll_halen = 6;
        sll.sll_addr[..6].copy_from_slice(&f[0..6]);
        const BATCH: usize = 32;
        let mut iov = libc::iovec {
            iov_base: f.as_ptr() as *mut _,
            iov_len: f.len(),
        };
        // SAFETY: zeroed mmsghdr array is valid; filled below.
        let mut msgs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
        for m in msgs.iter_mut() {
            m.msg_hdr.msg_name = &mut sll as *mut _ as *mut _;
            m.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_ll>() as u32;
            m.msg_hdr.msg_iov = &mut iov;
            m.msg_hdr.msg_iovlen = 1;
        }
        let mut sent = 0u64;
        while !w.over(Instant::now()) {
            // SAFETY: msgs point at live buffers for the duration of the call.
            let n = unsafe { libc::sendmmsg(s, msgs.as_mut_ptr(), BATCH as u32, 0) };
            if n > 0 {
                sent += n as u64;
            } else {
                std::thread::sleep(Duration::from_micros(50));
            }
        }
        // SAFETY: our socket.
        unsafe { libc::close(s) };
        w.stop.store(false, Ordering::Relaxed);
        sent
    }))
}

fn tx_load(
    mut ring: Ring,
    bufs: &[u64],
    len: u32,
    bytes: u64,
    expect: usize,
    w: &Window,
) -> QueueOutcome {
    let mut out = QueueOutcome {
        lat: Latencies::with_capacity(expect),
        ..Default::default()
    };
    let mut start = vec![Instant::now(); bufs.len()];
    for (k, &b) in bufs.iter().enumerate() {
        ring.set_desc(k as u16, b, len, 0, 0);
        start[k] = Instant::now();
        ring.publish(k as u16);
    }
    let _ = ring.notify();
    let mut inflight = bufs.len();
    let mut last = Instant::now();
    while inflight > 0 {
        let mut n = 0;
        while let Some((id, _)) = ring.pop_used() {
            let now = Instant::now();
            let k = id as usize;
            if k >= bufs.len() {
                out.failure = Some(format!("device returned id {id}"));
                return out;
            }
            if w.counts(now) {
                out.ops += 1;
                out.bytes += bytes;
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
                out.failure = Some(format!("tx: no completion for 10 s ({inflight} in flight)"));
                break;
            }
            ring.wait(Duration::from_millis(100));
        }
    }
    out.kicks = ring.kicks;
    out.waits = ring.waits;
    out
}

fn rx_load(mut ring: Ring, bufs: &[u64], len: u32, expect: usize, w: &Window) -> QueueOutcome {
    let _ = expect;
    let mut out = QueueOutcome::default();
    for (k, &b) in bufs.iter().enumerate() {
        ring.set_desc(k as u16, b, len, F_WRITE, 0);
        ring.publish(k as u16);
    }
    let _ = ring.notify();
    loop {
        let mut n = 0;
        while let Some((id, l)) = ring.pop_used() {
            let now = Instant::now();
            if id as usize >= bufs.len() {
                out.failure = Some(format!("device returned id {id}"));
                return out;
            }
            if w.counts(now) {
                out.ops += 1;
                out.bytes += u64::from(l.saturating_sub(HDR as u32));
            }
            ring.publish(id as u16);
            n += 1;
        }
        let now = Instant::now();
        if w.over(now) {
            break;
        }
        if n > 0 {
            let _ = ring.notify();
        } else {
            ring.wait(Duration::from_millis(20));
        }
    }
    out.kicks = ring.kicks;
    out.waits = ring.waits;
    out
}
