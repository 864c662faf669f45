//! The disk image: a raw file or a host block device, opened once, accessed
//! with positioned vectored I/O (never a shared file offset), so every queue
//! worker can use it at the same time.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Sector size of the virtio-blk protocol.
pub const SECTOR_SIZE: u64 = 512;
/// Alignment of the bounce buffer used with O_DIRECT.
const DIRECT_ALIGN: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("cannot open image {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot read the size of image {path}")]
    Size {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("image {path} is {size} bytes, not a multiple of 512")]
    Unaligned { path: PathBuf, size: u64 },
    #[error("image {path} is empty")]
    Empty { path: PathBuf },
    #[error("image {path} is neither a regular file nor a block device")]
    NotAFileOrDevice { path: PathBuf },
}

/// An open disk image.
#[derive(Debug)]
pub struct Image {
    file: File,
    size: u64,
    readonly: bool,
    direct: bool,
    block_device: bool,
}

// From <linux/fs.h>: _IOR(0x12, 114, size_t), _IO(0x12, 119), _IO(0x12, 127).
const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;
const BLKDISCARD: libc::c_ulong = 0x1277;
const BLKZEROOUT: libc::c_ulong = 0x127f;

impl Image {
    /// Opens `path`; the size must be a non-zero multiple of 512 bytes.
    pub fn open(path: &Path, readonly: bool, direct: bool) -> Result<Self, ImageError> {
        let mut opts = OpenOptions::new();
        opts.read(true).write(!readonly);
        if direct {
            opts.custom_flags(libc::O_DIRECT);
        }
        let file = opts.open(path).map_err(|source| ImageError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        let meta = file.metadata().map_err(|source| ImageError::Size {
            path: path.to_path_buf(),
            source,
        })?;
        let block_device = meta.file_type().is_block_device();
        let size = if block_device {
            let mut size: u64 = 0;
            // SAFETY: BLKGETSIZE64 writes one u64 to the pointer we pass.
            let rc = unsafe { libc::ioctl(file.as_raw_fd(), BLKGETSIZE64, &mut size) };
            if rc < 0 {
                return Err(ImageError::Size {
                    path: path.to_path_buf(),
                    source: io::Error::last_os_error(),
                });
            }
            size
        } else if meta.file_type().is_file() {
            meta.len()
        } else {
            return Err(ImageError::NotAFileOrDevice {
                path: path.to_path_buf(),
            });
        };
        if size == 0 {
            return Err(ImageError::Empty {
                path: path.to_path_buf(),
            });
        }
        if !size.is_multiple_of(SECTOR_SIZE) {
            return Err(ImageError::Unaligned {
                path: path.to_path_buf(),
                size,
            });
        }
        Ok(Image {
            file,
            size,
            readonly,
            direct,
            block_device,
        })
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn readonly(&self) -> bool {
        self.readonly
    }

    /// The open file, for I/O submitted elsewhere (io_uring).
    pub fn raw_fd(&self) -> std::os::fd::RawFd {
        self.file.as_raw_fd()
    }

    /// Whether the image is open with O_DIRECT (guest buffers then go through an aligned
    /// bounce buffer, so they cannot be handed to the kernel as they are).
    pub fn direct(&self) -> bool {
        self.direct
    }

    /// Reads exactly the iovecs' total length at `offset`.
    pub fn read_vectored_at(&self, iovs: &mut [libc::iovec], offset: u64) -> io::Result<()> {
        if self.direct {
            let total = iov_len(iovs);
            let mut bounce = AlignedBuf::new(total)?;
            let mut one = [libc::iovec {
                iov_base: bounce.as_mut_ptr().cast(),
                iov_len: bounce.len(),
            }];
            transfer_all(self.file.as_raw_fd(), &mut one, offset, Dir::Read)?;
            scatter(bounce.as_slice(), iovs);
            Ok(())
        } else {
            transfer_all(self.file.as_raw_fd(), iovs, offset, Dir::Read)
        }
    }

    /// Writes exactly the iovecs' total length at `offset`.
    pub fn write_vectored_at(&self, iovs: &mut [libc::iovec], offset: u64) -> io::Result<()> {
        if self.direct {
            let total = iov_len(iovs);
            let mut bounce = AlignedBuf::new(total)?;
            gather(iovs, bounce.as_mut_slice());
            let mut one = [libc::iovec {
                iov_base: bounce.as_mut_ptr().cast(),
                iov_len: bounce.len(),
            }];
            transfer_all(self.file.as_raw_fd(), &mut one, offset, Dir::Write)
        } else {
            transfer_all(self.file.as_raw_fd(), iovs, offset, Dir::Write)
        }
    }

    /// Makes every completed write durable.
    pub fn flush(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    /// Drops the data of a range; a no-op where the host cannot (discard is a hint).
    pub fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        let res = if self.block_device {
            self.blk_range_ioctl(BLKDISCARD, offset, len)
        } else {
            self.fallocate(
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                offset,
                len,
            )
        };
        match res {
            Err(e) if unsupported(&e) => Ok(()),
            other => other,
        }
    }

    /// Makes a range read back as zeroes; may deallocate it when `may_unmap`.
    pub fn write_zeroes(&self, offset: u64, len: u64, may_unmap: bool) -> io::Result<()> {
        if self.block_device {
            return match self.blk_range_ioctl(BLKZEROOUT, offset, len) {
                Err(e) if unsupported(&e) => self.write_zero_buffers(offset, len),
                other => other,
            };
        }
        let mut modes = vec![libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE];
        if may_unmap {
            modes.insert(0, libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE);
        }
        for mode in modes {
            match self.fallocate(mode, offset, len) {
                Err(e) if unsupported(&e) => continue,
                other => return other,
            }
        }
        self.write_zero_buffers(offset, len)
    }

    fn write_zero_buffers(&self, mut offset: u64, len: u64) -> io::Result<()> {
        const CHUNK: usize = 1 << 20;
        let mut zeroes = AlignedBuf::new(CHUNK.min(len as usize))?;
        zeroes.as_mut_slice().fill(0);
        let end = offset + len;
        while offset < end {
            let n = ((end - offset) as usize).min(zeroes.len());
            let mut one = [libc::iovec {
                iov_base: zeroes.as_mut_ptr().cast(),
                iov_len: n,
            }];
            transfer_all(self.file.as_raw_fd(), &mut one, offset, Dir::Write)?;
            offset += n as u64;
        }
        Ok(())
    }

    fn fallocate(&self, mode: libc::c_int, offset: u64, len: u64) -> io::Result<()> {
        // SAFETY: fallocate on our own fd with plain integer arguments.
        let rc = unsafe {
            libc::fallocate(
                self.file.as_raw_fd(),
                mode,
                offset as libc::off_t,
                len as libc::off_t,
            )
        };
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    fn blk_range_ioctl(&self, req: libc::c_ulong, offset: u64, len: u64) -> io::Result<()> {
        let range: [u64; 2] = [offset, len];
        // SAFETY: these ioctls read two u64 (start, length) from the pointer.
        let rc = unsafe { libc::ioctl(self.file.as_raw_fd(), req, range.as_ptr()) };
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }
}

fn unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EOPNOTSUPP) | Some(libc::ENOTTY) | Some(libc::EINVAL)
    )
}

