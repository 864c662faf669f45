//! The vhost-user-net device over a tap: queue pair i (rx = 2i, tx = 2i+1)
//! is served by worker thread i together with tap queue fd i; the control
//! queue (2N) sits on thread 0.
//!
//! Tap fds are custom events (data TAP_EVENT = num_queues + 1) on each
//! connection's worker epolls: [`Hooked::connected`] registers them when the
//! connection's daemon is created. RX reads a frame only when it can be
//! delivered: when the guest has no buffers the frame is kept, the tap fd is
//! taken off the epoll, and the next RX kick (or ring start) puts it back.

use crate::tap::{self, TapQueue, VNET_HDR_LEN};
use crate::vnet::{self, Header};
use splitvm_common::daemon::{new_exit_event, GuestMemory, GuestMemoryHandle, Vring};
use splitvm_common::worker::WorkerHandle;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost_user_backend::{VhostUserBackend, VringT};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_net::*;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use virtio_queue::{DescriptorChain, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestAddressSpace, GuestMemoryBackend};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{EventConsumer, EventNotifier};

/// A tap read buffer: the largest GSO frame plus its header, with room to spare.
const RX_BUF: usize = 128 * 1024;
/// Frames taken off one tap per event before the worker looks at its other rings.
const RX_BUDGET: usize = 256;

/// What the operator chose on the command line.
#[derive(Debug, Clone)]
pub struct NetOptions {
    pub mac: [u8; 6],
    pub queue_pairs: u16,
    pub queue_size: u16,
    pub mtu: u16,
}

/// Drop and error counters (logged at disconnect and, rate limited, as they happen).
#[derive(Default)]
pub struct Stats {
    pub tx_frames: AtomicU64,
    pub rx_frames: AtomicU64,
    pub tx_dropped: AtomicU64,
    pub rx_dropped: AtomicU64,
}

/// Logs the first few drops, then every 100th.
fn note_drop(counter: &AtomicU64, dir: &str, why: &str) {
    let n = counter.fetch_add(1, Ordering::Relaxed) + 1;
    if n <= 5 || n.is_multiple_of(100) {
        log::warn!("{dir}: frame dropped ({why}); {n} {dir} drops so far");
    } else {
        log::debug!("{dir}: frame dropped ({why})");
    }
}

/// RX state of one pair.
struct Rx {
    buf: Vec<u8>,
    /// Length of a frame read from the tap but not yet delivered (0: none).
    pending: usize,
    /// Whether the tap fd is on this connection's worker epoll.
    polled: bool,
}

struct Pair {
    tap: TapQueue,
    rx: Mutex<Rx>,
    attached: AtomicBool,
}

/// The device back end; clones share everything (one clone per connection).
#[derive(Clone)]
pub struct NetBackend {
    opts: Arc<NetOptions>,
    pairs: Arc<Vec<Pair>>,
    mem: Arc<RwLock<Option<GuestMemoryHandle>>>,
    acked: Arc<AtomicU64>,
    event_idx: Arc<AtomicBool>,
    active_pairs: Arc<AtomicU16>,
    workers: Arc<Mutex<Vec<WorkerHandle>>>,
    pub stats: Arc<Stats>,
    /// Adaptive busy-poll window of the TX rings (0: off); see [`NetBackend::with_poll`].
    poll: Duration,
}

/// While busy-polling TX, how often the tap is read for RX as well.
const POLL_RX_EVERY: Duration = Duration::from_micros(20);

enum RxOutcome {
    Delivered,
    Dropped,
    /// The frame waits; notifications are on again, and `Ok(true)` says the
    /// guest added buffers since we ran out (try again).
    NoBuffers(Result<bool, virtio_queue::Error>),
}

