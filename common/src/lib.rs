//! What every splitvm back end shares: the daemon lifecycle (listen, serve one
//! front end after another, re-listen, signals), the command-line conventions of
//! the vhost-user spec's back-end programs, logging, and error reporting.
//!
//! A back end implements `vhost_user_backend::VhostUserBackend` for its device
//! logic and hands it to [`daemon::serve`]; everything else lives here.

pub mod capabilities;
pub mod cli;
pub mod daemon;
pub mod error;
pub mod listener;
pub mod logging;
pub mod signals;

pub use capabilities::Capabilities;
pub use cli::DaemonArgs;
pub use error::{report, Error, Result};
