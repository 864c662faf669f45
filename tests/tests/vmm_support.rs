//! Shared helpers for the `vmm_*` integration tests: finding binaries and
//! tools, running back ends and `vmm` with timeouts, and a tiny hand-made
//! PVH guest. Included by the other `vmm_*.rs` files with `#[path]`; as a
//! test target of its own it only checks the tiny guest builder.
#![allow(dead_code)]

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// A workspace binary: `$SPLITVM_BIN_DIR/NAME`, else `target/debug/NAME`.
pub fn find_bin(name: &str) -> Option<PathBuf> {
    let dir = std::env::var_os("SPLITVM_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target/debug"));
    let p = dir.join(name);
    p.is_file().then_some(p)
}

/// Like [`find_bin`], but a missing binary fails the test with a clear message.
pub fn bin(name: &str) -> PathBuf {
    find_bin(name).unwrap_or_else(|| {
        panic!(
            "required binary `{name}` not found in $SPLITVM_BIN_DIR or target/debug: \
             build it first (cargo build --workspace)"
        )
    })
}

/// A third-party tool on PATH or in ~/.cargo/bin; missing fails the test.
pub fn tool(name: &str, how: &str) -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(PathBuf::from(home).join(".cargo/bin"));
    }
    dirs.into_iter()
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("required tool `{name}` not found on PATH: {how}"))
}

/// The freestanding test guest; built with `make -C tests/guest` if absent.
pub fn test_guest() -> PathBuf {
    let p = workspace().join("target/test-guest/splitvm-test-guest.elf");
    if !p.is_file() {
        let st = Command::new("make")
            .arg("-C")
            .arg(workspace().join("tests/guest"))
            .stdout(Stdio::null())
            .status();
        assert!(
            matches!(st, Ok(s) if s.success()) && p.is_file(),
            "test guest {} missing and `make -C tests/guest` failed",
            p.display()
        );
    }
    p
}

/// A scratch directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("splitvm-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A child process killed on drop.
pub struct Proc {
    pub name: String,
    pub child: Child,
}