impl NetBackend {
    pub fn new(taps: Vec<TapQueue>, opts: NetOptions) -> Self {
        let pairs = taps
            .into_iter()
            .map(|tap| Pair {
                tap,
                rx: Mutex::new(Rx {
                    buf: vec![0u8; RX_BUF],
                    pending: 0,
                    polled: false,
                }),
                attached: AtomicBool::new(true),
            })
            .collect();
        NetBackend {
            opts: Arc::new(opts),
            pairs: Arc::new(pairs),
            mem: Arc::new(RwLock::new(None)),
            acked: Arc::new(AtomicU64::new(0)),
            event_idx: Arc::new(AtomicBool::new(false)),
            active_pairs: Arc::new(AtomicU16::new(1)),
            workers: Arc::new(Mutex::new(Vec::new())),
            stats: Arc::new(Stats::default()),
            poll: Duration::ZERO,
        }
    }

    /// Adaptive busy-poll of the TX rings: after a kick, keep taking frames (guest kicks
    /// still suppressed) until the ring has been empty for `window`, reading the tap for RX
    /// every 20 µs meanwhile; then sleep on the eventfds again.
    pub fn with_poll(mut self, window: Duration) -> Self {
        self.poll = window;
        self
    }

    /// Whether the guest has published buffers on `vring` that we have not taken.
    /// (An avail.idx more than a ring ahead is not "published": no chain can be
    /// taken, and counting it would keep the poll loop spinning for good.)
    fn has_avail(&self, vring: &Vring) -> bool {
        let Some(guard) = self.memory() else {
            return false;
        };
        let mem: &GuestMemory = &guard;
        let st = vring.get_ref();
        let q = st.get_queue();
        q.avail_idx(mem, Ordering::Acquire)
            .map(|i| (1..=q.size()).contains(&i.0.wrapping_sub(q.next_avail())))
            .unwrap_or(false)
    }

    /// TX kick with busy-polling on (see `with_poll`).
    fn drain_tx_polling(&self, i: usize, vrings: &[Vring]) -> io::Result<()> {
        let tx = &vrings[1];
        loop {
            tx.disable_notification().map_err(io::Error::other)?;
            self.process_tx(i, tx)?;
            let now = Instant::now();
            let mut deadline = now + self.poll;
            let mut next_rx = now + POLL_RX_EVERY;
            loop {
                let now = Instant::now();
                if self.has_avail(tx) {
                    self.process_tx(i, tx)?;
                    deadline = Instant::now() + self.poll;
                } else if now >= deadline {
                    break;
                } else {
                    std::hint::spin_loop();
                }
                if now >= next_rx {
                    self.process_rx(i, &vrings[0])?;
                    next_rx = now + POLL_RX_EVERY;
                }
            }
            if !tx.enable_notification().map_err(io::Error::other)? {
                return Ok(());
            }
        }
    }

    fn n_pairs(&self) -> usize {
        self.pairs.len()
    }

    fn ctrl_index(&self) -> usize {
        2 * self.n_pairs()
    }

    fn tap_event(&self) -> u16 {
        (self.num_queues() + 1) as u16
    }

    fn has(&self, bit: u32) -> bool {
        self.acked.load(Ordering::Relaxed) & (1u64 << bit) != 0
    }