fn iov_len(iovs: &[libc::iovec]) -> usize {
    iovs.iter().map(|v| v.iov_len).sum()
}

#[derive(Clone, Copy)]
enum Dir {
    Read,
    Write,
}

/// preadv/pwritev until every byte moved; a short read at the end of the file
/// is an error (the request was checked against the image size).
fn transfer_all(
    fd: libc::c_int,
    mut iovs: &mut [libc::iovec],
    mut offset: u64,
    dir: Dir,
) -> io::Result<()> {
    while !iovs.is_empty() {
        let cnt = iovs.len().min(libc::UIO_MAXIOV as usize) as libc::c_int;
        // SAFETY: each iovec points into guest memory or a buffer that the
        // caller keeps mapped for the duration of this call.
        let n = unsafe {
            match dir {
                Dir::Read => libc::preadv(fd, iovs.as_ptr(), cnt, offset as libc::off_t),
                Dir::Write => libc::pwritev(fd, iovs.as_ptr(), cnt, offset as libc::off_t),
            }
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "image ended before the request did",
            ));
        }
        let mut n = n as usize;
        offset += n as u64;
        while n > 0 && !iovs.is_empty() {
            if n >= iovs[0].iov_len {
                n -= iovs[0].iov_len;
                iovs = &mut iovs[1..];
            } else {
                // SAFETY: advancing within the same buffer.
                iovs[0].iov_base = unsafe { iovs[0].iov_base.cast::<u8>().add(n).cast() };
                iovs[0].iov_len -= n;
                n = 0;
            }
        }
        while let Some(first) = iovs.first() {
            if first.iov_len != 0 {
                break;
            }
            iovs = &mut iovs[1..];
        }
    }
    Ok(())
}

