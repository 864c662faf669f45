//! `vhost_user_messages`: a malicious front end's message stream against a
//! back end (splitvm-common's handler around a real vhost-user-blk device).
//!
//! Input: a sequence of records, each sent with one `sendmsg` on a socketpair
//! whose other end the back end serves ([`crate::server::serve_connection`]):
//!
//! - `op` in 0x00..=0xef: a message with request code `op`. Then `flags` (u8;
//!   the header's flags are `flags ^ 1`, so 0 is a plain version-1 request),
//!   `fds` (u8: `fds & 7` descriptors attached, all of kind `(fds >> 3) & 7`,
//!   see [`make_fd`]), `len` (u16: the header's size field), then `len` body
//!   bytes (fewer if the input ends first).
//! - `op` in 0xf0..=0xff: `len` (u8) raw bytes, sent as they are, no fds
//!   (headers split across sends, garbage between messages).
//! - `op` 0xef: guest RAM contents, sent nowhere: `offset` (u16), `len` (u16),
//!   then `len` bytes written into the input's one "RAM" memfd (64 KiB). Every
//!   fd of kind [`FD_MEMFD_64K`] is that memfd, so once a front end maps it
//!   and starts a ring, the back end's worker runs the requests written here.
//! - `op` 0xee: wait (at most 5 ms, once per input) for any eventfd sent so
//!   far to fire, e.g. the call fd of a ring the worker completes requests
//!   on, before sending the next record.
//!
//! The back end must answer or refuse every request without panicking,
//! aborting or hanging; replies are read and thrown away (fds in them
//! closed). After the stream ends the connection is dropped and the handler
//! forgets the front end, as in the daemon; the handler and its workers live
//! across inputs, as in the daemon. Every 256 inputs the harness checks that
//! the process does not leak file descriptors.

use crate::input::Input;
use crate::server::{blk_server, serve_connection};
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, Ordering};

/// The kinds of descriptor a record can attach.
pub const FD_MEMFD_64K: u8 = 0;
pub const FD_MEMFD_1M: u8 = 1;
pub const FD_EVENTFD: u8 = 2;
pub const FD_MEMFD_EMPTY: u8 = 3;
pub const FD_PIPE: u8 = 4;
pub const FD_MEMFD_4K: u8 = 5;
pub const FD_SOCKET: u8 = 6;
pub const FD_DEV_NULL: u8 = 7;

/// A descriptor of `kind` (see the FD_* constants).
pub fn make_fd(kind: u8, ram: &File) -> OwnedFd {
    let memfd = |size| OwnedFd::from(crate::blk::memfd("splitvm-fuzz-fd", size));
    match kind & 7 {
        FD_MEMFD_64K => OwnedFd::from(ram.try_clone().expect("dup")),
        FD_MEMFD_1M => memfd(1 << 20),
        FD_EVENTFD => {
            // SAFETY: plain eventfd creation; checked below.
            let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
            assert!(fd >= 0, "eventfd: {}", std::io::Error::last_os_error());
            // SAFETY: a fresh fd we own.
            unsafe { OwnedFd::from_raw_fd(fd) }
        }
        FD_MEMFD_EMPTY => memfd(0),
        FD_PIPE => {
            let mut p = [0; 2];
            // SAFETY: room for two fds; checked below.
            let r = unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) };
            assert_eq!(r, 0, "pipe: {}", std::io::Error::last_os_error());
            // SAFETY: fresh fds we own; the write end is closed at once.
            unsafe {
                drop(OwnedFd::from_raw_fd(p[1]));
                OwnedFd::from_raw_fd(p[0])
            }
        }
        FD_MEMFD_4K => memfd(4 << 10),
        FD_SOCKET => OwnedFd::from(UnixStream::pair().expect("socketpair").0),
        _ => OwnedFd::from(File::open("/dev/null").expect("/dev/null")),
    }
}

/// The record that writes guest RAM (see the module doc).
pub const OP_RAM: u8 = 0xef;
/// Size of the input's guest RAM memfd.
pub const RAM_SIZE: u64 = 64 << 10;

/// The record encoding of a wait (for seeds and tests).
pub fn wait() -> Vec<u8> {
    vec![OP_WAIT]
}

/// The record encoding of a RAM write (for seeds and tests).
pub fn ram(offset: u16, bytes: &[u8]) -> Vec<u8> {
    let mut m = vec![OP_RAM];
    m.extend_from_slice(&offset.to_le_bytes());
    m.extend_from_slice(&(bytes.len() as u16).to_le_bytes());
    m.extend_from_slice(bytes);
    m
}

