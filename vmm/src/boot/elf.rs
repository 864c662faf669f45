//! ELF kernels: 64-bit vmlinux (via linux-loader, PVH note honoured) and
//! 32-bit ELF images with a PVH entry note (our own small loader, since
//! linux-loader reads ELF64 only).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};

use linux_loader::loader::{elf::Elf, elf::PvhBootCapability, KernelLoader};
use vm_memory::{Bytes, GuestAddress};

use super::{check_fits, BootError, EntryMode, LoadedKernel, HIMEM_START};
use crate::memory::GuestMem;

/// XEN_ELFNOTE_PHYS32_ENTRY: the 32-bit PVH entry point.
pub const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;
const PT_LOAD: u32 = 1;
const PT_NOTE: u32 = 4;
const EM_386: u16 = 3;
const EM_X86_64: u16 = 62;

/// End of the highest PT_LOAD segment of an ELF64 image (0 if unreadable:
/// the loader then reports the format error).
fn elf64_load_end(file: &mut File) -> u64 {
    let mut ehdr = [0u8; 64];
    if file
        .seek(SeekFrom::Start(0))
        .and_then(|_| file.read_exact(&mut ehdr))
        .is_err()
    {
        return 0;
    }
    let phoff = u64::from_le_bytes(ehdr[32..40].try_into().unwrap());
    let phentsize = u16_at(&ehdr, 54) as u64;
    let phnum = u16_at(&ehdr, 56) as u64;
    let mut end = 0u64;
    for i in 0..phnum.min(256) {
        let mut ph = [0u8; 56];
        let off = phoff.saturating_add(i.saturating_mul(phentsize));
        if file
            .seek(SeekFrom::Start(off))
            .and_then(|_| file.read_exact(&mut ph))
            .is_err()
        {
            break;
        }
        if u32_at(&ph, 0) == PT_LOAD {
            let paddr = u64::from_le_bytes(ph[24..32].try_into().unwrap());
            let memsz = u64::from_le_bytes(ph[40..48].try_into().unwrap());
            end = end.max(paddr.saturating_add(memsz));
        }
    }
    let _ = file.seek(SeekFrom::Start(0));
    end
}

pub fn load_elf64(mem: &GuestMem, file: &mut File) -> Result<LoadedKernel, BootError> {
    check_fits(mem, elf64_load_end(file))?;
    let r = Elf::load(mem, None, file, Some(GuestAddress(HIMEM_START))).map_err(BootError::Elf)?;
    check_fits(mem, r.kernel_end)?;
    let (entry, mode) = match r.pvh_boot_cap {
        PvhBootCapability::PvhEntryPresent(addr) => (addr.0, EntryMode::Pvh),
        _ => (r.kernel_load.0, EntryMode::Linux64),
    };
    Ok(LoadedKernel {
        entry,
        mode,
        kernel_end: r.kernel_end,
        setup_header: None,
    })
}

fn u16_at(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}

fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}

/// One 32-bit program header's fields we use.
#[derive(Debug, Clone, Copy)]
struct Phdr32 {
    p_type: u32,
    offset: u32,
    paddr: u32,
    filesz: u32,
    memsz: u32,
}

/// Loads a 32-bit ELF image; it must carry a PVH entry note.
pub fn load_elf32(mem: &GuestMem, file: &mut File) -> Result<LoadedKernel, BootError> {
    let bad = |s: &str| BootError::Elf32(s.to_string());
    let io = |e: std::io::Error| BootError::Elf32(format!("read error: {e}"));
    let mut ehdr = [0u8; 52];
    file.seek(SeekFrom::Start(0)).map_err(io)?;
    file.read_exact(&mut ehdr)
        .map_err(|_| bad("truncated ELF header"))?;
    if ehdr[5] != 1 {
        return Err(bad("not little-endian"));
    }
    let machine = u16_at(&ehdr, 18);
    if machine != EM_386 && machine != EM_X86_64 {
        return Err(bad(&format!("machine {machine} is not x86")));
    }
    let phoff = u32_at(&ehdr, 28) as u64;
    let phentsize = u16_at(&ehdr, 42) as usize;
    let phnum = u16_at(&ehdr, 44) as usize;
    if phentsize < 32 || phnum == 0 || phnum > 64 {
        return Err(bad("bad program header table"));
    }
    let mut phdrs = Vec::with_capacity(phnum);
    for i in 0..phnum {
        let mut ph = [0u8; 32];
        file.seek(SeekFrom::Start(phoff + (i * phentsize) as u64))
            .map_err(io)?;
        file.read_exact(&mut ph)
            .map_err(|_| bad("truncated program header"))?;
        phdrs.push(Phdr32 {
            p_type: u32_at(&ph, 0),
            offset: u32_at(&ph, 4),
            paddr: u32_at(&ph, 12),
            filesz: u32_at(&ph, 16),
            memsz: u32_at(&ph, 20),
        });
    }
    let mut entry = None;
    let mut kernel_end = 0u64;
    for ph in &phdrs {
        match ph.p_type {
            PT_LOAD => {
                if ph.filesz > ph.memsz {
                    return Err(bad("segment file size exceeds memory size"));
                }
                if u64::from(ph.paddr) < HIMEM_START {
                    return Err(bad(&format!(
                        "segment at {:#x} is below 1 MiB, where boot structures live",
                        ph.paddr
                    )));
                }
                let end = u64::from(ph.paddr) + u64::from(ph.memsz);
                check_fits(mem, end)?;
                let mut data = vec![0u8; ph.memsz as usize];
                file.seek(SeekFrom::Start(ph.offset.into())).map_err(io)?;
                file.read_exact(&mut data[..ph.filesz as usize])
                    .map_err(|_| bad("segment extends past end of file"))?;
                mem.write_slice(&data, GuestAddress(ph.paddr.into()))
                    .map_err(BootError::GuestWrite)?;
                kernel_end = kernel_end.max(end);
            }
            PT_NOTE => {
                let mut notes = vec![0u8; ph.filesz as usize];
                file.seek(SeekFrom::Start(ph.offset.into())).map_err(io)?;
                file.read_exact(&mut notes)
                    .map_err(|_| bad("truncated note segment"))?;
                if let Some(e) = find_pvh_note(&notes) {
                    entry = Some(e);
                }
            }
            _ => {}
        }
    }
    let entry = entry.ok_or(BootError::NoPvhEntry)?;
    Ok(LoadedKernel {
        entry,
        mode: EntryMode::Pvh,
        kernel_end,
        setup_header: None,
    })
}

