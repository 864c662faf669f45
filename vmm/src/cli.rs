//! Command line: `vmm --kernel ... --memory ... --device ...`.
//!
//! Clap parses the flags; the value syntaxes (`512M[,hugepages]`,
//! `blk,socket=PATH`, `stdio|file=PATH|none`) are parsed here into typed
//! values so that bad input becomes one clear error line.

use std::path::PathBuf;

use clap::Parser;

/// Errors in the values of command-line options.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CliError {
    #[error("invalid memory size `{0}` (expected e.g. 512M, 2G, 1048576K[,hugepages])")]
    Memory(String),
    #[error("invalid --device `{0}`: {1}")]
    Device(String, String),
    #[error("invalid --serial `{0}` (expected stdio, file=PATH or none)")]
    Serial(String),
    #[error("--cpus must be between 1 and {max}, got {got}")]
    Cpus { got: u8, max: u8 },
    #[error("two devices use the same socket {0}")]
    DuplicateSocket(String),
}

/// The raw command line.
#[derive(Debug, Parser)]
#[command(
    name = "vmm",
    version,
    about = "splitvm's minimal KVM VMM with vhost-user devices"
)]
pub struct Args {
    /// Kernel image: bzImage, ELF vmlinux, or an ELF with a PVH entry note.
    #[arg(long)]
    pub kernel: PathBuf,
    /// Initramfs loaded next to the kernel.
    #[arg(long)]
    pub initramfs: Option<PathBuf>,
    /// Kernel command line (virtio_mmio.device=... entries are appended).
    #[arg(long, default_value = "console=ttyS0 reboot=k panic=-1")]
    pub cmdline: String,
    /// Guest RAM: SIZE[,hugepages], e.g. 512M.
    #[arg(long, default_value = "512M")]
    pub memory: String,
    /// Number of vCPUs.
    #[arg(long, default_value_t = 1)]
    pub cpus: u8,
    /// A vhost-user device: TYPE,socket=PATH[,queues=K] with TYPE blk|net|rng|pmem|can,
    /// or generic,virtio-id=N,socket=PATH[,queues=K][,config-size=BYTES].
    #[arg(long = "device")]
    pub devices: Vec<String>,
    /// Where COM1 goes: stdio, file=PATH or none.
    #[arg(long, default_value = "stdio")]
    pub serial: String,
    /// JSON control socket (commands: status, shutdown).
    #[arg(long)]
    pub api_socket: Option<PathBuf>,
    #[command(flatten)]
    pub sandbox: crate::sandbox::SandboxArgs,
}

/// Guest memory request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemorySpec {
    pub size: u64,
    pub hugepages: bool,
}

/// Serial port destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SerialSpec {
    Stdio,
    File(PathBuf),
    None,
}

/// The device kinds the generic proxy knows by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceKind {
    Blk,
    Net,
    Rng,
    Pmem,
    Can,
    Generic(u32),
}

/// One `--device`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceSpec {
    pub kind: DeviceKind,
    pub socket: PathBuf,
    /// Queues to expose; `None`: as many as the device type has by default
    /// (bounded by what the back end reports).
    pub queues: Option<u16>,
    /// Config space bytes to read from the back end (default: per type).
    pub config_size: Option<u32>,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub kernel: PathBuf,
    pub initramfs: Option<PathBuf>,
    pub cmdline: String,
    pub memory: MemorySpec,
    pub cpus: u8,
    pub devices: Vec<DeviceSpec>,
    pub serial: SerialSpec,
    pub api_socket: Option<PathBuf>,
}

/// Most vCPUs: the MP table must fit in the 1 KiB EBDA.
pub const MAX_CPUS: u8 = 32;

impl Args {
    /// Validates the raw arguments into a [`Config`].
    pub fn into_config(self) -> Result<Config, CliError> {
        if self.cpus == 0 || self.cpus > MAX_CPUS {
            return Err(CliError::Cpus {
                got: self.cpus,
                max: MAX_CPUS,
            });
        }
        let devices = self
            .devices
            .iter()
            .map(|d| parse_device(d))
            .collect::<Result<Vec<_>, _>>()?;
        check_unique_sockets(&devices)?;
        Ok(Config {
            kernel: self.kernel,
            initramfs: self.initramfs,
            cmdline: self.cmdline,
            memory: parse_memory(&self.memory)?,
            cpus: self.cpus,
            devices,
            serial: parse_serial(&self.serial)?,
            api_socket: self.api_socket,
        })
    }
}

/// Parses `SIZE[,hugepages]`; SIZE is a number with an optional K/M/G suffix
/// (no suffix: bytes).
pub fn parse_memory(s: &str) -> Result<MemorySpec, CliError> {
    let err = || CliError::Memory(s.to_string());
    let mut parts = s.split(',');
    let size = parts.next().ok_or_else(err)?.trim();
    let mut hugepages = false;
    for opt in parts {
        match opt {
            "hugepages" | "hugepages=on" => hugepages = true,
            "hugepages=off" => hugepages = false,
            _ => return Err(err()),
        }
    }
    let (digits, mult) = match size.chars().last().map(|c| c.to_ascii_uppercase()) {
        Some('K') => (&size[..size.len() - 1], 1u64 << 10),
        Some('M') => (&size[..size.len() - 1], 1 << 20),
        Some('G') => (&size[..size.len() - 1], 1 << 30),
        _ => (size, 1),
    };
    let n: u64 = digits.parse().map_err(|_| err())?;
    let size = n.checked_mul(mult).ok_or_else(err)?;
    if size == 0 || size % 4096 != 0 {
        return Err(err());
    }
    Ok(MemorySpec { size, hugepages })
}