    fn memory(&self) -> Option<vm_memory::GuestMemoryLoadGuard<GuestMemory>> {
        self.mem
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|m| m.memory())
    }

    /// Puts tap `i` on (or takes it off) this connection's worker epoll.
    fn poll_tap(&self, i: usize, rx: &mut Rx, on: bool) {
        if rx.polled == on {
            return;
        }
        let workers = self.workers.lock().unwrap_or_else(|p| p.into_inner());
        let Some(h) = workers.get(i) else {
            return;
        };
        let fd = self.pairs[i].tap.as_raw_fd();
        let ev = u64::from(self.tap_event());
        let r = if on {
            h.register_listener(fd, EventSet::IN, ev)
        } else {
            h.unregister_listener(fd, EventSet::IN, ev)
        };
        match r {
            Ok(()) => rx.polled = on,
            Err(e) => log::warn!("tap queue {i}: cannot change epoll registration: {e}"),
        }
    }

    /// Attaches tap queues 0..n and detaches the rest, so the kernel steers
    /// frames only to pairs the guest uses.
    fn set_active_pairs(&self, n: usize) {
        self.active_pairs.store(n as u16, Ordering::Relaxed);
        for (i, p) in self.pairs.iter().enumerate().skip(1) {
            let want = i < n;
            if p.attached.load(Ordering::Relaxed) != want {
                match p.tap.set_attached(want) {
                    Ok(()) => p.attached.store(want, Ordering::Relaxed),
                    Err(e) => log::warn!("tap queue {i}: cannot attach/detach: {e}"),
                }
            }
        }
    }

    // ---------------------------------------------------------------- RX

    fn process_rx(&self, i: usize, vring: &Vring) -> io::Result<()> {
        let pair = &self.pairs[i];
        let mut rx = pair.rx.lock().unwrap_or_else(|p| p.into_inner());
        let ready = {
            let st = vring.get_ref();
            st.get_queue().ready() && st.is_enabled()
        };
        let Some(guard) = self.memory().filter(|_| ready) else {
            // Nowhere to put frames: stop reading until the ring starts.
            self.poll_tap(i, &mut rx, false);
            return Ok(());
        };
        let mem: &GuestMemory = &guard;
        let mut used = false;
        let mut budget = RX_BUDGET;
        loop {
            if rx.pending == 0 {
                if budget == 0 {
                    // More may be queued: come back through the epoll.
                    self.poll_tap(i, &mut rx, true);
                    break;
                }
                budget -= 1;
                match pair.tap.read(&mut rx.buf) {
                    Ok(n) if n < VNET_HDR_LEN + 14 => {
                        note_drop(&self.stats.rx_dropped, "rx", "short frame from the tap");
                        continue;
                    }
                    Ok(n) => rx.pending = n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        self.poll_tap(i, &mut rx, true);
                        break;
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        // E.g. EBADFD on a detached queue: nothing to read here.
                        log::debug!("tap queue {i}: read: {e}");
                        self.poll_tap(i, &mut rx, false);
                        break;
                    }
                }
            }
            let len = rx.pending;
            match self.deliver(mem, vring, &mut rx.buf[..len]) {
                RxOutcome::Delivered => {
                    rx.pending = 0;
                    used = true;
                    self.stats.rx_frames.fetch_add(1, Ordering::Relaxed);
                }
                RxOutcome::Dropped => {
                    rx.pending = 0;
                    used = true;
                }
                RxOutcome::NoBuffers(more) => {
                    // Buffers came while we asked for a kick: try again.
                    if more.map_err(io::Error::other)? {
                        continue;
                    }
                    self.poll_tap(i, &mut rx, false);
                    break;
                }
            }
        }
        if used && vring.needs_notification().unwrap_or(true) {
            vring.signal_used_queue()?;
        }
        Ok(())
    }

    /// Puts one frame (vnet header first) into the guest's RX buffers.
    fn deliver(&self, mem: &GuestMemory, vring: &Vring, frame: &mut [u8]) -> RxOutcome {
        let mrg = self.has(VIRTIO_NET_F_MRG_RXBUF);
        if !self.has(VIRTIO_NET_F_GUEST_CSUM) {
            // The tap checksummed everything (no TUN_F_CSUM): no flags to pass on.
            frame[0] = 0;
        }
        let queue_size = usize::from(vring.get_ref().get_queue().size());
        let mut chains: Vec<(u16, Vec<(GuestAddress, usize)>)> = Vec::new();
        let mut cap = 0usize;
        let mut bad = false;
        while cap < frame.len() {
            if !mrg && !chains.is_empty() {
                break;
            }
            if chains.len() >= queue_size {
                break;
            }
            let popped = vring.get_mut().get_queue_mut().pop_descriptor_chain(mem);
            let Some(chain) = popped else {
                // Out of buffers: ask for a kick at the next buffer the guest
                // adds, then give back what was taken; the frame waits. Asked
                // before giving back, so "more" means buffers beyond those we
                // saw (after it, the ones we took would count, and a frame
                // larger than them would be retried for ever: found by
                // fuzzing), and so that with EVENT_IDX avail_event names the
                // index we ran out at (else the guest never kicks).
                let more = vring.enable_notification();
                for _ in 0..chains.len() {
                    vring.get_mut().get_queue_mut().go_to_previous_position();
                }
                return RxOutcome::NoBuffers(more);
            };
            let head = chain.head_index();
            let segs = writable_segments(mem, chain);
            match segs {
                Some(segs) => {
                    cap += segs.iter().map(|s| s.1).sum::<usize>();
                    chains.push((head, segs));
                }
                None => {
                    chains.push((head, Vec::new()));
                    bad = true;
                    break;
                }
            }
        }
        if bad {
            // A chain outside guest memory: drop the frame, return the chains empty.
            for (head, _) in &chains {
                let _ = vring.add_used(*head, 0);
            }
            note_drop(
                &self.stats.rx_dropped,
                "rx",
                "receive buffer outside guest memory or not device-writable",
            );
            return RxOutcome::Dropped;
        }
        if cap < frame.len() {
            // Larger than the buffers: drop the frame and hand the buffers back
            // empty (kept at the ring's head they would drop every later frame).
            for (head, _) in &chains {
                let _ = vring.add_used(*head, 0);
            }
            note_drop(
                &self.stats.rx_dropped,
                "rx",
                &format!(
                    "{}-byte frame larger than the {cap}-byte receive buffers",
                    frame.len()
                ),
            );
            return RxOutcome::Dropped;
        }
        let nbufs = chains.len() as u16;
        frame[10..12].copy_from_slice(&nbufs.to_le_bytes());
        let mut pos = 0usize;
        for (head, segs) in &chains {
            let mut written = 0usize;
            for &(addr, len) in segs {
                if pos >= frame.len() {
                    break;
                }
                let n = len.min(frame.len() - pos);
                if mem.write_slice(&frame[pos..pos + n], addr).is_err() {
                    // Checked above; the memory map cannot change under us.
                    break;
                }
                pos += n;
                written += n;
            }
            if let Err(e) = vring.add_used(*head, written as u32) {
                log::warn!("rx: cannot complete buffer {head}: {e}");
            }
        }
        RxOutcome::Delivered
    }

    // ---------------------------------------------------------------- TX

    fn process_tx(&self, i: usize, vring: &Vring) -> io::Result<()> {
        let Some(guard) = self.memory() else {
            return Ok(());
        };
        let mem: &GuestMemory = &guard;
        let acked = self.acked.load(Ordering::Relaxed);
        let pair = &self.pairs[i];
        let mut done = 0usize;
        // (pop_chain releases the ring's lock before add_used takes it.)
        while let Some(chain) = vring.pop_chain(mem) {
            let head = chain.head_index();
            match self.transmit(mem, pair, acked, chain) {
                Ok(()) => {
                    self.stats.tx_frames.fetch_add(1, Ordering::Relaxed);
                }
                Err(why) => note_drop(&self.stats.tx_dropped, "tx", &why),
            }
            if let Err(e) = vring.add_used(head, 0) {
                log::warn!("tx: cannot complete buffer {head}: {e}");
            }
            done += 1;
        }
        if done > 0 && vring.needs_notification().unwrap_or(true) {
            vring.signal_used_queue()?;
        }
        Ok(())
    }

    fn transmit(
        &self,
        mem: &GuestMemory,
        pair: &Pair,
        acked: u64,
        chain: DescriptorChain<&GuestMemory>,
    ) -> Result<(), String> {
        // Two passes over the chain (a cheap copy), so no per-frame allocation: check and
        // measure it, then map it into iovecs (on the stack for up to TX_IOVS pieces).
        let mut total = 0usize;
        for d in chain.clone() {
            if d.is_write_only() {
                return Err("device-writable buffer in a transmit chain".into());
            }
            let len = d.len() as usize;
            if !mem.check_range(d.addr(), len) {
                return Err("transmit buffer outside guest memory".into());
            }
            total += len;
            if total > VNET_HDR_LEN + vnet::MAX_FRAME {
                return Err(format!("frame of more than {} bytes", vnet::MAX_FRAME));
            }
        }
        if total < VNET_HDR_LEN {
            return Err(format!("{total}-byte chain is shorter than the header"));
        }
        // Copy the header out (so what is checked is what the tap gets).
        let mut hdr = [0u8; VNET_HDR_LEN];
        let mut got = 0usize;
        let mut iovs = IovecList::new();
        iovs.push(libc::iovec {
            iov_base: hdr.as_mut_ptr().cast(),
            iov_len: VNET_HDR_LEN,
        });
        for d in chain {
            let mut addr = d.addr();
            let mut len = d.len() as usize;
            if got < VNET_HDR_LEN {
                let n = len.min(VNET_HDR_LEN - got);
                mem.read_slice(&mut hdr[got..got + n], addr)
                    .map_err(|e| format!("reading the header: {e}"))?;
                got += n;
                addr = GuestAddress(addr.0 + n as u64);
                len -= n;
            }
            if len == 0 {
                continue;
            }
            for s in mem.get_slices(addr, len) {
                let s = s.map_err(|e| format!("transmit buffer: {e}"))?;
                iovs.push(libc::iovec {
                    iov_base: s.ptr_guard_mut().as_ptr().cast(),
                    iov_len: s.len(),
                });
            }
        }
        hdr[10] = 0;
        hdr[11] = 0;
        Header::parse(&hdr)
            .check_tx(acked, total - VNET_HDR_LEN)
            .map_err(|e| format!("bad virtio-net header: {e}"))?;
        if !pair.attached.load(Ordering::Relaxed) {
            // A front end that ran the control queue itself (QEMU) uses this
            // pair without telling us: attach it.
            if pair.tap.set_attached(true).is_ok() {
                pair.attached.store(true, Ordering::Relaxed);
            }
        }
        loop {
            match pair.tap.writev(iovs.as_slice()) {
                Ok(_) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(format!("tap refused the frame: {e}")),
            }
        }
    }

    // ---------------------------------------------------------------- control

    fn process_ctrl(&self, vring: &Vring) -> io::Result<()> {
        let Some(guard) = self.memory() else {
            return Ok(());
        };
        let mem: &GuestMemory = &guard;
        let mut done = 0usize;
        while let Some(chain) = vring.pop_chain(mem) {
            let head = chain.head_index();
            let mut cmd = Vec::new();
            let mut ack_addr = None;
            let mut bad = false;
            for d in chain {
                if d.is_write_only() {
                    if d.len() >= 1 {
                        ack_addr = Some(GuestAddress(d.addr().0 + u64::from(d.len()) - 1));
                    }
                } else if ack_addr.is_none() && cmd.len() + (d.len() as usize) <= 64 * 1024 {
                    let start = cmd.len();
                    cmd.resize(start + d.len() as usize, 0);
                    if mem.read_slice(&mut cmd[start..], d.addr()).is_err() {
                        bad = true;
                    }
                } else {
                    bad = true;
                }
            }
            let status = if bad || cmd.len() < 2 {
                log::warn!("control queue: malformed command (head {head})");
                VIRTIO_NET_ERR
            } else {
                self.control(cmd[0], cmd[1], &cmd[2..])
            };
            let used = match ack_addr {
                Some(a) if mem.write_obj(status as u8, a).is_ok() => 1,
                _ => 0,
            };
            if let Err(e) = vring.add_used(head, used) {
                log::warn!("control queue: cannot complete {head}: {e}");
            }
            done += 1;
        }
        if done > 0 && vring.needs_notification().unwrap_or(true) {
            vring.signal_used_queue()?;
        }
        Ok(())
    }

    fn control(&self, class: u8, cmd: u8, data: &[u8]) -> u32 {
        match (u32::from(class), u32::from(cmd)) {
            (VIRTIO_NET_CTRL_MQ, VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET) => {
                if !self.has(VIRTIO_NET_F_MQ) || data.len() < 2 {
                    return VIRTIO_NET_ERR;
                }
                let n = usize::from(u16::from_le_bytes([data[0], data[1]]));
                if n == 0 || n > self.n_pairs() {
                    log::warn!(
                        "control queue: {n} queue pairs asked, {} exist",
                        self.n_pairs()
                    );
                    return VIRTIO_NET_ERR;
                }
                log::info!("guest uses {n} queue pair(s)");
                self.set_active_pairs(n);
                VIRTIO_NET_OK
            }
            // The tap sees every frame anyway; filters are the guest's business.
            (VIRTIO_NET_CTRL_RX, _) | (VIRTIO_NET_CTRL_MAC, _) | (VIRTIO_NET_CTRL_ANNOUNCE, _) => {
                VIRTIO_NET_OK
            }
            (c, m) => {
                log::debug!("control queue: unsupported command {c}/{m}");
                VIRTIO_NET_ERR
            }
        }
    }

    fn config_space(&self) -> Vec<u8> {
        let mut c = Vec::with_capacity(12);
        c.extend_from_slice(&self.opts.mac);
        c.extend_from_slice(&(VIRTIO_NET_S_LINK_UP as u16).to_le_bytes());
        c.extend_from_slice(&self.opts.queue_pairs.to_le_bytes());
        c.extend_from_slice(&self.opts.mtu.to_le_bytes());
        c
    }

    /// Runs `f` on `vring` until the guest queued nothing more (EVENT_IDX-safe).
    fn drain(&self, vring: &Vring, f: impl Fn(&Vring) -> io::Result<()>) -> io::Result<()> {
        if self.event_idx.load(Ordering::Relaxed) {
            loop {
                vring.disable_notification().map_err(io::Error::other)?;
                f(vring)?;
                if !vring.enable_notification().map_err(io::Error::other)? {
                    return Ok(());
                }
            }
        } else {
            f(vring)
        }
    }

    pub fn log_stats(&self) {
        let s = &self.stats;
        log::info!(
            "tx {} frames ({} dropped), rx {} frames ({} dropped)",
            s.tx_frames.load(Ordering::Relaxed),
            s.tx_dropped.load(Ordering::Relaxed),
            s.rx_frames.load(Ordering::Relaxed),
            s.rx_dropped.load(Ordering::Relaxed)
        );
    }
}

