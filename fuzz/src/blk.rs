//! `blk_request`: a malicious guest's virtio-blk requests.
//!
//! Input: a control byte (bit 0: read-only image; bit 1: adaptive
//! busy-polling on, a 20 µs window), then a ring
//! ([`QueueSetup::load`]), then bytes copied into guest memory from
//! [`DATA_GPA`] on (request headers, data, discard segments). The harness
//! runs vhost-user-blk's queue handler (`handle_event` on the request queue:
//! pop, parse, execute against a 64 KiB image in a memfd, complete) and
//! checks: no panic, no write outside guest memory, the image still 64 KiB.

use crate::guest::{GuardedMemory, QueueSetup, DATA_GPA};
use crate::input::Input;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::PathBuf;
use std::sync::OnceLock;
use vhost_user_backend::VhostUserBackend;
use vhost_user_blk::backend::{BlkBackend, BlkOptions};
use vhost_user_blk::image::Image;
use vmm_sys_util::epoll::EventSet;

pub const IMAGE_SIZE: u64 = 64 * 1024;
pub const SERIAL: &[u8] = b"splitvm-fuzz-serial";

/// A memfd of `size` bytes.
pub fn memfd(name: &str, size: u64) -> File {
    let name = std::ffi::CString::new(name).expect("name");
    // SAFETY: a valid C string; the result is checked.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), 0) };
    assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
    // SAFETY: a fresh fd we own.
    let f = unsafe { File::from_raw_fd(fd) };
    f.set_len(size).expect("memfd size");
    f
}

/// A disk image in a memfd, reachable by path for `Image::open`.
pub struct MemImage {
    pub file: File,
    pub path: PathBuf,
}

impl MemImage {
    pub fn new(size: u64) -> Self {
        let file = memfd("splitvm-fuzz-image", size);
        let path = PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
        MemImage { file, path }
    }

    /// A fresh vhost-user-blk device on this image.
    pub fn backend(&self, readonly: bool, queue_size: u16) -> BlkBackend {
        let image = Image::open(&self.path, readonly, false).expect("open the memfd image");
        BlkBackend::new(
            image,
            BlkOptions {
                num_queues: 1,
                queue_size,
                serial: SERIAL.to_vec(),
            },
        )
    }

    pub fn size(&self) -> u64 {
        self.file.metadata().map(|m| m.len()).unwrap_or(0)
    }
}

struct Fixture {
    mem: GuardedMemory,
    image: MemImage,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| Fixture {
        mem: GuardedMemory::new(),
        image: MemImage::new(IMAGE_SIZE),
    })
}

/// The guest memory the last input ran in (for tests that check results).
pub fn guest() -> &'static GuardedMemory {
    &fixture().mem
}

pub fn run(data: &[u8]) {
    crate::init();
    let fx = fixture();
    fx.mem.reset();
    let mut input = Input::new(data);
    let ctl = input.u8();
    let mut backend = fx.image.backend(ctl & 1 != 0, crate::guest::MAX_QUEUE);
    if ctl & 2 != 0 {
        backend = backend.with_poll(std::time::Duration::from_micros(20));
    }
    let q = QueueSetup::load(&fx.mem, &mut input);
    fx.mem.fill(DATA_GPA, input.rest());

    let atomic = fx.mem.atomic();
    backend
        .update_memory(atomic.clone())
        .expect("update_memory");
    backend.set_event_idx(q.event_idx);
    let vring = q.vring(atomic);
    // Errors are the device refusing the ring (e.g. a bad avail index): fine.
    let _ = backend.handle_event(0, EventSet::IN, std::slice::from_ref(&vring), 0);

    fx.mem.check_guards();
    assert_eq!(fx.image.size(), IMAGE_SIZE, "the image changed size");
}
