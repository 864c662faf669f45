//! The freestanding test guest (tests/guest) under `vmm`, driving blk and
//! rng by interrupt through vhost-user back ends: ours, and third-party
//! ones (qemu-storage-daemon's vhost-user-blk export, vhost-device-rng).
//! Afterwards the disk image must hold the guest's pattern.

#[path = "vmm_support.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use support::*;

/// Where the guest writes: sectors 2048..2055, byte j of sector s is
/// (s * 7 + j) & 0xff (tests/guest/blk.c).
const TEST_SECTOR: usize = 2048;
const TEST_SECTORS: usize = 8;

fn check_image(img: &Path) {
    let data = std::fs::read(img).unwrap();
    for s in TEST_SECTOR..TEST_SECTOR + TEST_SECTORS {
        for j in 0..512 {
            let want = ((s * 7 + j) & 0xff) as u8;
            assert_eq!(data[s * 512 + j], want, "image byte {j} of sector {s}");
        }
    }
}

fn make_image(dir: &TempDir) -> PathBuf {
    let img = dir.path("disk.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(8 << 20)
        .unwrap();
    img
}

fn run_guest(blk_sock: &Path, rng_sock: &Path, cpus: &str, memory: &str) -> VmmRun {
    let blk = format!("blk,socket={}", blk_sock.display());
    let rng = format!("rng,socket={}", rng_sock.display());
    run_guest_with(&blk, &rng, cpus, memory)
}

fn run_guest_with(blk: &str, rng: &str, cpus: &str, memory: &str) -> VmmRun {
    let guest = test_guest();
    let run = run_vmm(
        &[
            "--kernel",
            guest.to_str().unwrap(),
            "--cmdline",
            "console=ttyS0",
            "--memory",
            memory,
            "--cpus",
            cpus,
            "--device",
            blk,
            "--device",
            rng,
        ],
        Duration::from_secs(120),
    );
    assert!(
        run.stdout.contains("SPLITVM-GUEST PASS"),
        "guest did not pass\n{}",
        run.dump()
    );
    assert!(run.status.success(), "{}", run.dump());
    assert!(run.stderr.contains("reset (i8042)"), "{}", run.dump());
    assert!(!run.stderr.contains("panicked"), "{}", run.dump());
    run
}

/// An rng back end: ours (`vhost-user-rng`) when built, else vhost-device-rng.
/// Returns the process and the socket path to give `vmm`.
fn start_rng(dir: &TempDir, prefer_ours: bool) -> (Proc, PathBuf) {
    if prefer_ours {
        if let Some(ours) = find_bin("vhost-user-rng") {
            let sock = dir.path("rng.sock");
            let mut p = Proc::spawn(
                "vhost-user-rng",
                Command::new(ours)
                    .arg("--socket")
                    .arg(&sock)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null()),
            );
            wait_for_socket(&sock, &mut p);
            return (p, sock);
        }
    }
    let tool_path = tool(
        "vhost-device-rng",
        "install it with `cargo install --locked vhost-device-rng`",
    );
    let base = dir.path("vdr.sock");
    // vhost-device-rng listens on `<path>0`.
    let sock = PathBuf::from(format!("{}0", base.display()));
    let mut p = Proc::spawn(
        "vhost-device-rng",
        Command::new(tool_path)
            .arg("--socket-path")
            .arg(&base)
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    wait_for_path(&sock, &mut p);
    (p, sock)
}

#[test]
fn test_guest_with_our_backends() {
    let dir = TempDir::new("vmm-guest-ours");
    let img = make_image(&dir);
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
    let (_rng, rng_sock) = start_rng(&dir, true);
    // 5 GiB: RAM below and above the 32-bit MMIO hole, so the memory
    // table has two regions (the memfd is sparse; this costs nothing).
    let run = run_guest(&blk_sock, &rng_sock, "2", "5G");
    assert!(
        run.stdout.contains("0x0100000000-0x017fffffff type 1"),
        "{}",
        run.dump()
    );
    assert!(
        run.stdout.contains("blk@0xd0000000: PASS"),
        "{}",
        run.dump()
    );
    assert!(
        run.stdout.contains("rng@0xd0001000: PASS"),
        "{}",
        run.dump()
    );
    check_image(&img);
}

#[test]
fn test_guest_with_third_party_backends() {
    let dir = TempDir::new("vmm-guest-3rd");
    let img = make_image(&dir);
    let qsd = tool(
        "qemu-storage-daemon",
        "install it with `apt-get install qemu-system-common` (or qemu-utils)",
    );
    let blk_sock = dir.path("qsd.sock");
    let mut blk = Proc::spawn(
        "qemu-storage-daemon",
        Command::new(qsd)
            .arg("--blockdev")
            .arg(format!("driver=file,node-name=f0,filename={}", img.display()))
            .arg("--blockdev")
            .arg("driver=raw,node-name=d0,file=f0")
            .arg("--export")
            .arg(format!(
                "type=vhost-user-blk,id=e0,node-name=d0,addr.type=unix,addr.path={},writable=on,num-queues=1",
                blk_sock.display()
            ))
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    // qemu-storage-daemon keeps serving after a probe connection leaves.
    wait_for_socket(&blk_sock, &mut blk);
    let (_rng, rng_sock) = start_rng(&dir, false);
    let run = run_guest(&blk_sock, &rng_sock, "1", "128M");
    assert!(
        run.stdout.contains("blk@0xd0000000: PASS"),
        "{}",
        run.dump()
    );
    assert!(
        run.stdout.contains("rng@0xd0001000: PASS"),
        "{}",
        run.dump()
    );
    blk.kill();
    check_image(&img);
}

/// The same devices as `generic` ones: the proxy has no per-type code, so
/// an explicit virtio id (and config size, for blk) is all it needs.
#[test]
fn test_guest_with_generic_devices() {
    let dir = TempDir::new("vmm-guest-generic");
    let img = make_image(&dir);
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
    let (_rng, rng_sock) = start_rng(&dir, true);
    let run = run_guest_with(
        &format!(
            "generic,virtio-id=2,config-size=60,socket={}",
            blk_sock.display()
        ),
        &format!("generic,virtio-id=4,socket={}", rng_sock.display()),
        "1",
        "128M",
    );
    assert!(
        run.stdout.contains("blk@0xd0000000: PASS"),
        "{}",
        run.dump()
    );
    assert!(
        run.stdout.contains("rng@0xd0001000: PASS"),
        "{}",
        run.dump()
    );
    check_image(&img);
}

/// A back end that goes away after the handshake: the guest's driver sees
/// the device fail, the VMM keeps running and ends normally at the reset.
#[test]
fn backend_gone_before_driver_ok_does_not_kill_vmm() {
    use std::io::{Read, Write};
    let dir = TempDir::new("vmm-guest-gone");
    let sock = dir.path("gone.sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let t = std::thread::spawn(move || {
        let (mut c, _) = listener.accept().unwrap();
        // SET_OWNER, then GET_FEATURES: answer VERSION_1 only, then hang up.
        for _ in 0..2 {
            let mut hdr = [0u8; 12];
            c.read_exact(&mut hdr).unwrap();
            let size = u32::from_le_bytes(hdr[8..12].try_into().unwrap()) as usize;
            let mut body = vec![0u8; size];
            c.read_exact(&mut body).unwrap();
            if u32::from_le_bytes(hdr[0..4].try_into().unwrap()) == 1 {
                let mut m = vec![1, 0, 0, 0, 5, 0, 0, 0, 8, 0, 0, 0];
                m.extend_from_slice(&(1u64 << 32).to_le_bytes());
                c.write_all(&m).unwrap();
            }
        }
    });
    let guest = test_guest();
    let dev = format!("rng,socket={}", sock.display());
    let run = run_vmm(
        &[
            "--kernel",
            guest.to_str().unwrap(),
            "--memory",
            "64M",
            "--device",
            &dev,
        ],
        Duration::from_secs(120),
    );
    t.join().unwrap();
    assert!(run.status.success(), "{}", run.dump());
    assert!(run.stdout.contains("SPLITVM-GUEST FAIL"), "{}", run.dump());
    assert!(run.stderr.contains("disconnected"), "{}", run.dump());
    assert!(run.stderr.contains("reset (i8042)"), "{}", run.dump());
    assert!(!run.stderr.contains("panicked"), "{}", run.dump());
}
