//! The VMM's sandbox (on by default, `--sandbox off` to debug without it),
//! entered once the VM is set up (guest RAM, KVM, devices connected, API
//! socket bound) and before the vCPUs start, with the same mechanism as the
//! back ends (`splitvm_common::sandbox`):
//!
//! - privileges: no-new-privileges; started as root, the VMM keeps uid 0 but
//!   drops every capability (/dev/kvm and the sockets are already open);
//! - Landlock on the main thread, inherited by the vCPU and reconnect threads
//!   it starts afterwards: no file-system access but removing the API socket
//!   file at exit. Connecting to a back end's unix socket again (reconnect)
//!   is not a file-system right below Landlock ABI 9, so it keeps working.
//!   Threads started during set-up (the API listener and its connection
//!   threads) predate the domain: seccomp is what holds them;
//! - seccomp on every thread (TSYNC): the daemon core's calls plus KVM ioctls
//!   (ioctl type 0xAE only), threads (clone with CLONE_THREAD only; clone3
//!   answers ENOSYS so glibc falls back to clone), unix sockets only (the API
//!   socket, reconnecting to a back end: socket(AF_UNIX), connect), poll, the
//!   exit signal handlers. No execve, fork, other sockets, ptrace, mount or
//!   open (unlike the back ends, whose threads are all inside the Landlock
//!   domain, opening a file is not left to Landlock): a forbidden call is logged ("seccomp: forbidden syscall N") and
//!   ends the VMM with status 159.
//!
//! One allowlist serves all threads; per-thread lists (vCPU threads without
//! sockets, the API thread without KVM) are a later refinement.

use splitvm_common::sandbox::{fs, privileges, seccomp, Error, SandboxMode};
use std::path::Path;

/// `--sandbox on|off` for the VMM.
#[derive(Debug, Clone, clap::Args)]
pub struct SandboxArgs {
    /// Sandbox the VMM once the VM is set up: drop all capabilities
    /// (no-new-privileges), Landlock with no file-system access (the API socket's
    /// removal only), and a seccomp allowlist (KVM ioctls, unix sockets, threads);
    /// a forbidden call is logged ("seccomp: forbidden syscall N") and ends the VMM
    /// with status 159. `off` is for debugging only.
    #[arg(long, value_enum, default_value_t = SandboxMode::On, value_name = "on|off")]
    pub sandbox: SandboxMode,
}

/// The VMM's calls beyond the daemon core's list.
#[cfg(target_arch = "x86_64")]
const VMM_SYSCALLS: &[i64] = &[
    libc::SYS_poll,         // the main loop watches back-end sockets for hang-up
    libc::SYS_rt_sigaction, // the exit signals' handlers, installed when the vCPUs start
    libc::SYS_clone3,       // turned into ENOSYS by the first filter
    libc::SYS_connect,      // reconnecting to a back end (unix sockets: socket() is checked)
    libc::SYS_recvfrom,     // the API socket (std's UnixStream read)
    libc::SYS_sendto,
];

/// TCGETS (is stdout/stdin a terminal).
#[allow(clippy::unnecessary_cast)] // c_ulong is not u64 everywhere
const VMM_IOCTLS: &[u64] = &[libc::TCGETS as u64];

/// The KVM ioctl type (`KVMIO`).
const KVMIO: u64 = 0xAE;

/// Enters the sandbox (see the module documentation); logs what it did.
pub fn apply(args: &SandboxArgs, api_socket: Option<&Path>) -> Result<(), Error> {
    if args.sandbox == SandboxMode::Off {
        log::warn!("sandbox off: no privilege drop, Landlock or seccomp");
        splitvm_common::sandbox::selftest();
        return Ok(());
    }
    let who = privileges::drop_privileges(None, None)?;
    let status = fs::restrict(api_socket)?;
    install_seccomp()?;
    log::info!(
        "sandbox: {who}; Landlock {}; seccomp allowlist on all threads",
        status.describe
    );
    splitvm_common::sandbox::selftest();
    Ok(())
}

#[cfg(target_arch = "x86_64")]
fn install_seccomp() -> Result<(), Error> {
    let mut syscalls = seccomp::DAEMON_SYSCALLS.to_vec();
    syscalls.extend_from_slice(VMM_SYSCALLS);
    let mut rules = seccomp::rules(&syscalls, VMM_IOCTLS)?;
    // Any KVM ioctl (KVM_RUN, irqfd/ioeventfd, MSI, memory regions, ...).
    rules
        .entry(libc::SYS_ioctl)
        .or_default()
        .push(seccomp::arg_masked_eq(1, 0xff00, KVMIO << 8)?);
    // Threads only, never a new process.
    rules.insert(
        libc::SYS_clone,
        vec![seccomp::arg_masked_eq(
            0,
            libc::CLONE_THREAD as u64,
            libc::CLONE_THREAD as u64,
        )?],
    );
    // Unix sockets only.
    rules.insert(
        libc::SYS_socket,
        vec![seccomp::arg_eq(0, libc::AF_UNIX as u64)?],
    );
    let allowlist = seccomp::compile(rules)?;
    let no_clone3 = seccomp::errno_program(&[libc::SYS_clone3], libc::ENOSYS)?;
    // The ENOSYS filter first: the allowlist would refuse the second seccomp(2).
    seccomp::apply_all_threads("vmm", &[no_clone3, allowlist])
}

#[cfg(not(target_arch = "x86_64"))]
fn install_seccomp() -> Result<(), Error> {
    log::warn!("sandbox: no seccomp allowlist for this architecture yet");
    Ok(())
}
