//! Command-line options every back end takes, after the vhost-user spec's
//! "back-end program conventions": `--socket-path`, `--fd`, `--print-capabilities`.

use crate::sandbox::SandboxMode;
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

    /// Sandbox once the device and socket are open: drop root (to --user/--group, or
    /// keep uid 0 with no capabilities), Landlock with no file-system access (only the
    /// socket file's removal), and a seccomp allowlist of the daemon's own system
    /// calls; a forbidden call is logged ("seccomp: forbidden syscall N") and ends the
    /// process with status 159. `off` is for debugging only.
    #[arg(long, value_enum, default_value_t = SandboxMode::On, value_name = "on|off")]
    pub sandbox: SandboxMode,

    /// When started as root, switch to this user (name or uid) after set-up.
    #[arg(long, value_name = "USER")]
    pub user: Option<String>,

    /// When started as root, switch to this group (name or gid) after set-up
    /// (default: the user's primary group).
    #[arg(long, value_name = "GROUP")]
    pub group: Option<String>,
}

/// clap value parser for `--queue-size`: a power of two from 2 to 32768 (the
/// split-ring limits).
pub fn parse_queue_size(s: &str) -> Result<u16, String> {
    let n: u32 = s.parse().map_err(|_| format!("{s:?} is not a number"))?;
    if !(2..=32768).contains(&n) || !n.is_power_of_two() {
        return Err(format!("{n} is not a power of two between 2 and 32768"));
    }
    Ok(n as u16)
}

#[cfg(test)]
mod tests {
    use super::parse_queue_size;

    #[test]
    fn queue_size_is_a_power_of_two_in_range() {
        assert_eq!(parse_queue_size("256"), Ok(256));
        assert_eq!(parse_queue_size("32768"), Ok(32768));
        assert!(parse_queue_size("1").is_err());
        assert!(parse_queue_size("100").is_err());
        assert!(parse_queue_size("65536").is_err());
        assert!(parse_queue_size("x").is_err());
    }
}
