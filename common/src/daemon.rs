//! The daemon lifecycle every back end shares: serve one front end after
//! another on the same listening socket for as long as the process runs, and
//! stop cleanly on SIGTERM/SIGINT.
//!
//! The protocol handler and the queue workers live as long as the process;
//! when a front end goes away its state is dropped (`Handler::disconnect`)
//! and the next one starts from scratch against the same device.

use crate::capabilities::Capabilities;
use crate::cli::DaemonArgs;
use crate::error::{report, Error, Result};
use crate::handler::Handler;
use crate::listener::{self, BoundSocket};
use crate::sandbox::{Sandbox, SandboxProfile};
use crate::worker::WorkerHandle;
use crate::{logging, signals};
use std::error::Error as StdError;
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use vhost::vhost_user::{BackendReqHandler, Error as VhostUserError, VhostUserVirtioFeatures};
use vhost_user_backend::VhostUserBackend;

pub use crate::vring::{GuestMemoryHandle, Vring};

/// Guest memory as every back end maps it.
pub type GuestMemory = vm_memory::GuestMemoryMmap<()>;

/// An exit event for `VhostUserBackend::exit_event`, for code still run by
/// vhost-user-backend's own daemon (our workers do not need one).
pub fn new_exit_event() -> Option<(
    vmm_sys_util::event::EventConsumer,
    vmm_sys_util::event::EventNotifier,
)> {
    vmm_sys_util::event::new_event_consumer_and_notifier(vmm_sys_util::event::EventFlag::NONBLOCK)
        .ok()
}

/// The whole `main` of a back end: `--print-capabilities`, logging, signals,
/// the device set-up `setup` (run before the socket is opened, so a bad image
/// or tap leaves no socket behind), then serving until a stop signal.
/// Errors are printed as one line with their cause chain.
///
/// Unless `--sandbox off`, the process is sandboxed once the device and the
/// socket are open (see [`crate::sandbox`]): `profile` names the system calls
/// the back end needs beyond the shared core's.
pub fn run<B, F>(
    name: &'static str,
    args: &DaemonArgs,
    caps: Capabilities,
    profile: SandboxProfile,
    setup: F,
) -> ExitCode
where
    B: VhostUserBackend<Bitmap = (), Vring = Vring> + Clone + 'static,
    F: FnOnce() -> std::result::Result<B, Box<dyn StdError>>,
{
    run_with(name, args, caps, profile, setup, |_, _| Ok(()))
}

/// [`run`], with `on_start` called once the queue workers exist, so a back
/// end can add its own fds (a tap, a timer) to them.
pub fn run_with<B, F, S>(
    name: &'static str,
    args: &DaemonArgs,
    caps: Capabilities,
    profile: SandboxProfile,
    setup: F,
    on_start: S,
) -> ExitCode
where
    B: VhostUserBackend<Bitmap = (), Vring = Vring> + Clone + 'static,
    F: FnOnce() -> std::result::Result<B, Box<dyn StdError>>,
    S: FnOnce(&B, &[WorkerHandle]) -> std::io::Result<()>,
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
        // Privileges and Landlock now, on the only thread, so the workers
        // inherit them; seccomp on all threads once they exist.
        let mut sandbox = Sandbox::new(name, args.sandbox, profile);
        if let Err(e) = sandbox.restrict_process(
            args.user.as_deref(),
            args.group.as_deref(),
            socket.owned_path.as_deref(),
        ) {
            socket.remove_path();
            return Err(Error::Sandbox(e).into());
        }
        serve_inner(backend, socket, on_start, || sandbox.restrict_syscalls())?;
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

/// Handles one front end's requests until it goes away (`Ok`) or sends
/// something refused or malformed (`Err`: the protocol has no way back to a
/// known state, so the connection ends), then forgets it
/// (`Handler::disconnect`) so the next front end starts from scratch.
pub fn serve_connection<B>(
    handler: &Arc<Mutex<Handler<B>>>,
    stream: UnixStream,
) -> std::result::Result<(), VhostUserError>
where
    B: VhostUserBackend<Bitmap = (), Vring = Vring> + Clone + 'static,
{
    let mut requests = BackendReqHandler::from_stream(stream, handler.clone());
    let result = loop {
        match requests.handle_request() {
            Ok(()) => {}
            Err(VhostUserError::Disconnected | VhostUserError::PartialMessage) => {
                log::info!("front end disconnected");
                break Ok(());
            }
            Err(VhostUserError::InactiveFeature(f))
                if f == VhostUserVirtioFeatures::PROTOCOL_FEATURES =>
            {
                // QEMU 7.2's virtio-net enables its rings before
                // SET_FEATURES and never again after it.
                log::warn!("SET_VRING_ENABLE before SET_FEATURES; the rings start enabled");
                handler
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .note_enable_before_features();
            }
            Err(e) => break Err(e),
        }
    };
    drop(requests);
    handler
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .disconnect();
    result
}

