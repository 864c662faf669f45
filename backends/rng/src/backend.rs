//! The vhost-user-rng device: one request queue whose device-writable
//! buffers are filled from the entropy source, optionally rate limited like
//! QEMU's virtio-rng (`max-bytes` per `period`): once a period's bytes are
//! spent, requests wait in the ring (never fail) until a timerfd on the
//! worker's epoll says the next period has begun.

use crate::source::Source;
use splitvm_common::daemon::{new_exit_event, GuestMemoryHandle, Vring};
use splitvm_common::worker::WorkerHandle;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost_user_backend::{VhostUserBackend, VringT};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use virtio_queue::QueueT;
use vm_memory::{Address, Bytes, GuestAddressSpace};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{EventConsumer, EventNotifier};

/// The one request queue.
const NUM_QUEUES: usize = 1;
/// Worker epoll data of the rate-limit timer (0 is the queue, 1 the exit event).
const TIMER_EVENT: u16 = NUM_QUEUES as u16 + 1;
/// Largest chunk read from the source at once.
const CHUNK: usize = 64 * 1024;

/// `--max-bytes N --period-ms P`.
#[derive(Debug, Clone, Copy)]
pub struct RateLimit {
    pub max_bytes: u64,
    pub period: Duration,
}

/// Bytes left in the current period.
struct Quota {
    limit: RateLimit,
    remaining: u64,
    period_end: Instant,
}

impl Quota {
    /// Bytes that may be handed out now (starting a new period if the last one is over).
    fn available(&mut self, now: Instant) -> u64 {
        if now >= self.period_end {
            self.remaining = self.limit.max_bytes;
            self.period_end = now + self.limit.period;
        }
        self.remaining
    }
}

/// A one-shot CLOCK_MONOTONIC timerfd (non-blocking).
struct Timer(OwnedFd);

