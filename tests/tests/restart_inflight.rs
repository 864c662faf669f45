//! In-flight tracking across a back end's death (VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD).
//!
//! The front end keeps the in-flight region (a memfd the back end created)
//! and hands it to the next back end. These tests put the region and the
//! rings in the exact state a back end leaves when it dies at the worst
//! moments, then check what the next back end does with it: requests taken
//! off the ring but never completed are redone, a request already completed
//! is not done twice, and a front end that believes everything was consumed
//! (SET_VRING_BASE past the in-flight requests) still gets them done.

use splitvm_tests::blk::{header_bytes, req_type, status, BlkOptions};
use splitvm_tests::util::pattern;
use splitvm_tests::{BlkFixture, Daemon, Desc, FrontendConn, GuestMem, SplitQueue};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::time::Duration;
use vhost::vhost_user::message::VhostUserInflight;
use vhost::vhost_user::{VhostUserFrontend, VhostUserProtocolFeatures};

const MIB: usize = 1 << 20;
const QUEUE_SIZE: u16 = 64;

/// Offsets in one queue's part of the split in-flight region (vhost-user spec).
const LAST_BATCH_HEAD: u64 = 12;
const USED_IDX: u64 = 14;
fn desc_off(head: u16) -> u64 {
    16 + 16 * u64::from(head)
}

fn connect(f: &BlkFixture) -> FrontendConn {
    let opts = BlkOptions::default();
    let mut conn = FrontendConn::connect(&f.socket, Duration::from_secs(5)).unwrap();
    let n = conn
        .negotiate(
            opts.features,
            opts.protocol | VhostUserProtocolFeatures::INFLIGHT_SHMFD,
        )
        .unwrap();
    assert!(
        n.protocol
            .contains(VhostUserProtocolFeatures::INFLIGHT_SHMFD),
        "the back end must offer VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD"
    );
    conn
}

/// Puts a write of `data` at `sector` on the avail ring (no kick): (head, status address).
fn queue_write(mem: &mut GuestMem, q: &mut SplitQueue, sector: u64, data: &[u8]) -> (u16, u64) {
    let h = mem
        .alloc_bytes(&header_bytes(req_type::OUT, sector), 16)
        .unwrap();
    let d = mem.alloc_bytes(data, 8).unwrap();
    let s = mem.alloc_bytes(&[status::UNWRITTEN], 1).unwrap();
    let head = q
        .add_chain(
            mem,
            &[
                Desc::readable(h, 16),
                Desc::readable(d, data.len() as u32),
                Desc::writable(s, 1),
            ],
        )
        .unwrap();
    (head, s)
}

fn read_u8(f: &File, off: u64) -> u8 {
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, off).unwrap();
    b[0]
}

fn write_u16(f: &File, off: u64, v: u16) {
    f.write_all_at(&v.to_le_bytes(), off).unwrap();
}

/// Marks `head` in flight as a back end does when it takes it off the ring.
fn mark_in_flight(f: &File, head: u16, counter: u64) {
    f.write_all_at(&counter.to_le_bytes(), desc_off(head) + 8)
        .unwrap();
    f.write_all_at(&[1], desc_off(head)).unwrap();
}

