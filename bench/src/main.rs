//! vhost-user-bench: a load generator that plays the guest of a vhost-user back end
//! without a VM (memfd guest memory, N split rings, a queue depth per ring) and reports
//! throughput, latency percentiles and the back end's CPU time per request.
//!
//! ```text
//! vhost-user-bench blk --spawn 'target/release/vhost-user-blk --socket {sock} --image /dev/shm/img' \
//!     --rw randread --bs 4k --qd 32 --duration 5s
//! vhost-user-bench rng --socket /tmp/rng.sock --pid 1234
//! vhost-user-bench net --spawn 'target/release/vhost-user-net --socket {sock} --tap {tap}' --dir tx --frame 64
//! vhost-user-bench report results.jsonl      # medians and A/B ratio table
//! ```

mod blk;
mod net;
mod report;
mod ring;
mod rng;
mod stats;

use std::io::Write;
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use splitvm_tests::frontend::{
    FrontendConn, VhostUserProtocolFeatures, VHOST_USER_F_PROTOCOL_FEATURES,
};
use splitvm_tests::virtq::SplitQueue;
use splitvm_tests::GuestMem;

use ring::Ring;
use stats::{Latencies, RunResult};

#[derive(Parser)]
#[command(
    name = "vhost-user-bench",
    version,
    about = "Load generator for vhost-user back ends"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// virtio-blk: reads/writes of one block size, random or sequential, or a mix.
    Blk(blk::BlkArgs),
    /// virtio-net: frames guest->tap (tx) or tap->guest (rx) through a tap in a netns.
    Net(net::NetArgs),
    /// virtio-rng: bytes per second.
    Rng(rng::RngArgs),
    /// Read JSON result lines (from --json) and print medians and the A/B ratio table.
    Report(report::ReportArgs),
}

/// Options every device kind shares.
#[derive(Args, Clone, Debug)]
pub struct Common {
    /// Back-end command to start (run with `sh -c 'exec ...'`); {sock}, {tap} and {netns}
    /// are replaced. Its pid is the one whose CPU time is reported.
    #[arg(long, value_name = "CMD")]
    spawn: Option<String>,
    /// Socket to connect to (default: the {sock} given to --spawn).
    #[arg(long)]
    socket: Option<PathBuf>,
    /// Appended to the socket path to connect to (vhost-device-rng listens on PATH0).
    #[arg(long, default_value = "")]
    socket_suffix: String,
    /// Back-end pid for CPU accounting when not started with --spawn.
    #[arg(long)]
    pid: Option<u32>,
    /// Name of this back end in the output.
    #[arg(long, default_value = "backend")]
    label: String,
    /// Number of queues (blk, rng: request queues; net: queue pairs, only 1 supported).
    #[arg(long, default_value_t = 1)]
    queues: usize,
    /// Requests in flight per queue.
    #[arg(long, default_value_t = 32)]
    qd: usize,
    /// Measured time (e.g. 5s, 500ms).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    duration: Duration,
    /// Warm-up before the measured window.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    warmup: Duration,
    /// Measure the back end's idle CPU share for this long after the run (0 = skip).
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    idle: Duration,
    /// Do not negotiate VIRTIO_RING_F_EVENT_IDX.
    #[arg(long)]
    no_event_idx: bool,
    /// Append the result as one JSON line to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Pin the load generator to this CPU list (as taskset -c).
    #[arg(long)]
    cpu: Option<String>,
    /// Back end's stderr goes here (default: a file in the temp dir).
    #[arg(long)]
    log: Option<PathBuf>,
    /// How long to wait for the back end's socket.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    connect_timeout: Duration,
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, mul) = if let Some(n) = s.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = s.strip_suffix("us") {
        (n, 1e-6)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else {
        (s, 1.0)
    };
    let v: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 5s or 500ms"))?;
    if !(0.0..1e6).contains(&v) {
        return Err(format!("{s:?} is out of range"));
    }
    Ok(Duration::from_secs_f64(v * mul))
}

