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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boot::{load_kernel, zero_page};
    use std::io::Write;

    /// A synthetic bzImage: 1 setup sector + boot sector, header at 0x1f1,
    /// then `payload` as the protected-mode kernel.
    fn fake_bzimage(version: u16, xloadflags: u16, payload: &[u8]) -> Vec<u8> {
        let mut img = vec![0u8; 2 * 512];
        img[0x1f1] = 1; // setup_sects
        img[0x1fe..0x200].copy_from_slice(&0xaa55u16.to_le_bytes());
        img[0x202..0x206].copy_from_slice(b"HdrS");
        img[0x206..0x208].copy_from_slice(&version.to_le_bytes());
        img[0x211] = 0x01; // loadflags: LOADED_HIGH
        img[0x214..0x218].copy_from_slice(&0x10_0000u32.to_le_bytes()); // code32_start
        img[0x22c..0x230].copy_from_slice(&0x37ff_ffffu32.to_le_bytes()); // initrd_addr_max
        img[0x236..0x238].copy_from_slice(&xloadflags.to_le_bytes());
        img[0x238..0x23c].copy_from_slice(&2047u32.to_le_bytes()); // cmdline_size
        img[0x260..0x264].copy_from_slice(&0x40_0000u32.to_le_bytes()); // init_size
        img.extend_from_slice(payload);
        img
    }

    fn load(bytes: &[u8], mem_size: u64) -> Result<LoadedKernel, BootError> {
        let path = std::env::temp_dir().join(format!(
            "vmm-bz-{}-{}",
            std::process::id(),
            bytes.len() ^ mem_size as usize
        ));
        std::fs::File::create(&path)
            .unwrap()
            .write_all(bytes)
            .unwrap();
        let mem = crate::memory::create_guest_memory(mem_size, false).unwrap();
        let r = load_kernel(&mem, &path);
        std::fs::remove_file(&path).unwrap();
        r
    }

    #[test]
    fn loads_64bit_bzimage() {
        let k = load(
            &fake_bzimage(0x020f, XLF_KERNEL_64, &[0x90; 4096]),
            64 << 20,
        )
        .unwrap();
        assert_eq!(k.mode, EntryMode::Linux64);
        assert_eq!(k.entry, 0x10_0200, "64-bit entry is startup_64 at +0x200");
        // init_size (4 MiB) bounds what the decompressor needs.
        assert_eq!(k.kernel_end, 0x10_0000 + 0x40_0000);
        let h = k.setup_header.unwrap();
        assert_eq!(zero_page::cmdline_limit(Some(&h)), 2048);
        assert_eq!(zero_page::initrd_addr_max(Some(&h)), 0x37ff_ffff);
    }

    #[test]
    fn rejects_kernel_without_64bit_entry() {
        assert!(matches!(
            load(&fake_bzimage(0x020f, 0, &[0x90; 512]), 64 << 20),
            Err(BootError::BzImage(_))
        ));
        assert!(matches!(
            load(&fake_bzimage(0x0205, XLF_KERNEL_64, &[0x90; 512]), 64 << 20),
            Err(BootError::BzImage(_))
        ));
    }

    #[test]
    fn bzimage_needs_room_for_init_size() {
        assert!(matches!(
            load(&fake_bzimage(0x020f, XLF_KERNEL_64, &[0x90; 512]), 4 << 20),
            Err(BootError::KernelTooBig { .. })
        ));
    }
}