/// What the signal watcher and the serving loop share.
#[derive(Default)]
struct Shared {
    stopping: bool,
    connection: Option<UnixStream>,
}

fn lock(shared: &Mutex<Shared>) -> std::sync::MutexGuard<'_, Shared> {
    shared.lock().unwrap_or_else(|p| p.into_inner())
}

/// Serves front ends on `socket`, one after another, until SIGTERM/SIGINT.
pub fn serve<B>(backend: B, socket: BoundSocket) -> Result<()>
where
    B: VhostUserBackend<Bitmap = (), Vring = Vring> + Clone + 'static,
{
    serve_with(backend, socket, |_, _| Ok(()))
}

/// [`serve`], calling `on_start` once the workers exist. On a stop signal the
/// current connection is shut down, the workers finish the requests they are
/// processing, the socket file is removed, and this returns `Ok`.
pub fn serve_with<B, S>(backend: B, socket: BoundSocket, on_start: S) -> Result<()>
where
    B: VhostUserBackend<Bitmap = (), Vring = Vring> + Clone + 'static,
    S: FnOnce(&B, &[WorkerHandle]) -> std::io::Result<()>,
{
    serve_inner(backend, socket, on_start, || Ok(()))
}

/// [`serve_with`], calling `before_accept` once every thread exists, just
/// before the first front end is accepted (the seccomp step of the sandbox).
fn serve_inner<B, S, A>(
    backend: B,
    socket: BoundSocket,
    on_start: S,
    before_accept: A,
) -> Result<()>
where
    B: VhostUserBackend<Bitmap = (), Vring = Vring> + Clone + 'static,
    S: FnOnce(&B, &[WorkerHandle]) -> std::io::Result<()>,
    A: FnOnce() -> std::result::Result<(), crate::sandbox::Error>,
{
    let (handler, workers) = Handler::new(backend.clone()).map_err(Error::Workers)?;
    let handles: Vec<WorkerHandle> = workers.iter().map(|w| w.handle().clone()).collect();
    on_start(&backend, &handles).map_err(Error::Workers)?;
    let handler = Arc::new(Mutex::new(handler));

    let shared = Arc::new(Mutex::new(Shared::default()));
    {
        let shared = shared.clone();
        let owned_path = socket.owned_path.clone();
        signals::watch(move |sig| {
            log::info!("{sig}: finishing in-flight requests and exiting");
            let mut s = lock(&shared);
            s.stopping = true;
            match &s.connection {
                Some(conn) => {
                    let _ = conn.shutdown(Shutdown::Both);
                }
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

    if let Err(e) = before_accept() {
        socket.remove_path();
        return Err(Error::Sandbox(e));
    }
    match &socket.owned_path {
        Some(p) => log::info!("listening on {}", p.display()),
        None => log::info!("listening on an inherited socket"),
    }
    let mut accept_failures = 0u32;
    loop {
        let stream = match socket.listener.accept() {
            Ok((stream, _)) => stream,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                accept_failures += 1;
                if accept_failures > 100 {
                    return Err(Error::Listen(e));
                }
                log::warn!("accepting a front end failed: {e}");
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        accept_failures = 0;
        {
            let mut s = lock(&shared);
            if s.stopping {
                break;
            }
            s.connection = stream.try_clone().ok();
        }
        log::info!("front end connected");

        if let Err(e) = serve_connection(&handler, stream) {
            if !lock(&shared).stopping {
                log::warn!("closing the front-end connection: {e}");
            }
        }

        let mut s = lock(&shared);
        s.connection = None;
        if s.stopping {
            break;
        }
        log::info!("waiting for the next front end");
    }
    // Dropping the workers lets each finish the event in hand, then joins it.
    drop(workers);
    socket.remove_path();
    log::info!("exiting");
    Ok(())
}