#[test]
fn requests_in_flight_at_a_crash_are_redone_and_completed_ones_are_not() {
    let mut f = BlkFixture::new("inflight", MIB, &[]);
    let mut conn = connect(&f);
    let want = VhostUserInflight {
        mmap_size: 0,
        mmap_offset: 0,
        num_queues: 1,
        queue_size: QUEUE_SIZE,
    };
    let (info, region) = conn.frontend().get_inflight_fd(&want).unwrap();
    assert!(info.mmap_size >= 16 + 16 * u64::from(QUEUE_SIZE));
    assert_eq!(region.metadata().unwrap().len(), info.mmap_size);

    let mut mem = GuestMem::new(16 * MIB).unwrap();
    let mut q = SplitQueue::new(&mut mem, QUEUE_SIZE).unwrap();
    conn.set_mem_table(&mem).unwrap();
    conn.setup_vring(0, &q, &mem).unwrap();
    conn.set_vring_enable(0, true).unwrap();

    // One write completes normally: the region records it and clears it.
    let first = pattern(1, 512);
    let (h1, s1) = queue_write(&mut mem, &mut q, 10, &first);
    q.kick().unwrap();
    q.wait_used(&mem, Duration::from_secs(5)).unwrap();
    assert_eq!(mem.read(s1, 1).unwrap()[0], status::OK);
    assert_eq!(
        read_u8(&region, desc_off(h1)),
        0,
        "completed head still marked in flight"
    );
    let mut used = [0u8; 2];
    region.read_exact_at(&mut used, USED_IDX).unwrap();
    assert_eq!(
        u16::from_le_bytes(used),
        1,
        "region's used_idx follows the used ring"
    );

    // The back end dies. Leave the state of the worst moments in the region:
    // - head h1 published on the used ring but not yet cleared (the last batch);
    // - two more writes taken off the avail ring and never completed.
    f.daemon.kill();
    conn.close();
    // If h1 were redone, this newer data at sector 10 would be overwritten.
    let newer = pattern(2, 512);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&f.image)
        .unwrap()
        .write_all_at(&newer, 10 * 512)
        .unwrap();
    f.expect_written(10, &newer);
    mark_in_flight(&region, h1, 1);
    write_u16(&region, LAST_BATCH_HEAD, h1);
    write_u16(&region, USED_IDX, 0);

    let second = pattern(3, 1024);
    let third = pattern(4, 512);
    let (h2, s2) = queue_write(&mut mem, &mut q, 11, &second);
    let (h3, s3) = queue_write(&mut mem, &mut q, 13, &third);
    mark_in_flight(&region, h2, 2);
    mark_in_flight(&region, h3, 3);
    f.expect_written(11, &second);
    f.expect_written(13, &third);

    // A new back end gets the region back; this front end believes the two
    // writes were consumed and sets the ring base past them, with no kick.
    f.daemon = Daemon::blk(f.dir.path(), &f.socket, &f.image, &[]);
    let mut conn = connect(&f);
    conn.frontend()
        .set_inflight_fd(&info, region.as_raw_fd())
        .unwrap();
    conn.set_mem_table(&mem).unwrap();
    conn.setup_vring_at(0, &q, &mem, q.next_avail()).unwrap();
    conn.set_vring_enable(0, true).unwrap();

    let done = q.wait_used_n(&mem, 2, Duration::from_secs(5));
    assert!(
        done.is_ok(),
        "in-flight writes were not redone: {done:?}\n{}",
        f.daemon.stderr()
    );
    assert_eq!(mem.read(s2, 1).unwrap()[0], status::OK);
    assert_eq!(mem.read(s3, 1).unwrap()[0], status::OK);
    assert_eq!(
        q.used_idx(&mem).unwrap(),
        3,
        "exactly the two in-flight requests were completed, nothing twice"
    );
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(q.used_idx(&mem).unwrap(), 3, "a late duplicate completion");
    f.assert_image("after the in-flight replay");
    for h in [h1, h2, h3] {
        assert_eq!(read_u8(&region, desc_off(h)), 0, "head {h} left in flight");
    }
    assert!(
        f.daemon.stderr().contains("resubmitting 2 request(s)"),
        "{}",
        f.daemon.stderr()
    );
    conn.close();
    f.assert_serving_fresh("after the in-flight replay");
}

#[test]
fn bad_inflight_regions_are_refused_and_the_daemon_carries_on() {
    let mut f = BlkFixture::new("inflight-bad", MIB, &[]);
    let mut conn = connect(&f);
    // More queues than the device has.
    let too_many = VhostUserInflight {
        mmap_size: 0,
        mmap_offset: 0,
        num_queues: 64,
        queue_size: QUEUE_SIZE,
    };
    assert!(conn.frontend().get_inflight_fd(&too_many).is_err());
    f.daemon.assert_alive("after a bad in-flight region");

    // A region file far too small for what it claims to hold.
    let mut conn = connect(&f);
    let small = tempfile_of(4096);
    let claims = VhostUserInflight {
        mmap_size: 1 << 20,
        mmap_offset: 0,
        num_queues: 1,
        queue_size: 1024,
    };
    let _ = conn.frontend().set_inflight_fd(&claims, small.as_raw_fd());
    conn.close();
    f.daemon.assert_alive("after a bad in-flight region");
    f.assert_serving_fresh("after bad in-flight regions");
}

fn tempfile_of(len: u64) -> File {
    let fd =
        nix::sys::memfd::memfd_create(c"small", nix::sys::memfd::MFdFlags::MFD_CLOEXEC).unwrap();
    let f = File::from(fd);
    f.set_len(len).unwrap();
    f
}