/// Finds the `Xen` PHYS32_ENTRY note in a PT_NOTE segment.
pub fn find_pvh_note(notes: &[u8]) -> Option<u64> {
    let align4 = |n: usize| (n + 3) & !3;
    let mut off = 0usize;
    while off + 12 <= notes.len() {
        let namesz = u32_at(notes, off) as usize;
        let descsz = u32_at(notes, off + 4) as usize;
        let ntype = u32_at(notes, off + 8);
        let name_start = off + 12;
        let desc_start = name_start.checked_add(align4(namesz))?;
        let next = desc_start.checked_add(align4(descsz))?;
        if desc_start.checked_add(descsz)? > notes.len() {
            return None;
        }
        let name = &notes[name_start..name_start + namesz];
        if ntype == XEN_ELFNOTE_PHYS32_ENTRY && name.starts_with(b"Xen") && descsz >= 4 {
            return Some(u32_at(notes, desc_start) as u64);
        }
        off = next;
    }
    None
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builds a minimal 32-bit ELF with one PT_LOAD at `load` holding `code`
    /// and a PVH note pointing at `load`.
    pub fn elf32_pvh(load: u32, code: &[u8]) -> Vec<u8> {
        let mut note = Vec::new();
        note.extend_from_slice(&4u32.to_le_bytes());
        note.extend_from_slice(&4u32.to_le_bytes());
        note.extend_from_slice(&XEN_ELFNOTE_PHYS32_ENTRY.to_le_bytes());
        note.extend_from_slice(b"Xen\0");
        note.extend_from_slice(&load.to_le_bytes());
        let phoff = 52u32;
        let data_off = phoff + 2 * 32;
        let note_off = data_off + code.len() as u32;
        let mut f = vec![0u8; 52];
        f[..4].copy_from_slice(b"\x7fELF");
        f[4] = 1; // ELFCLASS32
        f[5] = 1; // little endian
        f[6] = 1;
        f[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
        f[18..20].copy_from_slice(&EM_386.to_le_bytes());
        f[20..24].copy_from_slice(&1u32.to_le_bytes());
        f[24..28].copy_from_slice(&load.to_le_bytes());
        f[28..32].copy_from_slice(&phoff.to_le_bytes());
        f[40..42].copy_from_slice(&52u16.to_le_bytes());
        f[42..44].copy_from_slice(&32u16.to_le_bytes());
        f[44..46].copy_from_slice(&2u16.to_le_bytes());
        let ph = |t: u32, off: u32, addr: u32, sz: u32| {
            let mut p = vec![0u8; 32];
            p[0..4].copy_from_slice(&t.to_le_bytes());
            p[4..8].copy_from_slice(&off.to_le_bytes());
            p[8..12].copy_from_slice(&addr.to_le_bytes());
            p[12..16].copy_from_slice(&addr.to_le_bytes());
            p[16..20].copy_from_slice(&sz.to_le_bytes());
            p[20..24].copy_from_slice(&sz.to_le_bytes());
            p
        };
        f.extend(ph(PT_LOAD, data_off, load, code.len() as u32));
        f.extend(ph(PT_NOTE, note_off, 0, note.len() as u32));
        f.extend_from_slice(code);
        f.extend(note);
        f
    }

    #[test]
    fn loads_elf32_pvh() {
        let path = std::env::temp_dir().join(format!("vmm-elf32-{}", std::process::id()));
        std::fs::write(&path, elf32_pvh(0x10_0000, &[0xf4, 0x90, 0x90])).unwrap();
        let mem = crate::memory::create_guest_memory(16 << 20, false).unwrap();
        let k = super::super::load_kernel(&mem, &path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(k.entry, 0x10_0000);
        assert_eq!(k.mode, EntryMode::Pvh);
        assert_eq!(k.kernel_end, 0x10_0003);
        let b: u8 = mem.read_obj(GuestAddress(0x10_0000)).unwrap();
        assert_eq!(b, 0xf4);
    }

    #[test]
    fn elf32_too_big_for_memory() {
        let path = std::env::temp_dir().join(format!("vmm-elf32b-{}", std::process::id()));
        std::fs::write(&path, elf32_pvh(0x1f0_0000, &[0u8; 0x20_0000])).unwrap();
        let mem = crate::memory::create_guest_memory(16 << 20, false).unwrap();
        let r = super::super::load_kernel(&mem, &path);
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(r, Err(BootError::KernelTooBig { .. })));
    }
}
