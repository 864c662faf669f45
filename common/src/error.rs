//! Errors of the shared daemon core, and one-line reporting with the cause chain.

use std::error::Error as StdError;
use std::io;
use std::path::PathBuf;

/// Errors of the shared daemon core.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "give exactly one of --socket PATH, --fd N, or systemd socket activation (LISTEN_FDS)"
    )]
    NoSocket,
    #[error("--socket and --fd are mutually exclusive")]
    SocketAndFd,
    #[error("socket {0} is in use by a running back end")]
    SocketInUse(PathBuf),
    #[error("{0} exists and is not a socket; refusing to replace it")]
    NotASocket(PathBuf),
    #[error("cannot remove stale socket {path}")]
    RemoveStale {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot listen on {path}")]
    Bind {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("file descriptor {fd} is not a listening unix socket")]
    BadFd {
        fd: i32,
        #[source]
        source: io::Error,
    },
    #[error("bad socket activation environment: {0}")]
    SocketActivation(String),
    #[error("cannot set up signal handling")]
    Signals(#[source] io::Error),
    // For back ends still run by vhost-user-backend's daemon; its error type
    // implements Display but not std::error::Error.
    #[error("cannot create the vhost-user daemon: {0}")]
    Daemon(vhost_user_backend::Error),
    #[error("cannot start the queue workers")]
    Workers(#[source] io::Error),
    #[error("cannot accept a front end: {0}")]
    Accept(vhost_user_backend::Error),
    #[error("cannot accept front ends")]
    Listen(#[source] io::Error),
    #[error("bad log level {0:?} (expected error, warn, info, debug or trace)")]
    LogLevel(String),
    #[error("cannot enter the sandbox (--sandbox off to run without it)")]
    Sandbox(#[source] crate::sandbox::Error),
}

pub type Result<T> = std::result::Result<T, Error>;

/// Formats an error and its whole cause chain on one line: `a: b: c`.
pub fn report(err: &dyn StdError) -> String {
    let mut line = err.to_string();
    let mut cause = err.source();
    while let Some(c) = cause {
        let text = c.to_string();
        // Some errors repeat their source's text in their own; don't say it twice.
        if !line.ends_with(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        cause = c.source();
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_walks_the_chain() {
        let e = Error::Bind {
            path: "/x/y.sock".into(),
            source: io::Error::from_raw_os_error(libc::ENOENT),
        };
        let line = report(&e);
        assert!(line.starts_with("cannot listen on /x/y.sock: "), "{line}");
        assert!(line.contains("No such file or directory"), "{line}");
        assert!(!line.contains('\n'));
    }
}
