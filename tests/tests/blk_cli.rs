//! vhost-user-blk as a program: start-up errors, socket ownership, signals, capabilities.

use std::os::unix::net::UnixListener;
use std::time::Duration;

use splitvm_tests::blk::status;
use splitvm_tests::daemon::{run_bounded, socket_listening, RunOutput};
use splitvm_tests::util::{make_image, wait_until};
use splitvm_tests::{bin_path, BlkDriver, BlkFixture, Daemon, TempDir};

const T: Duration = Duration::from_secs(10);

fn blk(args: &[&str]) -> RunOutput {
    run_bounded(&bin_path("vhost-user-blk"), args, T)
}

/// A failed start: non-zero exit, exactly one line on stderr, no panic or backtrace.
#[track_caller]
fn one_line_failure(out: &RunOutput, what: &str) -> String {
    failure(out, what, false)
}

/// Like [`one_line_failure`], but informational log lines before the error are allowed:
/// exactly one line mentions "error".
#[track_caller]
fn one_error_line(out: &RunOutput, what: &str) -> String {
    failure(out, what, true)
}

#[track_caller]
fn failure(out: &RunOutput, what: &str, logs_allowed: bool) -> String {
    let status = out
        .status
        .unwrap_or_else(|| panic!("{what}: still running after {T:?}"));
    assert!(
        !status.success(),
        "{what}: exited successfully; stderr:\n{}",
        out.stderr
    );
    assert!(
        status.code().is_some(),
        "{what}: killed by a signal ({status:?}); stderr:\n{}",
        out.stderr
    );
    let err = out.stderr.trim();
    for bad in ["panicked", "backtrace", "RUST_BACKTRACE", "unwrap()"] {
        assert!(!err.contains(bad), "{what}: stderr shows a panic:\n{err}");
    }
    if logs_allowed {
        let errs: Vec<&str> = err.lines().filter(|l| l.contains("error")).collect();
        assert_eq!(
            errs.len(),
            1,
            "{what}: expected one error line, got:\n{err}"
        );
        errs[0].to_string()
    } else {
        assert_eq!(
            err.lines().count(),
            1,
            "{what}: expected a one-line error, got:\n{err}"
        );
        err.to_string()
    }
}

#[test]
fn missing_image_is_a_one_line_error() {
    let dir = TempDir::new("cli1");
    let sock = dir.join("s.sock");
    let img = dir.join("nope.img");
    let out = blk(&[
        "--socket",
        sock.to_str().unwrap(),
        "--image",
        img.to_str().unwrap(),
    ]);
    let err = one_line_failure(&out, "missing image");
    assert!(err.contains("nope.img"), "error names the file: {err}");
    assert!(!sock.exists(), "socket left behind after a failed start");
}

#[test]
fn image_size_not_a_multiple_of_512_is_refused() {
    let dir = TempDir::new("cli2");
    let sock = dir.join("s.sock");
    let img = dir.join("odd.img");
    std::fs::write(&img, vec![0u8; 1000]).unwrap();
    let out = blk(&[
        "--socket",
        sock.to_str().unwrap(),
        "--image",
        img.to_str().unwrap(),
    ]);
    let err = one_line_failure(&out, "odd-sized image");
    assert!(
        err.contains("512"),
        "error explains the 512-byte rule: {err}"
    );
    assert!(!sock.exists(), "socket left behind after a failed start");
}

#[test]
fn bad_arguments_fail_cleanly() {
    let dir = TempDir::new("cli3");
    let sock = dir.join("s.sock");
    let img = dir.join("d.img");
    make_image(&img, 1 << 20, 1);
    let (s, i) = (sock.to_str().unwrap(), img.to_str().unwrap());
    let dir_img = dir.path().to_str().unwrap();
    let no_dir_sock = dir.join("no/such/dir/s.sock");
    for (what, args) in [
        (
            "queue size 3",
            vec!["--socket", s, "--image", i, "--queue-size", "3"],
        ),
        (
            "queue size 0",
            vec!["--socket", s, "--image", i, "--queue-size", "0"],
        ),
        (
            "0 queues",
            vec!["--socket", s, "--image", i, "--num-queues", "0"],
        ),
        (
            "serial of 21 bytes",
            vec![
                "--socket",
                s,
                "--image",
                i,
                "--serial",
                "123456789012345678901",
            ],
        ),
        (
            "unknown option",
            vec!["--socket", s, "--image", i, "--frobnicate"],
        ),
        ("no socket", vec!["--image", i]),
        (
            "image is a directory",
            vec!["--socket", s, "--image", dir_img],
        ),
        (
            "socket dir missing",
            vec!["--socket", no_dir_sock.to_str().unwrap(), "--image", i],
        ),
    ] {
        let out = blk(&args);
        let status = out
            .status
            .unwrap_or_else(|| panic!("{what}: still running"));
        assert!(!status.success(), "{what}: exited successfully");
        assert!(status.code().is_some(), "{what}: killed by a signal");
        assert!(
            !out.stderr.contains("panicked"),
            "{what}: panic:\n{}",
            out.stderr
        );
        assert!(!out.stderr.trim().is_empty(), "{what}: no error message");
        assert!(!sock.exists(), "{what}: socket left behind");
    }
}

