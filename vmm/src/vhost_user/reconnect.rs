//! Reconnecting to a restarted back end.
//!
//! When a device's back end goes away (hang-up on its socket, or a failed
//! exchange) the device keeps everything the guest negotiated and the VM
//! runs on: QueueNotify still lands in the kick eventfds (KVM ioeventfds),
//! which the next back end inherits. One thread per outage retries the
//! connection with backoff (50 ms doubling to 1 s) for as long as the VM
//! runs; an inotify watch on the socket's directory (`socket_watch.rs`)
//! cuts a wait short when the socket is created again, so a restarted back
//! end is found within milliseconds, not at the next backoff step. Each
//! attempt's connect and handshake run without the device lock,
//! so vCPUs touching the device never wait on a dead or slow back end; only
//! restarting the rings on the new, answering back end takes the lock.
//!
//! The restart itself (features check, SET_INFLIGHT_FD, ring bases from the
//! used index, kick replay) is the device's [`VirtioMmioDevice::reattach`].
//! [`Link`] keeps the numbers the API reports.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use vm_memory::{Bytes, GuestAddress};

use serde_json::{json, Value};

use crate::devices::virtio_mmio::VirtioMmioDevice;
use crate::exit::ExitSignal;
use crate::vhost_user::socket_watch::SocketWatch;

/// First retry delay after an outage starts.
pub const BACKOFF_START: Duration = Duration::from_millis(50);
/// Longest delay between two attempts.
pub const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// Delay before the next attempt when the one made as the socket appeared
/// failed (bound, not yet listening): short, then doubling again.
pub const BACKOFF_AFTER_CREATE: Duration = Duration::from_millis(5);

/// The delay after `current`: doubled, at most [`BACKOFF_MAX`].
pub fn next_delay(current: Duration) -> Duration {
    (current * 2).min(BACKOFF_MAX)
}

/// A device's connection history, for the API and the log.
#[derive(Debug, Default)]
pub struct Link {
    /// When the current outage began.
    down_since: Option<Instant>,
    /// Outages that ended, summed.
    down_total: Duration,
    /// Successful reconnects.
    reconnects: u64,
    /// Failed reconnect attempts in the current outage.
    attempts: u64,
    /// Why the device is DEVICE_NEEDS_RESET after a reconnect (until the
    /// driver resets it).
    needs_reset: Option<String>,
    /// Times that happened, and the last reason (kept after the reset).
    needs_reset_events: u64,
    last_needs_reset: Option<String>,
    /// A reconnect thread is running for this device.
    reconnecting: Arc<AtomicBool>,
    /// When the last reconnect restarted the device, and when the guest saw
    /// the first completion after it (wall clock, for the benchmark).
    reconnected_at: Option<SystemTime>,
    first_completion: Option<SystemTime>,
    /// Watches the socket's directory. Made with the device, before the
    /// VMM's sandbox (which has no inotify_init1/inotify_add_watch).
    watch: Option<Arc<SocketWatch>>,
}

/// Wall-clock milliseconds since the epoch, to the microsecond.
fn epoch_ms(t: Option<SystemTime>) -> Option<f64> {
    t.and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
        .map(|d| d.as_micros() as f64 / 1000.0)
}

impl Link {
    /// A link for a back end at `socket` (with an inotify watch when the
    /// directory can be watched; without, reconnects only back off).
    pub fn new(socket: &std::path::Path) -> Self {
        let watch = SocketWatch::new(socket)
            .map_err(|e| log::debug!("{}: no inotify watch: {e}", socket.display()))
            .ok()
            .map(Arc::new);
        Link {
            watch,
            ..Link::default()
        }
    }

    fn watch(&self) -> Option<Arc<SocketWatch>> {
        self.watch.clone()
    }

    pub fn went_down(&mut self) {
        if self.down_since.is_none() {
            self.down_since = Some(Instant::now());
            self.attempts = 0;
        }
    }

    pub fn came_back(&mut self) {
        if let Some(t) = self.down_since.take() {
            self.down_total += t.elapsed();
        }
        self.reconnects += 1;
        self.reconnected_at = Some(SystemTime::now());
        self.first_completion = None;
    }

    pub fn reconnects(&self) -> u64 {
        self.reconnects
    }

    fn completed_at(&mut self, t: SystemTime) {
        self.first_completion = Some(t);
    }

    pub fn attempt_failed(&mut self) {
        self.attempts += 1;
    }

    pub fn set_needs_reset(&mut self, why: Option<String>) {
        if why.is_some() {
            self.needs_reset_events += 1;
            self.last_needs_reset.clone_from(&why);
        }
        self.needs_reset = why;
    }

    /// Fields merged into the device's API `status` entry.
    pub fn describe(&self) -> Value {
        let down_ms = self.down_since.map(|t| t.elapsed().as_millis() as u64);
        let total = self.down_total + self.down_since.map_or(Duration::ZERO, |t| t.elapsed());
        json!({
            "down_ms": down_ms,
            "down_total_ms": total.as_millis() as u64,
            "reconnects": self.reconnects,
            "reconnect_attempts": self.attempts,
            "needs_reset": self.needs_reset.is_some(),
            "needs_reset_reason": self.needs_reset,
            "needs_reset_events": self.needs_reset_events,
            "last_needs_reset_reason": self.last_needs_reset,
            "reconnected_at_ms": epoch_ms(self.reconnected_at),
            "first_completion_after_reconnect_ms": epoch_ms(self.first_completion),
        })
    }
}

