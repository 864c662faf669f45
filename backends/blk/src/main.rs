//! vhost-user-blk: splitvm's block device back end.

use clap::Parser;
use splitvm_common::{Capabilities, DaemonArgs, SandboxProfile};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use vhost_user_blk::backend::{Aio, BlkBackend, BlkOptions};
use vhost_user_blk::image;

/// Serves a raw disk image or host block device as a virtio-blk device over vhost-user.
#[derive(Debug, Parser)]
#[command(name = "vhost-user-blk", version)]
struct Args {
    #[command(flatten)]
    daemon: DaemonArgs,

    /// Raw disk image or host block device to serve.
    #[arg(
        long,
        visible_alias = "blk-file",
        value_name = "FILE",
        required_unless_present = "print_capabilities"
    )]
    image: Option<PathBuf>,

    /// Serve the image read-only (VIRTIO_BLK_F_RO; writes fail with IOERR).
    #[arg(long, visible_alias = "read-only")]
    readonly: bool,

    /// Number of request queues (one worker thread each).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    num_queues: u16,

    /// Largest ring size a front end may choose (a power of two, 2..=32768).
    #[arg(long, default_value_t = 256, value_parser = splitvm_common::cli::parse_queue_size)]
    queue_size: u16,

    /// Open the image with O_DIRECT (bypass the host page cache).
    #[arg(long)]
    direct: bool,

    /// Adaptive busy-poll: after a kick, keep polling the ring for up to this many
    /// microseconds after the last request before sleeping again (0: never poll). Trades
    /// up to that much CPU per burst for lower latency and fewer guest kicks.
    #[arg(long, value_name = "US", default_value_t = 0,
          value_parser = clap::value_parser!(u64).range(0..=1_000_000))]
    poll_us: u64,

    /// How reads and writes reach the image: preadv (one system call per request) or
    /// io_uring (each pass over the ring submitted as one batch; falls back to preadv
    /// where io_uring is unavailable).
    #[arg(long, value_enum, default_value_t = AioArg::Preadv)]
    aio: AioArg,

    /// Device serial for VIRTIO_BLK_T_GET_ID (at most 20 bytes; default: the image's file name).
    #[arg(long, value_name = "ID", value_parser = parse_serial)]
    serial: Option<String>,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum AioArg {
    Preadv,
    #[value(name = "io_uring")]
    IoUring,
}

fn parse_serial(s: &str) -> Result<String, String> {
    if s.len() > 20 {
        return Err(format!(
            "{s:?} is {} bytes; a virtio-blk serial has at most 20",
            s.len()
        ));
    }
    Ok(s.to_string())
}

/// The default serial: the image's file name, cut to 20 bytes.
fn default_serial(image: &Path) -> Vec<u8> {
    let name = image
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut bytes = name.into_bytes();
    bytes.truncate(20);
    bytes
}

/// The sandbox's allowlist beyond the daemon core: I/O on the open image
/// (preadv/pwritev or io_uring_enter, flush, discard/write-zeroes by
/// fallocate on a file or the BLKDISCARD/BLKZEROOUT ioctls on a block device).
fn sandbox_profile() -> SandboxProfile {
    const BLKDISCARD: u64 = 0x1277;
    const BLKZEROOUT: u64 = 0x127f;
    SandboxProfile::new(
        &[
            libc::SYS_pread64,
            libc::SYS_pwrite64,
            libc::SYS_preadv,
            libc::SYS_pwritev,
            libc::SYS_fdatasync,
            libc::SYS_fsync,
            libc::SYS_fallocate,
            // --aio io_uring: each queue's ring is created at set-up, before
            // the sandbox; afterwards only io_uring_enter (no new rings, no
            // io_uring_register).
            libc::SYS_io_uring_enter,
        ],
        &[BLKDISCARD, BLKZEROOUT],
    )
}

fn main() -> ExitCode {
    let args = Args::parse();
    let caps = Capabilities {
        device_type: "block",
        features: vec!["blk-file", "read-only"],
    };
    let profile = sandbox_profile();
    splitvm_common::daemon::run("vhost-user-blk", &args.daemon, caps, profile, || {
        let path = args.image.as_deref().ok_or("--image is required")?;
        let image = image::Image::open(path, args.readonly, args.direct)?;
        log::info!(
            "serving {} ({} bytes{}{}), {} queue(s) of up to {}",
            path.display(),
            image.size(),
            if args.readonly { ", read-only" } else { "" },
            if args.direct { ", O_DIRECT" } else { "" },
            args.num_queues,
            args.queue_size
        );
        let serial = match &args.serial {
            Some(s) => s.as_bytes().to_vec(),
            None => default_serial(path),
        };
        Ok(BlkBackend::new(
            image,
            BlkOptions {
                num_queues: args.num_queues,
                queue_size: args.queue_size,
                serial,
            },
        )
        .with_poll(std::time::Duration::from_micros(args.poll_us))
        .with_aio(match args.aio {
            AioArg::Preadv => Aio::Preadv,
            AioArg::IoUring => Aio::IoUring,
        }))
    })
}
