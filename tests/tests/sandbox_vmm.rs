//! The VMM's sandbox holds: after set-up it runs with no capabilities,
//! no-new-privileges and a seccomp filter on every thread, execve ends it with
//! the seccomp log line, and so does opening a file; the guest runs and
//! the API socket is still removed at exit; `--sandbox off` lets execve and
//! the open through.

mod sandbox_support;
#[path = "vmm_support.rs"]
mod support;

use sandbox_support::{assert_killed_for, assert_sandboxed, can_sandbox, Proc, WAIT};
use std::path::Path;
use std::time::{Duration, Instant};
use support::{tiny_pvh_guest, TempDir};

fn start(dir: &TempDir, hang: bool, extra: &[&str], selftest: Option<&str>) -> Proc {
    let guest = dir.path("tiny.elf");
    std::fs::write(&guest, tiny_pvh_guest(hang)).unwrap();
    let mut args = vec![
        "--kernel",
        guest.to_str().unwrap(),
        "--memory",
        "32M",
        "--cmdline",
        "x",
        "--serial",
        "none",
    ];
    args.extend_from_slice(extra);
    Proc::spawn(
        &support::bin("vmm"),
        &args,
        selftest,
        &dir.path(&format!("stderr-{}", selftest.unwrap_or("none"))),
    )
}

fn kvm_ok() -> bool {
    let ok = Path::new("/dev/kvm").exists() && can_sandbox();
    if !ok {
        eprintln!("SKIP: needs /dev/kvm and Landlock");
    }
    ok
}

#[test]
fn vmm_runs_sandboxed_and_removes_its_api_socket() {
    if !kvm_ok() {
        return;
    }
    let dir = TempDir::new("sbx-vmm");
    let api = dir.path("api.sock");
    let mut p = start(&dir, true, &["--api-socket", api.to_str().unwrap()], None);
    // The filter goes on after set-up; wait for it.
    let deadline = Instant::now() + WAIT;
    while p.try_wait().is_none()
        && std::fs::read_to_string(format!("/proc/{}/status", p.child.id()))
            .map(|s| !s.contains("Seccomp:\t2"))
            .unwrap_or(true)
    {
        assert!(Instant::now() < deadline, "no seccomp filter:\n{}", p.log());
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(p.try_wait().is_none(), "vmm exited:\n{}", p.log());
    assert_sandboxed(&p);
    // Every thread is filtered (TSYNC), the vCPU and API threads included.
    for task in std::fs::read_dir(format!("/proc/{}/task", p.child.id())).unwrap() {
        let status = std::fs::read_to_string(task.unwrap().path().join("status")).unwrap();
        assert!(
            status.contains("Seccomp:\t2"),
            "a thread without the filter"
        );
    }
    assert!(api.exists());
    let status = p.terminate();
    assert!(status.success(), "{status}:\n{}", p.log());
    assert!(!api.exists(), "API socket left behind:\n{}", p.log());
    assert!(!p.log().contains("forbidden"), "{}", p.log());
}

#[test]
fn execve_kills_the_sandboxed_vmm() {
    if !kvm_ok() {
        return;
    }
    let dir = TempDir::new("sbx-vmm-exec");
    let mut p = start(&dir, true, &[], Some("exec"));
    assert_killed_for(&mut p, "execve");
}

#[test]
fn execve_runs_with_sandbox_off() {
    if !kvm_ok() {
        return;
    }
    let dir = TempDir::new("sbx-vmm-exec-off");
    let mut p = start(&dir, true, &["--sandbox", "off"], Some("exec"));
    let status = p.wait_exit();
    assert!(status.success(), "{status}:\n{}", p.log());
    assert!(!p.log().contains("forbidden"), "{}", p.log());
}

#[test]
fn opening_a_file_kills_the_sandboxed_vmm() {
    if !kvm_ok() {
        return;
    }
    // The API threads predate the Landlock domain, so the VMM's seccomp list
    // has no open at all.
    let dir = TempDir::new("sbx-vmm-open");
    let mut p = start(&dir, false, &[], Some("open"));
    assert_killed_for(&mut p, "openat");
}

#[test]
fn opening_a_file_works_with_sandbox_off() {
    if !kvm_ok() {
        return;
    }
    let dir = TempDir::new("sbx-vmm-open-off");
    let mut p = start(&dir, false, &["--sandbox=off"], Some("open"));
    let status = p.wait_exit();
    assert!(status.success(), "{status}:\n{}", p.log());
    assert!(p.log().contains("open /etc/passwd: opened"), "{}", p.log());
}

#[test]
fn help_describes_the_sandbox() {
    let out = std::process::Command::new(support::bin("vmm"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(
        help.contains("--sandbox") && help.contains("seccomp"),
        "{help}"
    );
}
