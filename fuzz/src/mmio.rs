//! `virtio_mmio_registers`: a malicious guest driver poking the VMM's
//! virtio-mmio transport.
//!
//! Each input gets a fresh `VirtioMmioDevice` whose `VhostUserProxy` is
//! connected to a real vhost-user-blk back end served in-process
//! ([`crate::server`]), so DRIVER_OK and reset run the whole vhost-user
//! exchange. Input: a control byte (bits 0-1: the device type the transport
//! presents, blk, net or rng, whatever the back end is; bit 2: mark the back
//! end disconnected before the first access, the stub case), then operations
//! of 7 bytes each:
//!
//! - `op` (u8): bits 6-7 the kind (0 read, 1 write, 2 write to a named
//!   register, 3 the back end hangs up), bits 0-1 the access width (1, 2, 4,
//!   8 bytes);
//! - `offset` (u16): into the 4 KiB MMIO window (kind 2: an index into
//!   [`REGISTERS`]);
//! - `value` (u32), little-endian.
//!
//! Checks: no panic, no hang; MagicValue always reads right.
//!
//! The process runs without inotify (a seccomp filter answers EPERM), so
//! each device is made without its socket watch, as the VMM does when it
//! cannot watch: closing an inotify fd costs 7-14 ms here (the kernel waits
//! for an SRCU grace period), which held this target to ~150 runs/s. The
//! watch only serves reconnects, which this harness does not drive.

use crate::input::Input;
use crate::server::{blk_server, serve_connection};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::OnceLock;
use vmm::bus::BusDevice;
use vmm::cli::DeviceKind;
use vmm::devices::virtio_mmio::*;
use vmm::memory::GuestMem;
use vmm::vhost_user::proxy::VhostUserProxy;
use vmm::vhost_user::DeviceType;

/// The registers a driver writes, for kind-2 operations.
pub const REGISTERS: [u64; 20] = [
    REG_DEVICE_FEATURES_SEL,
    REG_DRIVER_FEATURES,
    REG_DRIVER_FEATURES_SEL,
    REG_QUEUE_SEL,
    REG_QUEUE_NUM,
    REG_QUEUE_READY,
    REG_QUEUE_NOTIFY,
    REG_INTERRUPT_ACK,
    REG_STATUS,
    REG_QUEUE_DESC_LOW,
    REG_QUEUE_DESC_HIGH,
    REG_QUEUE_DRIVER_LOW,
    REG_QUEUE_DRIVER_HIGH,
    REG_QUEUE_DEVICE_LOW,
    REG_QUEUE_DEVICE_HIGH,
    REG_SHM_SEL,
    REG_CONFIG,
    REG_CONFIG + 8,
    REG_CONFIG + 20,
    REG_CONFIG_GENERATION,
];

/// The MMIO window a device gets (vmm::bus::DEVICE_MMIO_SIZE).
pub const WINDOW: u64 = vmm::bus::DEVICE_MMIO_SIZE;

struct Fixture {
    socket: PathBuf,
    mem: GuestMem,
}

/// A seccomp filter on this process: inotify_init/inotify_init1 fail with
/// EPERM, everything else is allowed.
fn deny_inotify() {
    const LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
    const JEQ_K: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
    const RET_K: u16 = 0x06; // BPF_RET | BPF_K
    const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
    const RET_ALLOW: u32 = 0x7fff_0000;
    const RET_ERRNO: u32 = 0x0005_0000;
    let op = |code, jt, jf, k| libc::sock_filter { code, jt, jf, k };
    let prog = [
        op(LD_W_ABS, 0, 0, 4), // seccomp_data.arch
        op(JEQ_K, 1, 0, AUDIT_ARCH_X86_64),
        op(RET_K, 0, 0, RET_ALLOW),
        op(LD_W_ABS, 0, 0, 0), // seccomp_data.nr
        op(JEQ_K, 2, 0, libc::SYS_inotify_init1 as u32),
        op(JEQ_K, 1, 0, libc::SYS_inotify_init as u32),
        op(RET_K, 0, 0, RET_ALLOW),
        op(RET_K, 0, 0, RET_ERRNO | libc::EPERM as u32),
    ];
    let fprog = libc::sock_fprog {
        len: prog.len() as u16,
        filter: prog.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: prctl with a valid filter program that outlives the call.
    unsafe {
        assert_eq!(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), 0);
        assert_eq!(
            libc::prctl(
                libc::PR_SET_SECCOMP,
                libc::SECCOMP_MODE_FILTER,
                &fprog as *const libc::sock_fprog
            ),
            0,
            "seccomp: {}",
            std::io::Error::last_os_error()
        );
    }
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        deny_inotify();
        let dir = std::env::temp_dir().join(format!("splitvm-fuzz-mmio-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("socket dir");
        let socket = dir.join("blk.sock");
        let _ = std::fs::remove_file(&socket);
        let listener = UnixListener::bind(&socket).expect("bind");
        let server = blk_server();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                match stream {
                    Ok(s) => serve_connection(&server.handler, s),
                    Err(e) => panic!("accept: {e}"),
                }
            }
        });
        let mem =
            vmm::memory::create_guest_memory(vmm::memory::MIN_MEMORY, false).expect("guest memory");
        Fixture { socket, mem }
    })
}

pub fn run(data: &[u8]) {
    crate::init();
    let fx = fixture();
    let mut input = Input::new(data);
    let ctl = input.u8();
    let kind = match ctl & 3 {
        0 | 3 => DeviceKind::Blk,
        1 => DeviceKind::Net,
        _ => DeviceKind::Rng,
    };
    let ty = DeviceType::for_kind(kind);
    let mut proxy = VhostUserProxy::connect(&fx.socket, &ty, ty.config_size, None)
        .expect("the in-process back end accepts every front end");
    if ctl & 4 != 0 {
        proxy.mark_disconnected("fuzz: stub back end");
    }
    let mut dev =
        VirtioMmioDevice::new(ty, 0xd000_0000, 5, fx.mem.clone(), proxy).expect("device model");

    while !input.is_empty() {
        let op = input.u8();
        let off = input.u16();
        let value = input.u32();
        let width = 1usize << (op & 3);
        let mut bytes = [0u8; 8];
        bytes[..4].copy_from_slice(&value.to_le_bytes());
        bytes[4..].copy_from_slice(&value.to_le_bytes());
        match op >> 6 {
            0 => {
                let mut buf = [0u8; 8];
                dev.read(u64::from(off) % WINDOW, &mut buf[..width]);
            }
            1 => dev.write(u64::from(off) % WINDOW, &bytes[..width]),
            2 => {
                let reg = REGISTERS[usize::from(off) % REGISTERS.len()];
                dev.write(reg, &bytes[..4]);
            }
            _ => dev.backend_gone("fuzz: back end hung up"),
        }
        let mut m = [0u8; 4];
        dev.read(REG_MAGIC, &mut m);
        assert_eq!(u32::from_le_bytes(m), MMIO_MAGIC);
    }
    let d = dev.describe();
    if crate::debug() {
        eprintln!("device: {d}");
    }
}
