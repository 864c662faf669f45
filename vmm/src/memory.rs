//! Guest RAM: one memfd, shared and sealed against shrinking, mapped as
//! file-backed regions so vhost-user back ends can map the same pages.
//!
//! Layout: RAM from 0 up to the 32-bit MMIO hole at 3 GiB, the rest above
//! 4 GiB. Both regions come from the one memfd at matching offsets.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::{FromRawFd, OwnedFd};

use vm_memory::{FileOffset, GuestAddress, GuestMemoryMmap};

/// Start of the 32-bit MMIO hole (devices, IOAPIC, LAPIC live above it).
pub const MMIO_HOLE_START: u64 = 0xc000_0000;
/// End of the 32-bit MMIO hole.
pub const MMIO_HOLE_END: u64 = 1 << 32;
/// Smallest guest RAM we accept (room for boot structures and a tiny kernel).
pub const MIN_MEMORY: u64 = 4 << 20;

/// The VM's guest memory type.
pub type GuestMem = GuestMemoryMmap<()>;

#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("guest memory must be at least {} MiB", MIN_MEMORY >> 20)]
    TooSmall,
    #[error("memfd_create failed{}", if *.hugepages { " (hugepages requested: are hugepages configured on this host?)" } else { "" })]
    Memfd {
        hugepages: bool,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot size guest memory memfd to {size} bytes")]
    Truncate {
        size: u64,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot reserve {size} bytes of hugepages (see /proc/meminfo HugePages_Free)")]
    Hugepages {
        size: u64,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot seal guest memory memfd")]
    Seal(#[source] std::io::Error),
    #[error("cannot map guest memory")]
    Map(#[source] vm_memory::mmap::FromRangesError),
}

/// The guest-physical ranges (start, length) for `size` bytes of RAM.
pub fn ram_ranges(size: u64) -> Vec<(u64, u64)> {
    if size <= MMIO_HOLE_START {
        vec![(0, size)]
    } else {
        vec![
            (0, MMIO_HOLE_START),
            (MMIO_HOLE_END, size - MMIO_HOLE_START),
        ]
    }
}

/// Creates `size` bytes of guest RAM backed by a sealed memfd.
pub fn create_guest_memory(size: u64, hugepages: bool) -> Result<GuestMem, MemoryError> {
    if size < MIN_MEMORY {
        return Err(MemoryError::TooSmall);
    }
    let file = create_memfd(size, hugepages)?;
    let file = std::sync::Arc::new(file);
    let mut offset = 0u64;
    let mut ranges = Vec::new();
    for (start, len) in ram_ranges(size) {
        ranges.push((
            GuestAddress(start),
            len as usize,
            Some(FileOffset::from_arc(file.clone(), offset)),
        ));
        offset += len;
    }
    GuestMemoryMmap::from_ranges_with_files(ranges).map_err(MemoryError::Map)
}

fn create_memfd(size: u64, hugepages: bool) -> Result<File, MemoryError> {
    let name = CString::new("splitvm-guest-ram").expect("static name");
    let mut flags = libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING;
    if hugepages {
        flags |= libc::MFD_HUGETLB;
    }
    // SAFETY: name is a valid C string; the return value is checked.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), flags) };
    if fd < 0 {
        return Err(MemoryError::Memfd {
            hugepages,
            source: std::io::Error::last_os_error(),
        });
    }
    // SAFETY: fd is a fresh descriptor that we own.
    let file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    file.set_len(size)
        .map_err(|source| MemoryError::Truncate { size, source })?;
    if hugepages {
        // Take the huge pages now: without them the first guest access
        // would be a SIGBUS, not an error message.
        // SAFETY: fallocate on an fd we own; the return value is checked.
        if unsafe { libc::fallocate(fd, 0, 0, size as libc::off_t) } < 0 {
            return Err(MemoryError::Hugepages {
                size,
                source: std::io::Error::last_os_error(),
            });
        }
    }
    // Back ends map this file: it must never shrink under them.
    // SAFETY: plain fcntl on an fd we own; the return value is checked.
    let ret = unsafe { libc::fcntl(fd, libc::F_ADD_SEALS, libc::F_SEAL_SHRINK) };
    if ret < 0 {
        return Err(MemoryError::Seal(std::io::Error::last_os_error()));
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestMemoryBackend, GuestMemoryRegion};

    #[test]
    fn small_memory_is_one_region() {
        assert_eq!(ram_ranges(512 << 20), vec![(0, 512 << 20)]);
    }

    #[test]
    fn large_memory_skips_the_hole() {
        let r = ram_ranges(4 << 30);
        assert_eq!(
            r,
            vec![(0, MMIO_HOLE_START), (1 << 32, (4 << 30) - MMIO_HOLE_START)]
        );
    }

    #[test]
    fn memfd_backed_and_sealed() {
        let mem = create_guest_memory(16 << 20, false).unwrap();
        mem.write_obj(0x1234_5678u32, GuestAddress(0x1000)).unwrap();
        let region = mem.iter().next().unwrap();
        let fo = region.file_offset().expect("file backed");
        // SAFETY: F_GET_SEALS on a valid fd.
        let seals = unsafe {
            libc::fcntl(
                std::os::fd::AsRawFd::as_raw_fd(fo.file()),
                libc::F_GET_SEALS,
            )
        };
        assert!(seals & libc::F_SEAL_SHRINK != 0);
        assert_eq!(fo.file().metadata().unwrap().len(), 16 << 20);
    }

    #[test]
    fn too_small() {
        assert!(matches!(
            create_guest_memory(1 << 20, false),
            Err(MemoryError::TooSmall)
        ));
    }
}
