//! Guest memory for the request-parsing targets, fenced by guard bytes, and a
//! split virtqueue laid out in it from the fuzz input.
//!
//! Layout (guest-physical): region 0 at [`REGION0`], a hole, region 1 at
//! [`REGION1`] (so buffers may straddle a hole or run off the end). On the
//! host the two regions sit in one mapping with [`GUARD`] bytes of
//! [`PATTERN`] before, between and after them: device code that writes
//! outside guest memory, itself or through the kernel (pread into an iovec),
//! changes a guard byte, and [`GuardedMemory::check_guards`] panics.
//!
//! The ring sits at fixed addresses in region 0: descriptor table at
//! [`DESC_GPA`], avail ring at [`AVAIL_GPA`], used ring at [`USED_GPA`];
//! [`DATA_GPA`] onwards is free for buffers.

use crate::input::Input;
use splitvm_common::vring::{GuestMemoryHandle, Vring};
use vhost_user_backend::VringT;
use vm_memory::mmap::MmapRegion;
use vm_memory::{GuestAddress, GuestMemoryAtomic, GuestMemoryMmap, GuestRegionMmap};

/// (guest-physical address, size) of the two RAM regions.
pub const REGION0: (u64, usize) = (0, 0x1_0000);
pub const REGION1: (u64, usize) = (0x1_1000, 0x1_0000);
/// Guard bytes before, between and after the regions on the host.
pub const GUARD: usize = 0x1000;
pub const PATTERN: u8 = 0xa5;

pub const DESC_GPA: u64 = 0x0000;
pub const AVAIL_GPA: u64 = 0x1000;
pub const USED_GPA: u64 = 0x2000;
pub const DATA_GPA: u64 = 0x3000;
/// Largest ring the targets build (its tables fit the gaps above).
pub const MAX_QUEUE: u16 = 256;

/// Two guest RAM regions with guard bytes around each.
pub struct GuardedMemory {
    base: *mut u8,
    total: usize,
    /// (host offset, length) of each region in the mapping.
    regions: [(usize, usize); 2],
    pub mem: GuestMemoryMmap<()>,
}

// SAFETY: `base` is a private anonymous mapping owned by this value for its
// whole life; it is only read and written through `mem` and the methods here.
unsafe impl Send for GuardedMemory {}
// SAFETY: as above; the guard checks only read.
unsafe impl Sync for GuardedMemory {}

impl GuardedMemory {
    pub fn new() -> Self {
        let r0 = (GUARD, REGION0.1);
        let r1 = (GUARD + REGION0.1 + GUARD, REGION1.1);
        let total = r1.0 + r1.1 + GUARD;
        // SAFETY: a fresh anonymous mapping; the result is checked.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                total,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(base, libc::MAP_FAILED, "mmap of guest memory failed");
        let base = base.cast::<u8>();
        // SAFETY: `total` bytes at `base` are ours.
        unsafe { std::ptr::write_bytes(base, PATTERN, total) };
        let mut regions = Vec::new();
        for ((host_off, len), gpa) in [(r0, REGION0.0), (r1, REGION1.0)] {
            // SAFETY: the region lies inside our mapping, which outlives `mem`
            // (both are dropped together, the mapping last).
            let mmap = unsafe {
                MmapRegion::<()>::build_raw(
                    base.add(host_off),
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                )
            }
            .expect("raw guest region");
            regions.push(GuestRegionMmap::new(mmap, GuestAddress(gpa)).expect("region"));
        }
        let mem = GuestMemoryMmap::from_regions(regions).expect("guest memory");
        let m = GuardedMemory {
            base,
            total,
            regions: [r0, r1],
            mem,
        };
        m.reset();
        m
    }

    /// Zeroes both regions (the guards keep their pattern).
    pub fn reset(&self) {
        for (off, len) in self.regions {
            // SAFETY: inside our mapping.
            unsafe { std::ptr::write_bytes(self.base.add(off), 0, len) };
        }
    }

