//! Finding our binaries and running back-end daemons under test.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Where a binary of this workspace is: `$SPLITVM_BIN_DIR/<name>`, else
/// `<workspace>/target/debug/<name>`. Panics with a hint if it is not there.
pub fn bin_path(name: &str) -> PathBuf {
    let p = match std::env::var_os("SPLITVM_BIN_DIR") {
        Some(dir) => PathBuf::from(dir).join(name),
        None => workspace_root().join("target").join("debug").join(name),
    };
    if !p.is_file() {
        panic!(
            "binary `{name}` not found at {}: build with `cargo build --workspace` \
             (or set SPLITVM_BIN_DIR to the directory holding it)",
            p.display()
        );
    }
    p
}

/// Like [`bin_path`] but `None` instead of a panic.
pub fn try_bin_path(name: &str) -> Option<PathBuf> {
    std::panic::catch_unwind(|| bin_path(name)).ok()
}

/// The workspace root (the parent of this crate's directory).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// Find a program on `$PATH`.
pub fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

/// Whether a listening Unix socket is bound at `path` (from /proc/net/unix, without
/// connecting, so a one-connection-at-a-time back end is not disturbed).
pub fn socket_listening(path: &Path) -> bool {
    let Ok(meta) = std::fs::metadata(path) else {
        return false;
    };
    if !meta.file_type().is_socket() {
        return false;
    }
    let Ok(table) = std::fs::read_to_string("/proc/net/unix") else {
        return true;
    };
    let want = path.to_string_lossy();
    table.lines().skip(1).any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        // Num RefCount Protocol Flags Type St Inode Path; Flags 00010000 = listening.
        f.len() >= 8 && f[7] == want && f[3] == "00010000"
    })
}

/// Errors of daemon handling.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// Could not start the process.
    #[error("spawning {0}: {1}")]
    Spawn(String, std::io::Error),
    /// It exited before its socket came up.
    #[error("{name} exited with {status} before listening; stderr:\n{stderr}")]
    Exited {
        name: String,
        status: ExitStatus,
        stderr: String,
    },
    /// The socket did not come up in time.
    #[error("{name} did not listen on {socket} within {timeout:?}; stderr:\n{stderr}")]
    Timeout {
        name: String,
        socket: String,
        timeout: Duration,
        stderr: String,
    },
}

/// A back-end process with its stderr captured in a file; killed on drop.
pub struct Daemon {
    name: String,
    child: Option<Child>,
    socket: PathBuf,
    stderr_path: PathBuf,
    status: Option<ExitStatus>,
}

impl Daemon {
    /// Start `program args...` (stderr to `stderr_path`, stdout discarded) and wait up to
    /// `timeout` for a listener on `socket`.
    pub fn spawn(
        program: &Path,
        args: &[&str],
        socket: &Path,
        stderr_path: &Path,
        timeout: Duration,
    ) -> Result<Self, DaemonError> {
        let d = Self::spawn_no_wait(program, args, socket, stderr_path)?;
        d.wait_listening(timeout)
    }