/// Pieces of one transmitted frame kept on the stack.
const TX_IOVS: usize = 16;

/// An iovec list that lives on the stack up to TX_IOVS entries (the usual frame is one or
/// two), on the heap beyond.
struct IovecList {
    inline: [libc::iovec; TX_IOVS],
    len: usize,
    heap: Vec<libc::iovec>,
}

impl IovecList {
    fn new() -> Self {
        IovecList {
            inline: [libc::iovec {
                iov_base: std::ptr::null_mut(),
                iov_len: 0,
            }; TX_IOVS],
            len: 0,
            heap: Vec::new(),
        }
    }

    fn push(&mut self, v: libc::iovec) {
        if self.heap.is_empty() && self.len < TX_IOVS {
            self.inline[self.len] = v;
            self.len += 1;
        } else {
            if self.heap.is_empty() {
                self.heap.extend_from_slice(&self.inline[..self.len]);
            }
            self.heap.push(v);
        }
    }

    fn as_slice(&self) -> &[libc::iovec] {
        if self.heap.is_empty() {
            &self.inline[..self.len]
        } else {
            &self.heap
        }
    }
}

/// The device-writable (addr, len) segments of a receive chain; None when a
/// segment lies outside guest memory or the chain has no writable space.
fn writable_segments(
    mem: &GuestMemory,
    chain: DescriptorChain<&GuestMemory>,
) -> Option<Vec<(GuestAddress, usize)>> {
    let mut segs = Vec::new();
    for d in chain {
        if !d.is_write_only() {
            continue;
        }
        let len = d.len() as usize;
        if !mem.check_range(d.addr(), len) {
            return None;
        }
        if len > 0 {
            segs.push((d.addr(), len));
        }
    }
    if segs.is_empty() {
        return None;
    }
    Some(segs)
}

