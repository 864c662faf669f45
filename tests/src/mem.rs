//! Guest memory shared with a back end: memfd-backed regions mapped with vm-memory, and a
//! simple allocator that hands out buffers inside them.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::FromRawFd;
use std::sync::atomic::Ordering;

use vhost::VhostUserMemoryRegionInfo;
use vm_memory::{
    ByteValued, Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap,
    GuestMemoryRegion,
};

/// Default size of the guest memory made by [`GuestMem::new_default`]: 64 MiB.
pub const DEFAULT_MEM_SIZE: usize = 64 << 20;

/// Errors of guest memory set-up and access.
#[derive(Debug, thiserror::Error)]
pub enum MemError {
    /// memfd_create or ftruncate failed.
    #[error("memfd: {0}")]
    Memfd(std::io::Error),
    /// vm-memory refused the layout.
    #[error("mapping guest memory: {0}")]
    Map(String),
    /// An access outside guest memory.
    #[error("guest memory access at {addr:#x} (+{len}) failed: {msg}")]
    Access { addr: u64, len: usize, msg: String },
    /// The allocator ran out of space.
    #[error("out of guest memory allocating {0} bytes")]
    OutOfMemory(u64),
}

/// Guest memory: one or more regions, all backed by one memfd (so a back end can map them).
pub struct GuestMem {
    mem: GuestMemoryMmap,
    // Kept so the fd lives as long as the mapping; vm-memory holds its own copy too.
    _memfd: File,
    regions: Vec<(u64, u64)>,
    alloc: Allocator,
}

fn memfd(size: u64) -> Result<File, MemError> {
    let name = CString::new("splitvm-guest-mem").unwrap();
    // SAFETY: plain syscall with a valid NUL-terminated name.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(MemError::Memfd(std::io::Error::last_os_error()));
    }
    // SAFETY: fd was just created and is owned by nobody else.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(size).map_err(MemError::Memfd)?;
    Ok(file)
}

impl GuestMem {
    /// One region of `size` bytes at guest address 0.
    pub fn new(size: usize) -> Result<Self, MemError> {
        Self::with_regions(&[(0, size)])
    }

    /// 64 MiB at guest address 0.
    pub fn new_default() -> Self {
        Self::new(DEFAULT_MEM_SIZE).expect("creating guest memory")
    }

    /// Several regions `(guest address, size)`, sorted and not overlapping, backed by
    /// consecutive ranges of one memfd. Gaps between regions are "outside guest memory".
    pub fn with_regions(layout: &[(u64, usize)]) -> Result<Self, MemError> {
        let total: u64 = layout.iter().map(|r| r.1 as u64).sum();
        let file = memfd(total)?;
        let mut ranges = Vec::new();
        let mut off = 0u64;
        for &(gpa, size) in layout {
            let fo = FileOffset::new(file.try_clone().map_err(MemError::Memfd)?, off);
            ranges.push((GuestAddress(gpa), size, Some(fo)));
            off += size as u64;
        }
        let mem = GuestMemoryMmap::from_ranges_with_files(ranges)
            .map_err(|e| MemError::Map(format!("{e:?}")))?;
        let regions: Vec<(u64, u64)> = layout.iter().map(|&(g, s)| (g, s as u64)).collect();
        let alloc = Allocator::new(&regions);
        Ok(GuestMem {
            mem,
            _memfd: file,
            regions,
            alloc,
        })
    }