/// Parses `stdio`, `file=PATH` or `none`.
pub fn parse_serial(s: &str) -> Result<SerialSpec, CliError> {
    match s {
        "stdio" => Ok(SerialSpec::Stdio),
        "none" => Ok(SerialSpec::None),
        _ => match s.strip_prefix("file=") {
            Some(p) if !p.is_empty() => Ok(SerialSpec::File(PathBuf::from(p))),
            _ => Err(CliError::Serial(s.to_string())),
        },
    }
}

/// Parses one `--device` value.
pub fn parse_device(s: &str) -> Result<DeviceSpec, CliError> {
    let err = |why: &str| CliError::Device(s.to_string(), why.to_string());
    let mut parts = s.split(',');
    let kind_name = parts.next().unwrap_or("");
    let mut socket = None;
    let mut queues = None;
    let mut virtio_id = None;
    let mut config_size = None;
    for kv in parts {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| err(&format!("`{kv}` is not key=value")))?;
        match k {
            "socket" if !v.is_empty() => socket = Some(PathBuf::from(v)),
            "queues" => {
                let q: u16 = v.parse().map_err(|_| err("queues must be a number"))?;
                if q == 0 {
                    return Err(err("queues must be at least 1"));
                }
                queues = Some(q);
            }
            "config-size" => {
                let n: u32 = v.parse().map_err(|_| err("config-size must be a number"))?;
                if n > 0xf00 {
                    return Err(err("config-size must be at most 3840"));
                }
                config_size = Some(n);
            }
            "virtio-id" => {
                virtio_id = Some(
                    v.parse::<u32>()
                        .map_err(|_| err("virtio-id must be a number"))?,
                )
            }
            _ => return Err(err(&format!("unknown option `{k}`"))),
        }
    }
    let kind = match kind_name {
        "blk" => DeviceKind::Blk,
        "net" => DeviceKind::Net,
        "rng" => DeviceKind::Rng,
        "pmem" => DeviceKind::Pmem,
        "can" => DeviceKind::Can,
        "generic" => match virtio_id {
            Some(id) if id != 0 => DeviceKind::Generic(id),
            _ => return Err(err("generic needs virtio-id=N (N > 0)")),
        },
        _ => return Err(err("type must be blk, net, rng, pmem, can or generic")),
    };
    if virtio_id.is_some() && kind_name != "generic" {
        return Err(err("virtio-id= is only for generic devices"));
    }
    let socket = socket.ok_or_else(|| err("socket=PATH is required"))?;
    Ok(DeviceSpec {
        kind,
        socket,
        queues,
        config_size,
    })
}

/// Two devices on one socket would fight over one back end.
fn check_unique_sockets(devices: &[DeviceSpec]) -> Result<(), CliError> {
    let mut seen: Vec<PathBuf> = Vec::new();
    for d in devices {
        let key = std::fs::canonicalize(&d.socket).unwrap_or_else(|_| d.socket.clone());
        if seen.contains(&key) {
            return Err(CliError::DuplicateSocket(d.socket.display().to_string()));
        }
        seen.push(key);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_sizes() {
        assert_eq!(parse_memory("512M").unwrap().size, 512 << 20);
        assert_eq!(parse_memory("2G").unwrap().size, 2 << 30);
        assert!(parse_memory("1G,hugepages").unwrap().hugepages);
        assert!(parse_memory("abc").is_err());
        assert!(parse_memory("0").is_err());
        assert!(parse_memory("512M,foo").is_err());
    }

    #[test]
    fn devices() {
        let d = parse_device("blk,socket=/tmp/b.sock").unwrap();
        assert_eq!(d.kind, DeviceKind::Blk);
        assert_eq!(d.socket, PathBuf::from("/tmp/b.sock"));
        let g = parse_device("generic,virtio-id=42,socket=/s,queues=2").unwrap();
        assert_eq!(g.kind, DeviceKind::Generic(42));
        assert_eq!(g.queues, Some(2));
        assert!(parse_device("blk").is_err());
        assert!(parse_device("foo,socket=/x").is_err());
        assert!(parse_device("generic,socket=/x").is_err());
        assert!(parse_device("rng,socket=/x,virtio-id=4").is_err());
    }

    #[test]
    fn duplicate_sockets() {
        let a = parse_device("blk,socket=/tmp/same.sock").unwrap();
        let b = parse_device("rng,socket=/tmp/same.sock").unwrap();
        assert!(matches!(
            check_unique_sockets(&[a, b]),
            Err(CliError::DuplicateSocket(_))
        ));
    }

    #[test]
    fn serial() {
        assert_eq!(parse_serial("stdio").unwrap(), SerialSpec::Stdio);
        assert_eq!(parse_serial("none").unwrap(), SerialSpec::None);
        assert_eq!(
            parse_serial("file=/tmp/x").unwrap(),
            SerialSpec::File("/tmp/x".into())
        );
        assert!(parse_serial("tcp").is_err());
    }
}
