//! vhost-user-rng: splitvm's entropy device back end.

mod backend;
mod source;

use backend::{RateLimit, RngBackend};
use clap::Parser;
use splitvm_common::{Capabilities, DaemonArgs, SandboxProfile};
use std::process::ExitCode;
use std::time::Duration;

/// Serves a virtio-rng device over vhost-user, from getrandom(2) or a file/device.
#[derive(Debug, Parser)]
#[command(name = "vhost-user-rng", version)]
struct Args {
    #[command(flatten)]
    daemon: DaemonArgs,

    /// Entropy source: "getrandom" or the path of a file or device (a regular file is
    /// read again from its start at its end).
    #[arg(long, default_value = "getrandom", value_name = "getrandom|PATH")]
    source: String,

    /// Rate limit: at most this many bytes per --period-ms (requests wait, never fail).
    #[arg(long, value_name = "N", requires = "period_ms",
          value_parser = clap::value_parser!(u64).range(1..))]
    max_bytes: Option<u64>,

    /// The rate limit's period in milliseconds.
    #[arg(long, value_name = "P", requires = "max_bytes",
          value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    period_ms: Option<u64>,

    /// Largest ring size a front end may choose (a power of two, 2..=32768).
    #[arg(long, default_value_t = 1024, value_parser = splitvm_common::cli::parse_queue_size)]
    queue_size: u16,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let caps = Capabilities {
        device_type: "rng",
        features: vec![],
    };
    let setup = || -> Result<RngBackend, Box<dyn std::error::Error>> {
        let source = source::Source::open(&args.source)?;
        let limit = match (args.max_bytes, args.period_ms) {
            (Some(max_bytes), Some(ms)) => Some(RateLimit {
                max_bytes,
                period: Duration::from_millis(ms),
            }),
            _ => None,
        };
        match &limit {
            Some(l) => log::info!(
                "entropy from {}, at most {} bytes per {} ms",
                source.describe(),
                l.max_bytes,
                l.period.as_millis()
            ),
            None => log::info!("entropy from {}, no rate limit", source.describe()),
        }
        Ok(RngBackend::new(source, limit, args.queue_size)?)
    };
    // Beyond the daemon core: getrandom(2) (in the core list too), the rate
    // limit's timerfd, rewinding a regular-file source (lseek, in the core).
    let profile = SandboxProfile::new(
        &[
            libc::SYS_getrandom,
            libc::SYS_timerfd_settime,
            libc::SYS_timerfd_gettime,
        ],
        &[],
    );
    splitvm_common::daemon::run_with(
        "vhost-user-rng",
        &args.daemon,
        caps,
        profile,
        setup,
        |b, w| b.start(w),
    )
}
