//! In-flight I/O tracking (VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD), split rings.
//!
//! The back end records in shared memory which descriptor heads it has taken
//! off a ring and not yet completed. The front end keeps the memory (a memfd)
//! across the back end's death and hands it to the next instance with
//! SET_INFLIGHT_FD, which then knows what the guest submitted and never saw
//! completed. Layout per queue, as the vhost-user spec describes it:
//!
//! ```text
//! struct QueueRegionSplit {          // 16 bytes
//!     u64 features; u16 version; u16 desc_num; u16 last_batch_head; u16 used_idx;
//!     struct DescStateSplit { u8 inflight; u8 padding[5]; u16 next; u64 counter; } desc[desc_num];
//! }
//! ```
//! Queues follow each other, each padded to 64 bytes.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::ptr::NonNull;
use std::sync::atomic::{fence, Ordering};
use std::sync::Arc;

const HEADER_LEN: usize = 16;
const DESC_LEN: usize = 16;
const ALIGN: usize = 64;
const VERSION: u16 = 1;

/// Bytes one queue's part of the region takes.
pub fn queue_stride(queue_size: u16) -> usize {
    (HEADER_LEN + DESC_LEN * usize::from(queue_size)).next_multiple_of(ALIGN)
}

#[derive(Debug, thiserror::Error)]
pub enum InflightError {
    #[error("bad in-flight region geometry: {0}")]
    Geometry(String),
    #[error("cannot create the in-flight region")]
    Create(#[source] io::Error),
    #[error("cannot map the in-flight region")]
    Map(#[source] io::Error),
}

/// A mapping of the whole shared region.
#[derive(Debug)]
pub struct InflightRegion {
    base: NonNull<u8>,
    len: usize,
    num_queues: u16,
    queue_size: u16,
}

// SAFETY: the mapping is plain shared memory; every access goes through
// volatile reads/writes of one queue's part, and each queue is used by one
// worker thread at a time.
unsafe impl Send for InflightRegion {}
unsafe impl Sync for InflightRegion {}

impl InflightRegion {
    /// Creates a fresh, zeroed region in a new memfd (GET_INFLIGHT_FD).
    pub fn create(
        num_queues: u16,
        queue_size: u16,
    ) -> Result<(Arc<Self>, File, u64), InflightError> {
        check_geometry(num_queues, queue_size)?;
        let len = queue_stride(queue_size) * usize::from(num_queues);
        let fd = nix::sys::memfd::memfd_create(
            c"splitvm-inflight",
            nix::sys::memfd::MFdFlags::MFD_CLOEXEC,
        )
        .map_err(|e| InflightError::Create(e.into()))?;
        let file = File::from(fd);
        file.set_len(len as u64).map_err(InflightError::Create)?;
        let region = Self::map(&file, 0, len, num_queues, queue_size)?;
        for q in 0..num_queues {
            let view = region.queue(q);
            view.write_u64(0, 0); // features
            view.write_u16(8, VERSION);
            view.write_u16(10, queue_size);
        }
        Ok((Arc::new(region), file, len as u64))
    }

    /// Maps a region the front end handed back (SET_INFLIGHT_FD).
    pub fn open(
        file: &File,
        offset: u64,
        size: u64,
        num_queues: u16,
        queue_size: u16,
    ) -> Result<Arc<Self>, InflightError> {
        check_geometry(num_queues, queue_size)?;
        let need = queue_stride(queue_size) * usize::from(num_queues);
        if (size as usize) < need {
            return Err(InflightError::Geometry(format!(
                "{size} bytes for {num_queues} queues of {queue_size} (need {need})"
            )));
        }
        let file_len = file.metadata().map_err(InflightError::Map)?.len();
        if offset
            .checked_add(need as u64)
            .is_none_or(|end| end > file_len)
        {
            return Err(InflightError::Geometry(format!(
                "offset {offset} + {need} bytes is past the end of the {file_len}-byte file"
            )));
        }
        Ok(Arc::new(Self::map(
            file, offset, need, num_queues, queue_size,
        )?))
    }

    fn map(
        file: &File,
        offset: u64,
        len: usize,
        num_queues: u16,
        queue_size: u16,
    ) -> Result<Self, InflightError> {
        // SAFETY: a fresh shared mapping of a file we hold; checked below.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                offset as libc::off_t,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(InflightError::Map(io::Error::last_os_error()));
        }
        Ok(InflightRegion {
            base: NonNull::new(ptr.cast())
                .ok_or_else(|| InflightError::Map(io::Error::other("mmap returned NULL")))?,
            len,
            num_queues,
            queue_size,
        })
    }

    pub fn num_queues(&self) -> u16 {
        self.num_queues
    }

    fn queue(&self, index: u16) -> QueueView<'_> {
        assert!(index < self.num_queues);
        let off = queue_stride(self.queue_size) * usize::from(index);
        QueueView {
            // SAFETY: off + stride <= len by construction.
            base: unsafe { self.base.as_ptr().add(off) },
            desc_num: self.queue_size,
            _region: self,
        }
    }
}

