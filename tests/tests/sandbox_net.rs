//! vhost-user-net's sandbox holds: once serving on its tap, execve and new
//! sockets end the daemon with a seccomp log line and opening a file fails
//! (Landlock) while the device keeps serving; `--sandbox off` lets them
//! through. The tap lives in a network namespace each test creates.
//!
//! Needs root (netns, tap); skipped with a message otherwise.

mod sandbox_support;

use sandbox_support::*;
use splitvm_tests::util::TempDir;
use splitvm_tests::{bin_path, FrontendConn};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

static COUNTER: AtomicU32 = AtomicU32::new(0);

fn can_run() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let ok = root
        && std::path::Path::new("/dev/net/tun").exists()
        && splitvm_tests::daemon::which("ip").is_some();
    if !ok {
        eprintln!("SKIP: needs root, /dev/net/tun and ip(8) for a tap in a network namespace");
    }
    ok && can_sandbox()
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A network namespace with a vnet_hdr tap `tap0`.
struct Netns(String);

impl Netns {
    fn new() -> Self {
        let name = format!(
            "svt-sbx-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        ip(&["netns", "add", &name]);
        let ns = Netns(name);
        ip(&[
            "netns", "exec", &ns.0, "ip", "tuntap", "add", "dev", "tap0", "mode", "tap", "vnet_hdr",
        ]);
        ip(&["netns", "exec", &ns.0, "ip", "link", "set", "tap0", "up"]);
        ns
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

struct Net {
    dir: TempDir,
    proc: Proc,
    _ns: Netns,
}

impl Net {
    fn start(tag: &str, extra: &[&str], selftest: Option<&str>) -> Self {
        let ns = Netns::new();
        let dir = TempDir::new(tag);
        let socket = dir.join("net.sock");
        let bin = bin_path("vhost-user-net");
        let mut args = vec![
            "netns",
            "exec",
            &ns.0,
            bin.to_str().unwrap(),
            "--socket",
            socket.to_str().unwrap(),
            "--tap",
            "tap0",
        ];
        args.extend_from_slice(extra);
        let ip = splitvm_tests::daemon::which("ip").unwrap();
        let proc = Proc::spawn(&ip, &args, selftest, &dir.join("stderr"));
        Net { dir, proc, _ns: ns }
    }

    fn assert_serving(&mut self) {
        self.proc
            .wait_log("listening", |l| l.contains("listening on"));
        let mut conn = FrontendConn::connect(self.dir.join("net.sock"), WAIT)
            .unwrap_or_else(|e| panic!("connect: {e}; stderr:\n{}", self.proc.log()));
        conn.set_owner().expect("SET_OWNER");
        conn.get_features().expect("GET_FEATURES");
    }
}

#[test]
fn execve_kills_the_sandboxed_daemon() {
    if !can_run() {
        return;
    }
    let mut n = Net::start("sbx-net-exec", &[], Some("exec"));
    assert_killed_for(&mut n.proc, "execve");
}

#[test]
fn execve_runs_with_sandbox_off() {
    if !can_run() {
        return;
    }
    let mut n = Net::start("sbx-net-exec-off", &["--sandbox", "off"], Some("exec"));
    let status = n.proc.wait_exit();
    assert!(status.success(), "{status}; stderr:\n{}", n.proc.log());
    assert!(!n.proc.log().contains("forbidden"), "{}", n.proc.log());
}

#[test]
fn opening_a_file_fails_and_the_device_keeps_serving() {
    if !can_run() {
        return;
    }
    let mut n = Net::start("sbx-net-open", &[], Some("open"));
    n.proc
        .wait_log("the selftest's open", |l| l.contains("open /etc/passwd:"));
    assert!(
        n.proc.log().contains("open /etc/passwd: Permission denied"),
        "{}",
        n.proc.log()
    );
    n.assert_serving();
    assert_sandboxed(&n.proc);
}

#[test]
fn opening_a_file_works_with_sandbox_off() {
    if !can_run() {
        return;
    }
    let mut n = Net::start("sbx-net-open-off", &["--sandbox=off"], Some("open"));
    n.proc
        .wait_log("the selftest's open", |l| l.contains("open /etc/passwd:"));
    assert!(
        n.proc.log().contains("open /etc/passwd: opened"),
        "{}",
        n.proc.log()
    );
    n.assert_serving();
    assert_not_sandboxed(&n.proc);
}

#[test]
fn a_new_socket_kills_the_sandboxed_daemon() {
    if !can_run() {
        return;
    }
    let mut n = Net::start("sbx-net-sock", &[], Some("socket"));
    assert_killed_for(&mut n.proc, "socket");
}
