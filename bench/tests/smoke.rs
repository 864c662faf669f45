//! Smoke test: the load generator runs one short blk job against our vhost-user-blk and
//! prints a sane table and JSON line. No timing is asserted (benchmarks are never tests).

use splitvm_tests::{bin_path, util, TempDir};
use std::process::Command;

#[test]
fn blk_one_second_reports_a_table() {
    let dir = TempDir::new("bench-smoke");
    let img = dir.join("img");
    util::make_image(&img, 4 << 20, 7);
    let spawn = format!(
        "{} --socket {{sock}} --image {}",
        bin_path("vhost-user-blk").display(),
        img.display()
    );
    let json = dir.join("out.jsonl");
    let out = Command::new(env!("CARGO_BIN_EXE_vhost-user-bench"))
        .args([
            "blk",
            "--duration",
            "1s",
            "--warmup",
            "200ms",
            "--qd",
            "4",
            "--label",
            "ours",
        ])
        .args(["--rw", "randrw", "--spawn", &spawn, "--json"])
        .arg(&json)
        .output()
        .expect("running vhost-user-bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "bench failed:\n{stdout}\n{stderr}");
    assert!(
        stdout.contains("ops/s") && stdout.contains("p99.9 us"),
        "no table header:\n{stdout}"
    );
    let row = stdout
        .lines()
        .find(|l| l.starts_with("ours ") && l.contains("blk randrw 4k qd4 q1"))
        .unwrap_or_else(|| panic!("no result row:\n{stdout}"));
    assert!(row.trim_end().ends_with(" 0"), "errors reported: {row}");
    let line = std::fs::read_to_string(&json).unwrap();
    let v: serde_json::Value = serde_json::from_str(line.lines().next().unwrap()).unwrap();
    assert!(v["ops"].as_u64().unwrap() > 0, "{v}");
    assert_eq!(v["errors"].as_u64(), Some(0), "{v}");
    let p50 = v["lat_p50_us"].as_f64().unwrap();
    let p999 = v["lat_p999_us"].as_f64().unwrap();
    assert!(p50 > 0.0 && p50 <= p999, "{v}");
    assert!(v["cpu_s"].as_f64().is_some(), "no back-end CPU time: {v}");
    // The report reads what --json wrote.
    let rep = Command::new(env!("CARGO_BIN_EXE_vhost-user-bench"))
        .arg("report")
        .arg(&json)
        .output()
        .unwrap();
    assert!(rep.status.success());
    assert!(String::from_utf8_lossy(&rep.stdout).contains("Targets"));
}