    /// The vm-memory view of guest memory.
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.mem
    }

    /// `(guest address, size)` of each region.
    pub fn regions(&self) -> &[(u64, u64)] {
        &self.regions
    }

    /// The region table for SET_MEM_TABLE (file-backed regions with our mapping addresses).
    pub fn region_infos(&self) -> Vec<VhostUserMemoryRegionInfo> {
        self.mem
            .iter()
            .map(|r| VhostUserMemoryRegionInfo::from_guest_region(r).expect("file-backed region"))
            .collect()
    }

    /// Our (front-end) virtual address of a guest address; what SET_VRING_ADDR carries.
    pub fn host_addr(&self, gpa: u64) -> Result<u64, MemError> {
        self.mem
            .get_host_address(GuestAddress(gpa))
            .map(|p| p as u64)
            .map_err(|e| MemError::Access {
                addr: gpa,
                len: 0,
                msg: e.to_string(),
            })
    }

    /// The first guest address past the end of all regions.
    pub fn end(&self) -> u64 {
        self.regions.iter().map(|r| r.0 + r.1).max().unwrap_or(0)
    }

    /// Allocate `len` bytes aligned to `align` (a power of two); contents are zeroed.
    pub fn alloc(&mut self, len: u64, align: u64) -> Result<u64, MemError> {
        let a = self.alloc.alloc(len, align)?;
        self.fill(a, 0, len as usize)?;
        Ok(a)
    }

    /// Allocate and fill with `data`.
    pub fn alloc_bytes(&mut self, data: &[u8], align: u64) -> Result<u64, MemError> {
        let a = self.alloc.alloc(data.len() as u64, align)?;
        self.write(a, data)?;
        Ok(a)
    }

    /// Release every allocation made after `mark` (see [`GuestMem::alloc_mark`]).
    pub fn alloc_reset(&mut self, mark: AllocMark) {
        self.alloc.reset(mark)
    }

    /// A point to return the allocator to with [`GuestMem::alloc_reset`].
    pub fn alloc_mark(&self) -> AllocMark {
        self.alloc.mark()
    }

    /// Write bytes at a guest address.
    pub fn write(&self, gpa: u64, data: &[u8]) -> Result<(), MemError> {
        self.mem
            .write_slice(data, GuestAddress(gpa))
            .map_err(|e| MemError::Access {
                addr: gpa,
                len: data.len(),
                msg: e.to_string(),
            })
    }

    /// Fill `len` bytes at a guest address with `byte`.
    pub fn fill(&self, gpa: u64, byte: u8, len: usize) -> Result<(), MemError> {
        self.write(gpa, &vec![byte; len])
    }

    /// Read `len` bytes at a guest address.
    pub fn read(&self, gpa: u64, len: usize) -> Result<Vec<u8>, MemError> {
        let mut buf = vec![0u8; len];
        self.mem
            .read_slice(&mut buf, GuestAddress(gpa))
            .map_err(|e| MemError::Access {
                addr: gpa,
                len,
                msg: e.to_string(),
            })?;
        Ok(buf)
    }

    /// Write a plain-data object.
    pub fn write_obj<T: ByteValued>(&self, gpa: u64, val: T) -> Result<(), MemError> {
        self.write(gpa, val.as_slice())
    }

    /// Read a plain-data object.
    pub fn read_obj<T: ByteValued + Default>(&self, gpa: u64) -> Result<T, MemError> {
        let mut v = T::default();
        let len = std::mem::size_of::<T>();
        self.mem
            .read_slice(v.as_mut_slice(), GuestAddress(gpa))
            .map_err(|e| MemError::Access {
                addr: gpa,
                len,
                msg: e.to_string(),
            })?;
        Ok(v)
    }

    /// Atomic little-endian u16 store (ring indexes shared with the back end).
    pub fn store_u16(&self, gpa: u64, v: u16) -> Result<(), MemError> {
        self.mem
            .store(v.to_le(), GuestAddress(gpa), Ordering::Release)
            .map_err(|e| MemError::Access {
                addr: gpa,
                len: 2,
                msg: e.to_string(),
            })
    }

    /// Atomic little-endian u16 load.
    pub fn load_u16(&self, gpa: u64) -> Result<u16, MemError> {
        self.mem
            .load::<u16>(GuestAddress(gpa), Ordering::Acquire)
            .map(u16::from_le)
            .map_err(|e| MemError::Access {
                addr: gpa,
                len: 2,
                msg: e.to_string(),
            })
    }

    /// Whether `[gpa, gpa+len)` lies inside one region.
    pub fn contains(&self, gpa: u64, len: u64) -> bool {
        self.mem
            .find_region(GuestAddress(gpa))
            .map(|r| gpa + len <= r.start_addr().0 + r.len())
            .unwrap_or(false)
    }
}

/// A saved allocator position.
#[derive(Clone, Copy, Debug)]
pub struct AllocMark {
    region: usize,
    next: u64,
}

/// Bump allocator over the guest regions (region by region). Free by resetting to a mark.
#[derive(Debug)]
pub struct Allocator {
    regions: Vec<(u64, u64)>,
    region: usize,
    next: u64,
}

impl Allocator {
    /// An allocator over `(guest address, size)` regions. Address 0 is never handed out.
    pub fn new(regions: &[(u64, u64)]) -> Self {
        let next = regions.first().map(|r| r.0.max(0x1000)).unwrap_or(0);
        Allocator {
            regions: regions.to_vec(),
            region: 0,
            next,
        }
    }

    /// Allocate `len` bytes (at least 1) aligned to `align`.
    pub fn alloc(&mut self, len: u64, align: u64) -> Result<u64, MemError> {
        let align = align.max(1);
        assert!(align.is_power_of_two(), "alignment must be a power of two");
        let len = len.max(1);
        while self.region < self.regions.len() {
            let (start, size) = self.regions[self.region];
            let a = (self.next.max(start) + align - 1) & !(align - 1);
            if a + len <= start + size {
                self.next = a + len;
                return Ok(a);
            }
            self.region += 1;
            if let Some(r) = self.regions.get(self.region) {
                self.next = r.0;
            }
        }
        Err(MemError::OutOfMemory(len))
    }

    /// The current position.
    pub fn mark(&self) -> AllocMark {
        AllocMark {
            region: self.region,
            next: self.next,
        }
    }

    /// Go back to `mark`, freeing everything allocated since.
    pub fn reset(&mut self, mark: AllocMark) {
        self.region = mark.region;
        self.next = mark.next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions_are_file_backed_and_allocator_spans_them() {
        let mut m = GuestMem::with_regions(&[(0, 0x4000), (0x10000, 0x4000)]).unwrap();
        let infos = m.region_infos();
        assert_eq!(infos.len(), 2);
        assert_eq!(infos[1].mmap_offset, 0x4000);
        assert!(infos.iter().all(|r| r.mmap_handle >= 0));
        let a = m.alloc(0x2000, 16).unwrap();
        assert_eq!(a, 0x1000, "address 0 is never handed out");
        let b = m.alloc(0x2000, 16).unwrap();
        assert_eq!(b, 0x10000, "moves to the next region");
        let mark = m.alloc_mark();
        m.alloc(0x100, 8).unwrap();
        m.alloc_reset(mark);
        assert_eq!(m.alloc(1, 1).unwrap(), 0x12000);
        assert!(m.alloc(0x10000, 1).is_err());
        m.write(0x10010, b"abc").unwrap();
        assert_eq!(m.read(0x10010, 3).unwrap(), b"abc");
        assert!(m.read(0x5000, 1).is_err(), "hole between regions");
        assert!(m.contains(0x10000, 0x4000) && !m.contains(0x3fff, 2));
        assert_eq!(m.end(), 0x14000);
    }
}
