//! vhost-user-net through the host-side driver and a real tap in a network
//! namespace each test creates: frames both ways (ICMP echo answered by the
//! namespace's kernel), two queue pairs with the control queue, a TSO frame
//! without checksum reaching a TCP socket in the namespace intact, malformed
//! frames dropped and counted, RX waiting for buffers, reconnect.
//!
//! Needs root (netns, tap); skipped with a message otherwise.

use std::collections::HashMap;
use std::io::Read;
use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use splitvm_tests::frontend::{
    VhostUserProtocolFeatures, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX,
};
use splitvm_tests::util::TempDir;
use splitvm_tests::virtq::RawDesc;
use splitvm_tests::{bin_path, Daemon, Desc, FrontendConn, GuestMem, SplitQueue};

const CONNECT: Duration = Duration::from_secs(10);
const WAIT: Duration = Duration::from_secs(10);

const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
const GUEST_IP: [u8; 4] = [10, 99, 0, 2];
const HOST_IP: [u8; 4] = [10, 99, 0, 1];

// virtio-net feature bits.
const F_CSUM: u64 = 1 << 0;
const F_GUEST_CSUM: u64 = 1 << 1;
const F_MTU: u64 = 1 << 3;
const F_MAC: u64 = 1 << 5;
const F_GUEST_TSO4: u64 = 1 << 7;
const F_HOST_TSO4: u64 = 1 << 11;
const F_HOST_TSO6: u64 = 1 << 12;
const F_MRG_RXBUF: u64 = 1 << 15;
const F_STATUS: u64 = 1 << 16;
const F_CTRL_VQ: u64 = 1 << 17;
const F_MQ: u64 = 1 << 22;