/// The record that waits for the back end's worker (see the module doc).
pub const OP_WAIT: u8 = 0xee;
const WAIT_MS: i32 = 5;

/// One sendmsg (bytes and the fds to attach), or a wait.
pub struct Record {
    pub bytes: Vec<u8>,
    pub fds: Vec<OwnedFd>,
    /// Wait for an eventfd instead of sending.
    pub wait: bool,
}

/// Splits the input into records (see the module doc).
/// Splits the input into records (see the module doc); eventfds attached
/// to any of them are also returned, for waits.
pub fn records(data: &[u8], ram: &File) -> (Vec<Record>, Vec<OwnedFd>) {
    use std::os::unix::fs::FileExt;
    let mut input = Input::new(data);
    let mut out = Vec::new();
    let mut events = Vec::new();
    let mut waited = false;
    while !input.is_empty() {
        let op = input.u8();
        if op == OP_RAM {
            let off = u64::from(input.u16());
            let len = usize::from(input.u16());
            let bytes = input.bytes(len);
            let n = bytes.len().min(RAM_SIZE.saturating_sub(off) as usize);
            ram.write_all_at(&bytes[..n], off).expect("write RAM memfd");
            continue;
        }
        if op == OP_WAIT {
            if !waited {
                out.push(Record {
                    bytes: Vec::new(),
                    fds: Vec::new(),
                    wait: true,
                });
            }
            waited = true;
            continue;
        }
        if op >= 0xf0 {
            let n = usize::from(input.u8());
            out.push(Record {
                bytes: input.bytes(n).to_vec(),
                fds: Vec::new(),
                wait: false,
            });
            continue;
        }
        let flags = u32::from(input.u8() ^ 1);
        let fds = input.u8();
        let len = input.u16();
        let mut bytes = Vec::with_capacity(12 + usize::from(len));
        bytes.extend_from_slice(&u32::from(op).to_le_bytes());
        bytes.extend_from_slice(&flags.to_le_bytes());
        bytes.extend_from_slice(&u32::from(len).to_le_bytes());
        bytes.extend_from_slice(input.bytes(usize::from(len)));
        let kind = (fds >> 3) & 7;
        let fds: Vec<OwnedFd> = (0..fds & 7).map(|_| make_fd(kind, ram)).collect();
        if kind == FD_EVENTFD {
            events.extend(fds.iter().map(|f| f.try_clone().expect("dup")));
        }
        out.push(Record {
            bytes,
            fds,
            wait: false,
        });
    }
    (out, events)
}

/// The record encoding of one message (for seeds and tests).
pub fn message(op: u8, fds: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![op, 0, fds];
    m.extend_from_slice(&(body.len() as u16).to_le_bytes());
    m.extend_from_slice(body);
    m
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// Sends bytes[off..] (with `fds` if off == 0); returns bytes sent, None on EAGAIN.
fn send(sock: RawFd, bytes: &[u8], fds: &[OwnedFd]) -> Result<Option<usize>, i32> {
    let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let fd_bytes = std::mem::size_of_val(raw.as_slice());
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE(fd_bytes as u32) } as usize;
    let mut cbuf = vec![0u64; space.div_ceil(8)];
    let mut iov = libc::iovec {
        iov_base: bytes.as_ptr() as *mut libc::c_void,
        iov_len: bytes.len(),
    };
    // SAFETY: an all-zero msghdr is valid; the fields are set below.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !raw.is_empty() {
        msg.msg_control = cbuf.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        // SAFETY: msg_control points at `space` bytes, room for one cmsg
        // carrying `raw`.
        unsafe {
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(fd_bytes as u32) as _;
            std::ptr::copy_nonoverlapping(raw.as_ptr().cast::<u8>(), libc::CMSG_DATA(c), fd_bytes);
        }
    }
    // SAFETY: msg points at live buffers for the duration of the call.
    let n = unsafe { libc::sendmsg(sock, &msg, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) };
    if n < 0 {
        return match errno() {
            libc::EAGAIN | libc::EINTR => Ok(None),
            e => Err(e),
        };
    }
    Ok(Some(n as usize))
}

