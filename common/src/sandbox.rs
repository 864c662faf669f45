//! The daemon sandbox (on by default, `--sandbox off` to debug without it).
//!
//! Once a back end's device resources (image, tap, entropy source) and its
//! listening socket are open, nothing more is needed from the rest of the
//! system, so the process gives up what it could still reach, in this order:
//!
//! 1. privileges ([`privileges`]): started as root it switches to
//!    `--user`/`--group`, or else keeps the root uid with no capabilities at
//!    all (bounding, ambient, permitted and effective sets emptied);
//!    no-new-privileges is set either way;
//! 2. file-system reach ([`fs`]): a Landlock domain that handles every access
//!    right the kernel knows and grants nothing, except removing the socket
//!    file in its own directory (at exit); TCP bind/connect is denied and
//!    abstract unix sockets and signals are scoped to the process. This is done
//!    on the main thread before the worker threads start, so all of them
//!    inherit it (Landlock ABI < 8 cannot synchronise threads);
//! 3. system calls ([`seccomp`]): a seccomp-BPF allowlist installed on every
//!    thread at once (TSYNC) just before the daemon accepts its first front
//!    end: the calls of the shared daemon core plus the back end's own
//!    [`SandboxProfile`]. No execve, no fork, no new sockets, no ptrace, no
//!    mount. A forbidden call is not executed: the kernel sends SIGSYS, whose
//!    handler writes `<daemon>[pid]: error: seccomp: forbidden syscall N (name)`
//!    to stderr and ends the process with status 159 (128 + SIGSYS). A
//!    supervisor (or QEMU's `reconnect=`) brings the device back by restarting
//!    the daemon. (A thread that has SIGSYS blocked at that moment, e.g. one
//!    still in glibc's start-up, is killed by the kernel without the line: the
//!    exit is then "killed by signal SIGSYS" and `strace -f` shows the call.)
//!
//! Opening a file stays allowed by seccomp only when Landlock is fully
//! enforced, so that it fails with EACCES instead of killing the daemon.
//!
//! For tests only, `SPLITVM_SANDBOX_SELFTEST=exec|open|socket` makes the
//! daemon try a forbidden operation right after the sandbox is on and log the
//! outcome (see [`selftest`]).

pub mod fs;
pub mod privileges;
pub mod seccomp;

use std::path::Path;

/// What `--print-capabilities` says about the sandbox (a splitvm extension
/// of the spec's JSON object).
pub fn capabilities_note() -> serde_json::Value {
    serde_json::json!({
        "default": "on",
        "option": "--sandbox on|off",
        "privileges": "as root: --user/--group, else uid 0 with no capabilities; no-new-privileges",
        "landlock": "no file-system access after set-up (socket file removal only)",
        "seccomp": "allowlist per daemon; a forbidden call is logged and ends the process (status 159)",
    })
}

/// `--sandbox on|off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum SandboxMode {
    /// Drop privileges, restrict the file system (Landlock) and system calls (seccomp).
    #[default]
    On,
    /// No sandbox (debugging only).
    Off,
}

/// What a back end needs on top of the shared daemon core's allowlist.
#[derive(Debug, Clone, Default)]
pub struct SandboxProfile {
    /// System calls allowed with any arguments (`libc::SYS_*`).
    pub syscalls: Vec<i64>,
    /// ioctl(2) requests allowed (matched on the request number).
    pub ioctls: Vec<u64>,
}

impl SandboxProfile {
    /// A profile from syscall numbers and ioctl requests.
    pub fn new(syscalls: &[i64], ioctls: &[u64]) -> Self {
        SandboxProfile {
            syscalls: syscalls.to_vec(),
            ioctls: ioctls.to_vec(),
        }
    }
}

/// Errors while entering the sandbox.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot drop privileges: {0}")]
    Privileges(String),
    #[error("cannot restrict file-system access (Landlock)")]
    Landlock(#[source] landlock::RulesetError),
    #[error("cannot build the seccomp filter")]
    SeccompBuild(#[source] seccompiler::BackendError),
    #[error("cannot install the seccomp filter")]
    SeccompApply(#[source] seccompiler::Error),
    #[error("cannot install the SIGSYS handler")]
    SigsysHandler(#[source] std::io::Error),
}

/// One sandbox, applied in two steps (see the module documentation).
pub struct Sandbox {
    name: &'static str,
    mode: SandboxMode,
    profile: SandboxProfile,
    /// Whether Landlock fully restricts opening files (then seccomp lets
    /// `openat` through, to fail with EACCES).
    fs_enforced: bool,
}

impl Sandbox {
    pub fn new(name: &'static str, mode: SandboxMode, profile: SandboxProfile) -> Self {
        Sandbox {
            name,
            mode,
            profile,
            fs_enforced: false,
        }
    }

    pub fn enabled(&self) -> bool {
        self.mode == SandboxMode::On
    }

    /// Step 1 and 2, on the main thread before any other thread exists:
    /// privileges, then Landlock. `socket_path` is the socket file this
    /// process created (its directory keeps remove-file for the clean-up).
    pub fn restrict_process(
        &mut self,
        user: Option<&str>,
        group: Option<&str>,
        socket_path: Option<&Path>,
    ) -> Result<(), Error> {
        if !self.enabled() {
            log::warn!("sandbox off: no privilege drop, Landlock or seccomp");
            return Ok(());
        }
        let who = privileges::drop_privileges(user, group)?;
        let status = fs::restrict(socket_path)?;
        self.fs_enforced = status.fully_enforced;
        log::info!("sandbox: {who}; Landlock {}", status.describe);
        Ok(())
    }

    /// Step 3, on all threads: the seccomp allowlist. Then the test hook.
    pub fn restrict_syscalls(&self) -> Result<(), Error> {
        if self.enabled() {
            let n = seccomp::install(self.name, &self.profile, self.fs_enforced)?;
            log::info!("sandbox: seccomp allowlist of {n} system calls on all threads; a forbidden call ends the process (status 159)");
        }
        selftest();
        Ok(())
    }
}

/// The test hook: `SPLITVM_SANDBOX_SELFTEST` names a forbidden operation to
/// try now. `exec` calls execve("/bin/true") in this process (sandboxed:
/// killed with the seccomp log line; unsandboxed: the process becomes
/// /bin/true and exits 0); `open` opens /etc/passwd (sandboxed: EACCES, the
/// daemon goes on); `socket` creates an AF_INET socket (sandboxed: killed).
pub fn selftest() {
    let Ok(what) = std::env::var("SPLITVM_SANDBOX_SELFTEST") else {
        return;
    };
    match what.as_str() {
        "exec" => {
            log::warn!("sandbox selftest: execve(/bin/true)");
            let path = c"/bin/true";
            let argv = [path.as_ptr(), std::ptr::null()];
            let envp = [std::ptr::null()];
            // SAFETY: valid NUL-terminated strings and NULL-terminated arrays.
            unsafe { libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
            log::warn!(
                "sandbox selftest: execve failed: {}",
                std::io::Error::last_os_error()
            );
        }
        "open" => match std::fs::File::open("/etc/passwd") {
            Ok(_) => log::warn!("sandbox selftest: open /etc/passwd: opened"),
            Err(e) => log::warn!("sandbox selftest: open /etc/passwd: {e}"),
        },
        "socket" => match std::net::UdpSocket::bind("127.0.0.1:0") {
            Ok(_) => log::warn!("sandbox selftest: socket(AF_INET): created"),
            Err(e) => log::warn!("sandbox selftest: socket(AF_INET): {e}"),
        },
        other => log::warn!("sandbox selftest: unknown test {other:?}"),
    }
}
