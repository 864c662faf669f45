//! Where a back end's listening socket comes from: `--socket PATH`, `--fd N`, or
//! systemd socket activation (LISTEN_FDS). A path held by a live listener is
//! refused; a stale socket file left by a dead one is replaced.

use crate::cli::DaemonArgs;
use crate::error::{Error, Result};
use std::io;
use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

/// The first file descriptor systemd passes (SD_LISTEN_FDS_START).
const LISTEN_FDS_START: RawFd = 3;

/// A listening socket, and the path to remove when the daemon exits (only for
/// sockets this process created itself).
#[derive(Debug)]
pub struct BoundSocket {
    pub listener: UnixListener,
    pub owned_path: Option<PathBuf>,
}

impl BoundSocket {
    /// Removes the socket file this process created, if any.
    pub fn remove_path(&self) {
        if let Some(p) = &self.owned_path {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Opens the socket the command line (or the environment) asks for.
pub fn open(args: &DaemonArgs) -> Result<BoundSocket> {
    match (&args.socket, args.fd) {
        (Some(_), Some(_)) => Err(Error::SocketAndFd),
        (Some(path), None) => bind_path(path),
        (None, Some(fd)) => adopt_fd(fd),
        (None, None) => match activation_fd()? {
            Some(fd) => adopt_fd(fd),
            None => Err(Error::NoSocket),
        },
    }
}

/// Binds `path`, replacing a stale socket file but never a live listener's.
pub fn bind_path(path: &Path) -> Result<BoundSocket> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => match UnixStream::connect(path) {
            Ok(_) => return Err(Error::SocketInUse(path.to_path_buf())),
            Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => {
                log::info!("replacing stale socket {}", path.display());
                std::fs::remove_file(path).map_err(|source| Error::RemoveStale {
                    path: path.to_path_buf(),
                    source,
                })?;
            }
            Err(source) => {
                return Err(Error::Bind {
                    path: path.to_path_buf(),
                    source,
                })
            }
        },
        Ok(_) => return Err(Error::NotASocket(path.to_path_buf())),
        Err(_) => {}
    }
    let listener = UnixListener::bind(path).map_err(|source| Error::Bind {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(BoundSocket {
        listener,
        owned_path: Some(path.to_path_buf()),
    })
}

/// Takes over an inherited, already-listening unix socket.
fn adopt_fd(fd: RawFd) -> Result<BoundSocket> {
    let bad = |source: io::Error| Error::BadFd { fd, source };
    if fd < 0 {
        return Err(bad(io::Error::from_raw_os_error(libc::EBADF)));
    }
    if sockopt(fd, libc::SO_DOMAIN).map_err(bad)? != libc::AF_UNIX {
        return Err(bad(io::Error::other("not an AF_UNIX socket")));
    }
    if sockopt(fd, libc::SO_ACCEPTCONN).map_err(bad)? == 0 {
        return Err(bad(io::Error::other("socket is not listening")));
    }
    // SAFETY: fd is an open listening unix socket (checked above) that this
    // process now owns; nothing else in the process refers to it.
    let listener = unsafe { UnixListener::from_raw_fd(fd) };
    // SAFETY: plain fcntl on an fd we own.
    unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    Ok(BoundSocket {
        listener,
        owned_path: None,
    })
}

fn sockopt(fd: RawFd, opt: libc::c_int) -> io::Result<libc::c_int> {
    let mut val: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: val and len are valid for the duration of the call.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            opt,
            &mut val as *mut _ as *mut libc::c_void,
            &mut len,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(val)
    }
}

/// systemd socket activation: LISTEN_PID must be us and LISTEN_FDS at least 1.
fn activation_fd() -> Result<Option<RawFd>> {
    let (Ok(pid), Ok(fds)) = (std::env::var("LISTEN_PID"), std::env::var("LISTEN_FDS")) else {
        return Ok(None);
    };
    let pid: u32 = pid
        .parse()
        .map_err(|_| Error::SocketActivation(format!("LISTEN_PID={pid:?}")))?;
    if pid != std::process::id() {
        return Ok(None);
    }
    let n: u32 = fds
        .parse()
        .map_err(|_| Error::SocketActivation(format!("LISTEN_FDS={fds:?}")))?;
    if n != 1 {
        return Err(Error::SocketActivation(format!(
            "expected one socket, got LISTEN_FDS={n}"
        )));
    }
    std::env::remove_var("LISTEN_PID");
    std::env::remove_var("LISTEN_FDS");
    Ok(Some(LISTEN_FDS_START))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    fn tmp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("splitvm-listener-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join(name)
    }

    #[test]
    fn live_listener_is_refused() {
        let p = tmp("live.sock");
        let _ = std::fs::remove_file(&p);
        let _first = bind_path(&p).unwrap();
        let err = bind_path(&p).unwrap_err();
        assert!(matches!(err, Error::SocketInUse(_)), "{err}");
    }

    #[test]
    fn stale_socket_is_replaced() {
        let p = tmp("stale.sock");
        let _ = std::fs::remove_file(&p);
        drop(UnixListener::bind(&p).unwrap()); // leaves the file, nobody listens
        let b = bind_path(&p).unwrap();
        assert!(UnixStream::connect(&p).is_ok());
        b.remove_path();
        assert!(!p.exists());
    }

    #[test]
    fn regular_file_is_not_replaced() {
        let p = tmp("file.sock");
        std::fs::write(&p, b"data").unwrap();
        assert!(matches!(bind_path(&p), Err(Error::NotASocket(_))));
        assert_eq!(std::fs::read(&p).unwrap(), b"data");
    }

    #[test]
    fn fd_must_be_listening_unix_socket() {
        let f = std::fs::File::open("/dev/null").unwrap();
        assert!(matches!(adopt_fd(f.as_raw_fd()), Err(Error::BadFd { .. })));
        let (a, _b) = UnixStream::pair().unwrap();
        assert!(matches!(adopt_fd(a.as_raw_fd()), Err(Error::BadFd { .. })));
    }
}