/// Reads and drops whatever the back end sent (closing fds it passed);
/// returns false once the back end closed the connection.
fn drain(sock: RawFd) -> bool {
    loop {
        let mut buf = [0u8; 4096];
        let mut cbuf = [0u64; 64];
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        // SAFETY: an all-zero msghdr is valid; the fields are set below.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cbuf.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&cbuf) as _;
        // SAFETY: msg points at live buffers.
        let n =
            unsafe { libc::recvmsg(sock, &mut msg, libc::MSG_DONTWAIT | libc::MSG_CMSG_CLOEXEC) };
        // SAFETY: walking the control messages recvmsg filled in.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(&msg);
            while !c.is_null() {
                if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                    let data = libc::CMSG_DATA(c).cast::<RawFd>();
                    let len = (*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                    for i in 0..len / std::mem::size_of::<RawFd>() {
                        libc::close(data.add(i).read_unaligned());
                    }
                }
                c = libc::CMSG_NXTHDR(&msg, c);
            }
        }
        match n {
            0 => return false,
            n if n > 0 => continue,
            _ => return matches!(errno(), libc::EAGAIN | libc::EINTR),
        }
    }
}

/// The front end's side: sends every record, then shuts down its writing
/// half and reads until the back end hangs up.
fn front_end(sock: UnixStream, records: Vec<Record>, events: Vec<OwnedFd>) {
    let fd = sock.as_raw_fd();
    let mut pending = records.into_iter();
    let mut cur: Option<(Record, usize)> = pending.next().map(|r| (r, 0));
    loop {
        if !drain(fd) {
            return;
        }
        match &mut cur {
            Some((rec, _)) if rec.wait => {
                wait_for_events(&events);
                cur = pending.next().map(|r| (r, 0));
                continue;
            }
            Some((rec, off)) => {
                let fds: &[OwnedFd] = if *off == 0 { &rec.fds } else { &[] };
                match send(fd, &rec.bytes[*off..], fds) {
                    Ok(Some(n)) => {
                        *off += n;
                        if *off >= rec.bytes.len() {
                            cur = pending.next().map(|r| (r, 0));
                        }
                        continue;
                    }
                    Ok(None) => {}
                    Err(_) => return, // the back end hung up
                }
            }
            None => {
                let _ = sock.shutdown(std::net::Shutdown::Write);
            }
        }
        let events = if cur.is_some() {
            libc::POLLIN | libc::POLLOUT
        } else {
            libc::POLLIN
        };
        let mut p = libc::pollfd {
            fd,
            events,
            revents: 0,
        };
        // SAFETY: one pollfd.
        unsafe { libc::poll(&mut p, 1, 1000) };
    }
}

/// Waits up to WAIT_MS for any of `events` to fire, and resets them.
fn wait_for_events(events: &[OwnedFd]) {
    let mut p: Vec<libc::pollfd> = events
        .iter()
        .map(|e| libc::pollfd {
            fd: e.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    // SAFETY: p is a valid array of pollfds.
    let n = unsafe { libc::poll(p.as_mut_ptr(), p.len() as libc::nfds_t, WAIT_MS) };
    if n > 0 {
        for e in events {
            let mut v = 0u64;
            // SAFETY: reads 8 bytes from a non-blocking eventfd into v.
            unsafe { libc::read(e.as_raw_fd(), (&mut v as *mut u64).cast(), 8) };
        }
    }
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

pub fn run(data: &[u8]) {
    run_with_ram(data);
}

/// [`run`], returning the input's guest RAM memfd (for tests that look at
/// what the back end did).
pub fn run_with_ram(data: &[u8]) -> File {
    crate::init();
    static RUNS: AtomicU64 = AtomicU64::new(0);
    static BASELINE: AtomicU64 = AtomicU64::new(0);
    let server = blk_server();
    let ram = crate::blk::memfd("splitvm-fuzz-ram", RAM_SIZE);
    let (records, events) = records(data, &ram);
    let (front, back) = UnixStream::pair().expect("socketpair");
    std::thread::scope(|s| {
        s.spawn(move || front_end(front, records, events));
        serve_connection(&server.handler, back);
    });
    let n = RUNS.fetch_add(1, Ordering::Relaxed);
    if n.is_multiple_of(256) {
        let fds = open_fds() as u64;
        let _ = BASELINE.compare_exchange(0, fds, Ordering::Relaxed, Ordering::Relaxed);
        let base = BASELINE.load(Ordering::Relaxed);
        assert!(
            fds <= base + 64,
            "file descriptor leak: {fds} open, {base} after the first input"
        );
    }
    ram
}