impl Proc {
    pub fn spawn(name: &str, cmd: &mut Command) -> Self {
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Proc {
            name: name.to_string(),
            child,
        }
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Waits until something accepts connections on `path`.
pub fn wait_for_socket(path: &Path, proc_: &mut Proc) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if path.exists() && UnixStream::connect(path).is_ok() {
            return;
        }
        if !proc_.is_running() {
            panic!(
                "{} exited before listening on {}",
                proc_.name,
                path.display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!(
        "{} did not listen on {} within 20 s",
        proc_.name,
        path.display()
    );
}

/// Waits until `path` exists (for back ends that serve only one
/// connection, a probe connect would use it up).
pub fn wait_for_path(path: &Path, proc_: &mut Proc) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if path.exists() {
            std::thread::sleep(Duration::from_millis(100));
            return;
        }
        if !proc_.is_running() {
            panic!("{} exited before creating {}", proc_.name, path.display());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!(
        "{} did not create {} within 20 s",
        proc_.name,
        path.display()
    );
}

/// What a finished `vmm` run left.
pub struct VmmRun {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl VmmRun {
    pub fn dump(&self) -> String {
        format!(
            "status {:?}\n--- stdout\n{}\n--- stderr\n{}",
            self.status, self.stdout, self.stderr
        )
    }
}

/// Runs `vmm ARGS` to completion, killing it after `timeout`.
pub fn run_vmm(args: &[&str], timeout: Duration) -> VmmRun {
    let mut child = Command::new(bin("vmm"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start vmm");
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let t_out = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = out.read_to_end(&mut s);
        s
    });
    let t_err = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = err.read_to_end(&mut s);
        s
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let st = child.wait().unwrap();
            let stdout = String::from_utf8_lossy(&t_out.join().unwrap()).into_owned();
            let stderr = String::from_utf8_lossy(&t_err.join().unwrap()).into_owned();
            panic!(
                "vmm did not finish within {timeout:?} (killed)\n{}",
                VmmRun {
                    status: st,
                    stdout,
                    stderr
                }
                .dump()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    VmmRun {
        status,
        stdout: String::from_utf8_lossy(&t_out.join().unwrap()).into_owned(),
        stderr: String::from_utf8_lossy(&t_err.join().unwrap()).into_owned(),
    }
}

/// Builds a minimal 32-bit ELF with a PVH entry note. Its code checks the
/// hvm_start_info magic (prints `P` or `F` on COM1), prints the command
/// line and a newline, then either resets through the i8042 or, with
/// `hang`, halts forever with interrupts off.
pub fn tiny_pvh_guest(hang: bool) -> Vec<u8> {
    const LOAD: u32 = 0x0010_0000;
    let mut code: Vec<u8> = vec![
        0x66, 0xba, 0xf8, 0x03, //             mov dx, 0x3f8
        0x81, 0x3b, 0x78, 0xc5, 0x6e, 0x33, // cmp dword [ebx], 0x336ec578
        0xb0, b'F', //                         mov al, 'F'
        0x75, 0x02, //                         jne +2
        0xb0, b'P', //                         mov al, 'P'
        0xee, //                               out dx, al
        0x8b, 0x73, 0x18, //                   mov esi, [ebx+24]  (cmdline_paddr)
        // loop:
        0x8a, 0x06, //                         mov al, [esi]
        0x84, 0xc0, //                         test al, al
        0x74, 0x04, //                         jz done
        0xee, //                               out dx, al
        0x46, //                               inc esi
        0xeb, 0xf6, //                         jmp loop
        // done:
        0xb0, 0x0a, //                         mov al, '\n'
        0xee, //                               out dx, al
    ];
    if hang {
        code.extend_from_slice(&[0xfa, 0xf4, 0xeb, 0xfc]); // cli; hlt; jmp hlt
    } else {
        code.extend_from_slice(&[0xb0, 0xfe, 0xe6, 0x64, 0xf4, 0xeb, 0xfd]); // reset; hlt
    }
    let mut note = Vec::new();
    note.extend_from_slice(&4u32.to_le_bytes());
    note.extend_from_slice(&4u32.to_le_bytes());
    note.extend_from_slice(&18u32.to_le_bytes()); // XEN_ELFNOTE_PHYS32_ENTRY
    note.extend_from_slice(b"Xen\0");
    note.extend_from_slice(&LOAD.to_le_bytes());
    let phoff = 52u32;
    let code_off = phoff + 2 * 32;
    let note_off = code_off + code.len() as u32;
    let mut f = vec![0u8; 52];
    f[..7].copy_from_slice(b"\x7fELF\x01\x01\x01");
    f[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    f[18..20].copy_from_slice(&3u16.to_le_bytes()); // EM_386
    f[20..24].copy_from_slice(&1u32.to_le_bytes());
    f[24..28].copy_from_slice(&LOAD.to_le_bytes());
    f[28..32].copy_from_slice(&phoff.to_le_bytes());
    f[40..42].copy_from_slice(&52u16.to_le_bytes());
    f[42..44].copy_from_slice(&32u16.to_le_bytes());
    f[44..46].copy_from_slice(&2u16.to_le_bytes());
    let ph = |t: u32, off: u32, addr: u32, sz: u32| {
        let mut p = vec![0u8; 32];
        for (i, v) in [t, off, addr, addr, sz, sz, 5, 4].iter().enumerate() {
            p[i * 4..i * 4 + 4].copy_from_slice(&v.to_le_bytes());
        }
        p
    };
    f.extend(ph(1, code_off, LOAD, code.len() as u32)); // PT_LOAD
    f.extend(ph(4, note_off, 0, note.len() as u32)); // PT_NOTE
    f.extend(code);
    f.extend(note);
    f
}

/// Sends one API request line and reads one JSON reply line.
pub fn api_request(sock: &Path, request: &str) -> serde_json::Value {
    use std::io::{BufRead, BufReader, Write};
    let mut s = UnixStream::connect(sock).expect("connect API socket");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(format!("{request}\n").as_bytes()).unwrap();
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).expect("API reply");
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad API reply {line:?}: {e}"))
}

#[test]
fn tiny_guest_is_an_elf32_with_pvh_note() {
    let g = tiny_pvh_guest(false);
    assert_eq!(&g[..4], b"\x7fELF");
    assert_eq!(g[4], 1);
}
