//! Replays the checked-in seed corpus and every crash input kept under
//! `regressions/<target>/` through the harnesses (no fuzzer needed), and
//! (ignored) rewrites the seed corpus from `splitvm_fuzz::seeds`.

use std::path::Path;
use std::sync::{Mutex, MutexGuard};

/// The harnesses share their fixtures (guest memory, the back end): one test at a time.
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

fn replay(dir: &str) {
    let _serial = serial();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
    let mut n = 0;
    for (target, _) in splitvm_fuzz::seeds::all() {
        let Ok(entries) = std::fs::read_dir(root.join(target)) else {
            continue;
        };
        let mut files: Vec<_> = entries.map(|e| e.unwrap().path()).collect();
        files.sort();
        for f in files {
            let data = std::fs::read(&f).unwrap();
            eprintln!("{}", f.display());
            splitvm_fuzz::seeds::run(target, &data);
            n += 1;
        }
    }
    eprintln!("{n} inputs from {dir}/ replayed");
}

#[test]
fn seed_corpus() {
    replay("corpus");
}

#[test]
fn crash_regressions() {
    replay("regressions");
}

#[test]
fn seeds_run_clean() {
    let _serial = serial();
    for (target, seeds) in splitvm_fuzz::seeds::all() {
        for (name, data) in seeds {
            eprintln!("{target}/{name}");
            splitvm_fuzz::seeds::run(target, &data);
        }
    }
}

#[test]
#[ignore = "rewrites corpus/: run by hand after changing seeds.rs"]
fn write_seeds() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    for (target, seeds) in splitvm_fuzz::seeds::all() {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir).unwrap();
        for (name, data) in seeds {
            std::fs::write(dir.join(name), data).unwrap();
        }
    }
}

/// The seeds are requests the devices carry out, not ones they refuse: each
/// blk seed completes all its requests with status OK (but the two meant to
/// fail), each net RX/control seed uses its buffers.
#[test]
fn seeds_do_what_they_say() {
    let _serial = serial();
    use splitvm_fuzz::guest::USED_GPA;
    for (name, data) in splitvm_fuzz::seeds::blk() {
        splitvm_fuzz::blk::run(&data);
        let mem = splitvm_fuzz::blk::guest();
        let mut idx = [0u8; 2];
        mem.read(USED_GPA + 2, &mut idx);
        let want = if name == "event_idx_two" { 2 } else { 1 };
        assert_eq!(u16::from_le_bytes(idx), want, "{name}: used.idx");
        let mut status = [0u8; 2];
        mem.read(0x5000, &mut status);
        let ok = match name {
            "write_readonly" | "past_end" => status[0] == 1,
            "one_desc" => true, // its status byte is elsewhere
            _ => status[0] == 0,
        };
        assert!(ok, "{name}: status {status:?}");
    }
    for (name, data) in splitvm_fuzz::seeds::net() {
        splitvm_fuzz::net::run(&data);
        let mut idx = [0u8; 2];
        splitvm_fuzz::net::memory().read(USED_GPA + 2, &mut idx);
        assert!(u16::from_le_bytes(idx) >= 1, "{name}: used.idx");
        if name.starts_with("ctrl") {
            let mut ack = [0xffu8; 1];
            splitvm_fuzz::net::memory().read(0x3100, &mut ack);
            // One queue pair: no VIRTIO_NET_F_MQ, so the MQ command is refused.
            let want = if name == "ctrl_mq" { 1 } else { 0 };
            assert_eq!(ack[0], want, "{name}: control ack");
        }
    }
}

/// The `requests` seed gets as far as the back end's worker running the two
/// blk requests it put in guest RAM (the worker runs them while the
/// connection lasts, so allow a few tries).
#[test]
fn vhost_user_seed_reaches_the_worker() {
    use std::os::unix::fs::FileExt;
    let _serial = serial();
    let seeds = splitvm_fuzz::seeds::vhost_user();
    let (_, data) = seeds.iter().find(|(n, _)| *n == "requests").unwrap();
    let mut done = 0;
    for _ in 0..20 {
        let ram = splitvm_fuzz::vhost_user::run_with_ram(data);
        let mut idx = [0u8; 2];
        ram.read_exact_at(&mut idx, 0x2002).unwrap();
        if u16::from_le_bytes(idx) == 2 {
            done += 1;
        }
    }
    eprintln!("{done}/20 runs completed both requests");
    assert!(done > 0, "the worker never completed the requests");
}
