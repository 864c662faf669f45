//! A vhost-user front end (the VMM's side of the socket) built on
//! `vhost::vhost_user::Frontend`, plus a raw channel on the same socket for sending malformed
//! messages.

use std::io::{IoSlice, Read};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use vhost::vhost_user::message::{VhostUserConfigFlags, VhostUserHeaderFlag};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
pub use vhost::vhost_user::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost::{VhostBackend, VringConfigData};

use crate::mem::GuestMem;
use crate::virtq::SplitQueue;

/// VIRTIO_F_VERSION_1.
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;
/// VIRTIO_RING_F_INDIRECT_DESC.
pub const VIRTIO_RING_F_INDIRECT_DESC: u64 = 1 << 28;
/// VIRTIO_RING_F_EVENT_IDX.
pub const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << 29;
/// VHOST_USER_F_PROTOCOL_FEATURES.
pub const VHOST_USER_F_PROTOCOL_FEATURES: u64 = 1 << 30;

/// Default time limit for any one reply from a back end.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// vhost-user request codes (front end to back end) used by the raw channel.
pub mod req {
    #![allow(missing_docs)]
    pub const GET_FEATURES: u32 = 1;
    pub const SET_FEATURES: u32 = 2;
    pub const SET_OWNER: u32 = 3;
    pub const RESET_OWNER: u32 = 4;
    pub const SET_MEM_TABLE: u32 = 5;
    pub const SET_VRING_NUM: u32 = 8;
    pub const SET_VRING_ADDR: u32 = 9;
    pub const SET_VRING_BASE: u32 = 10;
    pub const GET_VRING_BASE: u32 = 11;
    pub const SET_VRING_KICK: u32 = 12;
    pub const SET_VRING_CALL: u32 = 13;
    pub const SET_VRING_ERR: u32 = 14;
    pub const GET_PROTOCOL_FEATURES: u32 = 15;
    pub const SET_PROTOCOL_FEATURES: u32 = 16;
    pub const GET_QUEUE_NUM: u32 = 17;
    pub const SET_VRING_ENABLE: u32 = 18;
    pub const GET_CONFIG: u32 = 24;
    pub const SET_CONFIG: u32 = 25;
    pub const GET_INFLIGHT_FD: u32 = 31;
    pub const GET_MAX_MEM_SLOTS: u32 = 36;
    pub const ADD_MEM_REG: u32 = 37;
    pub const REM_MEM_REG: u32 = 38;
}

/// Header flag bits.
pub mod hdr_flags {
    /// Protocol version 1.
    pub const VERSION: u32 = 0x1;
    /// Reply flag.
    pub const REPLY: u32 = 0x4;
    /// Front end wants a reply (REPLY_ACK).
    pub const NEED_REPLY: u32 = 0x8;
}

