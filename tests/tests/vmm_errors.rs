//! Bad input to `vmm` gets one clear `vmm: error: ...` line and a non-zero
//! exit, never a panic or a hang.

#[path = "vmm_support.rs"]
mod support;

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::Duration;

use support::*;

fn expect_error(args: &[&str], needle: &str) {
    let run = run_vmm(args, Duration::from_secs(60));
    assert!(!run.status.success(), "expected failure\n{}", run.dump());
    assert_ne!(
        run.status.code(),
        None,
        "killed by a signal\n{}",
        run.dump()
    );
    assert!(!run.stderr.contains("panicked"), "panic\n{}", run.dump());
    let lines: Vec<&str> = run.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "want exactly one line\n{}", run.dump());
    assert!(lines[0].starts_with("vmm: error: "), "{}", run.dump());
    assert!(
        lines[0].contains(needle),
        "want {needle:?} in the error\n{}",
        run.dump()
    );
}

fn tiny_guest(dir: &TempDir) -> String {
    let g = dir.path("tiny.elf");
    std::fs::write(&g, tiny_pvh_guest(false)).unwrap();
    g.display().to_string()
}

#[test]
fn kernel_that_is_not_a_kernel() {
    let dir = TempDir::new("vmm-err-nk");
    let k = dir.path("notes.txt");
    std::fs::write(&k, "just some text, certainly not a kernel\n".repeat(40)).unwrap();
    expect_error(&["--kernel", k.to_str().unwrap()], "is not a kernel image");
}

#[test]
fn kernel_file_missing() {
    expect_error(
        &["--kernel", "/nonexistent/bzImage"],
        "cannot read kernel /nonexistent/bzImage",
    );
}

#[test]
fn missing_socket() {
    let dir = TempDir::new("vmm-err-ms");
    let g = tiny_guest(&dir);
    let dev = format!("blk,socket={}", dir.path("nobody.sock").display());
    expect_error(
        &["--kernel", &g, "--device", &dev],
        "cannot connect to vhost-user back end",
    );
}

#[test]
fn refused_socket() {
    let dir = TempDir::new("vmm-err-rs");
    let g = tiny_guest(&dir);
    let sock = dir.path("stale.sock");
    drop(UnixListener::bind(&sock).unwrap()); // the file stays, nobody listens
    let dev = format!("rng,socket={}", sock.display());
    expect_error(&["--kernel", &g, "--device", &dev], "Connection refused");
}

#[test]
fn two_devices_on_one_socket() {
    let dir = TempDir::new("vmm-err-dup");
    let g = tiny_guest(&dir);
    let s = dir.path("one.sock").display().to_string();
    expect_error(
        &[
            "--kernel",
            &g,
            "--device",
            &format!("blk,socket={s}"),
            "--device",
            &format!("rng,socket={s}"),
        ],
        "two devices use the same socket",
    );
}

#[test]
fn memory_too_small_for_initramfs() {
    let dir = TempDir::new("vmm-err-mem");
    let g = tiny_guest(&dir);
    let initrd = dir.path("initrd.img");
    std::fs::File::create(&initrd)
        .unwrap()
        .set_len(12 << 20)
        .unwrap();
    expect_error(
        &[
            "--kernel",
            &g,
            "--initramfs",
            initrd.to_str().unwrap(),
            "--memory",
            "8M",
        ],
        "guest memory too small for kernel and initramfs",
    );
}

#[test]
fn bad_option_values() {
    let dir = TempDir::new("vmm-err-opt");
    let g = tiny_guest(&dir);
    expect_error(&["--kernel", &g, "--memory", "lots"], "invalid memory size");
    expect_error(
        &["--kernel", &g, "--device", "floppy,socket=/x"],
        "invalid --device",
    );
    expect_error(
        &["--kernel", &g, "--serial", "tcp:1234"],
        "invalid --serial",
    );
    expect_error(&["--kernel", &g, "--cpus", "0"], "--cpus must be between");
}

