//! The tap device: open (or create) a named tap with IFF_VNET_HDR, one queue
//! fd per queue pair (IFF_MULTI_QUEUE), offloads, queue attach/detach.
//!
//! The ioctls are written here with libc: no well-kept crate does tap (the
//! `tun-tap` and `tun` crates lack vnet headers, offloads or multi-queue
//! attach/detach, or pull in an async runtime).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;
const TUNSETQUEUE: libc::c_ulong = 0x4004_54d9;

const IFF_TAP: i16 = 0x0002;
const IFF_MULTI_QUEUE: i16 = 0x0100;
const IFF_ATTACH_QUEUE: i16 = 0x0200;
const IFF_DETACH_QUEUE: i16 = 0x0400;
const IFF_NO_PI: i16 = 0x1000;
const IFF_VNET_HDR: i16 = 0x4000;

pub const TUN_F_CSUM: u32 = 0x01;
pub const TUN_F_TSO4: u32 = 0x02;
pub const TUN_F_TSO6: u32 = 0x04;
pub const TUN_F_TSO_ECN: u32 = 0x08;

/// The virtio 1.x header (struct virtio_net_hdr_mrg_rxbuf) the tap reads and writes.
pub const VNET_HDR_LEN: usize = 12;

#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: i16,
    _pad: [u8; 22],
}

/// Why a tap could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error("{0:?} is not a valid interface name (1 to 15 bytes, no '/', ':' or white space)")]
    BadName(String),
    #[error("cannot open /dev/net/tun")]
    OpenTun(#[source] io::Error),
    #[error(
        "no permission to attach tap {0:?} (needs CAP_NET_ADMIN, or an existing tap \
         owned by this user)"
    )]
    Permission(String),
    #[error(
        "tap {name:?} exists with other flags (it needs vnet_hdr{mq}; e.g. \
         `ip tuntap add dev {name} mode tap vnet_hdr{mq}`)"
    )]
    Flags { name: String, mq: &'static str },
    #[error("tap {0:?} is busy (attached by another process?)")]
    Busy(String),
    #[error("cannot attach tap {name:?}")]
    Attach {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot set the vnet header size of tap {name:?}")]
    HdrSize {
        name: String,
        #[source]
        source: io::Error,
    },
}

/// One queue fd of a tap.
pub struct TapQueue {
    file: File,
}

impl AsRawFd for TapQueue {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

pub fn check_name(name: &str) -> Result<(), TapError> {
    let bad = name.is_empty()
        || name.len() >= libc::IFNAMSIZ
        || name == "."
        || name == ".."
        || name
            .bytes()
            .any(|b| b == b'/' || b == b':' || b.is_ascii_whitespace() || b == 0);
    if bad {
        return Err(TapError::BadName(name.to_string()));
    }
    Ok(())
}

/// Opens `queues` queue fds of tap `name` (created if missing and permitted),
/// non-blocking, with 12-byte virtio 1.x vnet headers.
pub fn open(name: &str, queues: usize) -> Result<Vec<TapQueue>, TapError> {
    check_name(name)?;
    let mq = queues > 1;
    let mut flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR;
    if mq {
        flags |= IFF_MULTI_QUEUE;
    }
    let mut out = Vec::with_capacity(queues);
    for _ in 0..queues {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(|e| match e.kind() {
                io::ErrorKind::PermissionDenied => TapError::Permission(name.into()),
                _ => TapError::OpenTun(e),
            })?;
        let mut req = IfReq {
            name: [0; libc::IFNAMSIZ],
            flags,
            _pad: [0; 22],
        };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        // SAFETY: TUNSETIFF reads and writes one struct ifreq, which IfReq lays out.
        let r = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, &mut req) };
        if r < 0 {
            let e = io::Error::last_os_error();
            return Err(match e.raw_os_error() {
                Some(libc::EPERM) | Some(libc::EACCES) => TapError::Permission(name.into()),
                Some(libc::EINVAL) => TapError::Flags {
                    name: name.into(),
                    mq: if mq { " multi_queue" } else { "" },
                },
                Some(libc::EBUSY) => TapError::Busy(name.into()),
                _ => TapError::Attach {
                    name: name.into(),
                    source: e,
                },
            });
        }
        let sz: libc::c_int = VNET_HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one int.
        let r = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETVNETHDRSZ, &sz) };
        if r < 0 {
            return Err(TapError::HdrSize {
                name: name.into(),
                source: io::Error::last_os_error(),
            });
        }
        out.push(TapQueue { file });
    }
    Ok(out)
}

impl TapQueue {
    /// A queue over any fd that reads and writes whole frames, vnet header
    /// first (a SOCK_DGRAM socketpair, say): for tests and the fuzz targets,
    /// which run the device without a tap. The tap ioctls fail on it.
    pub fn from_file(file: File) -> Self {
        TapQueue { file }
    }

    /// TUNSETOFFLOAD: what the tap may hand us (TUN_F_*); per device, any queue will do.
    pub fn set_offload(&self, flags: u32) -> io::Result<()> {
        // SAFETY: TUNSETOFFLOAD takes its argument by value.
        let r =
            unsafe { libc::ioctl(self.file.as_raw_fd(), TUNSETOFFLOAD, flags as libc::c_ulong) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// TUNSETQUEUE: attach (the kernel steers frames to it) or detach this queue.
    pub fn set_attached(&self, attach: bool) -> io::Result<()> {
        let mut req = IfReq {
            name: [0; libc::IFNAMSIZ],
            flags: if attach {
                IFF_ATTACH_QUEUE
            } else {
                IFF_DETACH_QUEUE
            },
            _pad: [0; 22],
        };
        // SAFETY: TUNSETQUEUE reads one struct ifreq.
        let r = unsafe { libc::ioctl(self.file.as_raw_fd(), TUNSETQUEUE, &mut req) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// One frame (vnet header first) into `buf`; WouldBlock when none is queued.
    pub fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: reads at most buf.len() bytes into buf.
        let r = unsafe { libc::read(self.file.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(r as usize)
    }

    /// One frame, vnet header first, from `iovs`.
    pub fn writev(&self, iovs: &[libc::iovec]) -> io::Result<usize> {
        // SAFETY: the iovecs point at memory valid for the duration of the call.
        let r = unsafe {
            libc::writev(
                self.file.as_raw_fd(),
                iovs.as_ptr(),
                iovs.len() as libc::c_int,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(r as usize)
    }
}
