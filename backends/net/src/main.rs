//! vhost-user-net: splitvm's network device back end over a tap.

use clap::Parser;
use splitvm_common::{Capabilities, DaemonArgs, SandboxProfile};
use std::process::ExitCode;
use vhost_user_net::backend::{NetBackend, NetOptions};
use vhost_user_net::tap;

/// Serves a virtio-net device over vhost-user, forwarding frames to and from a tap.
#[derive(Debug, Parser)]
#[command(name = "vhost-user-net", version)]
struct Args {
    #[command(flatten)]
    daemon: DaemonArgs,

    /// Tap interface to attach (created if missing and permitted).
    #[arg(long, value_name = "NAME", required_unless_present = "print_capabilities",
          value_parser = parse_tap)]
    tap: Option<String>,

    /// The device's MAC address (config space).
    #[arg(long, default_value = "52:54:00:12:34:56", value_parser = parse_mac)]
    mac: MacArg,

    /// Queue pairs (one tap queue and one worker thread each; more than one needs a
    /// multi_queue tap).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=16))]
    queue_pairs: u16,

    /// Largest ring size a front end may choose (a power of two, 2..=32768).
    #[arg(long, default_value_t = 256, value_parser = splitvm_common::cli::parse_queue_size)]
    queue_size: u16,

    /// MTU announced to the guest (68..=65535; set the tap's own MTU to match).
    #[arg(long, default_value_t = 1500, value_parser = clap::value_parser!(u16).range(68..))]
    mtu: u16,

    /// Adaptive busy-poll of the TX ring: after a kick, keep polling for up to this many
    /// microseconds after the last frame before sleeping again (0: never poll).
    #[arg(long, value_name = "US", default_value_t = 0,
          value_parser = clap::value_parser!(u64).range(0..=1_000_000))]
    poll_us: u64,
}

#[derive(Debug, Clone, Copy)]
struct MacArg([u8; 6]);

fn parse_mac(s: &str) -> Result<MacArg, String> {
    let bad = || format!("{s:?} is not a MAC address like 52:54:00:12:34:56");
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 {
        return Err(bad());
    }
    let mut mac = [0u8; 6];
    for (b, p) in mac.iter_mut().zip(parts) {
        if p.len() != 2 {
            return Err(bad());
        }
        *b = u8::from_str_radix(p, 16).map_err(|_| bad())?;
    }
    if mac[0] & 1 != 0 {
        return Err(format!("{s} is a multicast address"));
    }
    if mac == [0; 6] {
        return Err("00:00:00:00:00:00 is not a usable address".into());
    }
    Ok(MacArg(mac))
}

fn parse_tap(s: &str) -> Result<String, String> {
    tap::check_name(s).map_err(|e| e.to_string())?;
    Ok(s.to_string())
}

fn main() -> ExitCode {
    let args = Args::parse();
    let caps = Capabilities {
        device_type: "net",
        features: vec![],
    };
    let setup = || -> Result<NetBackend, Box<dyn std::error::Error>> {
        let name = args.tap.as_deref().ok_or("--tap is required")?;
        let taps = tap::open(name, usize::from(args.queue_pairs))?;
        let m = args.mac.0;
        log::info!(
            "tap {name}: {} queue pair(s) of up to {}, mac {:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}, mtu {}",
            args.queue_pairs,
            args.queue_size,
            m[0],
            m[1],
            m[2],
            m[3],
            m[4],
            m[5],
            args.mtu
        );
        Ok(NetBackend::new(
            taps,
            NetOptions {
                mac: m,
                queue_pairs: args.queue_pairs,
                queue_size: args.queue_size,
                mtu: args.mtu,
            },
        )
        .with_poll(std::time::Duration::from_micros(args.poll_us)))
    };
    // Beyond the daemon core (which has read/write/readv/writev on any open
    // fd, so on the tap queues): the tap ioctls used while serving (offloads
    // from the guest's features, queue attach/detach, vnet header size).
    const TUNSETOFFLOAD: u64 = 0x4004_54d0;
    const TUNSETVNETHDRSZ: u64 = 0x4004_54d8;
    const TUNSETQUEUE: u64 = 0x4004_54d9;
    let profile = SandboxProfile::new(&[], &[TUNSETOFFLOAD, TUNSETVNETHDRSZ, TUNSETQUEUE]);
    splitvm_common::daemon::run_with(
        "vhost-user-net",
        &args.daemon,
        caps,
        profile,
        setup,
        |b, w| b.start(w),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_addresses() {
        assert_eq!(
            parse_mac("52:54:00:ab:CD:ef").unwrap().0,
            [0x52, 0x54, 0, 0xab, 0xcd, 0xef]
        );
        for bad in [
            "",
            "52:54:00:12:34",
            "52:54:00:12:34:56:78",
            "5254:00:12:34:56",
            "zz:54:00:12:34:56",
            "01:00:5e:00:00:01",
            "00:00:00:00:00:00",
        ] {
            assert!(parse_mac(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn tap_names() {
        assert!(parse_tap("tap0").is_ok());
        for bad in ["", "a/b", "a b", "0123456789abcdef", ".", "a:b"] {
            assert!(parse_tap(bad).is_err(), "{bad:?}");
        }
    }
}
