//! The kernel's vDSO getrandom (Linux 6.11+): the same CSPRNG as getrandom(2), keyed and
//! reseeded by the kernel, but generated in user space into an opaque per-thread state the
//! kernel hands out; no system call per request. Found by looking `__vdso_getrandom` up in
//! the vDSO's dynamic symbol table. Where the kernel has none (or refuses the state), the
//! caller keeps using getrandom(2).
//!
//! Set-up (before the sandbox): a query call of the vDSO function (no buffer, opaque_len ~0)
//! for the state's size and mapping, one mmap. Run time: none beyond what getrandom(2) already needs (the vDSO falls back to
//! the system call itself when it must).

use std::ffi::{c_void, CStr};
use std::io;

type VgetrandomFn = unsafe extern "C" fn(*mut c_void, usize, u32, *mut c_void, usize) -> isize;

/// `struct vgetrandom_opaque_params` (include/uapi/linux/random.h).
#[repr(C)]
#[derive(Default)]
struct OpaqueParams {
    size_of_opaque_state: u32,
    mmap_prot: u32,
    mmap_flags: u32,
    reserved: [u32; 13],
}

/// One vDSO getrandom state; used by one thread at a time (the caller holds it behind a lock).
pub struct Fast {
    func: VgetrandomFn,
    state: *mut c_void,
    state_len: usize,
    map_len: usize,
}

// SAFETY: the state is only ever used by one thread at a time (Source sits behind a Mutex);
// the kernel allows a state to move between threads as long as uses do not overlap.
unsafe impl Send for Fast {}

impl Fast {
    /// The vDSO getrandom with a fresh state, if the kernel has one.
    pub fn new() -> Option<Self> {
        let func = find_symbol(c"__vdso_getrandom")?;
        // SAFETY: a symbol named __vdso_getrandom in the vDSO has this signature.
        let func: VgetrandomFn =
            unsafe { std::mem::transmute::<*const c_void, VgetrandomFn>(func) };
        let mut params = OpaqueParams::default();
        // SAFETY: the documented query (as glibc makes it): no buffer, and opaque_len ~0
        // with `params` as the state; the vDSO fills `params` and returns 0.
        let r = unsafe {
            func(
                std::ptr::null_mut(),
                0,
                0,
                (&mut params as *mut OpaqueParams).cast(),
                usize::MAX,
            )
        };
        if r != 0 || params.size_of_opaque_state == 0 {
            return None;
        }
        let state_len = params.size_of_opaque_state as usize;
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as usize;
        let map_len = state_len.next_multiple_of(page);
        // SAFETY: an anonymous mapping with the protection and flags the kernel asked for.
        let state = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                params.mmap_prot as i32,
                params.mmap_flags as i32,
                -1,
                0,
            )
        };
        if state == libc::MAP_FAILED {
            return None;
        }
        let mut f = Fast {
            func,
            state,
            state_len,
            map_len,
        };
        // One real call, so a kernel that rejects the state is found now.
        let mut probe = [0u8; 16];
        f.fill(&mut probe).ok()?;
        Some(f)
    }

    /// Fills `buf` completely.
    pub fn fill(&mut self, buf: &mut [u8]) -> io::Result<()> {
        let mut pos = 0;
        while pos < buf.len() {
            // SAFETY: writes at most buf.len() - pos bytes into buf[pos..]; `state` is our
            // mapping of the size the kernel gave.
            let r = unsafe {
                (self.func)(
                    buf[pos..].as_mut_ptr().cast(),
                    buf.len() - pos,
                    0,
                    self.state,
                    self.state_len,
                )
            };
            if r < 0 {
                if r == -(libc::EINTR as isize) {
                    continue;
                }
                return Err(io::Error::from_raw_os_error(-r as i32));
            }
            pos += r as usize;
        }
        Ok(())
    }
}

impl Drop for Fast {
    fn drop(&mut self) {
        // SAFETY: our own mapping.
        unsafe { libc::munmap(self.state, self.map_len) };
    }
}

/// `Elf64_Dyn` and the tags used here (elf.h; not in the libc crate).
#[repr(C)]
struct Elf64Dyn {
    d_tag: i64,
    d_un: u64,
}
const DT_NULL: i64 = 0;
const DT_HASH: i64 = 4;
const DT_STRTAB: i64 = 5;
const DT_SYMTAB: i64 = 6;

/// Address of a dynamic symbol of the vDSO.
fn find_symbol(name: &CStr) -> Option<*const c_void> {
    // SAFETY: getauxval has no preconditions; 0 means no vDSO.
    let base = unsafe { libc::getauxval(libc::AT_SYSINFO_EHDR) } as usize;
    if base == 0 {
        return None;
    }
    // SAFETY: the kernel maps a complete, valid ELF image at AT_SYSINFO_EHDR; every read
    // below stays inside the tables that image describes.
    unsafe {
        let eh = &*(base as *const libc::Elf64_Ehdr);
        if &eh.e_ident[..4] != b"\x7fELF" || eh.e_ident[4] != 2 {
            return None;
        }
        let phdrs = std::slice::from_raw_parts(
            (base + eh.e_phoff as usize) as *const libc::Elf64_Phdr,
            eh.e_phnum as usize,
        );
        let load = phdrs.iter().find(|p| p.p_type == libc::PT_LOAD)?;
        let bias = base
            .wrapping_add(load.p_offset as usize)
            .wrapping_sub(load.p_vaddr as usize);
        let dynamic = phdrs.iter().find(|p| p.p_type == libc::PT_DYNAMIC)?;
        let mut d = bias.wrapping_add(dynamic.p_vaddr as usize) as *const Elf64Dyn;
        let (mut symtab, mut strtab, mut hash) = (0usize, 0usize, 0usize);
        while (*d).d_tag != DT_NULL {
            let v = bias.wrapping_add((*d).d_un as usize);
            match (*d).d_tag {
                DT_SYMTAB => symtab = v,
                DT_STRTAB => strtab = v,
                DT_HASH => hash = v,
                _ => {}
            }
            d = d.add(1);
        }
        if symtab == 0 || strtab == 0 || hash == 0 {
            return None;
        }
        // DT_HASH: nbucket, nchain; nchain is the number of symbols.
        let nchain = *((hash + 4) as *const u32) as usize;
        let syms = std::slice::from_raw_parts(symtab as *const libc::Elf64_Sym, nchain);
        for s in syms {
            if s.st_shndx == 0 || s.st_name == 0 {
                continue;
            }
            let n = CStr::from_ptr((strtab + s.st_name as usize) as *const libc::c_char);
            if n == name {
                return Some(bias.wrapping_add(s.st_value as usize) as *const c_void);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fills_with_fresh_bytes_where_the_kernel_has_it() {
        let Some(mut f) = Fast::new() else {
            eprintln!("no vDSO getrandom on this kernel; getrandom(2) is used");
            return;
        };
        let mut a = [0u8; 4096];
        let mut b = [0u8; 4096];
        f.fill(&mut a).unwrap();
        f.fill(&mut b).unwrap();
        assert_ne!(a, b);
        assert!(
            a.iter().filter(|&&x| x == 0).count() < 64,
            "not random-looking"
        );
    }
}
