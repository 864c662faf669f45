//! Loading a kernel and writing the boot structures the guest expects.
//!
//! Fixed low-memory layout (all below the 640 KiB EBDA):
//!
//! | address  | what                                  |
//! |----------|---------------------------------------|
//! | 0x500    | GDT                                   |
//! | 0x520    | IDT (empty)                           |
//! | 0x6000   | PVH `hvm_start_info`, then its memmap |
//! | 0x7000   | Linux zero page (`boot_params`)       |
//! | 0x8ff0   | initial stack pointer                 |
//! | 0x9000   | identity page tables (PML4, PDPT, PD) |
//! | 0x20000  | kernel command line                   |
//! | 0x9fc00  | MP table (EBDA)                       |
//! | 0x100000 | kernel                                |

pub mod acpi;
pub mod aml;
pub mod bzimage;
pub mod elf;
pub mod mptable;
pub mod pvh;
pub mod zero_page;

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use crate::memory::{GuestMem, MMIO_HOLE_END, MMIO_HOLE_START};

pub const GDT_ADDR: u64 = 0x500;
pub const IDT_ADDR: u64 = 0x520;
pub const PVH_INFO_ADDR: u64 = 0x6000;
pub const ZERO_PAGE_ADDR: u64 = 0x7000;
pub const BOOT_STACK: u64 = 0x8ff0;
pub const PML4_ADDR: u64 = 0x9000;
pub const PDPT_ADDR: u64 = 0xa000;
pub const PD_ADDR: u64 = 0xb000;
pub const CMDLINE_ADDR: u64 = 0x20000;
/// Longest command line we place (Linux x86 COMMAND_LINE_SIZE is 2048).
pub const CMDLINE_MAX: usize = 2048;
pub const EBDA_START: u64 = 0x9fc00;
pub const HIMEM_START: u64 = 0x10_0000;

