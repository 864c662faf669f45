//! Measurements: per-request latency percentiles, the back end's CPU time from
//! /proc/PID/stat, and the result record printed as a table row and as JSON.

use std::time::Duration;

/// CPU time (user + system, all threads) of a process so far, from /proc/PID/stat.
pub fn cpu_time(pid: u32) -> Option<Duration> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces): state is field 3,
    // utime 14 and stime 15 (1-based), i.e. indexes 11 and 12 after ") ".
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Some(Duration::from_nanos(ticks * 1_000_000_000 / hz))
}

/// Latency samples in nanoseconds.
#[derive(Default)]
pub struct Latencies {
    pub ns: Vec<u32>,
}

impl Latencies {
    pub fn with_capacity(n: usize) -> Self {
        Latencies {
            ns: Vec::with_capacity(n),
        }
    }
    #[inline]
    pub fn record(&mut self, d: Duration) {
        self.ns.push(d.as_nanos().min(u32::MAX as u128) as u32);
    }
    pub fn merge(&mut self, o: Latencies) {
        self.ns.extend(o.ns);
    }
    /// p50, p99, p99.9 in microseconds.
    pub fn percentiles(&mut self) -> Option<[f64; 3]> {
        if self.ns.is_empty() {
            return None;
        }
        self.ns.sort_unstable();
        let at = |p: f64| {
            let i = ((self.ns.len() as f64 * p).ceil() as usize).clamp(1, self.ns.len()) - 1;
            self.ns[i] as f64 / 1000.0
        };
        Some([at(0.50), at(0.99), at(0.999)])
    }
}

/// One measured run.
#[derive(Clone, Debug, Default)]
pub struct RunResult {
    /// Which back end (a label given on the command line).
    pub label: String,
    /// Workload name, e.g. "blk randread 4k qd32 q1".
    pub workload: String,
    pub seconds: f64,
    /// Requests (blk), frames (net), requests (rng) completed in the window.
    pub ops: u64,
    pub bytes: u64,
    /// Requests that completed with a bad status (blk) or a bad length.
    pub errors: u64,
    pub lat_us: Option<[f64; 3]>,
    /// Back-end CPU seconds in the window (None without a pid).
    pub cpu_s: Option<f64>,
    /// Back-end CPU share (of one core) while idle after the run.
    pub idle_cpu: Option<f64>,
    pub kicks: u64,
    pub waits: u64,
}

impl RunResult {
    pub fn ops_per_s(&self) -> f64 {
        self.ops as f64 / self.seconds.max(1e-9)
    }
    pub fn mb_per_s(&self) -> f64 {
        self.bytes as f64 / self.seconds.max(1e-9) / 1e6
    }
    /// Back-end CPU microseconds per request.
    pub fn cpu_us_per_op(&self) -> Option<f64> {
        self.cpu_s
            .filter(|_| self.ops > 0)
            .map(|c| c * 1e6 / self.ops as f64)
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "label": self.label,
            "workload": self.workload,
            "seconds": self.seconds,
            "ops": self.ops,
            "ops_per_s": self.ops_per_s(),
            "bytes": self.bytes,
            "mb_per_s": self.mb_per_s(),
            "errors": self.errors,
            "lat_p50_us": self.lat_us.map(|l| l[0]),
            "lat_p99_us": self.lat_us.map(|l| l[1]),
            "lat_p999_us": self.lat_us.map(|l| l[2]),
            "cpu_s": self.cpu_s,
            "cpu_us_per_op": self.cpu_us_per_op(),
            "cpu_share": self.cpu_s.map(|c| c / self.seconds.max(1e-9)),
            "idle_cpu_share": self.idle_cpu,
            "kicks": self.kicks,
            "waits": self.waits,
        })
    }

    pub fn table_header() -> String {
        format!(
            "{:<14} {:<30} {:>11} {:>9} {:>9} {:>9} {:>9} {:>10} {:>6} {:>7} {:>6}",
            "backend",
            "workload",
            "ops/s",
            "MB/s",
            "p50 us",
            "p99 us",
            "p99.9 us",
            "cpu us/op",
            "cpu%",
            "idle%",
            "errors"
        )
    }

    pub fn table_row(&self) -> String {
        let f = |v: Option<f64>, p: usize| match v {
            Some(v) => format!("{v:.p$}"),
            None => "-".into(),
        };
        format!(
            "{:<14} {:<30} {:>11.0} {:>9.1} {:>9} {:>9} {:>9} {:>10} {:>6} {:>7} {:>6}",
            self.label,
            self.workload,
            self.ops_per_s(),
            self.mb_per_s(),
            f(self.lat_us.map(|l| l[0]), 1),
            f(self.lat_us.map(|l| l[1]), 1),
            f(self.lat_us.map(|l| l[2]), 1),
            f(self.cpu_us_per_op(), 2),
            f(self.cpu_s.map(|c| 100.0 * c / self.seconds.max(1e-9)), 0),
            f(self.idle_cpu.map(|c| 100.0 * c), 1),
            self.errors
        )
    }
}