impl NetBackend {
    /// `run_with`'s start hook: worker i watches tap queue i (the workers
    /// live as long as the daemon, across front ends).
    pub fn start(&self, workers: &[WorkerHandle]) -> io::Result<()> {
        *self.workers.lock().unwrap_or_else(|p| p.into_inner()) = workers.to_vec();
        for (i, pair) in self.pairs.iter().enumerate() {
            let mut rx = pair.rx.lock().unwrap_or_else(|p| p.into_inner());
            rx.polled = false;
            self.poll_tap(i, &mut rx, true);
            if !rx.polled {
                return Err(io::Error::other(format!(
                    "cannot poll tap queue {i} on worker {i}"
                )));
            }
        }
        Ok(())
    }
}

impl VhostUserBackend for NetBackend {
    type Bitmap = ();
    type Vring = Vring;

    fn num_queues(&self) -> usize {
        2 * self.n_pairs() + 1
    }

    fn max_queue_size(&self) -> usize {
        usize::from(self.opts.queue_size)
    }

    fn features(&self) -> u64 {
        let mut f = 1u64 << VIRTIO_F_VERSION_1
            | 1 << VIRTIO_RING_F_EVENT_IDX
            | 1 << VIRTIO_RING_F_INDIRECT_DESC
            | 1 << VIRTIO_NET_F_MAC
            | 1 << VIRTIO_NET_F_STATUS
            | 1 << VIRTIO_NET_F_MTU
            | 1 << VIRTIO_NET_F_CTRL_VQ
            | 1 << VIRTIO_NET_F_MRG_RXBUF
            | 1 << VIRTIO_NET_F_CSUM
            | 1 << VIRTIO_NET_F_GUEST_CSUM
            | 1 << VIRTIO_NET_F_HOST_TSO4
            | 1 << VIRTIO_NET_F_HOST_TSO6
            | 1 << VIRTIO_NET_F_GUEST_TSO4
            | 1 << VIRTIO_NET_F_GUEST_TSO6
            | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        if self.n_pairs() > 1 {
            f |= 1 << VIRTIO_NET_F_MQ;
        }
        f
    }