/// e820 / PVH memory map entry types.
pub const E820_RAM: u32 = 1;
pub const E820_RESERVED: u32 = 2;

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("cannot read kernel {0}")]
    KernelOpen(String, #[source] std::io::Error),
    #[error("{0} is not a kernel image (neither an ELF file nor a bzImage with a `HdrS` header)")]
    NotAKernel(String),
    #[error("cannot load bzImage")]
    BzImage(#[source] linux_loader::loader::Error),
    #[error("cannot load ELF kernel")]
    Elf(#[source] linux_loader::loader::Error),
    #[error("bad 32-bit ELF image: {0}")]
    Elf32(String),
    #[error("32-bit ELF image has no PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY); only PVH is supported for 32-bit ELF")]
    NoPvhEntry,
    #[error("kernel does not fit in guest memory ({mem_mib} MiB): it needs up to {need:#x}")]
    KernelTooBig { mem_mib: u64, need: u64 },
    #[error("cannot read initramfs {0}")]
    Initramfs(String, #[source] std::io::Error),
    #[error("guest memory too small for kernel and initramfs: initramfs of {size} bytes does not fit between kernel end {kernel_end:#x} and {limit:#x}")]
    InitramfsTooBig {
        size: u64,
        kernel_end: u64,
        limit: u64,
    },
    #[error("kernel command line is {len} bytes, the limit is {max}")]
    CmdlineTooLong { len: usize, max: usize },
    #[error("writing boot structures to guest memory failed")]
    GuestWrite(#[source] vm_memory::GuestMemoryError),
    #[error("MP table does not fit: {0}")]
    MpTable(String),
}

/// How the boot CPU starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryMode {
    /// 64-bit Linux boot protocol: long mode, rsi = zero page.
    Linux64,
    /// PVH: 32-bit flat protected mode, ebx = hvm_start_info.
    Pvh,
}

/// Where the kernel went and how to enter it.
#[derive(Debug, Clone)]
pub struct LoadedKernel {
    pub entry: u64,
    pub mode: EntryMode,
    /// First byte after the kernel image.
    pub kernel_end: u64,
    /// The bzImage setup header, to be copied into the zero page.
    pub setup_header: Option<linux_loader::loader::bootparam::setup_header>,
}

/// The initramfs location.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Initrd {
    pub addr: u64,
    pub size: u64,
}

/// Kernel image formats recognised from the file's first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelFormat {
    Elf32,
    Elf64,
    BzImage,
}

/// Identifies the image format from its header.
pub fn detect_format(file: &mut File) -> std::io::Result<Option<KernelFormat>> {
    let mut head = [0u8; 0x210];
    file.seek(SeekFrom::Start(0))?;
    let n = read_up_to(file, &mut head)?;
    file.seek(SeekFrom::Start(0))?;
    if n >= 5 && &head[..4] == b"\x7fELF" {
        return Ok(match head[4] {
            1 => Some(KernelFormat::Elf32),
            2 => Some(KernelFormat::Elf64),
            _ => None,
        });
    }
    if n >= 0x206 && &head[0x202..0x206] == b"HdrS" {
        return Ok(Some(KernelFormat::BzImage));
    }
    Ok(None)
}

fn read_up_to(file: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Loads the kernel at `path` into guest memory.
pub fn load_kernel(mem: &GuestMem, path: &Path) -> Result<LoadedKernel, BootError> {
    let name = path.display().to_string();
    let mut file = File::open(path).map_err(|e| BootError::KernelOpen(name.clone(), e))?;
    let format = detect_format(&mut file)
        .map_err(|e| BootError::KernelOpen(name.clone(), e))?
        .ok_or_else(|| BootError::NotAKernel(name.clone()))?;
    let loaded = match format {
        KernelFormat::BzImage => bzimage::load(mem, &mut file)?,
        KernelFormat::Elf64 => elf::load_elf64(mem, &mut file)?,
        KernelFormat::Elf32 => elf::load_elf32(mem, &mut file)?,
    };
    log::info!(
        "kernel {name}: {format:?}, entry {:#x}, {:?}, ends at {:#x}",
        loaded.entry,
        loaded.mode,
        loaded.kernel_end
    );
    Ok(loaded)
}

/// Highest usable low-RAM address (exclusive) for boot payloads.
pub fn low_ram_end(mem: &GuestMem) -> u64 {
    (mem.last_addr().0 + 1).min(MMIO_HOLE_START)
}

/// Places the initramfs at the highest page-aligned address below
/// `min(low RAM end, addr_max + 1)` that stays above the kernel.
pub fn place_initrd(
    size: u64,
    kernel_end: u64,
    low_ram_end: u64,
    addr_max: u64,
) -> Result<Initrd, BootError> {
    let limit = low_ram_end.min(addr_max.saturating_add(1));
    let too_big = BootError::InitramfsTooBig {
        size,
        kernel_end,
        limit,
    };
    let top = limit.checked_sub(size).ok_or(too_big)?;
    let addr = top & !0xfff;
    if addr < kernel_end.max(HIMEM_START) {
        return Err(BootError::InitramfsTooBig {
            size,
            kernel_end,
            limit,
        });
    }
    Ok(Initrd { addr, size })
}

/// Reads the initramfs into guest memory.
pub fn load_initrd(
    mem: &GuestMem,
    path: &Path,
    kernel_end: u64,
    addr_max: u64,
) -> Result<Initrd, BootError> {
    let name = path.display().to_string();
    let data = std::fs::read(path).map_err(|e| BootError::Initramfs(name, e))?;
    let initrd = place_initrd(data.len() as u64, kernel_end, low_ram_end(mem), addr_max)?;
    mem.write_slice(&data, GuestAddress(initrd.addr))
        .map_err(BootError::GuestWrite)?;
    Ok(initrd)
}

/// Writes the NUL-terminated command line at [`CMDLINE_ADDR`].
pub fn write_cmdline(mem: &GuestMem, cmdline: &str, max: usize) -> Result<(), BootError> {
    // `max` counts the terminating NUL.
    if cmdline.len() + 1 > max {
        return Err(BootError::CmdlineTooLong {
            len: cmdline.len(),
            max: max - 1,
        });
    }
    let mut bytes = cmdline.as_bytes().to_vec();
    bytes.push(0);
    mem.write_slice(&bytes, GuestAddress(CMDLINE_ADDR))
        .map_err(BootError::GuestWrite)
}

/// The guest's physical memory map: (start, size, type).
pub fn memory_map(mem_size: u64) -> Vec<(u64, u64, u32)> {
    let mut map = vec![
        (0, EBDA_START, E820_RAM),
        (EBDA_START, 0xa0000 - EBDA_START, E820_RESERVED),
    ];
    let low_end = mem_size.min(MMIO_HOLE_START);
    map.push((HIMEM_START, low_end - HIMEM_START, E820_RAM));
    if mem_size > MMIO_HOLE_START {
        map.push((MMIO_HOLE_END, mem_size - MMIO_HOLE_START, E820_RAM));
    }
    map
}

/// Checks that `[start, end)` lies in guest RAM, for kernel loaders.
pub(crate) fn check_fits(mem: &GuestMem, end: u64) -> Result<(), BootError> {
    let ram_end = low_ram_end(mem);
    if end > ram_end {
        return Err(BootError::KernelTooBig {
            mem_mib: ram_end >> 20,
            need: end,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initrd_goes_high_and_aligned() {
        let i = place_initrd(0x1800, 0x20_0000, 0x400_0000, u32::MAX as u64).unwrap();
        assert_eq!(i.addr, 0x400_0000 - 0x2000);
        assert_eq!(i.addr % 4096, 0);
        assert!(i.addr + i.size <= 0x400_0000);
    }

    #[test]
    fn initrd_respects_addr_max() {
        let i = place_initrd(0x1000, 0x20_0000, 0x1000_0000, 0x37ff_ffff).unwrap();
        assert!(i.addr + i.size <= 0x1000_0000);
        let i = place_initrd(0x1000, 0x20_0000, 0x4000_0000, 0x0fff_ffff).unwrap();
        assert_eq!(i.addr + i.size, 0x1000_0000);
    }

    #[test]
    fn initrd_too_big() {
        assert!(matches!(
            place_initrd(0x300_0000, 0x200_0000, 0x400_0000, u32::MAX as u64),
            Err(BootError::InitramfsTooBig { .. })
        ));
        assert!(place_initrd(0x500_0000, 0x20_0000, 0x400_0000, u32::MAX as u64).is_err());
    }

    #[test]
    fn memory_map_layout() {
        let m = memory_map(512 << 20);
        assert_eq!(m[0], (0, 0x9fc00, E820_RAM));
        assert_eq!(m[1], (0x9fc00, 0x400, E820_RESERVED));
        assert_eq!(m[2], (0x10_0000, (512 << 20) - 0x10_0000, E820_RAM));
        assert_eq!(m.len(), 3);
        let big = memory_map(4 << 30);
        assert_eq!(big[3], (1 << 32, (4 << 30) - MMIO_HOLE_START, E820_RAM));
    }

    #[test]
    fn not_a_kernel() {
        let dir = std::env::temp_dir().join(format!("vmm-nk-{}", std::process::id()));
        std::fs::write(&dir, b"this is just text, not a kernel").unwrap();
        let mem = crate::memory::create_guest_memory(16 << 20, false).unwrap();
        let r = load_kernel(&mem, &dir);
        std::fs::remove_file(&dir).unwrap();
        assert!(matches!(r, Err(BootError::NotAKernel(_))));
    }

    #[test]
    fn cmdline_written_with_nul() {
        let mem = crate::memory::create_guest_memory(16 << 20, false).unwrap();
        write_cmdline(&mem, "console=ttyS0", CMDLINE_MAX).unwrap();
        let mut buf = [0u8; 14];
        mem.read_slice(&mut buf, GuestAddress(CMDLINE_ADDR))
            .unwrap();
        assert_eq!(&buf, b"console=ttyS0\0");
        let long = "x".repeat(CMDLINE_MAX);
        assert!(matches!(
            write_cmdline(&mem, &long, CMDLINE_MAX),
            Err(BootError::CmdlineTooLong { .. })
        ));
    }
}
