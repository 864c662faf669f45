//! The seccomp-BPF allowlist (seccompiler): the system calls of the shared
//! daemon core, plus a back end's [`SandboxProfile`]. Everything else traps:
//! SIGSYS, whose handler logs the call and ends the process.

use super::{Error, SandboxProfile};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule,
};
use std::collections::BTreeMap;
use std::sync::OnceLock;

/// Exit status of a process killed for a forbidden call (128 + SIGSYS).
pub const VIOLATION_EXIT_STATUS: i32 = 128 + libc::SIGSYS;

/// What every daemon does once serving: the vhost-user socket (accept,
/// messages with fds), eventfd/epoll worker loops, guest memory arriving as
/// fds (mmap MAP_SHARED) and the in-flight region (memfd, ftruncate), logging
/// to stderr, futexes, the signal watcher (sigtimedwait) and exit.
#[cfg(target_arch = "x86_64")]
pub const DAEMON_SYSCALLS: &[i64] = &[
    // I/O on fds already open: socket, eventfds, stderr.
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_readv,
    libc::SYS_writev,
    libc::SYS_close,
    libc::SYS_fcntl,
    libc::SYS_fstat,
    libc::SYS_newfstatat,
    libc::SYS_statx,
    libc::SYS_lseek,
    // The vhost-user socket: accept on the listening socket, messages with SCM_RIGHTS.
    libc::SYS_accept4,
    libc::SYS_recvmsg,
    libc::SYS_sendmsg,
    libc::SYS_shutdown,
    // Worker loops.
    libc::SYS_epoll_create1,
    libc::SYS_epoll_ctl,
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_eventfd2,
    // Memory: guest RAM and the in-flight region are shared mappings of fds.
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mprotect,
    libc::SYS_mremap,
    libc::SYS_madvise,
    libc::SYS_brk,
    libc::SYS_memfd_create,
    libc::SYS_ftruncate,
    // Threads that already exist: locks, sleeps, time (vDSO fallbacks).
    libc::SYS_futex,
    libc::SYS_sched_yield,
    libc::SYS_nanosleep,
    libc::SYS_clock_nanosleep,
    libc::SYS_clock_gettime,
    libc::SYS_gettid,
    libc::SYS_getpid,
    libc::SYS_getrandom, // std's HashMap keys, first use in a thread
    // Start-up of a thread created just before the filter: TSYNC can catch a
    // worker before its first instruction (glibc: rseq, robust list; std:
    // stack guard and CPU set queries, its name via prctl(PR_SET_NAME)).
    libc::SYS_rseq,
    libc::SYS_set_robust_list,
    libc::SYS_sched_getaffinity,
    // Signals: the stop-signal watcher, handlers' return, panics.
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigreturn,
    libc::SYS_rt_sigtimedwait,
    libc::SYS_sigaltstack,
    libc::SYS_restart_syscall,
    // The socket file's removal at exit (Landlock: its directory only).
    libc::SYS_unlink,
    libc::SYS_unlinkat,
    libc::SYS_exit,
    libc::SYS_exit_group,
];

/// ioctls every daemon may issue: none (a back end's profile adds its own).
pub const DAEMON_IOCTLS: &[u64] = &[];

static DAEMON_NAME: OnceLock<&'static str> = OnceLock::new();

/// Builds and installs the filter on every thread of the process (TSYNC).
/// `open_ok`: let openat through (Landlock then refuses it with EACCES).
/// Returns how many system calls the allowlist names.
#[cfg(target_arch = "x86_64")]
pub fn install(
    name: &'static str,
    profile: &SandboxProfile,
    open_ok: bool,
) -> Result<usize, Error> {
    let mut syscalls: Vec<i64> = DAEMON_SYSCALLS.to_vec();
    syscalls.extend_from_slice(&profile.syscalls);
    if open_ok {
        syscalls.push(libc::SYS_openat);
    }
    let mut ioctls: Vec<u64> = DAEMON_IOCTLS.to_vec();
    ioctls.extend_from_slice(&profile.ioctls);
    let program = build(&syscalls, &ioctls)?;
    apply_all_threads(name, &[program])?;
    Ok(count(&syscalls, &ioctls))
}

#[cfg(not(target_arch = "x86_64"))]
pub fn install(_: &'static str, _: &SandboxProfile, _: bool) -> Result<usize, Error> {
    log::warn!("sandbox: no seccomp allowlist for this architecture yet");
    Ok(0)
}

