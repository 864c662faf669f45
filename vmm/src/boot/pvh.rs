//! PVH boot: `hvm_start_info` with the memory map, command line and
//! initramfs module (xen/include/public/arch-x86/hvm/start_info.h).

use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info, XEN_HVM_START_MAGIC_VALUE,
};
use vm_memory::{Bytes, GuestAddress};

use super::{memory_map, BootError, Initrd, CMDLINE_ADDR, PVH_INFO_ADDR};
use crate::memory::GuestMem;

/// Memory map table right after the start info.
pub const MEMMAP_ADDR: u64 = PVH_INFO_ADDR + 0x40;
/// Module list (the initramfs).
pub const MODLIST_ADDR: u64 = PVH_INFO_ADDR + 0x200;

/// The structures to write: start info, memmap, optional module.
pub fn build(
    initrd: Option<Initrd>,
    mem_size: u64,
    rsdp: u64,
) -> (
    hvm_start_info,
    Vec<hvm_memmap_table_entry>,
    Option<hvm_modlist_entry>,
) {
    let memmap: Vec<_> = memory_map(mem_size)
        .into_iter()
        .map(|(addr, size, ty)| hvm_memmap_table_entry {
            addr,
            size,
            type_: ty,
            reserved: 0,
        })
        .collect();
    let module = initrd.map(|i| hvm_modlist_entry {
        paddr: i.addr,
        size: i.size,
        cmdline_paddr: 0,
        reserved: 0,
    });
    let info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC_VALUE,
        version: 1,
        flags: 0,
        nr_modules: module.is_some() as u32,
        modlist_paddr: if module.is_some() { MODLIST_ADDR } else { 0 },
        cmdline_paddr: CMDLINE_ADDR,
        rsdp_paddr: rsdp,
        memmap_paddr: MEMMAP_ADDR,
        memmap_entries: memmap.len() as u32,
        reserved: 0,
    };
    (info, memmap, module)
}

/// Writes the start info at [`PVH_INFO_ADDR`]; returns its address for ebx.
pub fn write(
    mem: &GuestMem,
    initrd: Option<Initrd>,
    mem_size: u64,
    rsdp: u64,
) -> Result<u64, BootError> {
    let (info, memmap, module) = build(initrd, mem_size, rsdp);
    for (i, e) in memmap.iter().enumerate() {
        let addr = MEMMAP_ADDR + (i * std::mem::size_of::<hvm_memmap_table_entry>()) as u64;
        mem.write_obj(*e, GuestAddress(addr))
            .map_err(BootError::GuestWrite)?;
    }
    if let Some(m) = module {
        mem.write_obj(m, GuestAddress(MODLIST_ADDR))
            .map_err(BootError::GuestWrite)?;
    }
    mem.write_obj(info, GuestAddress(PVH_INFO_ADDR))
        .map_err(BootError::GuestWrite)?;
    Ok(PVH_INFO_ADDR)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boot::{E820_RAM, HIMEM_START};

    #[test]
    fn start_info_in_guest_memory() {
        let mem = crate::memory::create_guest_memory(64 << 20, false).unwrap();
        let initrd = Initrd {
            addr: 0x300_0000,
            size: 0x1000,
        };
        let addr = write(&mem, Some(initrd), 64 << 20, 0xe0000).unwrap();
        assert_eq!(addr, PVH_INFO_ADDR);
        // Raw layout of struct hvm_start_info.
        let mut b = [0u8; 56];
        mem.read_slice(&mut b, GuestAddress(addr)).unwrap();
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap());
        assert_eq!(u32_at(0), 0x336e_c578, "magic");
        assert_eq!(u32_at(4), 1, "version");
        assert_eq!(u32_at(12), 1, "nr_modules");
        assert_eq!(u64_at(16), MODLIST_ADDR, "modlist_paddr");
        assert_eq!(u64_at(24), CMDLINE_ADDR, "cmdline_paddr");
        assert_eq!(u64_at(32), 0xe0000, "rsdp_paddr");
        assert_eq!(u64_at(40), MEMMAP_ADDR, "memmap_paddr");
        assert_eq!(u32_at(48), 3, "memmap_entries");
        let e: hvm_memmap_table_entry = mem.read_obj(GuestAddress(MEMMAP_ADDR + 2 * 24)).unwrap();
        assert_eq!(
            (e.addr, e.size, e.type_),
            (HIMEM_START, (64 << 20) - HIMEM_START, E820_RAM)
        );
        let m: hvm_modlist_entry = mem.read_obj(GuestAddress(MODLIST_ADDR)).unwrap();
        assert_eq!((m.paddr, m.size), (0x300_0000, 0x1000));
    }
}
