//! The daemon lifecycle every back end shares: serve one front end after
//! another on the same listening socket for as long as the process runs, and
//! stop cleanly on SIGTERM/SIGINT.
//!
//! Each front-end connection gets a fresh `VhostUserDaemon` (and so fresh
//! vring state and worker threads) around the same device back end: the
//! vhost-user-backend handler keeps "owner" and ring state across a
//! disconnect, which would make the next front end's SET_OWNER fail.

use crate::capabilities::Capabilities;
use crate::cli::DaemonArgs;
use crate::error::{report, Error, Result};
use crate::listener::{self, BoundSocket};
use crate::{logging, signals};
use std::error::Error as StdError;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use vhost::vhost_user::{Error as VhostUserError, Listener};
use vhost_user_backend::{ShutdownHandle, VhostUserBackend, VhostUserDaemon, VringRwLock};
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};

/// Guest memory as every back end maps it.
pub type GuestMemory = GuestMemoryMmap<()>;
/// The guest memory handle the vrings use.
pub type GuestMemoryHandle = GuestMemoryAtomic<GuestMemory>;
/// The vring type every back end uses.
pub type Vring = VringRwLock<GuestMemoryHandle>;

/// A fresh exit event for `VhostUserBackend::exit_event`: without one,
/// dropping a daemon would wait forever for its worker threads.
pub fn new_exit_event() -> Option<(EventConsumer, EventNotifier)> {
    match new_event_consumer_and_notifier(EventFlag::NONBLOCK) {
        Ok(pair) => Some(pair),
        Err(e) => {
            log::error!("cannot create a worker exit event: {e}");
            None
        }
    }
}

/// The whole `main` of a back end: `--print-capabilities`, logging, signals,
/// the device set-up `setup` (run before the socket is opened, so a bad image
/// or tap leaves no socket behind), then serving until a stop signal.
/// Errors are printed as one line with their cause chain.
pub fn run<B, F>(name: &'static str, args: &DaemonArgs, caps: Capabilities, setup: F) -> ExitCode
where
    B: VhostUserBackend<Bitmap = (), Vring = Vring> + Clone + 'static,
    F: FnOnce() -> std::result::Result<B, Box<dyn StdError>>,
{
    if args.print_capabilities {
        println!("{}", caps.to_json());
        return ExitCode::SUCCESS;
    }
    let result = (|| -> std::result::Result<(), Box<dyn StdError>> {
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

/// What the signal watcher and the serving loop share.
#[derive(Default)]
struct Shared {
    stopping: bool,
    connection: Option<ShutdownHandle>,
}

/// Serves front ends on `socket`, one after another, until SIGTERM/SIGINT.
/// On a stop signal the current connection is shut down, the worker threads
/// finish the requests they are processing, the socket file is removed, and
/// this returns `Ok`.
pub fn serve<B>(name: &'static str, backend: B, socket: BoundSocket) -> Result<()>
where
    B: VhostUserBackend<Bitmap = (), Vring = Vring> + Clone + 'static,
{
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
                    // Idle: nothing in flight, the main thread sits in accept().
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

        if let Err(e) = daemon.start(&mut listener) {
            accept_failures += 1;
            if accept_failures > 100 {
                return Err(Error::Accept(e));
            }
            log::warn!("accepting a front end failed: {}", e);
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
            Ok(())
            | Err(vhost_user_backend::Error::HandleRequest(
                VhostUserError::Disconnected | VhostUserError::PartialMessage,
            )) => log::info!("front end disconnected"),
            Err(e) => log::warn!("front end connection ended: {e}"),
        }
        // Dropping the daemon stops its workers once they finish what they hold.
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