/// Parse sizes like 4k, 64K, 1m, 512.
pub fn parse_size(s: &str) -> Result<usize, String> {
    let l = s.to_ascii_lowercase();
    let (n, m) = match l.chars().last() {
        Some('k') => (&l[..l.len() - 1], 1024),
        Some('m') => (&l[..l.len() - 1], 1 << 20),
        _ => (&l[..], 1),
    };
    n.parse::<usize>()
        .map(|v| v * m)
        .map_err(|_| format!("{s:?} is not a size like 4k"))
}

/// A started back end (killed on drop) and where to reach it.
pub struct Backend {
    child: Option<Child>,
    pub pid: Option<u32>,
    pub socket: PathBuf,
    pub netns: Option<String>,
    _dir: Option<splitvm_tests::TempDir>,
}

impl Backend {
    /// Start (or just describe) the back end per `c`; `tap` fills {tap}; `netns` runs it in
    /// that network namespace.
    pub fn start(c: &Common, tap: &str, netns: Option<&str>) -> Result<Self, String> {
        let dir = splitvm_tests::TempDir::new("bench");
        let base = c.socket.clone().unwrap_or_else(|| dir.join("be.sock"));
        let mut sock = base.clone().into_os_string();
        sock.push(&c.socket_suffix);
        let sock = PathBuf::from(sock);
        let Some(cmd) = &c.spawn else {
            return Ok(Backend {
                child: None,
                pid: c.pid,
                socket: sock,
                netns: netns.map(String::from),
                _dir: Some(dir),
            });
        };
        let line = cmd
            .replace("{sock}", &base.to_string_lossy())
            .replace("{tap}", tap)
            .replace("{netns}", netns.unwrap_or(""));
        let line = match netns {
            Some(ns) => format!("exec ip netns exec {ns} {line}"),
            None => format!("exec {line}"),
        };
        let log = c.log.clone().unwrap_or_else(|| {
            std::env::temp_dir().join(format!("vhost-user-bench-{}.log", c.label))
        });
        let err = std::fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let child = Command::new("sh")
            .arg("-c")
            .arg(&line)
            .stdin(Stdio::piped()) // testpmd waits on stdin; keep it open
            .stdout(err.try_clone().map_err(|e| e.to_string())?)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("starting {line}: {e}"))?;
        Ok(Backend {
            pid: Some(child.id()),
            child: Some(child),
            socket: sock,
            netns: netns.map(String::from),
            _dir: Some(dir),
        })
    }

    /// Connect, retrying while the back end comes up; fails early if it exits.
    pub fn connect(&mut self, timeout: Duration) -> Result<FrontendConn, String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(st)) = c.try_wait() {
                    return Err(format!("back end exited before listening: {st}"));
                }
            }
            if let Ok(conn) = FrontendConn::connect(&self.socket, Duration::from_millis(1)) {
                return Ok(conn);
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "no listener on {} within {timeout:?}",
                    self.socket.display()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn alive(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => true,
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            if let Some(pid) = self.pid {
                // SAFETY: signalling our own child.
                unsafe { libc::kill(pid as i32, libc::SIGTERM) };
            }
            let end = Instant::now() + Duration::from_secs(3);
            while Instant::now() < end {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Negotiate, map memory, set up `n` rings of `size` and hand back lean rings.
pub fn start_rings(
    conn: &mut FrontendConn,
    mem: &mut GuestMem,
    want: u64,
    want_protocol: VhostUserProtocolFeatures,
    n: usize,
    size: u16,
) -> Result<(Vec<Ring>, u64), String> {
    let neg = conn
        .negotiate(want, want_protocol)
        .map_err(|e| format!("negotiation: {e}"))?;
    let mut qs = Vec::new();
    for _ in 0..n {
        qs.push(SplitQueue::new(mem, size).map_err(|e| e.to_string())?);
    }
    conn.set_mem_table(mem)
        .map_err(|e| format!("SET_MEM_TABLE: {e}"))?;
    let event_idx = neg.acked & splitvm_tests::frontend::VIRTIO_RING_F_EVENT_IDX != 0;
    let mut rings = Vec::new();
    for (i, mut q) in qs.into_iter().enumerate() {
        q.set_event_idx(event_idx);
        conn.setup_vring(i, &q, mem)
            .map_err(|e| format!("ring {i}: {e}"))?;
        if neg.acked & VHOST_USER_F_PROTOCOL_FEATURES != 0 {
            conn.set_vring_enable(i, true)
                .map_err(|e| format!("SET_VRING_ENABLE {i}: {e}"))?;
        }
        rings.push(Ring::new(q, mem).map_err(|e| e.to_string())?);
    }
    Ok((rings, neg.acked))
}

/// The measured window, shared by every load thread and the CPU sampler.
#[derive(Clone)]
pub struct Window {
    pub start: Instant,
    pub end: Instant,
    pub stop: Arc<AtomicBool>,
}

impl Window {
    pub fn new(c: &Common) -> Self {
        let start = Instant::now() + c.warmup;
        Window {
            start,
            end: start + c.duration,
            stop: Arc::new(AtomicBool::new(false)),
        }
    }
    #[inline]
    pub fn counts(&self, t: Instant) -> bool {
        t >= self.start && t < self.end
    }
    #[inline]
    pub fn over(&self, t: Instant) -> bool {
        t >= self.end || self.stop.load(Ordering::Relaxed)
    }
}

/// What one load thread measured.
#[derive(Default)]
pub struct QueueOutcome {
    pub ops: u64,
    pub bytes: u64,
    pub errors: u64,
    pub lat: Latencies,
    pub kicks: u64,
    pub waits: u64,
    pub failure: Option<String>,
}

/// Run the load threads and sample the back end's CPU over the window.
pub fn measure<F>(
    c: &Common,
    be: &mut Backend,
    workload: String,
    rings: Vec<Ring>,
    f: F,
) -> RunResult
where
    F: Fn(Ring, usize, &Window) -> QueueOutcome + Send + Sync + Clone + 'static,
{
    measure_with(c, be, workload, rings, Window::new(c), f)
}

/// [`measure`] with a window made earlier (shared with other threads of the load).
pub fn measure_with<F>(
    c: &Common,
    be: &mut Backend,
    workload: String,
    rings: Vec<Ring>,
    win: Window,
    f: F,
) -> RunResult
where
    F: Fn(Ring, usize, &Window) -> QueueOutcome + Send + Sync + Clone + 'static,
{
    let mut threads = Vec::new();
    for (i, r) in rings.into_iter().enumerate() {
        let w = win.clone();
        let f = f.clone();
        threads.push(std::thread::spawn(move || f(r, i, &w)));
    }
    sleep_until(win.start);
    let cpu0 = be.pid.and_then(stats::cpu_time);
    sleep_until(win.end);
    let cpu1 = be.pid.and_then(stats::cpu_time);
    let mut res = RunResult {
        label: c.label.clone(),
        workload,
        seconds: c.duration.as_secs_f64(),
        ..Default::default()
    };
    let mut lat = Latencies::default();
    for t in threads {
        let o = t.join().unwrap_or_else(|_| QueueOutcome {
            failure: Some("load thread panicked".into()),
            ..Default::default()
        });
        if let Some(f) = o.failure {
            eprintln!("vhost-user-bench: {f}");
            res.errors += 1;
        }
        res.ops += o.ops;
        res.bytes += o.bytes;
        res.errors += o.errors;
        res.kicks += o.kicks;
        res.waits += o.waits;
        lat.merge(o.lat);
    }
    res.lat_us = lat.percentiles();
    if let (Some(a), Some(b)) = (cpu0, cpu1) {
        res.cpu_s = Some((b - a).as_secs_f64());
    }
    if !c.idle.is_zero() {
        if let Some(pid) = be.pid {
            let a = stats::cpu_time(pid);
            std::thread::sleep(c.idle);
            let b = stats::cpu_time(pid);
            if let (Some(a), Some(b)) = (a, b) {
                res.idle_cpu = Some((b - a).as_secs_f64() / c.idle.as_secs_f64());
            }
        }
    }
    if !be.alive() {
        eprintln!("vhost-user-bench: the back end exited during the run");
        res.errors += 1;
    }
    res
}

fn sleep_until(t: Instant) {
    let now = Instant::now();
    if t > now {
        std::thread::sleep(t - now);
    }
}

/// Print the result (table + JSON line) and append it to --json.
pub fn emit(c: &Common, r: &RunResult) -> ExitCode {
    println!("{}", RunResult::table_header());
    println!("{}", r.table_row());
    let j = r.to_json();
    println!("{j}");
    if let Some(p) = &c.json {
        match std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
        {
            Ok(mut f) => {
                let _ = writeln!(f, "{j}");
            }
            Err(e) => eprintln!("vhost-user-bench: {}: {e}", p.display()),
        }
    }
    if r.ops == 0 || r.errors > 0 {
        eprintln!(
            "vhost-user-bench: {} errors, {} operations",
            r.errors, r.ops
        );
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

/// Pin this process (all future threads) to a CPU list like "0" or "0-1,3".
fn pin(list: &str) -> Result<(), String> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for part in list.split(',') {
        let (a, b) = match part.split_once('-') {
            Some((a, b)) => (a, b),
            None => (part, part),
        };
        let a: usize = a
            .trim()
            .parse()
            .map_err(|_| format!("bad CPU list {list:?}"))?;
        let b: usize = b
            .trim()
            .parse()
            .map_err(|_| format!("bad CPU list {list:?}"))?;
        for cpu in a..=b {
            // SAFETY: CPU_SET on a local set.
            unsafe { libc::CPU_SET(cpu, &mut set) };
        }
    }
    // SAFETY: valid set for this process.
    if unsafe { libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) } != 0 {
        return Err(format!(
            "sched_setaffinity {list}: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let common = match &cli.cmd {
        Cmd::Blk(a) => Some(&a.common),
        Cmd::Net(a) => Some(&a.common),
        Cmd::Rng(a) => Some(&a.common),
        Cmd::Report(_) => None,
    };
    if let Some(cpu) = common.and_then(|c| c.cpu.as_deref()) {
        if let Err(e) = pin(cpu) {
            eprintln!("vhost-user-bench: {e}");
            return ExitCode::FAILURE;
        }
    }
    let r = match cli.cmd {
        Cmd::Blk(a) => blk::run(&a).map(|r| emit(&a.common, &r)),
        Cmd::Net(a) => net::run(&a).map(|r| emit(&a.common, &r)),
        Cmd::Rng(a) => rng::run(&a).map(|r| emit(&a.common, &r)),
        Cmd::Report(a) => report::run(&a),
    };
    match r {
        Ok(code) => code,
        Err(e) => {
            eprintln!("vhost-user-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations() {
        assert_eq!(parse_size("4k"), Ok(4096));
        assert_eq!(parse_size("64K"), Ok(65536));
        assert_eq!(parse_size("1m"), Ok(1 << 20));
        assert_eq!(parse_size("512"), Ok(512));
        assert!(parse_size("x").is_err());
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("300ms"), Ok(Duration::from_millis(300)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn medians_and_percentiles() {
        let s = report::summarize(&mut [3.0, 1.0, 2.0, 10.0]).unwrap();
        assert_eq!((s.median, s.min, s.max), (2.5, 1.0, 10.0));
        assert!(report::summarize(&mut []).is_none());
        let mut l = Latencies::default();
        for i in 1..=1000u64 {
            l.record(Duration::from_micros(i));
        }
        let p = l.percentiles().unwrap();
        assert_eq!(p, [500.0, 990.0, 999.0]);
    }

    #[test]
    fn proc_stat_of_self() {
        assert!(stats::cpu_time(std::process::id()).is_some());
    }
}
