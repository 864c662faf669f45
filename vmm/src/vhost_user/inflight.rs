//! The in-flight tracking region (VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD) as
//! the front end holds it.
//!
//! The back end creates the region at GET_INFLIGHT_FD (first DRIVER_OK) and
//! records there which requests it took off each ring. The front end only
//! keeps the memfd and its geometry: when the back end dies and a new one
//! connects, SET_INFLIGHT_FD hands the same memory over before the rings
//! start, so the new back end knows what the guest submitted and never saw
//! completed. The region lives as long as the driver's session with the
//! device: a device reset drops it (like QEMU), the next DRIVER_OK asks for
//! a fresh one (ring sizes may have changed).

use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};

use vhost::vhost_user::message::VhostUserInflight;

/// The memfd a back end handed out, and what it describes.
pub struct InflightFd {
    file: File,
    desc: VhostUserInflight,
}

impl InflightFd {
    pub fn new(file: File, desc: VhostUserInflight) -> Self {
        Self { file, desc }
    }

    /// The GET_INFLIGHT_FD request for `num_queues` queues of `queue_size`.
    pub fn request(num_queues: u16, queue_size: u16) -> VhostUserInflight {
        VhostUserInflight {
            mmap_size: 0,
            mmap_offset: 0,
            num_queues,
            queue_size,
        }
    }

    /// What SET_INFLIGHT_FD sends.
    pub fn desc(&self) -> &VhostUserInflight {
        &self.desc
    }

    pub fn raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    /// Queue size the region is laid out for: at least every ring's size,
    /// since a back end ignores heads beyond it.
    pub fn queue_size(&self) -> u16 {
        self.desc.queue_size
    }
}

impl std::fmt::Debug for InflightFd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "InflightFd(fd {}, {} bytes at {}, {} queue(s) of {})",
            self.file.as_raw_fd(),
            self.desc.mmap_size,
            self.desc.mmap_offset,
            self.desc.num_queues,
            self.desc.queue_size
        )
    }
}
