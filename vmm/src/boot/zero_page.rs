//! The Linux zero page (`struct boot_params`) for the 64-bit boot protocol:
//! setup header, command line, initramfs and the e820 map
//! (Documentation/arch/x86/boot.rst).

use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use vm_memory::{Bytes, GuestAddress};

use super::{memory_map, BootError, Initrd, CMDLINE_ADDR, ZERO_PAGE_ADDR};
use crate::memory::GuestMem;

/// `HdrS`, the setup header magic.
pub const HDRS_MAGIC: u32 = 0x5372_6448;
/// boot_flag value at 0x1fe.
pub const BOOT_FLAG: u16 = 0xaa55;
/// type_of_loader: "undefined" boot loader.
pub const LOADER_TYPE_UNDEFINED: u8 = 0xff;
/// loadflags bit: protected-mode code loaded at 0x100000.
pub const LOADED_HIGH: u8 = 0x01;
/// Maximum e820 entries in the zero page.
pub const E820_MAX: usize = 128;

/// Builds the zero page contents.
pub fn build(
    header: Option<setup_header>,
    cmdline_len: usize,
    initrd: Option<Initrd>,
    mem_size: u64,
    rsdp: u64,
) -> boot_params {
    let mut params = boot_params {
        acpi_rsdp_addr: rsdp,
        ..Default::default()
    };
    let mut hdr = header.unwrap_or_default();
    if header.is_none() {
        // ELF vmlinux: no real setup header; fill the fields Linux checks.
        hdr.header = HDRS_MAGIC;
        hdr.boot_flag = BOOT_FLAG;
        hdr.kernel_alignment = 0x0100_0000;
    }
    hdr.type_of_loader = LOADER_TYPE_UNDEFINED;
    hdr.loadflags |= LOADED_HIGH;
    hdr.cmd_line_ptr = CMDLINE_ADDR as u32;
    hdr.cmdline_size = cmdline_len as u32;
    if let Some(i) = initrd {
        hdr.ramdisk_image = i.addr as u32;
        hdr.ramdisk_size = i.size as u32;
    }
    params.hdr = hdr;
    let map = memory_map(mem_size);
    for (i, (addr, size, ty)) in map.iter().enumerate().take(E820_MAX) {
        params.e820_table[i] = boot_e820_entry {
            addr: *addr,
            size: *size,
            r#type: *ty,
        };
    }
    params.e820_entries = map.len().min(E820_MAX) as u8;
    params
}

/// Command-line limit announced by the header (boot protocol >= 2.06).
pub fn cmdline_limit(header: Option<&setup_header>) -> usize {
    match header {
        Some(h) if h.version >= 0x0206 && h.cmdline_size > 0 => {
            (h.cmdline_size as usize + 1).min(super::CMDLINE_MAX)
        }
        Some(_) => 256,
        None => super::CMDLINE_MAX,
    }
}

/// Highest address the initramfs may end at.
pub fn initrd_addr_max(header: Option<&setup_header>) -> u64 {
    match header {
        Some(h) if h.version >= 0x0203 && h.initrd_addr_max != 0 => h.initrd_addr_max.into(),
        Some(_) => 0x37ff_ffff,
        None => u32::MAX as u64,
    }
}