impl Timer {
    fn new() -> io::Result<Self> {
        // SAFETY: plain syscall; the fd is owned below.
        let fd = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor nobody else owns.
        Ok(Timer(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Fires once, `after` from now (at least 1 ns so it is armed).
    fn arm(&self, after: Duration) -> io::Result<()> {
        let after = after.max(Duration::from_nanos(1));
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: after.as_secs() as libc::time_t,
                tv_nsec: after.subsec_nanos() as libc::c_long,
            },
        };
        // SAFETY: valid fd and itimerspec.
        let r =
            unsafe { libc::timerfd_settime(self.0.as_raw_fd(), 0, &spec, std::ptr::null_mut()) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Consumes an expiration, if any.
    fn clear(&self) {
        let mut buf = [0u8; 8];
        // SAFETY: reads at most 8 bytes into buf.
        unsafe { libc::read(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), 8) };
    }
}

struct State {
    source: Source,
    quota: Option<Quota>,
    buf: Vec<u8>,
}

/// The device back end; clones share everything (one clone per connection).
#[derive(Clone)]
pub struct RngBackend {
    state: Arc<Mutex<State>>,
    timer: Arc<Timer>,
    queue_size: u16,
    mem: Arc<RwLock<Option<GuestMemoryHandle>>>,
    event_idx: Arc<AtomicBool>,
    /// Bytes handed to guests so far (logged at disconnect).
    served: Arc<AtomicU64>,
    /// Chains that could not be filled (bad addresses, source errors).
    bad: Arc<AtomicU64>,
}

impl RngBackend {
    pub fn new(source: Source, limit: Option<RateLimit>, queue_size: u16) -> io::Result<Self> {
        let quota = limit.map(|limit| Quota {
            limit,
            remaining: 0,
            period_end: Instant::now(),
        });
        Ok(RngBackend {
            state: Arc::new(Mutex::new(State {
                source,
                quota,
                buf: vec![0u8; CHUNK],
            })),
            timer: Arc::new(Timer::new()?),
            queue_size,
            mem: Arc::new(RwLock::new(None)),
            event_idx: Arc::new(AtomicBool::new(false)),
            served: Arc::new(AtomicU64::new(0)),
            bad: Arc::new(AtomicU64::new(0)),
        })
    }

    /// Fills every available request (as far as the quota allows); returns
    /// whether any were completed.
    fn process_queue(&self, vring: &Vring) -> io::Result<()> {
        let Some(atomic) = self.mem.read().unwrap_or_else(|p| p.into_inner()).clone() else {
            return Ok(());
        };
        {
            let st = vring.get_ref();
            if !st.get_queue().ready() || !st.is_enabled() {
                return Ok(());
            }
        }
        let mem = atomic.memory();
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let State { source, quota, buf } = &mut *state;
        let mut completed = 0usize;
        loop {
            let mut allowance = u64::MAX;
            if let Some(q) = quota.as_mut() {
                let now = Instant::now();
                allowance = q.available(now);
                if allowance == 0 {
                    // Requests wait in the ring; the timer wakes the worker.
                    self.timer
                        .arm(q.period_end.saturating_duration_since(now))?;
                    break;
                }
            }
            let Some(chain) = vring.pop_chain(mem.clone()) else {
                break;
            };
            let head = chain.head_index();
            let mut written: u64 = 0;
            for desc in chain {
                if !desc.is_write_only() {
                    continue;
                }
                let mut left = u64::from(desc.len()).min(allowance - written);
                let mut addr = desc.addr();
                let mut ok = true;
                while left > 0 {
                    let n = (left as usize).min(buf.len());
                    if let Err(e) = source.fill(&mut buf[..n]) {
                        log::warn!("entropy source {}: {e}", source.describe());
                        ok = false;
                        break;
                    }
                    if let Err(e) = mem.write_slice(&buf[..n], addr) {
                        self.note_bad(head, &e.to_string());
                        ok = false;
                        break;
                    }
                    written += n as u64;
                    left -= n as u64;
                    match addr.checked_add(n as u64) {
                        Some(a) => addr = a,
                        None if left == 0 => {}
                        None => {
                            self.note_bad(head, "buffer wraps the address space");
                            ok = false;
                            break;
                        }
                    }
                }
                if !ok || written == allowance {
                    break;
                }
            }
            if let Some(q) = quota.as_mut() {
                q.remaining -= written;
            }
            self.served.fetch_add(written, Ordering::Relaxed);
            if let Err(e) = vring.add_used(head, written as u32) {
                log::warn!("cannot complete request (head {head}): {e}");
            }
            completed += 1;
        }
        if completed > 0 && vring.needs_notification().unwrap_or(true) {
            vring.signal_used_queue()?;
        }
        Ok(())
    }

    fn note_bad(&self, head: u16, why: &str) {
        let n = self.bad.fetch_add(1, Ordering::Relaxed) + 1;
        // Rate limited: the first few, then every 1000th.
        if n <= 5 || n.is_multiple_of(1000) {
            log::warn!("bad request (head {head}, {n} so far): {why}");
        }
    }

    fn handle_queue(&self, vring: &Vring) -> io::Result<()> {
        if self.event_idx.load(Ordering::Relaxed) {
            loop {
                vring.disable_notification().map_err(io::Error::other)?;
                self.process_queue(vring)?;
                if !vring.enable_notification().map_err(io::Error::other)? {
                    break;
                }
            }
            Ok(())
        } else {
            self.process_queue(vring)
        }
    }
}

impl RngBackend {
    /// `run_with`'s start hook: puts the rate-limit timer on the worker's
    /// epoll (the workers live as long as the daemon, across front ends).
    pub fn start(&self, workers: &[WorkerHandle]) -> io::Result<()> {
        workers
            .first()
            .ok_or_else(|| io::Error::other("no worker thread"))?
            .register_listener(
                self.timer.0.as_raw_fd(),
                EventSet::IN,
                u64::from(TIMER_EVENT),
            )
    }
}

impl VhostUserBackend for RngBackend {
    type Bitmap = ();
    type Vring = Vring;

    fn num_queues(&self) -> usize {
        NUM_QUEUES
    }

    fn max_queue_size(&self) -> usize {
        usize::from(self.queue_size)
    }

    fn features(&self) -> u64 {
        1u64 << VIRTIO_F_VERSION_1
            | 1 << VIRTIO_RING_F_EVENT_IDX
            | 1 << VIRTIO_RING_F_INDIRECT_DESC
            | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
    }

    fn reset_device(&self) {
        log::info!(
            "{} bytes of entropy served so far, {} bad requests",
            self.served.load(Ordering::Relaxed),
            self.bad.load(Ordering::Relaxed)
        );
    }

    fn set_event_idx(&self, enabled: bool) {
        self.event_idx.store(enabled, Ordering::Relaxed);
    }

    fn update_memory(&self, mem: GuestMemoryHandle) -> io::Result<()> {
        *self.mem.write().unwrap_or_else(|p| p.into_inner()) = Some(mem);
        Ok(())
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        new_exit_event()
    }

    fn handle_event(
        &self,
        device_event: u16,
        evset: EventSet,
        vrings: &[Vring],
        _thread_id: usize,
    ) -> io::Result<()> {
        if evset != EventSet::IN {
            return Err(io::Error::other(format!("unexpected event set {evset:?}")));
        }
        match device_event {
            0 => self.handle_queue(&vrings[0]),
            TIMER_EVENT => {
                self.timer.clear();
                self.handle_queue(&vrings[0])
            }
            other => Err(io::Error::other(format!("unknown event {other}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quota_refills_once_per_period() {
        let t0 = Instant::now();
        let mut q = Quota {
            limit: RateLimit {
                max_bytes: 100,
                period: Duration::from_millis(50),
            },
            remaining: 0,
            period_end: t0,
        };
        assert_eq!(q.available(t0), 100);
        q.remaining -= 100;
        assert_eq!(q.available(t0 + Duration::from_millis(10)), 0);
        assert_eq!(q.period_end, t0 + Duration::from_millis(50));
        assert_eq!(q.available(t0 + Duration::from_millis(50)), 100);
    }
}
