//! vhost-user-rng through the host-side driver: bytes arrive and differ, the
//! rate limit holds, a file source is read as is, bad buffers are survived,
//! and the next front end is served after a disconnect.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use splitvm_tests::frontend::{
    VhostUserProtocolFeatures, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX,
};
use splitvm_tests::util::TempDir;
use splitvm_tests::{bin_path, Daemon, Desc, FrontendConn, GuestMem, SplitQueue};

const CONNECT: Duration = Duration::from_secs(10);
const WAIT: Duration = Duration::from_secs(10);

struct Rng {
    _dir: TempDir,
    socket: PathBuf,
    daemon: Daemon,
}

impl Rng {
    fn start(tag: &str, extra: &[&str]) -> Self {
        let dir = TempDir::new(tag);
        let socket = dir.join("rng.sock");
        let mut args = vec!["--socket", socket.to_str().unwrap()];
        args.extend_from_slice(extra);
        let daemon = Daemon::spawn(
            &bin_path("vhost-user-rng"),
            &args,
            &socket,
            &dir.join("stderr"),
            CONNECT,
        )
        .unwrap_or_else(|e| panic!("starting vhost-user-rng: {e}"));
        Rng {
            _dir: dir,
            socket,
            daemon,
        }
    }
}

/// One connected front end with the request queue started.
struct Guest {
    conn: FrontendConn,
    mem: GuestMem,
    q: SplitQueue,
}

impl Guest {
    fn connect(socket: &Path, event_idx: bool) -> Self {
        let mut conn = FrontendConn::connect(socket, CONNECT).expect("connect");
        let want = VIRTIO_F_VERSION_1
            | if event_idx {
                VIRTIO_RING_F_EVENT_IDX
            } else {
                0
            };
        let n = conn
            .negotiate(
                want,
                VhostUserProtocolFeatures::MQ
                    | VhostUserProtocolFeatures::REPLY_ACK
                    | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS,
            )
            .expect("negotiate");
        assert_eq!(n.queue_num, 1, "rng has one queue");
        let mut mem = GuestMem::new(16 << 20).expect("guest memory");
        let q = SplitQueue::new(&mut mem, 64).expect("queue");
        let mut qs = [q];
        conn.start_queues(&mem, &mut qs).expect("start queue");
        let [q] = qs;
        Guest { conn, mem, q }
    }

    /// Posts one writable buffer of `len` bytes (pre-filled with 0xAA); returns its address.
    fn post(&mut self, len: u32) -> u64 {
        let addr = self.mem.alloc(u64::from(len), 8).expect("alloc");
        self.mem.fill(addr, 0xAA, len as usize).expect("fill");
        self.q
            .add_chain(&self.mem, &[Desc::writable(addr, len)])
            .expect("add");
        addr
    }

    /// Posts a buffer, kicks, waits; returns the bytes the device wrote.
    fn request(&mut self, len: u32) -> Vec<u8> {
        let addr = self.post(len);
        self.q.kick().expect("kick");
        let used = self
            .q
            .wait_used(&self.mem, WAIT)
            .expect("rng request completes");
        assert!(used.len <= len, "used len {} > buffer {len}", used.len);
        self.mem.read(addr, used.len as usize).expect("read")
    }
}

#[test]
fn print_capabilities() {
    let out = std::process::Command::new(bin_path("vhost-user-rng"))
        .arg("--print-capabilities")
        .output()
        .expect("run");
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["type"], "rng");
}

#[test]
fn bad_arguments_fail_with_one_line() {
    for args in [
        &[
            "--socket",
            "/tmp/splitvm-rng-never.sock",
            "--source",
            "/nonexistent/rng",
        ][..],
        &[
            "--socket",
            "/tmp/splitvm-rng-never.sock",
            "--max-bytes",
            "10",
        ][..],
        &[
            "--socket",
            "/tmp/splitvm-rng-never.sock",
            "--max-bytes",
            "0",
            "--period-ms",
            "5",
        ][..],
        &["--socket", "/tmp/splitvm-rng-never.sock", "--source", "/"][..],
    ] {
        let out = std::process::Command::new(bin_path("vhost-user-rng"))
            .args(args)
            .output()
            .expect("run");
        assert!(!out.status.success(), "{args:?} should fail");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert!(!Path::new("/tmp/splitvm-rng-never.sock").exists());
    }
}

