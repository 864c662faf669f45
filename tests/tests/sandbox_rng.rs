//! vhost-user-rng's sandbox holds: execve and new sockets end the daemon
//! with a seccomp log line, opening a file fails (Landlock) while the device
//! keeps serving, and a daemon killed that way comes back on restart;
//! `--sandbox off` lets all of that through.

mod sandbox_support;

use sandbox_support::*;
use splitvm_tests::util::TempDir;
use splitvm_tests::{bin_path, FrontendConn};

fn start(dir: &TempDir, extra: &[&str], selftest: Option<&str>) -> Proc {
    let socket = dir.join("rng.sock");
    let mut args = vec!["--socket", socket.to_str().unwrap()];
    args.extend_from_slice(extra);
    Proc::spawn(
        &bin_path("vhost-user-rng"),
        &args,
        selftest,
        &dir.join(&format!("stderr-{}", selftest.unwrap_or("none"))),
    )
}

fn assert_serving(dir: &TempDir, p: &mut Proc) {
    p.wait_log("listening", |l| l.contains("listening on"));
    let mut conn = FrontendConn::connect(dir.join("rng.sock"), WAIT)
        .unwrap_or_else(|e| panic!("connect: {e}; stderr:\n{}", p.log()));
    conn.set_owner().expect("SET_OWNER");
    conn.get_features().expect("GET_FEATURES");
}

#[test]
fn execve_kills_the_sandboxed_daemon_and_a_restart_brings_it_back() {
    if !can_sandbox() {
        return;
    }
    let dir = TempDir::new("sbx-rng-exec");
    // With the rate limit, so the timerfd is part of the profile under test.
    let limit = ["--max-bytes", "64", "--period-ms", "100"];
    let mut p = start(&dir, &limit, Some("exec"));
    assert_killed_for(&mut p, "execve");
    // The killed daemon left its socket file; the next one replaces it.
    let mut p = start(&dir, &limit, None);
    assert_serving(&dir, &mut p);
    assert_sandboxed(&p);
}

#[test]
fn execve_runs_with_sandbox_off() {
    let dir = TempDir::new("sbx-rng-exec-off");
    let mut p = start(&dir, &["--sandbox", "off"], Some("exec"));
    let status = p.wait_exit();
    assert!(status.success(), "{status}; stderr:\n{}", p.log());
    assert!(!p.log().contains("forbidden"), "{}", p.log());
}

#[test]
fn opening_a_file_fails_and_the_device_keeps_serving() {
    if !can_sandbox() {
        return;
    }
    let dir = TempDir::new("sbx-rng-open");
    let mut p = start(&dir, &[], Some("open"));
    p.wait_log("the selftest's open", |l| l.contains("open /etc/passwd:"));
    assert!(
        p.log().contains("open /etc/passwd: Permission denied"),
        "{}",
        p.log()
    );
    assert_serving(&dir, &mut p);
    assert_sandboxed(&p);
}

#[test]
fn opening_a_file_works_with_sandbox_off() {
    let dir = TempDir::new("sbx-rng-open-off");
    let mut p = start(&dir, &["--sandbox=off"], Some("open"));
    p.wait_log("the selftest's open", |l| l.contains("open /etc/passwd:"));
    assert!(p.log().contains("open /etc/passwd: opened"), "{}", p.log());
    assert_not_sandboxed(&p);
}

#[test]
fn a_new_socket_kills_the_sandboxed_daemon() {
    if !can_sandbox() {
        return;
    }
    let dir = TempDir::new("sbx-rng-sock");
    let mut p = start(&dir, &[], Some("socket"));
    assert_killed_for(&mut p, "socket");
}

#[test]
fn help_describes_the_sandbox() {
    let out = std::process::Command::new(bin_path("vhost-user-rng"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(
        help.contains("--sandbox") && help.contains("seccomp"),
        "{help}"
    );
}