/// Writes the zero page at [`ZERO_PAGE_ADDR`].
pub fn write(mem: &GuestMem, params: &boot_params) -> Result<(), BootError> {
    mem.write_obj(*params, GuestAddress(ZERO_PAGE_ADDR))
        .map_err(BootError::GuestWrite)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boot::{E820_RAM, E820_RESERVED, HIMEM_START};

    fn bz_header() -> setup_header {
        setup_header {
            header: HDRS_MAGIC,
            boot_flag: BOOT_FLAG,
            version: 0x020f,
            cmdline_size: 2047,
            initrd_addr_max: 0x7fff_ffff,
            code32_start: 0x10_0000,
            loadflags: LOADED_HIGH,
            ..Default::default()
        }
    }

    #[test]
    fn zero_page_fields_follow_boot_protocol() {
        let initrd = Initrd {
            addr: 0x1f00_0000,
            size: 0x12_3456,
        };
        let p = build(Some(bz_header()), 26, Some(initrd), 512 << 20, 0xe0000);
        // The boot protocol fields, by value.
        assert_eq!({ p.hdr.header }, HDRS_MAGIC);
        assert_eq!({ p.hdr.boot_flag }, BOOT_FLAG);
        assert_eq!(p.hdr.type_of_loader, 0xff);
        assert_ne!(p.hdr.loadflags & LOADED_HIGH, 0);
        assert_eq!({ p.hdr.cmd_line_ptr }, 0x20000);
        assert_eq!({ p.hdr.cmdline_size }, 26);
        assert_eq!({ p.hdr.ramdisk_image }, 0x1f00_0000);
        assert_eq!({ p.hdr.ramdisk_size }, 0x12_3456);
        assert_eq!(p.e820_entries, 3);
        let e0 = p.e820_table[0];
        assert_eq!(
            ({ e0.addr }, { e0.size }, { e0.r#type }),
            (0, 0x9fc00, E820_RAM)
        );
        let e1 = p.e820_table[1];
        assert_eq!({ e1.r#type }, E820_RESERVED);
        let e2 = p.e820_table[2];
        assert_eq!(
            ({ e2.addr }, { e2.size }, { e2.r#type }),
            (HIMEM_START, (512 << 20) - HIMEM_START, E820_RAM)
        );
    }

    #[test]
    fn zero_page_byte_offsets() {
        // Offsets from Documentation/arch/x86/zero-page.rst and boot.rst.
        let initrd = Initrd {
            addr: 0x0200_0000,
            size: 0x1000,
        };
        let p = build(Some(bz_header()), 10, Some(initrd), 64 << 20, 0xe0000);
        let bytes = vm_memory::ByteValued::as_slice(&p).to_vec();
        let u32_at = |o: usize| u32::from_le_bytes(bytes[o..o + 4].try_into().unwrap());
        let u16_at = |o: usize| u16::from_le_bytes(bytes[o..o + 2].try_into().unwrap());
        assert_eq!(bytes.len(), 4096);
        assert_eq!(bytes[0x1e8], 3, "e820_entries at 0x1e8");
        assert_eq!(
            u64::from_le_bytes(bytes[0x70..0x78].try_into().unwrap()),
            0xe0000,
            "acpi_rsdp_addr at 0x070"
        );
        assert_eq!(u16_at(0x1fe), 0xaa55, "boot_flag at 0x1fe");
        assert_eq!(u32_at(0x202), HDRS_MAGIC, "header at 0x202");
        assert_eq!(bytes[0x210], 0xff, "type_of_loader at 0x210");
        assert_eq!(u32_at(0x218), 0x0200_0000, "ramdisk_image at 0x218");
        assert_eq!(u32_at(0x21c), 0x1000, "ramdisk_size at 0x21c");
        assert_eq!(u32_at(0x228), 0x20000, "cmd_line_ptr at 0x228");
        assert_eq!(u32_at(0x238), 10, "cmdline_size at 0x238");
        // e820_table at 0x2d0, 20 bytes per entry.
        let e = 0x2d0 + 2 * 20;
        assert_eq!(
            u64::from_le_bytes(bytes[e..e + 8].try_into().unwrap()),
            0x10_0000
        );
        assert_eq!(u32_at(e + 16), E820_RAM);
    }

    #[test]
    fn elf_kernel_gets_synthetic_header() {
        let p = build(None, 5, None, 64 << 20, 0);
        assert_eq!({ p.hdr.header }, HDRS_MAGIC);
        assert_eq!({ p.hdr.boot_flag }, BOOT_FLAG);
        assert_eq!({ p.hdr.ramdisk_image }, 0);
    }

    #[test]
    fn limits_from_header() {
        let h = bz_header();
        assert_eq!(cmdline_limit(Some(&h)), 2048);
        assert_eq!(initrd_addr_max(Some(&h)), 0x7fff_ffff);
        let old = setup_header {
            version: 0x0202,
            ..h
        };
        assert_eq!(cmdline_limit(Some(&old)), 256);
        assert_eq!(initrd_addr_max(Some(&old)), 0x37ff_ffff);
    }
}
