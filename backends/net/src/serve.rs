//! `splitvm_common::daemon::run`/`serve` with a per-connection hook.
//!
//! The common core creates a fresh `VhostUserDaemon` per front-end connection
//! and keeps it to itself, so a back end cannot reach that daemon's worker
//! epoll handlers to add its own event sources (here: the tap queue fds).
//! This is the same loop (same signals, logging, socket handling, error
//! reporting, all through common's public pieces) plus two calls into the
//! back end: [`Hooked::connected`] with the new daemon's epoll handlers before
//! it accepts, and [`Hooked::disconnected`] once the connection has ended.
//! It belongs in common/ (a `serve_with_hooks`); kept here until it moves.

use splitvm_common::daemon::Vring;
use splitvm_common::listener::{self, BoundSocket};
use splitvm_common::{logging, report, signals, Capabilities, DaemonArgs, Error};
use std::error::Error as StdError;
use std::io;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use vhost::vhost_user::Listener;
use vhost_user_backend::{ShutdownHandle, VhostUserBackend, VhostUserDaemon, VringEpollHandler};
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};

/// A back end that wants to know about each connection's worker epolls.
pub trait Hooked: VhostUserBackend<Bitmap = (), Vring = Vring> + Clone + 'static {
    /// A fresh daemon was created for the next front end: `handlers[i]` is
    /// worker thread `i`'s epoll (custom events: data > num_queues()).
    fn connected(&self, handlers: &[Arc<VringEpollHandler<Self>>]) -> io::Result<()>;
    /// That front end's connection ended; drop anything kept from `connected`.
    fn disconnected(&self) {}
}

/// Like `splitvm_common::daemon::run`, with the hooks of [`Hooked`].
pub fn run<B, F>(name: &'static str, args: &DaemonArgs, caps: Capabilities, setup: F) -> ExitCode
where
    B: Hooked,
    F: FnOnce() -> Result<B, Box<dyn StdError>>,
{
    if args.print_capabilities {
        println!("{}", caps.to_json());
        return ExitCode::SUCCESS;
    }
    let result = (|| -> Result<(), Box<dyn StdError>> {
        logging::init(name, args.log_level.as_deref())?;
        signals::block()?;
        let backend = setup()?;
        let socket = listener::open(args)?;
        serve(name, backend, socket)?;
        Ok(())
    })();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: error: {}", report(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

#[derive(Default)]
struct Shared {
    stopping: bool,
    connection: Option<ShutdownHandle>,
}

/// Like `splitvm_common::daemon::serve`, with the hooks of [`Hooked`].
pub fn serve<B: Hooked>(
    name: &'static str,
    backend: B,
    socket: BoundSocket,
) -> Result<(), Box<dyn StdError>> {
    let shared = Arc::new(Mutex::new(Shared::default()));
    let owned_path = socket.owned_path.clone();
    {
        let shared = shared.clone();
        signals::watch(move |sig| {
            log::info!("{sig}: finishing in-flight requests and exiting");
            let mut s = shared.lock().unwrap_or_else(|p| p.into_inner());
            s.stopping = true;
            match &s.connection {
                Some(conn) => conn.shutdown(),
                None => {
                    if let Some(p) = &owned_path {
                        let _ = std::fs::remove_file(p);
                    }
                    std::process::exit(0);
                }
            }
        })?;
    }
    match &socket.owned_path {
        Some(p) => log::info!("listening on {}", p.display()),
        None => log::info!("listening on an inherited socket"),
    }
    let mut listener = Listener::from(socket.listener.try_clone().map_err(Error::Signals)?);
    let mut accept_failures = 0u32;
    loop {
        let mut daemon = VhostUserDaemon::new(
            name.to_string(),
            backend.clone(),
            GuestMemoryAtomic::new(GuestMemoryMmap::new()),
        )
        .map_err(Error::Daemon)?;
        backend
            .connected(&daemon.get_epoll_handlers())
            .map_err(|e| format!("cannot set up the device's event sources: {e}"))?;

        if let Err(e) = daemon.start(&mut listener) {
            backend.disconnected();
            accept_failures += 1;
            if accept_failures > 100 {
                return Err(Error::Accept(e).into());
            }
            log::warn!("accepting a front end failed: {e}");
            std::thread::sleep(Duration::from_millis(50));
            continue;
        }
        accept_failures = 0;
        {
            let mut s = shared.lock().unwrap_or_else(|p| p.into_inner());
            if s.stopping {
                daemon.request_shutdown();
            }
            s.connection = daemon.shutdown_handle();
        }
        log::info!("front end connected");
        match daemon.wait() {
            Ok(()) => log::info!("front end disconnected"),
            Err(e) => log::warn!("front end connection ended: {e}"),
        }
        backend.disconnected();
        drop(daemon);

        let mut s = shared.lock().unwrap_or_else(|p| p.into_inner());
        s.connection = None;
        if s.stopping {
            break;
        }
        log::info!("waiting for the next front end");
    }
    socket.remove_path();
    log::info!("exiting");
    Ok(())
}
