//! What every splitvm back end shares: the daemon lifecycle (listen, serve one
//! front end after another, re-listen, signals), the command-line conventions of
//! the vhost-user spec's back-end programs, logging, and error reporting.
//!
//! A back end implements `vhost_user_backend::VhostUserBackend` for its device
//! logic, with [`vring::Vring`] as its vring type (requests taken with
//! `Vring::pop_chain` are tracked in flight), and hands it to [`daemon::run`];
//! everything else lives here.

pub mod capabilities;
pub mod cli;
pub mod daemon;
pub mod error;
pub mod handler;
pub mod inflight;
pub mod listener;
pub mod logging;
pub mod sandbox;
pub mod signals;
pub mod vring;
pub mod worker;

pub use capabilities::Capabilities;
pub use cli::DaemonArgs;
pub use error::{report, Error, Result};
pub use sandbox::{SandboxMode, SandboxProfile};