/// Starts a reconnect thread for `dev` unless one is running.
pub fn start(dev: &Arc<Mutex<VirtioMmioDevice>>, exit: &ExitSignal) {
    let flag = {
        let mut d = dev.lock().unwrap_or_else(|e| e.into_inner());
        // The outage may have begun inside an exchange (a broken socket,
        // the watchdog) rather than at a hang-up: start its clock here too.
        d.link_mut().went_down();
        d.link().reconnecting.clone()
    };
    if flag.swap(true, Ordering::AcqRel) {
        return;
    }
    let dev = dev.clone();
    let exit = exit.clone();
    let spawned = std::thread::Builder::new()
        .name("vhost-reconnect".into())
        .spawn({
            let flag = flag.clone();
            move || {
                let restarted = run(&dev, &exit);
                // The next outage may start while we watch below.
                flag.store(false, Ordering::Release);
                if let Some((mem, used)) = restarted {
                    watch_first_completion(&dev, &mem, &used, &exit);
                }
            }
        });
    if let Err(e) = spawned {
        log::error!("cannot start a reconnect thread: {e}");
        flag.store(false, Ordering::Release);
    }
}

fn lock(dev: &Mutex<VirtioMmioDevice>) -> std::sync::MutexGuard<'_, VirtioMmioDevice> {
    dev.lock().unwrap_or_else(|e| e.into_inner())
}

/// What [`watch_first_completion`] looks at.
type UsedSnapshot = (crate::memory::GuestMem, Vec<(u64, u16)>);

/// Retries until the device is attached to a live back end again (or the
/// VM ends). Returns the used rings to watch when rings were restarted.
fn run(dev: &Mutex<VirtioMmioDevice>, exit: &ExitSignal) -> Option<UsedSnapshot> {
    let mut delay = BACKOFF_START;
    let mut logged = false;
    let watch = lock(dev).link().watch();
    if let Some(w) = &watch {
        // Events from before this outage (the last back end's start).
        w.clear();
    }
    loop {
        let created = match &watch {
            Some(w) => w.wait(delay),
            None => {
                std::thread::sleep(delay);
                false
            }
        };
        if created {
            delay = BACKOFF_AFTER_CREATE / 2;
        }
        if exit.reason().is_some() {
            return None;
        }
        // Build the new connection outside the lock.
        let target = {
            let d = lock(dev);
            if d.is_connected() {
                return None;
            }
            d.proxy().target()
        };
        let attempt = target.connect();
        match attempt {
            Ok(conn) => {
                let mut d = lock(dev);
                if d.is_connected() {
                    return None;
                }
                match d.reattach(conn) {
                    Ok(()) => return Some(d.used_snapshot()),
                    Err(e) => {
                        log::warn!("{}: restart after reconnect failed: {e}", d.name());
                        d.link_mut().attempt_failed();
                    }
                }
            }
            Err(e) => {
                let mut d = lock(dev);
                if !logged {
                    log::info!("{}: reconnecting ({e}); retrying with backoff", d.name());
                    logged = true;
                } else {
                    log::debug!("{}: reconnect attempt failed: {e}", d.name());
                }
                d.link_mut().attempt_failed();
            }
        }
        delay = next_delay(delay);
    }
}

/// Polls the used rings (1 ms) until one advances, and records when: the
/// first guest request completed by the new back end. Gives up after 30 s
/// (an idle guest), or when the VM ends or the back end goes again.
fn watch_first_completion(
    dev: &Mutex<VirtioMmioDevice>,
    mem: &crate::memory::GuestMem,
    used: &[(u64, u16)],
    exit: &ExitSignal,
) {
    if used.is_empty() {
        return;
    }
    let until = Instant::now() + Duration::from_secs(30);
    let mut n = 0u32;
    while Instant::now() < until && exit.reason().is_none() {
        n += 1;
        if n.is_multiple_of(100) && !lock(dev).is_connected() {
            return;
        }
        let moved = used.iter().any(|&(addr, idx)| {
            mem.read_obj::<u16>(GuestAddress(addr))
                .is_ok_and(|now| now != idx)
        });
        if moved {
            let t = SystemTime::now();
            let mut d = lock(dev);
            d.link_mut().completed_at(t);
            log::info!("{}: first completion after the reconnect", d.name());
            return;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_one_second() {
        let mut d = BACKOFF_START;
        let mut seen = vec![d];
        for _ in 0..6 {
            d = next_delay(d);
            seen.push(d);
        }
        let ms: Vec<u128> = seen.iter().map(Duration::as_millis).collect();
        assert_eq!(ms, vec![50, 100, 200, 400, 800, 1000, 1000]);
    }

    #[test]
    fn link_counts_outages() {
        let mut l = Link::default();
        assert_eq!(l.describe()["down_ms"], Value::Null);
        l.went_down();
        std::thread::sleep(Duration::from_millis(20));
        assert!(l.describe()["down_ms"].as_u64().unwrap() >= 20);
        l.attempt_failed();
        assert_eq!(l.describe()["reconnect_attempts"], 1);
        l.came_back();
        let v = l.describe();
        assert_eq!(v["down_ms"], Value::Null);
        assert_eq!(v["reconnects"], 1);
        assert!(v["down_total_ms"].as_u64().unwrap() >= 20);
        l.set_needs_reset(Some("lost features 0x4000".into()));
        assert_eq!(l.describe()["needs_reset"], true);
        l.set_needs_reset(None);
        let v = l.describe();
        assert_eq!(v["needs_reset"], false);
        assert_eq!(v["needs_reset_events"], 1);
        assert_eq!(v["last_needs_reset_reason"], "lost features 0x4000");
    }
}