/// Errors of the front end.
#[derive(Debug, thiserror::Error)]
pub enum FrontendError {
    /// The vhost crate reported an error (includes back-end NACKs and broken sockets).
    #[error("vhost-user: {0}")]
    Vhost(#[from] vhost::Error),
    /// Socket I/O.
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
    /// Could not connect within the time limit.
    #[error("could not connect to {path} within {timeout:?}: {err}")]
    Connect {
        path: String,
        timeout: Duration,
        err: std::io::Error,
    },
    /// A queue operation failed.
    #[error(transparent)]
    Queue(#[from] crate::virtq::QueueError),
    /// Something the back end said does not fit.
    #[error("protocol: {0}")]
    Protocol(String),
}

/// Result of [`FrontendConn::negotiate`].
#[derive(Clone, Copy, Debug)]
pub struct Negotiated {
    /// Features the back end offered.
    pub offered: u64,
    /// Features acked (offered & wanted).
    pub acked: u64,
    /// Protocol features the back end offered.
    pub offered_protocol: VhostUserProtocolFeatures,
    /// Protocol features acked.
    pub protocol: VhostUserProtocolFeatures,
    /// GET_QUEUE_NUM answer (1 without the MQ protocol feature).
    pub queue_num: u64,
}

/// A vhost-user front-end connection.
pub struct FrontendConn {
    fe: Frontend,
    raw: RawChannel,
    offered: u64,
    acked: u64,
    protocol: VhostUserProtocolFeatures,
}

/// Connect to a Unix socket, retrying until `timeout` (the listener may not be up yet).
pub fn connect_socket(path: &Path, timeout: Duration) -> Result<UnixStream, FrontendError> {
    let deadline = Instant::now() + timeout;
    loop {
        match UnixStream::connect(path) {
            Ok(s) => return Ok(s),
            Err(e) => {
                if Instant::now() >= deadline {
                    return Err(FrontendError::Connect {
                        path: path.display().to_string(),
                        timeout,
                        err: e,
                    });
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

impl FrontendConn {
    /// Connect (retrying up to `timeout`). Every later reply wait is bounded by
    /// [`REPLY_TIMEOUT`] through the socket's read timeout.
    pub fn connect(path: impl AsRef<Path>, timeout: Duration) -> Result<Self, FrontendError> {
        let s = connect_socket(path.as_ref(), timeout)?;
        Self::from_stream(s)
    }

    /// Wrap a connected stream.
    pub fn from_stream(s: UnixStream) -> Result<Self, FrontendError> {
        s.set_read_timeout(Some(REPLY_TIMEOUT))?;
        s.set_write_timeout(Some(REPLY_TIMEOUT))?;
        let raw = RawChannel {
            sock: s.try_clone()?,
        };
        Ok(FrontendConn {
            fe: Frontend::from_stream(s, 64),
            raw,
            offered: 0,
            acked: 0,
            protocol: VhostUserProtocolFeatures::empty(),
        })
    }

    /// The underlying vhost crate front end, for anything not wrapped here.
    pub fn frontend(&mut self) -> &mut Frontend {
        &mut self.fe
    }

    /// The raw channel on the same socket. Mixing raw messages with `Frontend` calls is fine
    /// as long as every reply is read by whoever asked for it.
    pub fn raw(&mut self) -> &mut RawChannel {
        &mut self.raw
    }

    /// Features acked with SET_FEATURES.
    pub fn acked_features(&self) -> u64 {
        self.acked
    }
    /// Features the back end offered.
    pub fn offered_features(&self) -> u64 {
        self.offered
    }
    /// Protocol features acked.
    pub fn protocol_features(&self) -> VhostUserProtocolFeatures {
        self.protocol
    }

    /// SET_OWNER.
    pub fn set_owner(&mut self) -> Result<(), FrontendError> {
        Ok(self.fe.set_owner()?)
    }
    /// GET_FEATURES.
    pub fn get_features(&mut self) -> Result<u64, FrontendError> {
        self.offered = self.fe.get_features()?;
        Ok(self.offered)
    }
    /// SET_FEATURES.
    pub fn set_features(&mut self, f: u64) -> Result<(), FrontendError> {
        self.fe.set_features(f)?;
        self.acked = f;
        Ok(())
    }
    /// GET_PROTOCOL_FEATURES.
    pub fn get_protocol_features(&mut self) -> Result<VhostUserProtocolFeatures, FrontendError> {
        Ok(self.fe.get_protocol_features()?)
    }
    /// SET_PROTOCOL_FEATURES. With REPLY_ACK, every later message asks for an ack, so a
    /// back end's refusal surfaces as an error.
    pub fn set_protocol_features(
        &mut self,
        p: VhostUserProtocolFeatures,
    ) -> Result<(), FrontendError> {
        self.fe.set_protocol_features(p)?;
        self.protocol = p;
        if p.contains(VhostUserProtocolFeatures::REPLY_ACK) {
            self.fe.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
        }
        Ok(())
    }
    /// GET_QUEUE_NUM.
    pub fn get_queue_num(&mut self) -> Result<u64, FrontendError> {
        Ok(self.fe.get_queue_num()?)
    }
    /// GET_CONFIG of `size` bytes at `offset`.
    pub fn get_config(&mut self, offset: u32, size: u32) -> Result<Vec<u8>, FrontendError> {
        let buf = vec![0u8; size as usize];
        let (_, payload) =
            self.fe
                .get_config(offset, size, VhostUserConfigFlags::WRITABLE, &buf)?;
        Ok(payload)
    }
    /// SET_MEM_TABLE with all regions of `mem`.
    pub fn set_mem_table(&mut self, mem: &GuestMem) -> Result<(), FrontendError> {
        self.fe.set_mem_table(&mem.region_infos())?;
        Ok(())
    }

    /// SET_VRING_NUM, SET_VRING_ADDR, SET_VRING_BASE, SET_VRING_CALL, SET_VRING_KICK for ring
    /// `index` (the ring starts once kicked and, with protocol features, enabled). The base
    /// is the used index in guest memory: the device resumes after the last request it
    /// completed, so requests already in the avail ring are still to do.
    pub fn setup_vring(
        &mut self,
        index: usize,
        q: &SplitQueue,
        mem: &GuestMem,
    ) -> Result<(), FrontendError> {
        let base = q.used_idx(mem)?;
        self.setup_vring_at(index, q, mem, base)
    }

    /// [`FrontendConn::setup_vring`] with an explicit SET_VRING_BASE value (restarting a
    /// ring where GET_VRING_BASE left it).
    pub fn setup_vring_at(
        &mut self,
        index: usize,
        q: &SplitQueue,
        mem: &GuestMem,
        base: u16,
    ) -> Result<(), FrontendError> {
        let a = q.addrs();
        self.fe.set_vring_num(index, q.size())?;
        let cfg = VringConfigData {
            queue_max_size: q.size(),
            queue_size: q.size(),
            flags: 0,
            desc_table_addr: mem
                .host_addr(a.desc)
                .map_err(crate::virtq::QueueError::from)?,
            used_ring_addr: mem
                .host_addr(a.used)
                .map_err(crate::virtq::QueueError::from)?,
            avail_ring_addr: mem
                .host_addr(a.avail)
                .map_err(crate::virtq::QueueError::from)?,
            log_addr: None,
        };
        self.fe.set_vring_addr(index, &cfg)?;
        self.fe.set_vring_base(index, base)?;
        self.fe.set_vring_call(index, q.call_fd())?;
        self.fe.set_vring_kick(index, q.kick_fd())?;
        Ok(())
    }

    /// SET_MEM_TABLE with any region table (e.g. one that lies about sizes).
    pub fn set_mem_table_regions(
        &mut self,
        regions: &[vhost::VhostUserMemoryRegionInfo],
    ) -> Result<(), FrontendError> {
        self.fe.set_mem_table(regions)?;
        Ok(())
    }

    /// SET_VRING_BASE.
    pub fn set_vring_base(&mut self, index: usize, base: u16) -> Result<(), FrontendError> {
        Ok(self.fe.set_vring_base(index, base)?)
    }

    /// SET_VRING_ENABLE.
    pub fn set_vring_enable(&mut self, index: usize, on: bool) -> Result<(), FrontendError> {
        Ok(self.fe.set_vring_enable(index, on)?)
    }

    /// GET_VRING_BASE: stops the ring, returns the back end's next avail index.
    pub fn get_vring_base(&mut self, index: usize) -> Result<u32, FrontendError> {
        Ok(self.fe.get_vring_base(index)?)
    }

    /// The usual start-up: SET_OWNER, GET_FEATURES, GET/SET_PROTOCOL_FEATURES,
    /// GET_QUEUE_NUM, SET_FEATURES. Acks `offered & want` (always adding
    /// VHOST_USER_F_PROTOCOL_FEATURES when offered) and `offered_protocol & want_protocol`.
    pub fn negotiate(
        &mut self,
        want: u64,
        want_protocol: VhostUserProtocolFeatures,
    ) -> Result<Negotiated, FrontendError> {
        self.set_owner()?;
        let offered = self.get_features()?;
        let mut offered_protocol = VhostUserProtocolFeatures::empty();
        let mut protocol = VhostUserProtocolFeatures::empty();
        if offered & VHOST_USER_F_PROTOCOL_FEATURES != 0 {
            offered_protocol = self.get_protocol_features()?;
            protocol = offered_protocol & want_protocol;
            self.set_protocol_features(protocol)?;
        }
        let queue_num = if protocol.contains(VhostUserProtocolFeatures::MQ) {
            self.get_queue_num()?
        } else {
            1
        };
        let acked = offered & (want | VHOST_USER_F_PROTOCOL_FEATURES);
        self.set_features(acked)?;
        Ok(Negotiated {
            offered,
            acked,
            offered_protocol,
            protocol,
            queue_num,
        })
    }

    /// SET_MEM_TABLE, then set up and enable each queue `i` as ring `i`.
    pub fn start_queues(
        &mut self,
        mem: &GuestMem,
        queues: &mut [SplitQueue],
    ) -> Result<(), FrontendError> {
        self.set_mem_table(mem)?;
        let event_idx = self.acked & VIRTIO_RING_F_EVENT_IDX != 0;
        for (i, q) in queues.iter_mut().enumerate() {
            q.set_event_idx(event_idx);
            self.setup_vring(i, q, mem)?;
            if self.acked & VHOST_USER_F_PROTOCOL_FEATURES != 0 {
                self.set_vring_enable(i, true)?;
            }
        }
        Ok(())
    }

    /// Close the connection (both halves).
    pub fn close(self) {
        let _ = self.raw.sock.shutdown(std::net::Shutdown::Both);
    }
}

/// Raw vhost-user messages on the socket: any header, any body, any fds.
pub struct RawChannel {
    sock: UnixStream,
}

/// A message read back from the back end.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawReply {
    /// Request code.
    pub request: u32,
    /// Header flags.
    pub flags: u32,
    /// Body.
    pub body: Vec<u8>,
}

/// What the back end did after a message: see [`RawChannel::outcome`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A message came back (for REPLY_ACK: `body` is the u64 status, 0 = success).
    Reply(RawReply),
    /// The back end closed (or reset) the connection.
    Closed,
    /// Nothing within the time limit, connection still open.
    Silent,
}

impl Outcome {
    /// True for a non-zero REPLY_ACK or a closed connection: the message was refused.
    pub fn refused(&self) -> bool {
        match self {
            Outcome::Closed => true,
            Outcome::Reply(r) => r.u64().map(|v| v != 0).unwrap_or(false),
            Outcome::Silent => false,
        }
    }
}

impl RawReply {
    /// The body as a u64 (REPLY_ACK status, GET_FEATURES, ...).
    pub fn u64(&self) -> Option<u64> {
        self.body
            .get(0..8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap()))
    }
}

impl RawChannel {
    /// Connect a bare socket (no `Frontend` on it).
    pub fn connect(path: impl AsRef<Path>, timeout: Duration) -> Result<Self, FrontendError> {
        let s = connect_socket(path.as_ref(), timeout)?;
        s.set_read_timeout(Some(REPLY_TIMEOUT))?;
        s.set_write_timeout(Some(REPLY_TIMEOUT))?;
        Ok(RawChannel { sock: s })
    }

    /// The socket.
    pub fn stream(&self) -> &UnixStream {
        &self.sock
    }

    /// Send bytes as they are, with optional fds in SCM_RIGHTS.
    pub fn send_bytes(&mut self, data: &[u8], fds: &[RawFd]) -> Result<(), FrontendError> {
        use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
        let cmsgs: Vec<ControlMessage> = if fds.is_empty() {
            Vec::new()
        } else {
            vec![ControlMessage::ScmRights(fds)]
        };
        let mut off = 0;
        let mut first = true;
        while off < data.len() || first {
            let iov = [IoSlice::new(&data[off..])];
            let c: &[ControlMessage] = if first { &cmsgs } else { &[] };
            let n = sendmsg::<()>(self.sock.as_raw_fd(), &iov, c, MsgFlags::MSG_NOSIGNAL, None)
                .map_err(|e| FrontendError::Io(e.into()))?;
            off += n;
            first = false;
        }
        Ok(())
    }

    /// Send a message: a 12-byte header (`request`, `flags`, `size` = body length) and body.
    pub fn send(
        &mut self,
        request: u32,
        flags: u32,
        body: &[u8],
        fds: &[RawFd],
    ) -> Result<(), FrontendError> {
        self.send_sized(request, flags, body.len() as u32, body, fds)
    }

    /// Send a message whose header claims `size` bytes whatever the body really holds.
    pub fn send_sized(
        &mut self,
        request: u32,
        flags: u32,
        size: u32,
        body: &[u8],
        fds: &[RawFd],
    ) -> Result<(), FrontendError> {
        let mut m = Vec::with_capacity(12 + body.len());
        m.extend_from_slice(&request.to_le_bytes());
        m.extend_from_slice(&flags.to_le_bytes());
        m.extend_from_slice(&size.to_le_bytes());
        m.extend_from_slice(body);
        self.send_bytes(&m, fds)
    }

    /// Read one message (header and body) within `timeout`. `Ok(None)`: the back end closed
    /// the connection.
    pub fn recv(&mut self, timeout: Duration) -> Result<Option<RawReply>, FrontendError> {
        self.sock
            .set_read_timeout(Some(timeout.max(Duration::from_millis(1))))?;
        let r = self.recv_inner();
        self.sock.set_read_timeout(Some(REPLY_TIMEOUT))?;
        r
    }

    fn recv_inner(&mut self) -> Result<Option<RawReply>, FrontendError> {
        let mut h = [0u8; 12];
        if !read_full(&mut self.sock, &mut h)? {
            return Ok(None);
        }
        let request = u32::from_le_bytes(h[0..4].try_into().unwrap());
        let flags = u32::from_le_bytes(h[4..8].try_into().unwrap());
        let size = u32::from_le_bytes(h[8..12].try_into().unwrap());
        if size > 0x1000_0000 {
            return Err(FrontendError::Protocol(format!("reply size {size}")));
        }
        let mut body = vec![0u8; size as usize];
        if !read_full(&mut self.sock, &mut body)? {
            return Ok(None);
        }
        Ok(Some(RawReply {
            request,
            flags,
            body,
        }))
    }

    /// Wait up to `timeout` for a reply or a close.
    pub fn outcome(&mut self, timeout: Duration) -> Outcome {
        match self.recv(timeout) {
            Ok(Some(r)) => Outcome::Reply(r),
            Ok(None) => Outcome::Closed,
            Err(FrontendError::Io(e))
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                Outcome::Silent
            }
            Err(_) => Outcome::Closed,
        }
    }

    /// Send a request that has a reply and read it.
    pub fn request(
        &mut self,
        request: u32,
        body: &[u8],
        timeout: Duration,
    ) -> Result<Option<RawReply>, FrontendError> {
        self.send(request, hdr_flags::VERSION, body, &[])?;
        self.recv(timeout)
    }

    /// Wait up to `timeout` for the back end to close the connection. Messages that arrive
    /// meanwhile are discarded. Returns true if it closed.
    pub fn wait_closed(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 4096];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            let _ = self.sock.set_read_timeout(Some(left));
            match self.sock.read(&mut buf) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut =>
                {
                    return false
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => return true,
            }
        }
    }

    /// Close the connection.
    pub fn close(self) {
        let _ = self.sock.shutdown(std::net::Shutdown::Both);
    }
}

/// Read exactly `buf.len()` bytes; false on EOF before the first byte or mid-way.
fn read_full(s: &mut UnixStream, buf: &mut [u8]) -> Result<bool, FrontendError> {
    let mut off = 0;
    while off < buf.len() {
        match s.read(&mut buf[off..]) {
            Ok(0) => return Ok(false),
            Ok(n) => off += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(true)
}
