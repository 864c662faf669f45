//! `vmm` end to end with a tiny hand-made PVH guest (no test-guest build
//! needed): PVH entry state, command line with virtio_mmio entries, i8042
//! reset ending the VMM, the API socket, and a back end dying under a
//! running VM.

#[path = "vmm_support.rs"]
mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::*;

#[test]
fn pvh_entry_cmdline_and_reset() {
    let dir = TempDir::new("vmm-boot");
    let guest = dir.path("tiny.elf");
    std::fs::write(&guest, tiny_pvh_guest(false)).unwrap();
    let run = run_vmm(
        &[
            "--kernel",
            guest.to_str().unwrap(),
            "--memory",
            "32M",
            "--cmdline",
            "hello world",
        ],
        Duration::from_secs(60),
    );
    assert!(run.status.success(), "{}", run.dump());
    assert!(run.stdout.contains("Phello world\n"), "{}", run.dump());
    assert!(run.stderr.contains("reset (i8042)"), "{}", run.dump());
}

#[test]
fn smp_guest_boots() {
    let dir = TempDir::new("vmm-smp");
    let guest = dir.path("tiny.elf");
    std::fs::write(&guest, tiny_pvh_guest(false)).unwrap();
    let run = run_vmm(
        &[
            "--kernel",
            guest.to_str().unwrap(),
            "--memory",
            "64M",
            "--cpus",
            "4",
            "--cmdline",
            "x",
        ],
        Duration::from_secs(60),
    );
    assert!(run.status.success(), "{}", run.dump());
    assert!(run.stdout.contains("Px\n"), "{}", run.dump());
}

#[test]
fn serial_to_file() {
    let dir = TempDir::new("vmm-serial");
    let guest = dir.path("tiny.elf");
    let out = dir.path("serial.txt");
    std::fs::write(&guest, tiny_pvh_guest(false)).unwrap();
    let serial = format!("file={}", out.display());
    let run = run_vmm(
        &[
            "--kernel",
            guest.to_str().unwrap(),
            "--cmdline",
            "to-file",
            "--serial",
            &serial,
        ],
        Duration::from_secs(60),
    );
    assert!(run.status.success(), "{}", run.dump());
    assert!(!run.stdout.contains("to-file"));
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "Pto-file\n");
}

/// The API reports vCPUs, memory and devices; killing the back end leaves
/// the VMM running and the device reported disconnected; `shutdown` ends it.
#[test]
fn api_status_backend_death_and_shutdown() {
    let dir = TempDir::new("vmm-api");
    let guest = dir.path("tiny.elf");
    std::fs::write(&guest, tiny_pvh_guest(true)).unwrap();
    let img = dir.path("disk.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(4 << 20)
        .unwrap();
    let blk_sock = dir.path("blk.sock");
    let mut blk = Proc::spawn(
        "vhost-user-blk",
        Command::new(bin("vhost-user-blk"))
            .arg("--socket")
            .arg(&blk_sock)
            .arg("--image")
            .arg(&img)
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    wait_for_socket(&blk_sock, &mut blk);
    let api = dir.path("api.sock");
    let serial = format!("file={}", dir.path("serial.txt").display());
    let dev = format!("blk,socket={}", blk_sock.display());
    let mut vmm = Proc::spawn(
        "vmm",
        Command::new(bin("vmm"))
            .args([
                "--kernel",
                guest.to_str().unwrap(),
                "--memory",
                "64M",
                "--cpus",
                "2",
            ])
            .args(["--device", &dev, "--serial", &serial])
            .arg("--api-socket")
            .arg(&api)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped()),
    );
    wait_for_socket(&api, &mut vmm);

    let st = api_request(&api, r#"{"command":"status"}"#);
    assert_eq!(st["ok"], true, "{st}");
    assert_eq!(st["vcpus"], 2, "{st}");
    assert_eq!(st["memory_bytes"], 64u64 << 20, "{st}");
    let d = &st["devices"][0];
    assert_eq!(d["type"], "blk", "{st}");
    assert_eq!(d["socket"], blk_sock.display().to_string(), "{st}");
    assert_eq!(d["state"], "connected", "{st}");
    assert_eq!(d["irq"], 5, "{st}");
    assert_eq!(d["mmio_base"], "0xd0000000", "{st}");

    blk.kill();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let st = api_request(&api, "status");
        if st["devices"][0]["state"] == "disconnected" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "device never reported disconnected: {st}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(vmm.is_running(), "vmm died with its back end");

    let r = api_request(&api, r#"{"command":"shutdown"}"#);
    assert_eq!(r["ok"], true);
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = vmm.child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "vmm did not exit after shutdown");
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(vmm.child.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(status.success(), "exit {status:?}, stderr:\n{err}");
    assert!(err.contains("disconnected"), "{err}");
    assert!(
        err.contains("shutdown requested on the API socket"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    assert!(!api.exists(), "API socket left behind");
}

/// SIGTERM ends the VMM cleanly: reason printed, exit 0, API socket removed.
#[test]
fn sigterm_ends_vmm_cleanly() {
    let dir = TempDir::new("vmm-sigterm");
    let guest = dir.path("tiny.elf");
    std::fs::write(&guest, tiny_pvh_guest(true)).unwrap();
    let api = dir.path("api.sock");
    let mut vmm = Proc::spawn(
        "vmm",
        Command::new(bin("vmm"))
            .args(["--kernel", guest.to_str().unwrap(), "--serial", "none"])
            .arg("--api-socket")
            .arg(&api)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped()),
    );
    wait_for_socket(&api, &mut vmm);
    // SAFETY: plain kill(2) on our child.
    unsafe { libc::kill(vmm.child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = vmm.child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "vmm ignored SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(vmm.child.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(status.success(), "{status:?}: {err}");
    assert!(err.contains("terminating on signal 15"), "{err}");
    assert!(!api.exists(), "API socket left behind");
}