    /// Start without waiting for the socket.
    pub fn spawn_no_wait(
        program: &Path,
        args: &[&str],
        socket: &Path,
        stderr_path: &Path,
    ) -> Result<Self, DaemonError> {
        let name = program
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let err = File::create(stderr_path).map_err(|e| DaemonError::Spawn(name.clone(), e))?;
        let child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err)
            .env("RUST_BACKTRACE", "1")
            .spawn()
            .map_err(|e| DaemonError::Spawn(name.clone(), e))?;
        Ok(Daemon {
            name,
            child: Some(child),
            socket: socket.to_path_buf(),
            stderr_path: stderr_path.to_path_buf(),
            status: None,
        })
    }

    /// Wait until the socket listens (or the process exits, or `timeout`).
    pub fn wait_listening(mut self, timeout: Duration) -> Result<Self, DaemonError> {
        let deadline = Instant::now() + timeout;
        loop {
            if socket_listening(&self.socket) {
                return Ok(self);
            }
            if let Some(status) = self.try_wait() {
                return Err(DaemonError::Exited {
                    name: self.name.clone(),
                    status,
                    stderr: self.stderr(),
                });
            }
            if Instant::now() >= deadline {
                return Err(DaemonError::Timeout {
                    name: self.name.clone(),
                    socket: self.socket.display().to_string(),
                    timeout,
                    stderr: self.stderr(),
                });
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Start our `vhost-user-blk` on `socket` with `image` and extra args, waiting 10 s for
    /// the socket. Panics on failure.
    pub fn blk(dir: &Path, socket: &Path, image: &Path, extra: &[&str]) -> Self {
        let mut args = vec![
            "--socket",
            socket.to_str().unwrap(),
            "--image",
            image.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let stderr = dir.join(format!(
            "blk-{}.stderr",
            socket.file_name().unwrap().to_string_lossy()
        ));
        Self::spawn(
            &bin_path("vhost-user-blk"),
            &args,
            socket,
            &stderr,
            Duration::from_secs(10),
        )
        .unwrap_or_else(|e| panic!("starting vhost-user-blk: {e}"))
    }

    /// Start qemu-storage-daemon exporting `image` as vhost-user-blk on `socket`; `None`
    /// (with a message on stderr) if it is not installed.
    pub fn qemu_storage_daemon(
        dir: &Path,
        socket: &Path,
        image: &Path,
        num_queues: u16,
    ) -> Option<Self> {
        let Some(qsd) = which("qemu-storage-daemon") else {
            eprintln!("SKIP: qemu-storage-daemon is not installed");
            return None;
        };
        let file = format!(
            "driver=file,node-name=f0,filename={}",
            image.to_str().unwrap()
        );
        let export = format!(
            "type=vhost-user-blk,id=e0,node-name=d0,addr.type=unix,addr.path={},writable=on,num-queues={num_queues}",
            socket.to_str().unwrap()
        );
        let args = [
            "--blockdev",
            file.as_str(),
            "--blockdev",
            "driver=raw,node-name=d0,file=f0",
            "--export",
            export.as_str(),
        ];
        Some(
            Self::spawn(
                &qsd,
                &args,
                socket,
                &dir.join("qsd.stderr"),
                Duration::from_secs(10),
            )
            .unwrap_or_else(|e| panic!("starting qemu-storage-daemon: {e}")),
        )
    }

    /// The process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }
    /// The socket path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Everything the process wrote to stderr so far.
    pub fn stderr(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = File::open(&self.stderr_path) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    /// Exit status if it has exited (reaps it).
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(s)) = c.try_wait() {
                    self.status = Some(s);
                }
            }
        }
        self.status
    }

    /// Whether the process is still running.
    pub fn is_alive(&mut self) -> bool {
        self.child.is_some() && self.try_wait().is_none()
    }

    /// Panic (with its stderr) if the process has exited.
    #[track_caller]
    pub fn assert_alive(&mut self, context: &str) {
        if let Some(s) = self.try_wait() {
            panic!(
                "{} died ({context}): {s}; stderr:\n{}",
                self.name,
                self.stderr()
            );
        }
    }

    /// Send a signal.
    pub fn signal(&mut self, sig: nix::sys::signal::Signal) {
        if self.is_alive() {
            if let Some(pid) = self.pid() {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig);
            }
        }
    }

    /// Wait up to `timeout` for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_wait() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGTERM and wait up to `timeout`; `None` if it did not exit (it is then killed on
    /// drop).
    pub fn terminate(&mut self, timeout: Duration) -> Option<ExitStatus> {
        self.signal(nix::sys::signal::Signal::SIGTERM);
        self.wait_exit(timeout)
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        if let Some(c) = self.child.as_mut() {
            if self.status.is_none() {
                let _ = c.kill();
                if let Ok(s) = c.wait() {
                    self.status = Some(s);
                }
            }
        }
    }

    /// Describe an exit status (code or signal).
    pub fn describe(status: &ExitStatus) -> String {
        match (status.code(), status.signal()) {
            (Some(c), _) => format!("exit code {c}"),
            (None, Some(s)) => format!("signal {s}"),
            _ => "unknown".into(),
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Output of a short-lived command.
#[derive(Debug)]
pub struct RunOutput {
    /// Exit status; `None` if it was killed at the time limit.
    pub status: Option<ExitStatus>,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

/// Run `program args...` to completion, killing it after `timeout`.
pub fn run_bounded(program: &Path, args: &[&str], timeout: Duration) -> RunOutput {
    let dir = crate::util::TempDir::new("run");
    let out_p = dir.join("stdout");
    let err_p = dir.join("stderr");
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(File::create(&out_p).unwrap())
        .stderr(File::create(&err_p).unwrap())
        .env("RUST_BACKTRACE", "1")
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {}: {e}", program.display()));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Ok(Some(s)) = child.try_wait() {
            break Some(s);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    RunOutput {
        status,
        stdout: std::fs::read_to_string(&out_p).unwrap_or_default(),
        stderr: std::fs::read_to_string(&err_p).unwrap_or_default(),
    }
}