    /// Copies `bytes` into guest memory from `gpa` on, region by region,
    /// skipping the hole; what does not fit is dropped.
    pub fn fill(&self, gpa: u64, bytes: &[u8]) {
        let mut bytes = bytes;
        for (i, (off, len)) in self.regions.iter().enumerate() {
            let start = [REGION0.0, REGION1.0][i];
            let end = start + *len as u64;
            if bytes.is_empty() || gpa >= end {
                continue;
            }
            let from = gpa.max(start);
            let n = ((end - from) as usize).min(bytes.len());
            // SAFETY: `from - start + n <= len`, inside region i.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    bytes.as_ptr(),
                    self.base.add(off + (from - start) as usize),
                    n,
                )
            };
            bytes = &bytes[n..];
        }
    }

    /// Panics if device code wrote outside guest memory.
    pub fn check_guards(&self) {
        let guards = [
            (0, GUARD),
            (self.regions[0].0 + self.regions[0].1, GUARD),
            (self.regions[1].0 + self.regions[1].1, GUARD),
        ];
        for (off, len) in guards {
            // SAFETY: inside our mapping.
            let g = unsafe { std::slice::from_raw_parts(self.base.add(off), len) };
            if let Some(i) = g.iter().position(|&b| b != PATTERN) {
                panic!(
                    "write outside guest memory: guard byte at host offset {:#x} is {:#x}",
                    off + i,
                    g[i]
                );
            }
        }
    }

    /// Reads `buf.len()` bytes of guest memory at `gpa` (zeros where unmapped).
    pub fn read(&self, gpa: u64, buf: &mut [u8]) {
        use vm_memory::Bytes;
        buf.fill(0);
        let _ = self.mem.read_slice(buf, GuestAddress(gpa));
    }

    pub fn atomic(&self) -> GuestMemoryHandle {
        GuestMemoryAtomic::new(self.mem.clone())
    }
}

impl Default for GuardedMemory {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for GuardedMemory {
    fn drop(&mut self) {
        // SAFETY: our mapping; `mem` does not own it (built raw).
        unsafe { libc::munmap(self.base.cast(), self.total) };
    }
}

/// A split virtqueue as the input sets it up.
#[derive(Debug, Clone, Copy)]
pub struct QueueSetup {
    pub size: u16,
    pub event_idx: bool,
    pub next_avail: u16,
    pub next_used: u16,
}

/// Bytes of input [`QueueSetup::load`] reads for a ring of `size`.
pub fn queue_input_len(size: u16) -> usize {
    1 + 2 + 2 + 2 + 2 + 2 + 16 * usize::from(size) + 2 * usize::from(size)
}

impl QueueSetup {
    /// Reads, in this order: a control byte (bits 0-2: log2(size) - 1, so
    /// 2..=256; bit 3: EVENT_IDX), avail.flags, avail.idx, used_event, the
    /// device's next avail and next used index (u16 each), then `size`
    /// 16-byte descriptors and `size` avail ring entries, and writes them into
    /// guest memory.
    pub fn load(mem: &GuardedMemory, input: &mut Input) -> Self {
        let ctl = input.u8();
        let size = 2u16 << (ctl & 7);
        let event_idx = ctl & 8 != 0;
        let avail_flags = input.u16();
        let avail_idx = input.u16();
        let used_event = input.u16();
        let next_avail = input.u16();
        let next_used = input.u16();
        let table = input.bytes(16 * usize::from(size));
        let ring = input.bytes(2 * usize::from(size));
        mem.fill(DESC_GPA, table);
        let mut avail = Vec::with_capacity(6 + ring.len());
        avail.extend_from_slice(&avail_flags.to_le_bytes());
        avail.extend_from_slice(&avail_idx.to_le_bytes());
        avail.extend_from_slice(ring);
        avail.resize(4 + 2 * usize::from(size), 0);
        avail.extend_from_slice(&used_event.to_le_bytes());
        mem.fill(AVAIL_GPA, &avail);
        // The used ring starts where the device will continue.
        mem.fill(USED_GPA + 2, &next_used.to_le_bytes());
        QueueSetup {
            size,
            event_idx,
            next_avail,
            next_used,
        }
    }

    /// A started, enabled vring over `mem` as the handler would leave it.
    pub fn vring(&self, mem: GuestMemoryHandle) -> Vring {
        let v = Vring::new(mem, MAX_QUEUE).expect("vring");
        v.set_queue_size(self.size);
        v.set_queue_info(DESC_GPA, AVAIL_GPA, USED_GPA)
            .expect("fixed ring addresses are valid");
        v.set_queue_next_avail(self.next_avail);
        v.set_queue_next_used(self.next_used);
        v.set_queue_event_idx(self.event_idx);
        v.set_queue_ready(true);
        v.set_enabled(true);
        v
    }
}

/// An idle vring (never set up) for the queues a target does not drive.
pub fn idle_vring(mem: GuestMemoryHandle) -> Vring {
    Vring::new(mem, MAX_QUEUE).expect("vring")
}