impl Drop for InflightRegion {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what map() mapped.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
    }
}

fn check_geometry(num_queues: u16, queue_size: u16) -> Result<(), InflightError> {
    if num_queues == 0 || queue_size == 0 || !queue_size.is_power_of_two() {
        return Err(InflightError::Geometry(format!(
            "{num_queues} queues of {queue_size} descriptors"
        )));
    }
    Ok(())
}

/// Raw accessors for one queue's part of the region.
struct QueueView<'a> {
    base: *mut u8,
    desc_num: u16,
    _region: &'a InflightRegion,
}

impl QueueView<'_> {
    fn write_u64(&self, off: usize, v: u64) {
        // SAFETY: off is within this queue's part (callers use fixed offsets
        // or a head < desc_num); the region is mapped while 'a lives.
        unsafe { std::ptr::write_volatile(self.base.add(off).cast::<u64>(), v.to_le()) }
    }
    fn read_u64(&self, off: usize) -> u64 {
        // SAFETY: as write_u64.
        u64::from_le(unsafe { std::ptr::read_volatile(self.base.add(off).cast::<u64>()) })
    }
    fn write_u16(&self, off: usize, v: u16) {
        // SAFETY: as write_u64.
        unsafe { std::ptr::write_volatile(self.base.add(off).cast::<u16>(), v.to_le()) }
    }
    fn read_u16(&self, off: usize) -> u16 {
        // SAFETY: as write_u64.
        u16::from_le(unsafe { std::ptr::read_volatile(self.base.add(off).cast::<u16>()) })
    }
    fn write_u8(&self, off: usize, v: u8) {
        // SAFETY: as write_u64.
        unsafe { std::ptr::write_volatile(self.base.add(off), v) }
    }
    fn read_u8(&self, off: usize) -> u8 {
        // SAFETY: as write_u64.
        unsafe { std::ptr::read_volatile(self.base.add(off)) }
    }
    fn desc(head: u16) -> usize {
        HEADER_LEN + usize::from(head) * DESC_LEN
    }
}

const LAST_BATCH_HEAD: usize = 12;
const USED_IDX: usize = 14;

/// One queue's in-flight bookkeeping, owned by the vring it tracks.
#[derive(Debug)]
pub struct InflightQueue {
    region: Arc<InflightRegion>,
    index: u16,
    counter: u64,
}

impl InflightQueue {
    /// Attaches to queue `index` of `region`. `used_idx` is the used ring's
    /// idx as the guest sees it now. Repairs the last batch as the spec says
    /// (the back end may have died between publishing used.idx and clearing
    /// its entries) and returns the tracker and the heads still in flight, in
    /// the order they were submitted.
    pub fn attach(region: Arc<InflightRegion>, index: u16, used_idx: u16) -> (Self, Vec<u16>) {
        let view = region.queue(index);
        let desc_num = view.desc_num;
        let recorded = view.read_u16(USED_IDX);
        if recorded != used_idx {
            // The entries of the last batch were completed (used.idx moved)
            // but not yet cleared here.
            let batch = used_idx.wrapping_sub(recorded);
            let mut head = view.read_u16(LAST_BATCH_HEAD);
            for _ in 0..batch.min(desc_num) {
                if head >= desc_num {
                    break;
                }
                let d = QueueView::desc(head);
                view.write_u8(d, 0);
                head = view.read_u16(d + 6);
            }
            view.write_u16(USED_IDX, used_idx);
        }
        let mut pending: Vec<(u64, u16)> = (0..desc_num)
            .filter_map(|h| {
                let d = QueueView::desc(h);
                (view.read_u8(d) == 1).then(|| (view.read_u64(d + 8), h))
            })
            .collect();
        pending.sort_unstable();
        let counter = pending.last().map_or(0, |&(c, _)| c) + 1;
        (
            InflightQueue {
                region,
                index,
                counter,
            },
            pending.into_iter().map(|(_, h)| h).collect(),
        )
    }

