//! Noticing a back end's socket come back: an inotify watch on the
//! socket's directory. A restarted back end creates its socket again
//! (bind), so a reconnect can try at once instead of waiting out its
//! backoff delay. Without inotify the reconnect just sleeps.

use std::ffi::{CString, OsString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct SocketWatch {
    fd: OwnedFd,
    name: OsString,
}

impl SocketWatch {
    pub fn new(socket: &Path) -> io::Result<Self> {
        let name = socket
            .file_name()
            .ok_or_else(|| io::Error::other("socket path has no file name"))?
            .to_os_string();
        let dir = match socket.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let dir = CString::new(dir.as_os_str().as_bytes()).map_err(io::Error::other)?;
        // SAFETY: plain system calls; the fd is owned right away.
        let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let mask = libc::IN_CREATE | libc::IN_MOVED_TO | libc::IN_ATTRIB;
        // SAFETY: dir is a valid NUL-terminated path.
        if unsafe { libc::inotify_add_watch(fd.as_raw_fd(), dir.as_ptr(), mask) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self { fd, name })
    }

    /// Forgets pending events.
    pub fn clear(&self) {
        self.drain_matches();
    }

    /// Waits up to `timeout`; true as soon as the socket file is created
    /// (or replaced, or its attributes change) in the meantime.
    pub fn wait(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            let mut pfd = libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let ms = left.as_millis().clamp(1, i32::MAX as u128) as i32;
            // SAFETY: one valid pollfd.
            if unsafe { libc::poll(&mut pfd, 1, ms) } > 0 && self.drain_matches() {
                return true;
            }
        }
    }

    /// Reads the pending events; whether one names our socket.
    fn drain_matches(&self) -> bool {
        let mut buf = [0u8; 4096];
        let mut hit = false;
        loop {
            // SAFETY: reading into a buffer we own.
            let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                return hit;
            }
            hit |= events_name(&buf[..n as usize], self.name.as_bytes());
        }
    }
}

/// Whether a buffer of `struct inotify_event`s has one for `name`.
fn events_name(mut buf: &[u8], name: &[u8]) -> bool {
    const HDR: usize = 16; // wd, mask, cookie, len
    let mut hit = false;
    while buf.len() >= HDR {
        let len = u32::from_ne_bytes([buf[12], buf[13], buf[14], buf[15]]) as usize;
        let Some(raw) = buf.get(HDR..HDR + len) else {
            break;
        };
        let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
        hit |= &raw[..end] == name;
        buf = &buf[HDR + len..];
    }
    hit
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sees_the_socket_created_again() {
        let dir = std::env::temp_dir().join(format!("vmm-watch-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let sock = dir.join("b.sock");
        let w = SocketWatch::new(&sock).unwrap();
        assert!(!w.wait(Duration::from_millis(20)), "nothing happened yet");
        std::fs::write(dir.join("other"), b"x").unwrap();
        assert!(!w.wait(Duration::from_millis(20)), "another file");
        let start = Instant::now();
        let t = std::thread::spawn({
            let sock = sock.clone();
            move || {
                std::thread::sleep(Duration::from_millis(30));
                std::os::unix::net::UnixListener::bind(&sock).unwrap()
            }
        });
        assert!(w.wait(Duration::from_secs(5)));
        assert!(start.elapsed() < Duration::from_secs(2));
        drop(t.join().unwrap());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
