//! `net_request`: a malicious guest's virtio-net buffers (TX frames with
//! their virtio-net header, RX buffers, control-queue commands).
//!
//! Input: a control byte (bits 0-1: which queue is driven, 0 RX, 1 TX, 2
//! control, 3 RX through the tap event; bit 2: adaptive busy-polling of TX
//! on, a 20 µs window), the features the driver acked (a
//! u64, masked to those offered), a frame count (0-3) and a u16 length for
//! each, then a ring ([`QueueSetup::load`]) installed as the driven queue,
//! then the frames (the tap has them queued for RX), then bytes copied into
//! guest memory from [`DATA_GPA`] on.
//!
//! The "tap" is one end of a SOCK_DGRAM socketpair (no real tap needed).
//! Checks: no panic, no write outside guest memory, every frame that reaches
//! the tap has a header and is no larger than a virtio-net frame may be.

use crate::guest::{idle_vring, GuardedMemory, QueueSetup, DATA_GPA};
use crate::input::Input;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::OnceLock;
use vhost_user_backend::VhostUserBackend;
use vhost_user_net::backend::{NetBackend, NetOptions};
use vhost_user_net::tap::{TapQueue, VNET_HDR_LEN};
use vhost_user_net::vnet::MAX_FRAME;
use vmm_sys_util::epoll::EventSet;

/// The guest memory the last input ran in (for tests that check results).
pub fn memory() -> &'static GuardedMemory {
    static M: OnceLock<GuardedMemory> = OnceLock::new();
    M.get_or_init(GuardedMemory::new)
}

fn socketpair() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: fds has room for two descriptors; the result is checked.
    let r = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_DGRAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    assert_eq!(r, 0, "socketpair: {}", std::io::Error::last_os_error());
    // SAFETY: two fresh fds we own.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

pub fn run(data: &[u8]) {
    crate::init();
    let mem = memory();
    mem.reset();
    let mut input = Input::new(data);
    let ctl = input.u8();
    let acked = input.u64();
    let nframes = usize::from(input.u8() % 4);
    let lens: Vec<usize> = (0..nframes).map(|_| usize::from(input.u16())).collect();
    let q = QueueSetup::load(mem, &mut input);
    let frames: Vec<&[u8]> = lens.iter().map(|&n| input.bytes(n)).collect();
    mem.fill(DATA_GPA, input.rest());

    let (tap, peer) = socketpair();
    let mut backend = NetBackend::new(
        vec![TapQueue::from_file(File::from(tap))],
        NetOptions {
            mac: [0x52, 0x54, 0, 0x12, 0x34, 0x56],
            queue_pairs: 1,
            queue_size: crate::guest::MAX_QUEUE,
            mtu: 1500,
        },
    );
    if ctl & 4 != 0 {
        backend = backend.with_poll(std::time::Duration::from_micros(20));
    }
    backend.acked_features(acked & backend.features());
    backend.set_event_idx(q.event_idx);
    let atomic = mem.atomic();
    backend
        .update_memory(atomic.clone())
        .expect("update_memory");
    for f in &frames {
        // SAFETY: sends f.len() bytes from f; errors (a full buffer) are fine.
        unsafe { libc::send(peer.as_raw_fd(), f.as_ptr().cast(), f.len(), 0) };
    }

    let which = usize::from(ctl & 3);
    let mut vrings = [
        idle_vring(atomic.clone()),
        idle_vring(atomic.clone()),
        idle_vring(atomic.clone()),
    ];
    // The tap event is RX work on queue 0.
    vrings[if which == 3 { 0 } else { which }] = q.vring(atomic);
    let event = match which {
        3 => backend.num_queues() as u16 + 1, // the tap fd's event
        w => w as u16,
    };
    let _ = backend.handle_event(event, EventSet::IN, &vrings, 0);

    mem.check_guards();
    // What reached the tap.
    let mut buf = vec![0u8; 2 * (VNET_HDR_LEN + MAX_FRAME)];
    loop {
        // SAFETY: receives at most buf.len() bytes into buf.
        let n = unsafe {
            libc::recv(
                peer.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT | libc::MSG_TRUNC,
            )
        };
        if n < 0 {
            break;
        }
        let n = n as usize;
        assert!(
            (VNET_HDR_LEN..=VNET_HDR_LEN + MAX_FRAME).contains(&n),
            "a {n}-byte frame reached the tap"
        );
    }
}