    /// Records that `head` was taken off the avail ring.
    pub fn begin(&mut self, head: u16) {
        let view = self.region.queue(self.index);
        if head >= view.desc_num {
            return;
        }
        let d = QueueView::desc(head);
        view.write_u64(d + 8, self.counter);
        self.counter += 1;
        fence(Ordering::Release);
        view.write_u8(d, 1);
    }

    /// Before `head` is put on the used ring: link it into the last batch.
    pub fn pre_complete(&mut self, head: u16) {
        let view = self.region.queue(self.index);
        if head >= view.desc_num {
            return;
        }
        let d = QueueView::desc(head);
        view.write_u16(d + 6, view.read_u16(LAST_BATCH_HEAD));
        view.write_u16(LAST_BATCH_HEAD, head);
        fence(Ordering::Release);
    }

    /// After the used ring's idx became `used_idx`: clear `head`, record the idx.
    pub fn post_complete(&mut self, head: u16, used_idx: u16) {
        let view = self.region.queue(self.index);
        fence(Ordering::Release);
        if head < view.desc_num {
            view.write_u8(QueueView::desc(head), 0);
        }
        view.write_u16(USED_IDX, used_idx);
    }

    /// Heads currently marked in flight (for tests and diagnostics).
    pub fn in_flight(&self) -> Vec<u16> {
        let view = self.region.queue(self.index);
        (0..view.desc_num)
            .filter(|&h| view.read_u8(QueueView::desc(h)) == 1)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn survives_a_crash_and_repairs_the_last_batch() {
        let (region, file, size) = InflightRegion::create(2, 8).unwrap();
        let (mut q, pending) = InflightQueue::attach(region.clone(), 1, 0);
        assert!(pending.is_empty());
        for h in [3, 5, 1] {
            q.begin(h);
        }
        // 3 completes fully; 5 is published on the used ring (idx 2) but the
        // back end dies before clearing it; 1 never completes.
        q.pre_complete(3);
        q.post_complete(3, 1);
        q.pre_complete(5);
        drop(q);
        drop(region);

        // The next back end maps the same memfd.
        let region = InflightRegion::open(&file, 0, size, 2, 8).unwrap();
        let (q, pending) = InflightQueue::attach(region.clone(), 1, 2);
        assert_eq!(
            pending,
            vec![1],
            "only the request never completed is resubmitted"
        );
        assert_eq!(q.in_flight(), vec![1]);
        // Queue 0 was never touched.
        let (_, other) = InflightQueue::attach(region, 0, 0);
        assert!(other.is_empty());
    }

    #[test]
    fn resubmits_in_submission_order() {
        let (region, _file, _) = InflightRegion::create(1, 16).unwrap();
        let (mut q, _) = InflightQueue::attach(region.clone(), 0, 0);
        for h in [9, 2, 7] {
            q.begin(h);
        }
        drop(q);
        let (q, pending) = InflightQueue::attach(region, 0, 0);
        assert_eq!(pending, vec![9, 2, 7]);
        assert_eq!(q.counter, 4);
    }

    #[test]
    fn rejects_bad_geometry() {
        assert!(InflightRegion::create(0, 8).is_err());
        assert!(InflightRegion::create(1, 6).is_err());
        let (_, file, size) = InflightRegion::create(1, 8).unwrap();
        assert!(InflightRegion::open(&file, 0, size, 4, 8).is_err());
        assert!(InflightRegion::open(&file, 64, size, 1, 8).is_err());
    }
}