#[test]
fn print_capabilities_is_json() {
    let out = blk(&["--print-capabilities"]);
    assert!(out.status.map(|s| s.success()).unwrap_or(false), "{out:?}");
    let v: serde_json::Value = serde_json::from_str(out.stdout.trim())
        .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", out.stdout));
    assert_eq!(v["type"], "block", "{v}");
    let feats = v["features"]
        .as_array()
        .unwrap_or_else(|| panic!("no features array: {v}"));
    assert!(feats.iter().all(|f| f.is_string()), "{v}");
}

#[test]
fn socket_held_by_a_live_daemon_is_refused() {
    let mut f = BlkFixture::new("held", 1 << 20, &[]);
    let out = blk(&[
        "--socket",
        f.socket.to_str().unwrap(),
        "--image",
        f.image.to_str().unwrap(),
    ]);
    let err = one_error_line(&out, "second daemon on a live socket");
    assert!(err.contains("blk.sock"), "error names the socket: {err}");
    // The first daemon still owns the socket and serves.
    assert!(
        socket_listening(&f.socket),
        "socket file taken away from the live daemon"
    );
    f.assert_serving_fresh("second daemon refused");
}

#[test]
fn stale_socket_file_is_replaced() {
    let dir = TempDir::new("stale");
    let sock = dir.join("s.sock");
    drop(UnixListener::bind(&sock).unwrap()); // socket file with nobody listening
    assert!(sock.exists());
    let img = dir.join("d.img");
    make_image(&img, 1 << 20, 3);
    let mut d = Daemon::blk(dir.path(), &sock, &img, &[]);
    let mut drv = BlkDriver::connect(&sock).expect("connect after stale socket");
    let (st, _) = drv.read(0, 512).unwrap();
    assert_eq!(st, status::OK);
    d.assert_alive("stale socket");

    // A regular file at the socket path is not a stale socket: refused, left alone.
    let file = dir.join("file.sock");
    std::fs::write(&file, b"keep me").unwrap();
    let out = blk(&[
        "--socket",
        file.to_str().unwrap(),
        "--image",
        img.to_str().unwrap(),
    ]);
    one_error_line(&out, "regular file at socket path");
    assert_eq!(std::fs::read(&file).unwrap(), b"keep me");
}

#[test]
fn sigterm_exits_zero_and_removes_the_socket() {
    use nix::sys::signal::Signal;
    // Idle daemon.
    let mut f = BlkFixture::new("term", 1 << 20, &[]);
    let st = f.daemon.terminate(T).expect("no exit after SIGTERM (idle)");
    assert_eq!(
        st.code(),
        Some(0),
        "idle SIGTERM: {st:?}; stderr:\n{}",
        f.daemon.stderr()
    );
    assert!(!f.socket.exists(), "socket left after SIGTERM");

    // With a connected front end and requests done.
    let mut f = BlkFixture::new("term2", 1 << 20, &["--num-queues", "2"]);
    let mut drv = f.connect();
    f.assert_serving(&mut drv, 1, "before SIGTERM");
    f.daemon.signal(Signal::SIGTERM);
    let st = f
        .daemon
        .wait_exit(T)
        .expect("no exit after SIGTERM (connected)");
    assert_eq!(
        st.code(),
        Some(0),
        "connected SIGTERM: {st:?}; stderr:\n{}",
        f.daemon.stderr()
    );
    assert!(!f.socket.exists(), "socket left after SIGTERM");
    // What was written before is in the image.
    f.assert_image("after SIGTERM");
    // The front end sees the connection go.
    assert!(
        drv.conn.raw().wait_closed(T),
        "connection still open after exit"
    );
    assert!(
        !f.daemon.stderr().contains("panicked"),
        "{}",
        f.daemon.stderr()
    );

    // SIGINT behaves the same.
    let mut f = BlkFixture::new("int", 1 << 20, &[]);
    f.daemon.signal(Signal::SIGINT);
    let st = f.daemon.wait_exit(T).expect("no exit after SIGINT");
    assert_eq!(st.code(), Some(0));
    assert!(wait_until(Duration::from_secs(1), || !f.socket.exists()));
}
