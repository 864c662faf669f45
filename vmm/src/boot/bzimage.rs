//! bzImage (Linux x86 boot protocol, 64-bit entry) loading via linux-loader.

use std::fs::File;

use linux_loader::loader::{bzimage::BzImage, KernelLoader};
use vm_memory::GuestAddress;

use super::{check_fits, BootError, EntryMode, LoadedKernel, HIMEM_START};
use crate::memory::GuestMem;

/// Offset of the 64-bit entry point from the protected-mode kernel start.
pub const ENTRY_64_OFFSET: u64 = 0x200;
/// XLF_KERNEL_64 in `xloadflags`: the kernel has the 64-bit entry point.
pub const XLF_KERNEL_64: u16 = 1 << 0;

pub fn load(mem: &GuestMem, file: &mut File) -> Result<LoadedKernel, BootError> {
    // Check the size up front for a clear "too small" error rather than a
    // guest-memory write failure deep inside the loader.
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    check_fits(mem, HIMEM_START + len)?;
    let r = BzImage::load(mem, None, file, Some(GuestAddress(HIMEM_START)))
        .map_err(BootError::BzImage)?;
    let hdr = r
        .setup_header
        .expect("bzImage loader returns a setup header");
    if hdr.version < 0x0206 {
        return Err(BootError::BzImage(linux_loader::loader::Error::Bzimage(
            linux_loader::loader::bzimage::Error::InvalidBzImage,
        )));
    }
    if hdr.xloadflags & XLF_KERNEL_64 == 0 {
        return Err(BootError::BzImage(linux_loader::loader::Error::Bzimage(
            linux_loader::loader::bzimage::Error::InvalidBzImage,
        )));
    }
    // The decompressor needs room for the decompressed kernel.
    let need = r.kernel_load.0 + u64::from(hdr.init_size).max(r.kernel_end - r.kernel_load.0);
    check_fits(mem, need)?;
    Ok(LoadedKernel {
        entry: r.kernel_load.0 + ENTRY_64_OFFSET,
        mode: EntryMode::Linux64,
        kernel_end: need,
        setup_header: Some(hdr),
    })
}