fn scatter(src: &[u8], iovs: &[libc::iovec]) {
    let mut pos = 0;
    for v in iovs {
        // SAFETY: each iovec is a valid writable buffer of iov_len bytes.
        unsafe { std::ptr::copy_nonoverlapping(src[pos..].as_ptr(), v.iov_base.cast(), v.iov_len) };
        pos += v.iov_len;
    }
}

fn gather(iovs: &[libc::iovec], dst: &mut [u8]) {
    let mut pos = 0;
    for v in iovs {
        // SAFETY: each iovec is a valid readable buffer of iov_len bytes.
        unsafe {
            std::ptr::copy_nonoverlapping(
                v.iov_base.cast::<u8>(),
                dst[pos..].as_mut_ptr(),
                v.iov_len,
            )
        };
        pos += v.iov_len;
    }
}

/// A heap buffer aligned for O_DIRECT (std has no aligned Vec; this is the
/// smallest safe wrapper around std::alloc for it).
struct AlignedBuf {
    ptr: *mut u8,
    layout: std::alloc::Layout,
    len: usize,
}

impl AlignedBuf {
    fn new(len: usize) -> io::Result<Self> {
        let cap = len.max(1).next_multiple_of(DIRECT_ALIGN);
        let layout = std::alloc::Layout::from_size_align(cap, DIRECT_ALIGN)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        // SAFETY: layout has a non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        if ptr.is_null() {
            return Err(io::Error::from(io::ErrorKind::OutOfMemory));
        }
        Ok(AlignedBuf { ptr, layout, len })
    }
    fn len(&self) -> usize {
        self.len
    }
    fn as_mut_ptr(&mut self) -> *mut u8 {
        self.ptr
    }
    fn as_slice(&self) -> &[u8] {
        // SAFETY: ptr is valid for len initialised bytes while self lives.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
    fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, and we hold &mut self.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in new() with this layout.
        unsafe { std::alloc::dealloc(self.ptr, self.layout) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpfile(name: &str, len: u64) -> PathBuf {
        let p = std::env::temp_dir().join(format!("splitvm-img-{}-{name}", std::process::id()));
        let f = File::create(&p).unwrap();
        f.set_len(len).unwrap();
        p
    }

    #[test]
    fn size_must_be_sector_multiple() {
        let p = tmpfile("odd", 1000);
        assert!(matches!(
            Image::open(&p, false, false),
            Err(ImageError::Unaligned { size: 1000, .. })
        ));
        let p = tmpfile("empty", 0);
        assert!(matches!(
            Image::open(&p, false, false),
            Err(ImageError::Empty { .. })
        ));
    }

    #[test]
    fn vectored_round_trip_and_zeroes() {
        let p = tmpfile("rw", 8192);
        let img = Image::open(&p, false, false).unwrap();
        let mut a = vec![0xaau8; 512];
        let mut b = vec![0xbbu8; 1024];
        let mut iovs = [
            libc::iovec {
                iov_base: a.as_mut_ptr().cast(),
                iov_len: a.len(),
            },
            libc::iovec {
                iov_base: b.as_mut_ptr().cast(),
                iov_len: b.len(),
            },
        ];
        img.write_vectored_at(&mut iovs, 512).unwrap();
        let mut back = vec![0u8; 1536];
        let mut one = [libc::iovec {
            iov_base: back.as_mut_ptr().cast(),
            iov_len: back.len(),
        }];
        img.read_vectored_at(&mut one, 512).unwrap();
        assert!(back[..512].iter().all(|&x| x == 0xaa));
        assert!(back[512..].iter().all(|&x| x == 0xbb));
        img.write_zeroes(1024, 512, false).unwrap();
        let data = std::fs::read(&p).unwrap();
        assert!(data[1024..1536].iter().all(|&x| x == 0));
        assert!(data[1536..2048].iter().all(|&x| x == 0xbb));
        // Reading past the end is an error, not a short success.
        let mut one = [libc::iovec {
            iov_base: back.as_mut_ptr().cast(),
            iov_len: 1024,
        }];
        assert!(img.read_vectored_at(&mut one, 8192 - 512).is_err());
    }
}
