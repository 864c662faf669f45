//! vhost-user-blk's sandbox holds: once serving, execve and new sockets end
//! the daemon with a seccomp log line, opening a file outside its image fails
//! (Landlock) while the device keeps serving, it has no capabilities and can
//! still remove its socket at exit; `--sandbox off` lets all of that through.

mod sandbox_support;

use sandbox_support::*;
use splitvm_tests::util::{make_image, TempDir};
use splitvm_tests::{bin_path, FrontendConn};

struct Blk {
    dir: TempDir,
    proc: Proc,
}

impl Blk {
    fn start(tag: &str, extra: &[&str], selftest: Option<&str>) -> Self {
        let dir = TempDir::new(tag);
        let image = dir.join("disk.img");
        make_image(&image, 1 << 20, 7);
        let socket = dir.join("blk.sock");
        let mut args = vec![
            "--socket",
            socket.to_str().unwrap(),
            "--image",
            image.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let proc = Proc::spawn(
            &bin_path("vhost-user-blk"),
            &args,
            selftest,
            &dir.join("stderr"),
        );
        Blk { dir, proc }
    }

    /// A front end can still talk to it.
    fn assert_serving(&mut self) {
        self.proc
            .wait_log("listening", |l| l.contains("listening on"));
        let mut conn = FrontendConn::connect(self.dir.join("blk.sock"), WAIT)
            .unwrap_or_else(|e| panic!("connect: {e}; stderr:\n{}", self.proc.log()));
        conn.set_owner().expect("SET_OWNER");
        let f = conn.get_features().expect("GET_FEATURES");
        assert!(f & (1 << 32) != 0, "VIRTIO_F_VERSION_1 missing: {f:#x}");
    }
}

#[test]
fn sandboxed_daemon_serves_without_capabilities_and_cleans_up() {
    if !can_sandbox() {
        return;
    }
    let mut b = Blk::start("sbx-blk-on", &[], None);
    b.assert_serving();
    assert_sandboxed(&b.proc);
    assert!(b.proc.log().contains("sandbox: seccomp allowlist"));
    // Re-listen after a disconnect, then a clean exit that removes the socket
    // file (Landlock grants remove-file in its directory only).
    b.assert_serving();
    let status = b.proc.terminate();
    assert!(status.success(), "{status}; stderr:\n{}", b.proc.log());
    assert!(
        !b.dir.join("blk.sock").exists(),
        "socket file left behind:\n{}",
        b.proc.log()
    );
}

#[test]
fn execve_kills_the_sandboxed_daemon() {
    if !can_sandbox() {
        return;
    }
    let mut b = Blk::start("sbx-blk-exec", &[], Some("exec"));
    assert_killed_for(&mut b.proc, "execve");
}

#[test]
fn execve_runs_with_sandbox_off() {
    let mut b = Blk::start("sbx-blk-exec-off", &["--sandbox", "off"], Some("exec"));
    let status = b.proc.wait_exit();
    let log = b.proc.log();
    // The daemon became /bin/true.
    assert!(status.success(), "{status}; stderr:\n{log}");
    assert!(log.contains("selftest: execve(/bin/true)"), "{log}");
    assert!(!log.contains("forbidden"), "{log}");
}

#[test]
fn opening_a_file_outside_the_image_fails_and_the_device_keeps_serving() {
    if !can_sandbox() {
        return;
    }
    let mut b = Blk::start("sbx-blk-open", &[], Some("open"));
    b.proc
        .wait_log("the selftest's open", |l| l.contains("open /etc/passwd:"));
    let log = b.proc.log();
    assert!(
        log.contains("open /etc/passwd: Permission denied"),
        "expected EACCES:\n{log}"
    );
    b.assert_serving();
    assert!(b.proc.try_wait().is_none(), "{}", b.proc.log());
}

#[test]
fn opening_a_file_works_with_sandbox_off() {
    let mut b = Blk::start("sbx-blk-open-off", &["--sandbox=off"], Some("open"));
    b.proc
        .wait_log("the selftest's open", |l| l.contains("open /etc/passwd:"));
    assert!(
        b.proc.log().contains("open /etc/passwd: opened"),
        "{}",
        b.proc.log()
    );
    b.assert_serving();
    assert_not_sandboxed(&b.proc);
}

#[test]
fn a_new_socket_kills_the_sandboxed_daemon() {
    if !can_sandbox() {
        return;
    }
    let mut b = Blk::start("sbx-blk-sock", &[], Some("socket"));
    assert_killed_for(&mut b.proc, "socket");
}

#[test]
fn root_switches_to_user() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 || !can_sandbox() {
        eprintln!("SKIP: needs root");
        return;
    }
    let mut b = Blk::start(
        "sbx-blk-user",
        &["--user", "65534", "--group", "65534"],
        None,
    );
    b.assert_serving();
    assert_sandboxed(&b.proc);
    let uid = b.proc.status_field("Uid");
    assert_eq!(
        uid.split_whitespace().collect::<Vec<_>>(),
        ["65534"; 4],
        "real, effective, saved, fs uid"
    );
    assert!(b.proc.log().contains("switched to uid 65534 gid 65534"));
}

#[test]
fn help_and_capabilities_describe_the_sandbox() {
    let bin = bin_path("vhost-user-blk");
    let help = std::process::Command::new(&bin)
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for word in ["--sandbox", "--user", "--group", "seccomp", "Landlock"] {
        assert!(help.contains(word), "--help lacks {word}:\n{help}");
    }
    let caps = std::process::Command::new(&bin)
        .arg("--print-capabilities")
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&caps.stdout).unwrap();
    assert_eq!(v["sandbox"]["default"], "on", "{v}");
}