    fn acked_features(&self, features: u64) {
        self.acked.store(features, Ordering::Relaxed);
        let has = |bit: u32| features & (1u64 << bit) != 0;
        let mut off = 0;
        if has(VIRTIO_NET_F_GUEST_CSUM) {
            off |= tap::TUN_F_CSUM;
            if has(VIRTIO_NET_F_GUEST_TSO4) {
                off |= tap::TUN_F_TSO4;
            }
            if has(VIRTIO_NET_F_GUEST_TSO6) {
                off |= tap::TUN_F_TSO6;
            }
            if has(VIRTIO_NET_F_GUEST_ECN) {
                off |= tap::TUN_F_TSO_ECN;
            }
        }
        if let Err(e) = self.pairs[0].tap.set_offload(off) {
            log::warn!("cannot set tap offloads {off:#x}: {e}");
        }
        // Only the first pair is in use until VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET.
        self.set_active_pairs(1);
    }

    fn reset_device(&self) {
        // The front end went away (or reset the device).
        self.log_stats();
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
    }

    fn set_event_idx(&self, enabled: bool) {
        self.event_idx.store(enabled, Ordering::Relaxed);
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        let c = self.config_space();
        let start = (offset as usize).min(c.len());
        let end = (offset as usize).saturating_add(size as usize).min(c.len());
        let mut out = c[start..end].to_vec();
        out.resize(size as usize, 0);
        out
    }