#[test]
fn bytes_arrive_and_differ() {
    let mut rng = Rng::start("rng-bytes", &[]);
    for event_idx in [true, false] {
        let mut g = Guest::connect(&rng.socket, event_idx);
        let a = g.request(4096);
        let b = g.request(4096);
        assert_eq!(a.len(), 4096, "a full buffer of entropy");
        assert_eq!(b.len(), 4096);
        assert_ne!(a, b, "two requests got the same bytes");
        assert!(
            a.iter().filter(|&&x| x == 0xAA).count() < 200,
            "buffer not filled"
        );
        // Several requests in one kick, one of them split over two descriptors.
        let mut addrs = Vec::new();
        for _ in 0..8 {
            addrs.push(g.post(512));
        }
        let x = g.mem.alloc(100, 8).unwrap();
        let y = g.mem.alloc(300, 8).unwrap();
        g.q.add_chain(&g.mem, &[Desc::writable(x, 100), Desc::writable(y, 300)])
            .unwrap();
        g.q.kick().unwrap();
        let used = g.q.wait_used_n(&g.mem, 9, WAIT).expect("9 completions");
        assert!(used.iter().take(8).all(|u| u.len == 512));
        assert_eq!(used[8].len, 400);
        g.conn.close();
        rng.daemon.assert_alive("after a front end left");
    }
}

#[test]
fn bad_buffers_are_survived() {
    let mut rng = Rng::start("rng-bad", &[]);
    let mut g = Guest::connect(&rng.socket, true);
    // A buffer far outside guest memory, and a read-only buffer.
    g.q.add_chain(&g.mem, &[Desc::writable(1 << 40, 64)])
        .unwrap();
    let ro = g.mem.alloc(64, 8).unwrap();
    g.q.add_chain(&g.mem, &[Desc::readable(ro, 64)]).unwrap();
    g.q.kick().unwrap();
    let used =
        g.q.wait_used_n(&g.mem, 2, WAIT)
            .expect("bad requests complete");
    assert_eq!(used[0].len, 0);
    assert_eq!(used[1].len, 0);
    let ok = g.request(256);
    assert_eq!(ok.len(), 256, "served after bad requests");
    rng.daemon.assert_alive("after bad requests");
}

#[test]
fn file_source_is_read_as_is() {
    let dir = TempDir::new("rng-file-src");
    let path = dir.join("entropy.bin");
    let content: Vec<u8> = (0..1000u32).map(|i| (i * 7 + 3) as u8).collect();
    std::fs::write(&path, &content).unwrap();
    let rng = Rng::start("rng-file", &["--source", path.to_str().unwrap()]);
    let mut g = Guest::connect(&rng.socket, true);
    let a = g.request(600);
    let b = g.request(600);
    assert_eq!(a, content[..600], "first bytes of the file");
    // The file ends after 400 more bytes and is read again from its start.
    assert_eq!(b[..400], content[600..]);
    assert_eq!(b[400..], content[..200]);
}

#[test]
fn rate_limit_holds() {
    // 1000 bytes per 200 ms: 3000 bytes take at least two more periods after the first.
    let rng = Rng::start("rng-rate", &["--max-bytes", "1000", "--period-ms", "200"]);
    let mut g = Guest::connect(&rng.socket, true);
    let start = Instant::now();
    let mut got = 0usize;
    let mut requests = 0;
    while got < 3000 {
        let b = g.request(4096);
        assert!(
            b.len() <= 1000,
            "one period's quota is 1000, got {}",
            b.len()
        );
        got += b.len();
        requests += 1;
        assert!(requests < 100, "quota never refills");
    }
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(350),
        "3000 bytes at 1000 per 200 ms took only {took:?}"
    );
    assert!(
        took < Duration::from_secs(5),
        "rate limit far too slow: {took:?}"
    );

    // Requests queued while the quota is spent wait, then all complete.
    let addrs: Vec<u64> = (0..4).map(|_| g.post(500)).collect();
    g.q.kick().unwrap();
    let used =
        g.q.wait_used_n(&g.mem, 4, WAIT)
            .expect("waiting requests complete");
    assert_eq!(addrs.len(), used.len());
    assert!(used.iter().all(|u| u.len > 0 && u.len <= 500), "{used:?}");
}

#[test]
fn next_front_end_is_served_after_disconnect() {
    let mut rng = Rng::start(
        "rng-reconnect",
        &["--max-bytes", "100000", "--period-ms", "100"],
    );
    for round in 0..3 {
        let mut g = Guest::connect(&rng.socket, round % 2 == 0);
        let b = g.request(1024);
        assert_eq!(b.len(), 1024, "round {round}");
        // Leave a request pending at disconnect in one round.
        if round == 1 {
            g.post(64);
        }
        g.conn.close();
        std::thread::sleep(Duration::from_millis(100));
        rng.daemon
            .assert_alive(&format!("after front end {round} left"));
    }
    // SIGTERM: clean exit, socket removed.
    let st = rng
        .daemon
        .terminate(Duration::from_secs(10))
        .expect("exits on SIGTERM");
    assert!(st.success(), "exit status {st:?}");
    assert!(!rng.socket.exists(), "socket removed at exit");
}