/// Installs the SIGSYS reporter for `name`, then `programs` in order on every
/// thread (TSYNC). Each later program must be let through by the earlier
/// ones (seccomp(2) itself): put the trapping allowlist last.
pub fn apply_all_threads(name: &'static str, programs: &[BpfProgram]) -> Result<(), Error> {
    let _ = DAEMON_NAME.set(name);
    install_sigsys_handler()?;
    for p in programs {
        seccompiler::apply_filter_all_threads(p).map_err(Error::SeccompApply)?;
    }
    Ok(())
}

fn count(syscalls: &[i64], ioctls: &[u64]) -> usize {
    let mut all: Vec<i64> = syscalls.to_vec();
    if !ioctls.is_empty() {
        all.push(libc::SYS_ioctl);
    }
    all.sort_unstable();
    all.dedup();
    all.len()
}

/// A rule: argument `arg` (32 bits) equals `value`.
pub fn arg_eq(arg: u8, value: u64) -> Result<SeccompRule, Error> {
    SeccompCondition::new(arg, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, value)
        .and_then(|c| SeccompRule::new(vec![c]))
        .map_err(Error::SeccompBuild)
}

/// A rule: argument `arg` (32 bits) masked with `mask` equals `value`.
pub fn arg_masked_eq(arg: u8, mask: u64, value: u64) -> Result<SeccompRule, Error> {
    SeccompCondition::new(
        arg,
        SeccompCmpArgLen::Dword,
        SeccompCmpOp::MaskedEq(mask),
        value,
    )
    .and_then(|c| SeccompRule::new(vec![c]))
    .map_err(Error::SeccompBuild)
}

/// The rules of an allowlist: each of `syscalls` with any arguments,
/// ioctl(2) with one of `ioctls` as its request, tgkill(2) only towards this
/// process (abort on a panic), prctl(2) only to name a thread.
pub fn rules(syscalls: &[i64], ioctls: &[u64]) -> Result<BTreeMap<i64, Vec<SeccompRule>>, Error> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for &nr in syscalls {
        rules.insert(nr, vec![]);
    }
    if !ioctls.is_empty() {
        let mut seen = ioctls.to_vec();
        seen.sort_unstable();
        seen.dedup();
        let ioctl_rules = seen
            .iter()
            .map(|&req| arg_eq(1, req))
            .collect::<Result<Vec<_>, _>>()?;
        rules.insert(libc::SYS_ioctl, ioctl_rules);
    }
    rules.insert(
        libc::SYS_tgkill,
        vec![arg_eq(0, u64::from(std::process::id()))?],
    );
    rules.insert(libc::SYS_prctl, vec![arg_eq(0, libc::PR_SET_NAME as u64)?]);
    Ok(rules)
}

/// An allowlist program: `rules` allowed, anything else traps (SIGSYS).
pub fn compile(rules: BTreeMap<i64, Vec<SeccompRule>>) -> Result<BpfProgram, Error> {
    filter(rules, SeccompAction::Trap, SeccompAction::Allow)
}

/// A program that makes each of `syscalls` fail with `errno` and lets
/// everything else through (e.g. clone3 -> ENOSYS, so that glibc falls back
/// to clone(2), whose flags an allowlist can check).
pub fn errno_program(syscalls: &[i64], errno: i32) -> Result<BpfProgram, Error> {
    let rules = syscalls.iter().map(|&nr| (nr, vec![])).collect();
    filter(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(errno as u32),
    )
}

fn filter(
    rules: BTreeMap<i64, Vec<SeccompRule>>,
    mismatch: SeccompAction,
    matched: SeccompAction,
) -> Result<BpfProgram, Error> {
    let arch = std::env::consts::ARCH
        .try_into()
        .map_err(Error::SeccompBuild)?;
    SeccompFilter::new(rules, mismatch, matched, arch)
        .and_then(|f| f.try_into())
        .map_err(Error::SeccompBuild)
}

/// The daemons' BPF program: [`rules`], anything else traps.
pub fn build(syscalls: &[i64], ioctls: &[u64]) -> Result<BpfProgram, Error> {
    compile(rules(syscalls, ioctls)?)
}

