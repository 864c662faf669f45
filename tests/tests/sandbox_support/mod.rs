//! Shared by the sandbox_* tests: start a daemon with the test-only
//! `SPLITVM_SANDBOX_SELFTEST` hook, wait for an outcome, and read the
//! sandbox state from /proc/PID/status.

#![allow(dead_code)]

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub const WAIT: Duration = Duration::from_secs(10);

/// Exit status of a daemon the sandbox stopped (128 + SIGSYS).
pub const VIOLATION_STATUS: i32 = 159;

/// A daemon process with its stderr in a file; killed on drop.
pub struct Proc {
    pub child: Child,
    pub stderr: PathBuf,
    status: Option<ExitStatus>,
}

impl Proc {
    /// Runs `program args` with `SPLITVM_SANDBOX_SELFTEST=selftest` (if any).
    pub fn spawn(program: &Path, args: &[&str], selftest: Option<&str>, stderr: &Path) -> Self {
        let err = File::create(stderr).expect("stderr file");
        let mut cmd = Command::new(program);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err);
        if let Some(t) = selftest {
            cmd.env("SPLITVM_SANDBOX_SELFTEST", t);
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("{}: {e}", program.display()));
        Proc {
            child,
            stderr: stderr.to_path_buf(),
            status: None,
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }

    /// Waits until `f(log)` holds or the process exits; panics after WAIT.
    pub fn wait_log(&mut self, what: &str, f: impl Fn(&str) -> bool) {
        let deadline = Instant::now() + WAIT;
        loop {
            if f(&self.log()) {
                return;
            }
            if let Some(s) = self.try_wait() {
                if f(&self.log()) {
                    return;
                }
                panic!("exited ({s}) before {what}; stderr:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "no {what} in {WAIT:?}; stderr:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits for the exit; panics after WAIT.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(s) = self.try_wait() {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "still running after {WAIT:?}; stderr:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// A line of /proc/PID/status ("Seccomp", "CapEff", "NoNewPrivs", "Uid").
    pub fn status_field(&self, field: &str) -> String {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("/proc/PID/status");
        s.lines()
            .find_map(|l| l.strip_prefix(&format!("{field}:")))
            .unwrap_or_else(|| panic!("no {field} in /proc status"))
            .trim()
            .to_string()
    }

    /// SIGTERM, then wait for the exit.
    pub fn terminate(&mut self) -> ExitStatus {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        self.wait_exit()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.try_wait().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Sandbox on: the daemon was stopped by the filter, with the log line.
pub fn assert_killed_for(p: &mut Proc, syscall: &str) {
    let status = p.wait_exit();
    let log = p.log();
    assert_eq!(
        status.code(),
        Some(VIOLATION_STATUS),
        "expected exit {VIOLATION_STATUS}: {status}; stderr:\n{log}"
    );
    assert!(
        log.contains("error: seccomp: forbidden syscall") && log.contains(&format!("({syscall})")),
        "no seccomp line for {syscall}:\n{log}"
    );
}

/// The state of a sandboxed daemon: seccomp filter mode, no capabilities,
/// no-new-privileges.
pub fn assert_sandboxed(p: &Proc) {
    assert_eq!(p.status_field("Seccomp"), "2", "seccomp filter mode");
    assert_eq!(p.status_field("NoNewPrivs"), "1");
    if unsafe { libc::geteuid() } == 0 {
        assert_eq!(p.status_field("CapEff"), "0000000000000000");
        assert_eq!(p.status_field("CapPrm"), "0000000000000000");
        assert_eq!(p.status_field("CapBnd"), "0000000000000000");
    }
}

pub fn assert_not_sandboxed(p: &Proc) {
    assert_eq!(p.status_field("Seccomp"), "0", "no seccomp filter");
}

/// Whether Landlock and seccomp work here (else the tests skip with a message).
pub fn can_sandbox() -> bool {
    // SAFETY: landlock_create_ruleset with LANDLOCK_CREATE_RULESET_VERSION only
    // returns the ABI version.
    let abi = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<u8>(),
            0usize,
            1u32,
        )
    };
    if abi < 1 {
        eprintln!("SKIP: Landlock is not available on this kernel");
        return false;
    }
    true
}