    fn update_memory(&self, mem: GuestMemoryHandle) -> io::Result<()> {
        *self.mem.write().unwrap_or_else(|p| p.into_inner()) = Some(mem);
        Ok(())
    }

    fn queues_per_thread(&self) -> Vec<u64> {
        (0..self.n_pairs())
            .map(|i| {
                let mut m = 0b11u64 << (2 * i);
                if i == 0 {
                    m |= 1 << self.ctrl_index();
                }
                m
            })
            .collect()
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        new_exit_event()
    }

    fn handle_event(
        &self,
        device_event: u16,
        _evset: EventSet,
        vrings: &[Vring],
        thread_id: usize,
    ) -> io::Result<()> {
        let i = thread_id;
        if i >= self.n_pairs() {
            return Err(io::Error::other(format!("unknown worker {i}")));
        }
        if device_event == self.tap_event() {
            return self.process_rx(i, &vrings[0]);
        }
        match device_event {
            0 => self.process_rx(i, &vrings[0]),
            1 if !self.poll.is_zero() => self.drain_tx_polling(i, vrings),
            1 => self.drain(&vrings[1], |v| self.process_tx(i, v)),
            2 if i == 0 => self.drain(&vrings[2], |v| self.process_ctrl(v)),
            e => Err(io::Error::other(format!("unknown event {e}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;
    use std::os::fd::{FromRawFd, OwnedFd};
    use std::sync::mpsc;
    use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};

    const F_WRITE: u16 = 2;

    fn socketpair() -> (OwnedFd, OwnedFd) {
        let mut fds = [0; 2];
        // SAFETY: room for two fds; the result is checked.
        let r = unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_DGRAM | libc::SOCK_NONBLOCK,
                0,
                fds.as_mut_ptr(),
            )
        };
        assert_eq!(r, 0);
        // SAFETY: two fresh fds we own.
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
    }

    /// Fuzzing regression (net_request): a frame larger than all the RX
    /// buffers the guest posted, with mergeable buffers. The buffers were
    /// given back and then counted as "more" by the re-check, so the worker
    /// retried the frame for ever. Now the frame waits, the ring is left as it
    /// was, and (EVENT_IDX) avail_event asks for a kick at the next buffer.
    #[test]
    fn rx_frame_larger_than_the_posted_buffers_waits_instead_of_spinning() {
        let mem = GuestMemoryAtomic::new(
            GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap(),
        );
        let (tap, peer) = socketpair();
        let backend = NetBackend::new(
            vec![TapQueue::from_file(File::from(tap))],
            NetOptions {
                mac: [0x52, 0x54, 0, 0, 0, 1],
                queue_pairs: 1,
                queue_size: 256,
                mtu: 1500,
            },
        );
        backend.acked_features(1 << VIRTIO_F_VERSION_1 | 1 << VIRTIO_NET_F_MRG_RXBUF);
        backend.set_event_idx(true);
        backend.update_memory(mem.clone()).unwrap();
        let rings: Vec<Vring> = (0..3)
            .map(|_| Vring::new(mem.clone(), 256).unwrap())
            .collect();
        let rx = &rings[0];
        rx.set_queue_size(16);
        rx.set_queue_info(0, 0x1000, 0x2000).unwrap();
        rx.set_queue_event_idx(true);
        rx.set_queue_ready(true);
        rx.set_enabled(true);
        let m = mem.memory();
        let desc = |i: u64, addr: u64, len: u32| {
            m.write_obj(addr, GuestAddress(16 * i)).unwrap();
            m.write_obj(len, GuestAddress(16 * i + 8)).unwrap();
            m.write_obj(F_WRITE, GuestAddress(16 * i + 12)).unwrap();
            m.write_obj(i as u16, GuestAddress(0x1004 + 2 * i)).unwrap();
        };
        desc(0, 0x3000, 64);
        desc(1, 0x3100, 64);
        m.write_obj(2u16, GuestAddress(0x1002)).unwrap(); // avail.idx
        let frame = vec![0x11u8; 225];
        // SAFETY: sends frame.len() bytes from frame.
        let n = unsafe { libc::send(peer.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        assert_eq!(n, 225);

        let (done_tx, done_rx) = mpsc::channel();
        {
            let (backend, rings) = (backend.clone(), rings.clone());
            std::thread::spawn(move || {
                let r = backend.handle_event(0, EventSet::IN, &rings, 0);
                let _ = done_tx.send(r.is_ok());
            });
        }
        let ok = done_rx
            .recv_timeout(std::time::Duration::from_secs(5))
            .expect("RX spun on a frame larger than the posted buffers");
        assert!(ok);
        let used_idx: u16 = m.read_obj(GuestAddress(0x2002)).unwrap();
        assert_eq!(used_idx, 0, "the frame waits for buffers");
        assert_eq!(rx.queue_next_avail(), 0, "the buffers were given back");
        let avail_event: u16 = m.read_obj(GuestAddress(0x2004 + 8 * 16)).unwrap();
        assert_eq!(avail_event, 2, "kick asked for at the next buffer");

        // A third buffer: the frame goes out over three.
        desc(2, 0x3200, 200);
        m.write_obj(3u16, GuestAddress(0x1002)).unwrap();
        backend.handle_event(0, EventSet::IN, &rings, 0).unwrap();
        let used_idx: u16 = m.read_obj(GuestAddress(0x2002)).unwrap();
        assert_eq!(used_idx, 3);
    }
}