/// Names for the log line, for the calls a compromised daemon would try first.
fn syscall_name(nr: i64) -> &'static str {
    #[cfg(target_arch = "x86_64")]
    let known: &[(i64, &str)] = &[
        (libc::SYS_execve, "execve"),
        (libc::SYS_execveat, "execveat"),
        (libc::SYS_fork, "fork"),
        (libc::SYS_vfork, "vfork"),
        (libc::SYS_clone, "clone"),
        (libc::SYS_clone3, "clone3"),
        (libc::SYS_socket, "socket"),
        (libc::SYS_socketpair, "socketpair"),
        (libc::SYS_connect, "connect"),
        (libc::SYS_bind, "bind"),
        (libc::SYS_listen, "listen"),
        (libc::SYS_ptrace, "ptrace"),
        (libc::SYS_mount, "mount"),
        (libc::SYS_umount2, "umount2"),
        (libc::SYS_open, "open"),
        (libc::SYS_openat, "openat"),
        (libc::SYS_openat2, "openat2"),
        (libc::SYS_ioctl, "ioctl (request not allowed)"),
        (libc::SYS_kill, "kill"),
        (libc::SYS_tgkill, "tgkill"),
        (libc::SYS_setuid, "setuid"),
        (libc::SYS_setns, "setns"),
        (libc::SYS_unshare, "unshare"),
        (libc::SYS_chmod, "chmod"),
        (libc::SYS_rt_sigaction, "rt_sigaction"),
        (libc::SYS_prctl, "prctl"),
        (libc::SYS_io_uring_setup, "io_uring_setup"),
        (libc::SYS_sched_getaffinity, "sched_getaffinity"),
        (libc::SYS_timerfd_create, "timerfd_create"),
        (libc::SYS_process_vm_readv, "process_vm_readv"),
    ];
    #[cfg(not(target_arch = "x86_64"))]
    let known: &[(i64, &str)] = &[];
    known
        .iter()
        .find(|(n, _)| *n == nr)
        .map(|(_, s)| *s)
        .unwrap_or("see `ausyscall` or syscall(2) tables")
}

/// Installs the SIGSYS handler that reports a forbidden call.
fn install_sigsys_handler() -> Result<(), Error> {
    // SAFETY: an all-zero sigaction is a valid starting point.
    let mut act: libc::sigaction = unsafe { std::mem::zeroed() };
    act.sa_sigaction = on_sigsys as *const () as usize;
    act.sa_flags = libc::SA_SIGINFO;
    // SAFETY: act is initialised; the handler only calls async-signal-safe code.
    let rc = unsafe {
        libc::sigemptyset(&mut act.sa_mask);
        libc::sigaction(libc::SIGSYS, &act, std::ptr::null_mut())
    };
    if rc != 0 {
        return Err(Error::SigsysHandler(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// A fixed-size line buffer (no allocation in a signal handler).
struct Line {
    buf: [u8; 256],
    len: usize,
}

impl Line {
    fn push(&mut self, s: &[u8]) {
        let n = s.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&s[..n]);
        self.len += n;
    }
    fn push_num(&mut self, mut v: u64) {
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        self.push(&digits[i..]);
    }
}

extern "C" fn on_sigsys(_sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // siginfo_t for SIGSYS (x86_64/aarch64 layout): si_signo, si_errno,
    // si_code, padding, then _sigsys { void *call_addr; int syscall; u32 arch; }.
    // SAFETY: the kernel hands a valid siginfo_t; the offset is the kernel's layout.
    let nr = unsafe { *((info as *const u8).add(16 + std::mem::size_of::<usize>()) as *const i32) };
    let mut line = Line {
        buf: [0; 256],
        len: 0,
    };
    line.push(DAEMON_NAME.get().copied().unwrap_or("splitvm").as_bytes());
    line.push(b"[");
    line.push_num(u64::from(std::process::id()));
    line.push(b"]: error: seccomp: forbidden syscall ");
    line.push_num(nr as u64);
    line.push(b" (");
    line.push(syscall_name(i64::from(nr)).as_bytes());
    line.push(b"); the sandbox ends the process (restart it; --sandbox off to debug)\n");
    // SAFETY: write(2) and exit_group(2) are async-signal-safe and allowed.
    unsafe {
        libc::write(2, line.buf.as_ptr().cast(), line.len);
        libc::syscall(libc::SYS_exit_group, VIOLATION_EXIT_STATUS);
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;

    #[test]
    fn filter_builds() {
        let p = build(DAEMON_SYSCALLS, &[0x1277]).unwrap();
        assert!(!p.is_empty());
    }

    #[test]
    fn no_dangerous_calls_in_the_base_list() {
        for nr in [
            libc::SYS_execve,
            libc::SYS_execveat,
            libc::SYS_clone,
            libc::SYS_clone3,
            libc::SYS_fork,
            libc::SYS_socket,
            libc::SYS_connect,
            libc::SYS_ptrace,
            libc::SYS_mount,
            libc::SYS_open,
            libc::SYS_openat,
        ] {
            assert!(!DAEMON_SYSCALLS.contains(&nr), "{nr}");
        }
    }

    #[test]
    fn line_formats_numbers() {
        let mut l = Line {
            buf: [0; 256],
            len: 0,
        };
        l.push(b"n=");
        l.push_num(0);
        l.push(b",");
        l.push_num(435);
        assert_eq!(&l.buf[..l.len], b"n=0,435");
    }
}