fn run(cmd: &[&str]) -> Result<(), String> {
    let out = Command::new(cmd[0])
        .args(&cmd[1..])
        .output()
        .map_err(|e| format!("{cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

fn can_run() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let ok = root
        && std::path::Path::new("/dev/net/tun").exists()
        && splitvm_tests::daemon::which("ip").is_some();
    if !ok {
        eprintln!("SKIP: needs root, /dev/net/tun and ip(8) for a tap in a network namespace");
    }
    ok
}

/// A network namespace with a tap `tap0` (vnet_hdr, multi_queue when asked),
/// 10.99.0.1/24 on it, and a static neighbour entry for the guest.
struct Netns {
    name: String,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

impl Netns {
    fn new(multi_queue: bool) -> Self {
        let name = format!(
            "svt-net-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        run(&["ip", "netns", "add", &name]).expect("ip netns add");
        let ns = Netns { name };
        let mut add = vec![
            "ip", "netns", "exec", &ns.name, "ip", "tuntap", "add", "dev", "tap0", "mode", "tap",
            "vnet_hdr",
        ];
        if multi_queue {
            add.push("multi_queue");
        }
        run(&add).expect("tuntap add");
        ns.exec(&["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"]);
        ns.exec(&["sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1"]);
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        ns.exec(&["ip", "addr", "add", "10.99.0.1/24", "dev", "tap0"]);
        ns.exec(&["ip", "link", "set", "tap0", "up"]);
        ns.exec(&[
            "ip",
            "neigh",
            "replace",
            "10.99.0.2",
            "lladdr",
            "52:54:00:12:34:56",
            "dev",
            "tap0",
            "nud",
            "permanent",
        ]);
        ns
    }

    fn exec(&self, cmd: &[&str]) {
        let mut full = vec!["ip", "netns", "exec", &self.name];
        full.extend_from_slice(cmd);
        run(&full).unwrap_or_else(|e| panic!("{e}"));
    }

    /// Runs `f` on a thread inside the namespace (sockets made there stay there).
    fn within<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let f_ns = std::fs::File::open(&path).expect("open netns");
            // SAFETY: plain syscall on a valid fd; affects only this thread.
            let r = unsafe { libc::setns(f_ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(r, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .expect("netns thread")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = run(&["ip", "netns", "del", &self.name]);
    }
}

struct NetDaemon {
    daemon: Daemon,
    log: PathBuf,
    socket: PathBuf,
    _dir: TempDir,
}

fn start_daemon(ns: &Netns, extra: &[&str]) -> NetDaemon {
    let dir = TempDir::new("net");
    let socket = dir.join("net.sock");
    let bin = bin_path("vhost-user-net");
    let mut args = vec![
        "netns",
        "exec",
        &ns.name,
        bin.to_str().unwrap(),
        "--socket",
        socket.to_str().unwrap(),
        "--tap",
        "tap0",
    ];
    args.extend_from_slice(extra);
    let ip = splitvm_tests::daemon::which("ip").unwrap();
    // The socket is bound inside the namespace, where the library's
    // /proc/net/unix check cannot see it: wait for the daemon's log line.
    let mut daemon = Daemon::spawn_no_wait(&ip, &args, &socket, &dir.join("stderr"))
        .unwrap_or_else(|e| panic!("starting vhost-user-net: {e}"));
    let up = splitvm_tests::util::wait_until(CONNECT, || {
        daemon.stderr().contains("listening on") || !daemon.is_alive()
    });
    assert!(
        up && daemon.is_alive(),
        "vhost-user-net did not start: {}",
        daemon.stderr()
    );
    NetDaemon {
        daemon,
        log: dir.join("stderr"),
        socket,
        _dir: dir,
    }
}

/// The guest side: rx/tx per pair, optional control queue.
struct Guest {
    conn: FrontendConn,
    mem: GuestMem,
    rx: Vec<SplitQueue>,
    tx: Vec<SplitQueue>,
    ctrl: Option<SplitQueue>,
    /// RX buffers by pair and head: (address, length).
    rx_bufs: Vec<HashMap<u16, (u64, u32)>>,
    acked: u64,
    rx_len: u32,
    /// The daemon's stderr file, for failure messages.
    log: PathBuf,
}

impl Guest {
    fn connect(d: &NetDaemon, pairs: usize, want: u64) -> Self {
        let mut conn = FrontendConn::connect(&d.socket, CONNECT).expect("connect");
        let n = conn
            .negotiate(
                want | VIRTIO_F_VERSION_1,
                VhostUserProtocolFeatures::MQ
                    | VhostUserProtocolFeatures::CONFIG
                    | VhostUserProtocolFeatures::REPLY_ACK
                    | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS,
            )
            .expect("negotiate");
        let mut mem = GuestMem::new(32 << 20).expect("guest memory");
        let mut queues = Vec::new();
        for _ in 0..2 * pairs {
            queues.push(SplitQueue::new(&mut mem, 256).unwrap());
        }
        let with_ctrl = n.acked & F_CTRL_VQ != 0;
        conn.set_mem_table(&mem).unwrap();
        let event_idx = n.acked & VIRTIO_RING_F_EVENT_IDX != 0;
        for (i, q) in queues.iter_mut().enumerate() {
            q.set_event_idx(event_idx);
            conn.setup_vring(i, q, &mem).unwrap();
            conn.set_vring_enable(i, true).unwrap();
        }
        let ctrl = if with_ctrl {
            // The control queue is ring 2 * max_virtqueue_pairs.
            let cfg = conn.get_config(0, 12).unwrap();
            let max_pairs = u16::from_le_bytes([cfg[8], cfg[9]]) as usize;
            let mut q = SplitQueue::new(&mut mem, 64).unwrap();
            q.set_event_idx(event_idx);
            conn.setup_vring(2 * max_pairs, &q, &mem).unwrap();
            conn.set_vring_enable(2 * max_pairs, true).unwrap();
            Some(q)
        } else {
            None
        };
        let mut tx = Vec::new();
        let mut rx = Vec::new();
        for (i, q) in queues.into_iter().enumerate() {
            if i % 2 == 0 {
                rx.push(q)
            } else {
                tx.push(q)
            }
        }
        Guest {
            conn,
            mem,
            rx,
            tx,
            ctrl,
            rx_bufs: vec![HashMap::new(); pairs],
            acked: n.acked,
            rx_len: 2048,
            log: d.log.clone(),
        }
    }

    /// Posts `n` receive buffers of `self.rx_len` bytes on `pair` and kicks.
    fn post_rx(&mut self, pair: usize, n: usize) {
        for _ in 0..n {
            let a = self.mem.alloc(u64::from(self.rx_len), 8).unwrap();
            let head = self.rx[pair]
                .add_chain(&self.mem, &[Desc::writable(a, self.rx_len)])
                .unwrap();
            self.rx_bufs[pair].insert(head, (a, self.rx_len));
        }
        self.rx[pair].kick().unwrap();
    }

    /// Sends one frame with `hdr` on `pair` (header and frame in two descriptors).
    fn send(&mut self, pair: usize, hdr: [u8; 12], frame: &[u8]) {
        let h = self.mem.alloc_bytes(&hdr, 8).unwrap();
        let f = self.mem.alloc_bytes(frame, 8).unwrap();
        self.tx[pair]
            .add_chain(
                &self.mem,
                &[Desc::readable(h, 12), Desc::readable(f, frame.len() as u32)],
            )
            .unwrap();
        self.tx[pair].kick().unwrap();
        let u = self.tx[pair]
            .wait_used(&self.mem, WAIT)
            .unwrap_or_else(|e| panic!("tx on pair {pair}: {e}; daemon log:\n{}", self.log()));
        assert_eq!(u.len, 0, "tx used length");
    }

    /// The next received frame on `pair` within `timeout`: (header, frame).
    fn recv(&mut self, pair: usize, timeout: Duration) -> Option<([u8; 12], Vec<u8>)> {
        let u = self.rx[pair].wait_used(&self.mem, timeout).ok()?;
        let (a, len) = self.rx_bufs[pair]
            .remove(&(u.id as u16))
            .expect("known buffer");
        assert!(u.len <= len, "used len {} > buffer {len}", u.len);
        let mut data = self.mem.read(a, u.len as usize).unwrap();
        assert!(data.len() >= 12, "rx frame shorter than its header");
        let nbufs = u16::from_le_bytes([data[10], data[11]]);
        for _ in 1..nbufs {
            let u = self.rx[pair]
                .wait_used(&self.mem, WAIT)
                .expect("rest of a merged frame");
            let (a, _) = self.rx_bufs[pair].remove(&(u.id as u16)).unwrap();
            data.extend(self.mem.read(a, u.len as usize).unwrap());
        }
        self.post_rx(pair, nbufs.max(1) as usize);
        let mut hdr = [0u8; 12];
        hdr.copy_from_slice(&data[..12]);
        Some((hdr, data[12..].to_vec()))
    }

    /// Receives on any pair until `pred` matches a frame (others are skipped).
    fn recv_match(&mut self, pred: impl Fn(&[u8]) -> bool) -> Option<(usize, [u8; 12], Vec<u8>)> {
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            for p in 0..self.rx.len() {
                if let Some((h, f)) = self.recv(p, Duration::from_millis(20)) {
                    if pred(&f) {
                        return Some((p, h, f));
                    }
                }
            }
        }
        None
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn ctrl(&mut self, class: u8, cmd: u8, data: &[u8]) -> u8 {
        let mut c = vec![class, cmd];
        c.extend_from_slice(data);
        let cmd_a = self.mem.alloc_bytes(&c, 8).unwrap();
        let ack = self.mem.alloc(1, 1).unwrap();
        self.mem.write(ack, &[0xff]).unwrap();
        let q = self.ctrl.as_mut().expect("control queue");
        q.add_chain(
            &self.mem,
            &[
                Desc::readable(cmd_a, c.len() as u32),
                Desc::writable(ack, 1),
            ],
        )
        .unwrap();
        q.kick().unwrap();
        let u = q.wait_used(&self.mem, WAIT);
        let u = u.unwrap_or_else(|e| panic!("control command: {e}; log:\n{}", self.log()));
        assert_eq!(u.len, 1);
        self.mem.read(ack, 1).unwrap()[0]
    }
}

// ------------------------------------------------------------------ frames

fn csum_add(mut sum: u32, b: &[u8]) -> u32 {
    for c in b.chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    sum
}

fn csum_fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

fn eth(dst: [u8; 6], src: [u8; 6], ethertype: u16) -> Vec<u8> {
    let mut f = Vec::with_capacity(1600);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f
}

fn ipv4(proto: u8, payload_len: usize, id: u16) -> Vec<u8> {
    let total = (20 + payload_len) as u16;
    let mut h = vec![0x45, 0];
    h.extend_from_slice(&total.to_be_bytes());
    h.extend_from_slice(&id.to_be_bytes());
    h.extend_from_slice(&[0x40, 0, 64, proto, 0, 0]);
    h.extend_from_slice(&GUEST_IP);
    h.extend_from_slice(&HOST_IP);
    let c = !csum_fold(csum_add(0, &h));
    h[10..12].copy_from_slice(&c.to_be_bytes());
    h
}

/// An ICMP echo request from the guest to 10.99.0.1, with an Ethernet header.
fn ping_frame(dst_mac: [u8; 6], id: u16, seq: u16, payload: &[u8]) -> Vec<u8> {
    let mut icmp = vec![8, 0, 0, 0];
    icmp.extend_from_slice(&id.to_be_bytes());
    icmp.extend_from_slice(&seq.to_be_bytes());
    icmp.extend_from_slice(payload);
    let c = !csum_fold(csum_add(0, &icmp));
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    let mut f = eth(dst_mac, GUEST_MAC, 0x0800);
    f.extend(ipv4(1, icmp.len(), seq));
    f.extend(icmp);
    f
}

fn is_echo_reply(f: &[u8], id: u16, seq: u16) -> bool {
    f.len() >= 42
        && f[12..14] == [0x08, 0x00]
        && f[23] == 1
        && f[26..30] == HOST_IP
        && f[34] == 0
        && f[38..40] == id.to_be_bytes()
        && f[40..42] == seq.to_be_bytes()
}

fn tap_mac(ns: &Netns) -> [u8; 6] {
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns.name,
            "cat",
            "/sys/class/net/tap0/address",
        ])
        .output()
        .unwrap();
    let s = String::from_utf8_lossy(&out.stdout);
    let mut mac = [0u8; 6];
    for (b, p) in mac.iter_mut().zip(s.trim().split(':')) {
        *b = u8::from_str_radix(p, 16).unwrap();
    }
    mac
}

/// Pings 10.99.0.1 from `pair`; returns the pair the reply came back on.
fn ping(g: &mut Guest, dst: [u8; 6], pair: usize, id: u16, seq: u16) -> usize {
    let payload: Vec<u8> = (0..56u8).collect();
    g.send(pair, [0; 12], &ping_frame(dst, id, seq, &payload));
    let (p, _, f) = g
        .recv_match(|f| is_echo_reply(f, id, seq))
        .unwrap_or_else(|| panic!("no echo reply for id {id} seq {seq}"));
    assert_eq!(&f[42..], &payload[..], "echo payload");
    p
}

const BASIC: u64 = F_MAC | F_STATUS | F_MTU | F_MRG_RXBUF | F_CSUM | F_GUEST_CSUM;

#[test]
fn print_capabilities_and_bad_arguments() {
    let bin = bin_path("vhost-user-net");
    let out = Command::new(&bin)
        .arg("--print-capabilities")
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["type"], "net");
    for args in [
        &[
            "--socket",
            "/tmp/svt-never.sock",
            "--tap",
            "t0",
            "--mac",
            "zz:00:00:00:00:00",
        ][..],
        &[
            "--socket",
            "/tmp/svt-never.sock",
            "--tap",
            "t0",
            "--mac",
            "01:00:00:00:00:00",
        ][..],
        &["--socket", "/tmp/svt-never.sock", "--tap", "a/b"][..],
        &[
            "--socket",
            "/tmp/svt-never.sock",
            "--tap",
            "t0",
            "--queue-size",
            "100",
        ][..],
        &[
            "--socket",
            "/tmp/svt-never.sock",
            "--tap",
            "t0",
            "--queue-pairs",
            "0",
        ][..],
        &[
            "--socket",
            "/tmp/svt-never.sock",
            "--tap",
            "t0",
            "--mtu",
            "10",
        ][..],
        &["--socket", "/tmp/svt-never.sock"][..],
    ] {
        let out = Command::new(&bin).args(args).output().unwrap();
        assert!(!out.status.success(), "{args:?} should fail");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
    assert!(!std::path::Path::new("/tmp/svt-never.sock").exists());
    // No permission to create a tap: a clear error, no socket.
    if can_run() && splitvm_tests::daemon::which("setpriv").is_some() {
        let out = Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "--inh-caps=-all",
            ])
            .arg(&bin)
            .args(["--socket", "/tmp/svt-never.sock", "--tap", "svtnoperm0"])
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("permission"), "{err}");
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    }
}

#[test]
fn frames_both_ways_and_config_space() {
    if !can_run() {
        return;
    }
    let ns = Netns::new(false);
    let mut d = start_daemon(&ns, &["--mtu", "1400"]);
    let mut g = Guest::connect(&d, 1, BASIC | VIRTIO_RING_F_EVENT_IDX);
    let cfg = g.conn.get_config(0, 12).unwrap();
    assert_eq!(cfg[..6], GUEST_MAC, "config mac");
    assert_eq!(u16::from_le_bytes([cfg[6], cfg[7]]), 1, "status LINK_UP");
    assert_eq!(
        u16::from_le_bytes([cfg[8], cfg[9]]),
        1,
        "max_virtqueue_pairs"
    );
    assert_eq!(u16::from_le_bytes([cfg[10], cfg[11]]), 1400, "mtu");
    g.post_rx(0, 64);
    let dst = tap_mac(&ns);
    for seq in 1..=20 {
        assert_eq!(ping(&mut g, dst, 0, 0x1234, seq), 0);
    }
    d.daemon.assert_alive("after pings");
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
}

#[test]
fn rx_waits_for_buffers_then_delivers() {
    if !can_run() {
        return;
    }
    let ns = Netns::new(false);
    let d = start_daemon(&ns, &[]);
    let mut g = Guest::connect(&d, 1, BASIC);
    let dst = tap_mac(&ns);
    // No receive buffers yet: the replies wait in the back end / tap.
    let payload = [7u8; 32];
    for seq in 1..=5 {
        g.send(0, [0; 12], &ping_frame(dst, 77, seq, &payload));
    }
    // Waiting for buffers must not spin: the daemon stops polling the tap.
    let pid = d.daemon.pid().expect("daemon pid");
    let before = cpu_ticks(pid);
    std::thread::sleep(Duration::from_millis(500));
    let spent = cpu_ticks(pid) - before;
    assert!(
        spent < 20,
        "daemon used {spent} ticks in 500 ms waiting for buffers"
    );
    assert!(g.rx[0].pop_used(&g.mem).unwrap().is_none());
    g.post_rx(0, 1);
    // One buffer: exactly one reply; the others wait for more buffers.
    let (_, f) = g.recv(0, WAIT).expect("a reply once a buffer is there");
    assert!(is_echo_reply(&f, 77, 1), "first reply first");
    for seq in 2..=5 {
        let (_, f) = g.recv(0, WAIT).expect("later replies");
        assert!(is_echo_reply(&f, 77, seq), "reply {seq} in order");
    }
}

#[test]
fn two_queue_pairs_with_control_queue() {
    if !can_run() {
        return;
    }
    let ns = Netns::new(true);
    let mut d = start_daemon(&ns, &["--queue-pairs", "2"]);
    let mut g = Guest::connect(&d, 2, BASIC | F_CTRL_VQ | F_MQ | VIRTIO_RING_F_EVENT_IDX);
    assert!(g.acked & F_MQ != 0, "MQ offered");
    let cfg = g.conn.get_config(0, 12).unwrap();
    assert_eq!(
        u16::from_le_bytes([cfg[8], cfg[9]]),
        2,
        "max_virtqueue_pairs"
    );
    assert_eq!(g.ctrl(4, 0, &3u16.to_le_bytes()), 1, "3 pairs refused");
    assert_eq!(g.ctrl(4, 0, &2u16.to_le_bytes()), 0, "VQ_PAIRS_SET 2");
    assert_eq!(g.ctrl(9, 9, &[]), 1, "unknown command refused");
    g.post_rx(0, 64);
    g.post_rx(1, 64);
    let dst = tap_mac(&ns);
    let mut seen = [0usize; 2];
    for seq in 1..=10 {
        for pair in 0..2 {
            // One flow per pair: the tap answers on the queue the flow came from.
            let p = ping(&mut g, dst, pair, 0x100 + pair as u16, seq);
            seen[p] += 1;
        }
    }
    assert!(
        seen[0] > 0 && seen[1] > 0,
        "replies on both pairs: {seen:?}"
    );
    d.daemon.assert_alive("after MQ traffic");
}

/// A TCP handshake by hand from the guest, then one 20000-byte TSO frame
/// with a partial checksum: the namespace's TCP socket must read it intact.
#[test]
fn tso_frame_without_checksum_reaches_the_tap() {
    if !can_run() {
        return;
    }
    let ns = Netns::new(false);
    let mut d = start_daemon(&ns, &[]);
    let mut g = Guest::connect(&d, 1, BASIC | F_HOST_TSO4 | F_HOST_TSO6 | F_GUEST_TSO4);
    assert!(g.acked & F_HOST_TSO4 != 0, "HOST_TSO4 offered");
    g.post_rx(0, 64);
    let dst = tap_mac(&ns);
    let listener: TcpListener = ns.within(|| TcpListener::bind("10.99.0.1:5001").expect("bind"));
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("accept");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut got = vec![0u8; 20000];
        s.read_exact(&mut got).expect("read 20000 bytes");
        got
    });

    let sport = 40000u16;
    let tcp = |seq: u32, ack: u32, flags: u8, payload_len: usize| -> Vec<u8> {
        let mut t = Vec::new();
        t.extend_from_slice(&sport.to_be_bytes());
        t.extend_from_slice(&5001u16.to_be_bytes());
        t.extend_from_slice(&seq.to_be_bytes());
        t.extend_from_slice(&ack.to_be_bytes());
        t.extend_from_slice(&[0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
        // Pseudo-header sum with the segment's full length (not complemented):
        // what a guest puts there for NEEDS_CSUM.
        let mut ph = Vec::new();
        ph.extend_from_slice(&GUEST_IP);
        ph.extend_from_slice(&HOST_IP);
        ph.extend_from_slice(&[0, 6]);
        ph.extend_from_slice(&((20 + payload_len) as u16).to_be_bytes());
        let c = csum_fold(csum_add(0, &ph));
        t[16..18].copy_from_slice(&c.to_be_bytes());
        t
    };
    let partial_hdr = |gso: u8, gso_size: u16| -> [u8; 12] {
        let mut h = [0u8; 12];
        h[0] = 1; // NEEDS_CSUM
        h[1] = gso;
        h[2..4].copy_from_slice(&54u16.to_le_bytes());
        h[4..6].copy_from_slice(&gso_size.to_le_bytes());
        h[6..8].copy_from_slice(&34u16.to_le_bytes());
        h[8..10].copy_from_slice(&16u16.to_le_bytes());
        h
    };
    let isn = 1000u32;
    let mut syn = eth(dst, GUEST_MAC, 0x0800);
    syn.extend(ipv4(6, 20, 1));
    syn.extend(tcp(isn, 0, 0x02, 0));
    g.send(0, partial_hdr(0, 0), &syn);
    let (_, _, synack) = g
        .recv_match(|f| f.len() >= 54 && f[23] == 6 && f[47] & 0x12 == 0x12)
        .expect("SYN-ACK");
    let server_isn = u32::from_be_bytes(synack[38..42].try_into().unwrap());
    let mut ackf = eth(dst, GUEST_MAC, 0x0800);
    ackf.extend(ipv4(6, 20, 2));
    ackf.extend(tcp(isn + 1, server_isn + 1, 0x10, 0));
    g.send(0, partial_hdr(0, 0), &ackf);

    let data: Vec<u8> = (0..20000u32).map(|i| (i * 31 % 251) as u8).collect();
    let mut big = eth(dst, GUEST_MAC, 0x0800);
    big.extend(ipv4(6, 20 + data.len(), 3));
    big.extend(tcp(isn + 1, server_isn + 1, 0x18, data.len()));
    big.extend_from_slice(&data);
    g.send(0, partial_hdr(1, 1448), &big);

    let got = server.join().expect("server thread");
    assert!(got == data, "the TSO payload arrived changed");
    d.daemon.assert_alive("after TSO");
}

#[test]
fn malformed_frames_are_dropped_and_counted() {
    if !can_run() {
        return;
    }
    let ns = Netns::new(false);
    let mut d = start_daemon(&ns, &[]);
    // No MRG_RXBUF: one buffer per frame, so too-small buffers drop frames.
    let mut g = Guest::connect(&d, 1, F_MAC | F_STATUS | F_CSUM);
    let dst = tap_mac(&ns);
    let ping1 = ping_frame(dst, 5, 1, &[1u8; 56]);
    // 1: bad flags and GSO type.
    let mut h = [0u8; 12];
    h[0] = 0x80;
    h[1] = 7;
    g.send(0, h, &ping1);
    // 2: GSO that was not negotiated.
    let mut h = [0u8; 12];
    h[0] = 1;
    h[1] = 1;
    h[4] = 100;
    h[6] = 34;
    h[8] = 16;
    g.send(0, h, &ping1);
    // 3: checksum offset past the frame.
    let mut h = [0u8; 12];
    h[0] = 1;
    h[6..8].copy_from_slice(&2000u16.to_le_bytes());
    g.send(0, h, &ping1);
    // 4: a chain shorter than the header.
    let a = g.mem.alloc_bytes(&[0u8; 6], 8).unwrap();
    g.tx[0].add_chain(&g.mem, &[Desc::readable(a, 6)]).unwrap();
    g.tx[0].kick().unwrap();
    g.tx[0]
        .wait_used(&g.mem, WAIT)
        .expect("short chain completes");
    // 5: a chain outside guest memory.
    g.tx[0]
        .add_raw(
            &g.mem,
            &[RawDesc {
                addr: 1 << 40,
                len: 100,
                flags: 0,
                next: 0,
            }],
        )
        .unwrap();
    g.tx[0].kick().unwrap();
    g.tx[0]
        .wait_used(&g.mem, WAIT)
        .expect("bad chain completes");
    d.daemon.assert_alive("after malformed tx");
    let err = d.daemon.stderr();
    assert!(err.contains("bad virtio-net header"), "{err}");
    assert!(err.contains("5 tx drops so far"), "5 drops counted: {err}");

    // RX: a buffer too small for the reply: the frame is dropped (counted) and
    // the buffer comes back empty; the next buffers get the next frames.
    g.rx_len = 64;
    g.post_rx(0, 1);
    g.send(0, [0; 12], &ping1);
    let u = g.rx[0]
        .wait_used(&g.mem, WAIT)
        .expect("small buffer returned");
    assert_eq!(u.len, 0, "nothing written into a too-small buffer");
    g.rx_bufs[0].clear();
    assert!(
        splitvm_tests::util::wait_until(WAIT, || d.daemon.stderr().contains("1 rx drops so far")),
        "rx drop counted: {}",
        d.daemon.stderr()
    );
    g.rx_len = 2048;
    g.post_rx(0, 8);
    for seq in 2..5 {
        g.send(0, [0; 12], &ping_frame(dst, 5, seq, &[1u8; 56]));
        let (_, f) = g.recv(0, WAIT).expect("reply after drops");
        assert!(is_echo_reply(&f, 5, seq), "reply {seq}");
    }
    d.daemon.assert_alive("after drops");
}

#[test]
fn next_front_end_is_served_after_disconnect() {
    if !can_run() {
        return;
    }
    let ns = Netns::new(true);
    let mut d = start_daemon(&ns, &["--queue-pairs", "2"]);
    let dst = tap_mac(&ns);
    for round in 0..3u16 {
        let mut g = Guest::connect(&d, 2, BASIC | F_CTRL_VQ | F_MQ | VIRTIO_RING_F_EVENT_IDX);
        g.post_rx(0, 32);
        g.post_rx(1, 32);
        ping(&mut g, dst, 0, 0x500 + round, 1);
        g.conn.close();
        std::thread::sleep(Duration::from_millis(100));
        d.daemon
            .assert_alive(&format!("after front end {round} left"));
    }
    let st = d
        .daemon
        .terminate(Duration::from_secs(10))
        .expect("exits on SIGTERM");
    assert!(st.success(), "{st:?}");
    assert!(!d.socket.exists(), "socket removed");
}
