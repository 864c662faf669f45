//! `vhost-user-bench report FILE...`: medians per (workload, back end) over repeated runs,
//! the spread (min..max), and our/peer ratios, as a Markdown table; then the targets.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use serde_json::Value;

#[derive(Args, Clone, Debug)]
pub struct ReportArgs {
    /// JSON-lines files written with --json.
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// The label of our back ends; every other label is a peer.
    #[arg(long, default_value = "ours")]
    ours: String,
}

/// Median and spread of one metric.
#[derive(Clone, Copy, Debug)]
pub struct Summary {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

pub fn summarize(v: &mut [f64]) -> Option<Summary> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    Some(Summary {
        median,
        min: v[0],
        max: v[n - 1],
    })
}

const METRICS: [&str; 5] = [
    "ops_per_s",
    "mb_per_s",
    "lat_p50_us",
    "lat_p99_us",
    "cpu_us_per_op",
];

type Runs = BTreeMap<String, BTreeMap<String, Vec<Value>>>;

fn metric(runs: &[Value], m: &str) -> Option<Summary> {
    let mut v: Vec<f64> = runs.iter().filter_map(|r| r.get(m)?.as_f64()).collect();
    summarize(&mut v)
}

fn fmt(s: Option<Summary>) -> String {
    match s {
        Some(s) if s.median >= 1000.0 => format!("{:.0} ({:.0}..{:.0})", s.median, s.min, s.max),
        Some(s) => format!("{:.2} ({:.2}..{:.2})", s.median, s.min, s.max),
        None => "-".into(),
    }
}

fn ratio(a: Option<Summary>, b: Option<Summary>) -> Option<f64> {
    let (a, b) = (a?, b?);
    (b.median > 0.0).then(|| a.median / b.median)
}

pub fn run(a: &ReportArgs) -> Result<ExitCode, String> {
    let mut runs: Runs = BTreeMap::new();
    for f in &a.files {
        let text = std::fs::read_to_string(f).map_err(|e| format!("{}: {e}", f.display()))?;
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let v: Value =
                serde_json::from_str(line).map_err(|e| format!("{}: {e}", f.display()))?;
            let w = v["workload"].as_str().unwrap_or("?").to_string();
            let l = v["label"].as_str().unwrap_or("?").to_string();
            runs.entry(w).or_default().entry(l).or_default().push(v);
        }
    }
    println!("| workload | peer | runs | ops/s ours | ops/s peer | ratio | MB/s ratio | p50 µs ours | p50 µs peer | ratio | p99 µs ours | p99 µs peer | CPU µs/op ours | CPU µs/op peer | ratio | idle CPU % ours / peer |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    let mut ratios: BTreeMap<(String, &str), f64> = BTreeMap::new();
    for (w, by_label) in &runs {
        let ours = by_label.get(&a.ours).map(Vec::as_slice).unwrap_or(&[]);
        for (peer, pr) in by_label.iter().filter(|(l, _)| **l != a.ours) {
            let s = |r: &[Value], m: &str| metric(r, m);
            let idle = |r: &[Value]| {
                metric(r, "idle_cpu_share")
                    .map(|s| format!("{:.1}", 100.0 * s.median))
                    .unwrap_or_else(|| "-".into())
            };
            let r_ops = ratio(s(ours, "ops_per_s"), s(pr, "ops_per_s"));
            let r_mb = ratio(s(ours, "mb_per_s"), s(pr, "mb_per_s"));
            let r_p50 = ratio(s(ours, "lat_p50_us"), s(pr, "lat_p50_us"));
            let r_cpu = ratio(s(ours, "cpu_us_per_op"), s(pr, "cpu_us_per_op"));
            let r_idle = ratio(s(ours, "idle_cpu_share"), s(pr, "idle_cpu_share"));
            let f2 = |r: Option<f64>| r.map(|r| format!("{r:.2}×")).unwrap_or_else(|| "-".into());
            println!(
                "| {w} | {peer} | {}/{} | {} | {} | **{}** | {} | {} | {} | **{}** | {} | {} | {} | {} | **{}** | {} / {} |",
                ours.len(),
                pr.len(),
                fmt(s(ours, METRICS[0])),
                fmt(s(pr, METRICS[0])),
                f2(r_ops),
                f2(r_mb),
                fmt(s(ours, METRICS[2])),
                fmt(s(pr, METRICS[2])),
                f2(r_p50),
                fmt(s(ours, METRICS[3])),
                fmt(s(pr, METRICS[3])),
                fmt(s(ours, METRICS[4])),
                fmt(s(pr, METRICS[4])),
                f2(r_cpu),
                idle(ours),
                idle(pr),
            );
            for (k, v) in [
                ("ops", r_ops),
                ("mb", r_mb),
                ("p50", r_p50),
                ("cpu", r_cpu),
                ("idle", r_idle),
            ] {
                if let Some(v) = v {
                    ratios.insert((w.clone(), k), v);
                }
            }
        }
    }
    println!();
    println!("Targets (ratios are ours / peer, medians):");
    let get = |w: &str, k: &'static str| ratios.get(&(w.to_string(), k)).copied();
    let show = |v: Option<f64>| v.map(|v| format!("{v:.2}")).unwrap_or_else(|| "n/a".into());
    let verdict = |ok: Option<bool>| match ok {
        Some(true) => "MET",
        Some(false) => "NOT MET",
        None => "not measured",
    };
    let w = "blk randread 4k qd32 q1";
    let (o, c) = (get(w, "ops"), get(w, "cpu"));
    println!(
        "- blk 4k randread QD32: IOPS ratio {} (goal >= 1.5), CPU/request ratio {} (goal <= 1.0): {}",
        show(o),
        show(c),
        verdict(o.zip(c).map(|(o, c)| o >= 1.5 && c <= 1.0))
    );
    let p = get("blk randread 4k qd1 q1", "p50");
    println!(
        "- blk 4k randread QD1: p50 latency ratio {} (goal <= 0.7): {}",
        show(p),
        verdict(p.map(|p| p <= 0.7))
    );
    let w = "net tx 64b qd256";
    let (o, i) = (get(w, "ops"), get(w, "idle"));
    println!(
        "- net 64 B guest->tap: pps ratio {} (goal >= 1.0), idle CPU ratio {} (goal: a fraction): {}",
        show(o),
        show(i),
        verdict(o.map(|o| o >= 1.0 && i.map(|i| i < 0.5).unwrap_or(true)))
    );
    let r = runs
        .keys()
        .find(|k| k.starts_with("rng "))
        .and_then(|k| get(k, "mb"));
    println!(
        "- rng: throughput ratio {} (goal >= 1.0): {}",
        show(r),
        verdict(r.map(|r| r >= 1.0))
    );
    Ok(ExitCode::SUCCESS)
}
