//! Command-line options every back end takes, after the vhost-user spec's
//! "back-end program conventions": `--socket-path`, `--fd`, `--print-capabilities`.

use std::path::PathBuf;

/// Options shared by all back ends; `#[command(flatten)]` them into a back end's own.
#[derive(Debug, Clone, clap::Args)]
pub struct DaemonArgs {
    /// Listen for front ends on this unix socket path.
    #[arg(long, visible_alias = "socket-path", value_name = "PATH")]
    pub socket: Option<PathBuf>,

    /// Serve on this already-listening unix socket file descriptor.
    #[arg(long, value_name = "N")]
    pub fd: Option<i32>,

    /// Print the back end's capabilities as JSON (vhost-user spec) and exit.
    #[arg(long)]
    pub print_capabilities: bool,

    /// Log level: error, warn, info, debug or trace (default: RUST_LOG, else info).
    #[arg(long, value_name = "LEVEL")]
    pub log_level: Option<String>,
}