/// A scripted vhost-user back end: answers GET_FEATURES with `features`
/// and GET_PROTOCOL_FEATURES with `protocol`, then waits for the hang-up.
fn fake_backend(sock: &Path, features: u64, protocol: u64) -> std::thread::JoinHandle<()> {
    let listener = UnixListener::bind(sock).unwrap();
    std::thread::spawn(move || {
        let Ok((mut c, _)) = listener.accept() else {
            return;
        };
        loop {
            let mut hdr = [0u8; 12];
            if c.read_exact(&mut hdr).is_err() {
                return;
            }
            let req = u32::from_le_bytes(hdr[0..4].try_into().unwrap());
            let size = u32::from_le_bytes(hdr[8..12].try_into().unwrap()) as usize;
            let mut body = vec![0u8; size];
            if c.read_exact(&mut body).is_err() {
                return;
            }
            let reply = |c: &mut UnixStream, v: u64| {
                let mut m = Vec::new();
                m.extend_from_slice(&req.to_le_bytes());
                m.extend_from_slice(&(0x1u32 | 0x4).to_le_bytes()); // version 1, reply
                m.extend_from_slice(&8u32.to_le_bytes());
                m.extend_from_slice(&v.to_le_bytes());
                let _ = c.write_all(&m);
            };
            match req {
                1 => reply(&mut c, features),  // GET_FEATURES
                15 => reply(&mut c, protocol), // GET_PROTOCOL_FEATURES
                _ => {}
            }
        }
    })
}

#[test]
fn backend_without_virtio_1() {
    let dir = TempDir::new("vmm-err-v1");
    let g = tiny_guest(&dir);
    let sock = dir.path("old.sock");
    let t = fake_backend(&sock, 1 << 30, 0);
    let dev = format!("rng,socket={}", sock.display());
    expect_error(
        &["--kernel", &g, "--device", &dev],
        "lacks required feature VIRTIO_F_VERSION_1",
    );
    t.join().unwrap();
}

#[test]
fn blk_backend_without_config() {
    let dir = TempDir::new("vmm-err-cfg");
    let g = tiny_guest(&dir);
    let sock = dir.path("nocfg.sock");
    // VERSION_1 + PROTOCOL_FEATURES; protocol: REPLY_ACK only, no CONFIG.
    let t = fake_backend(&sock, (1 << 32) | (1 << 30), 0x8);
    let dev = format!("blk,socket={}", sock.display());
    expect_error(&["--kernel", &g, "--device", &dev], "CONFIG");
    t.join().unwrap();
}

#[test]
fn backend_that_hangs_up_at_once() {
    let dir = TempDir::new("vmm-err-hup");
    let g = tiny_guest(&dir);
    let sock = dir.path("rude.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    let t = std::thread::spawn(move || {
        let _ = listener.accept();
    });
    let dev = format!("rng,socket={}", sock.display());
    expect_error(&["--kernel", &g, "--device", &dev], "vhost-user");
    t.join().unwrap();
}

#[test]
fn hugepages_unavailable() {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let free = meminfo
        .lines()
        .find(|l| l.starts_with("HugePages_Free:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or(0);
    if free > 0 {
        eprintln!("skipped: this host has {free} free hugepages, the error path cannot be hit");
        return;
    }
    let dir = TempDir::new("vmm-err-huge");
    let g = tiny_guest(&dir);
    expect_error(&["--kernel", &g, "--memory", "64M,hugepages"], "hugepages");
}

#[test]
fn kernel_larger_than_memory() {
    let dir = TempDir::new("vmm-err-big");
    let g = dir.path("big.elf");
    // The tiny guest, but its load segment claims 64 MiB.
    let mut elf = tiny_pvh_guest(false);
    elf[52 + 20..52 + 24].copy_from_slice(&(64u32 << 20).to_le_bytes()); // p_memsz
    std::fs::write(&g, elf).unwrap();
    expect_error(
        &["--kernel", g.to_str().unwrap(), "--memory", "16M"],
        "does not fit in guest memory",
    );
}

#[test]
fn api_socket_in_use() {
    let dir = TempDir::new("vmm-err-api");
    let g = tiny_guest(&dir);
    let api = dir.path("api.sock");
    let _live = UnixListener::bind(&api).unwrap();
    expect_error(
        &["--kernel", &g, "--api-socket", api.to_str().unwrap()],
        "is in use",
    );
    let file = dir.path("plain");
    std::fs::write(&file, "x").unwrap();
    expect_error(
        &["--kernel", &g, "--api-socket", file.to_str().unwrap()],
        "not a socket",
    );
}

#[test]
fn backend_that_never_answers() {
    let dir = TempDir::new("vmm-err-mute");
    let g = tiny_guest(&dir);
    let sock = dir.path("mute.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    let t = std::thread::spawn(move || {
        // Accept, read whatever comes, answer nothing until vmm gives up.
        if let Ok((mut c, _)) = listener.accept() {
            let mut buf = [0u8; 256];
            while matches!(c.read(&mut buf), Ok(n) if n > 0) {}
        }
    });
    let start = std::time::Instant::now();
    expect_error(
        &[
            "--kernel",
            &g,
            "--device",
            &format!("rng,socket={}", sock.display()),
        ],
        "did not answer within",
    );
    assert!(
        start.elapsed() < Duration::from_secs(30),
        "took {:?}",
        start.elapsed()
    );
    t.join().unwrap();
}
