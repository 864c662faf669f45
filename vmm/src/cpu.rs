//! vCPU state at power-on: CPUID with topology, MSRs, FPU, local APIC LINT
//! pins, and the boot CPU's registers for the 64-bit Linux or PVH entry.

use kvm_bindings::{kvm_fpu, kvm_msr_entry, kvm_regs, kvm_segment, kvm_sregs, CpuId, Msrs};
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress};

use crate::boot::{EntryMode, BOOT_STACK, GDT_ADDR, IDT_ADDR, PDPT_ADDR, PD_ADDR, PML4_ADDR};
use crate::memory::GuestMem;

#[derive(Debug, thiserror::Error)]
pub enum CpuError {
    #[error("KVM_SET_CPUID2 failed")]
    SetCpuid(#[source] kvm_ioctls::Error),
    #[error("KVM_SET_MSRS failed")]
    SetMsrs(#[source] kvm_ioctls::Error),
    #[error("KVM_SET_FPU failed")]
    SetFpu(#[source] kvm_ioctls::Error),
    #[error("local APIC setup failed")]
    Lapic(#[source] kvm_ioctls::Error),
    #[error("KVM_SET_REGS/SREGS failed")]
    Regs(#[source] kvm_ioctls::Error),
    #[error("writing GDT/page tables failed")]
    GuestWrite(#[source] vm_memory::GuestMemoryError),
    #[error("building MSR list failed")]
    MsrList,
}

const CPUID_HYPERVISOR: u32 = 1 << 31; // leaf 1 ecx
const CPUID_HTT: u32 = 1 << 28; // leaf 1 edx
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MISC_ENABLE_FAST_STRING: u64 = 1;
const MSR_IA32_TSC: u32 = 0x10;

const X86_CR0_PE: u64 = 0x1;
const X86_CR0_ET: u64 = 0x10;
const X86_CR0_PG: u64 = 0x8000_0000;
const X86_CR4_PAE: u64 = 0x20;
const EFER_LME: u64 = 0x100;
const EFER_LMA: u64 = 0x400;

fn ceil_log2(n: u32) -> u32 {
    if n <= 1 {
        0
    } else {
        32 - (n - 1).leading_zeros()
    }
}

/// Adapts KVM's supported CPUID for vCPU `id` of `cpus`: one thread per
/// core, all cores in one package; the APIC id is the vCPU index.
pub fn patch_cpuid(cpuid: &mut CpuId, id: u8, cpus: u8) {
    let apic = u32::from(id);
    let n = u32::from(cpus);
    for e in cpuid.as_mut_slice().iter_mut() {
        match e.function {
            1 => {
                e.ebx = (e.ebx & 0x0000_ffff) | (apic << 24) | (n << 16);
                e.ecx |= CPUID_HYPERVISOR;
                if cpus > 1 {
                    e.edx |= CPUID_HTT;
                } else {
                    e.edx &= !CPUID_HTT;
                }
            }
            4 => {
                // Cores per package - 1 in eax[31:26]; caches shared by the
                // package (level 3) are shared by all cores.
                let level = (e.eax >> 5) & 0x7;
                let sharing = if level >= 3 { n - 1 } else { 0 };
                e.eax = (e.eax & 0x3fff) | ((n - 1) << 26) | (sharing << 14);
            }
            0xb | 0x1f => {
                e.edx = apic;
                match e.index {
                    0 => {
                        // SMT level: one thread per core.
                        e.eax = 0;
                        e.ebx = 1;
                        e.ecx = 1 << 8;
                    }
                    1 => {
                        // Core level.
                        e.eax = ceil_log2(n);
                        e.ebx = n;
                        e.ecx = 1 | (2 << 8);
                    }
                    i => {
                        e.eax = 0;
                        e.ebx = 0;
                        e.ecx = i;
                    }
                }
            }
            _ => {}
        }
    }
}

/// CPUID, MSRs, FPU and LAPIC for every vCPU.
pub fn configure_common(
    vcpu: &VcpuFd,
    supported: &CpuId,
    id: u8,
    cpus: u8,
) -> Result<(), CpuError> {
    let mut cpuid = supported.clone();
    patch_cpuid(&mut cpuid, id, cpus);
    vcpu.set_cpuid2(&cpuid).map_err(CpuError::SetCpuid)?;

    let entries = [
        kvm_msr_entry {
            index: MSR_IA32_MISC_ENABLE,
            data: MISC_ENABLE_FAST_STRING,
            ..Default::default()
        },
        kvm_msr_entry {
            index: MSR_IA32_TSC,
            data: 0,
            ..Default::default()
        },
    ];
    let msrs = Msrs::from_entries(&entries).map_err(|_| CpuError::MsrList)?;
    vcpu.set_msrs(&msrs).map_err(CpuError::SetMsrs)?;

    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(CpuError::SetFpu)?;

    set_lint(vcpu)
}

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

fn lapic_reg(regs: &[std::os::raw::c_char], off: usize) -> u32 {
    let b: [u8; 4] = std::array::from_fn(|i| regs[off + i] as u8);
    u32::from_le_bytes(b)
}

fn set_lapic_reg(regs: &mut [std::os::raw::c_char], off: usize, v: u32) {
    for (i, b) in v.to_le_bytes().iter().enumerate() {
        regs[off + i] = *b as std::os::raw::c_char;
    }
}

fn delivery_mode(reg: u32, mode: u32) -> u32 {
    (reg & !0x700) | (mode << 8)
}

/// LINT0 = ExtINT (the 8259 PIC), LINT1 = NMI, as the MP table says.
fn set_lint(vcpu: &VcpuFd) -> Result<(), CpuError> {
    let mut lapic = vcpu.get_lapic().map_err(CpuError::Lapic)?;
    let lvt0 = lapic_reg(&lapic.regs, APIC_LVT0);
    set_lapic_reg(
        &mut lapic.regs,
        APIC_LVT0,
        delivery_mode(lvt0, APIC_MODE_EXTINT),
    );
    let lvt1 = lapic_reg(&lapic.regs, APIC_LVT1);
    set_lapic_reg(
        &mut lapic.regs,
        APIC_LVT1,
        delivery_mode(lvt1, APIC_MODE_NMI),
    );
    vcpu.set_lapic(&lapic).map_err(CpuError::Lapic)
}

/// A GDT entry from flags, base and limit (the classic bit packing).
pub fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((u64::from(base) & 0xff00_0000) << 32)
        | ((u64::from(flags) & 0x0000_f0ff) << 40)
        | ((u64::from(limit) & 0x000f_0000) << 32)
        | ((u64::from(base) & 0x00ff_ffff) << 16)
        | (u64::from(limit) & 0x0000_ffff)
}

/// The kvm_segment a GDT entry describes.
pub fn segment_from_gdt(entry: u64, index: u8) -> kvm_segment {
    let base = ((entry >> 16) & 0xff_ffff) | ((entry >> 32) & 0xff00_0000);
    let mut limit = ((entry & 0xffff) | ((entry >> 32) & 0xf_0000)) as u32;
    let g = ((entry >> 55) & 1) as u8;
    if g == 1 {
        limit = (limit << 12) | 0xfff;
    }
    let present = ((entry >> 47) & 1) as u8;
    kvm_segment {
        base,
        limit,
        selector: u16::from(index) * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present,
        dpl: ((entry >> 45) & 0x3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g,
        avl: ((entry >> 52) & 1) as u8,
        padding: 0,
        unusable: if present == 1 { 0 } else { 1 },
    }
}

/// GDT for the entry mode: null, code, data, TSS.
pub fn boot_gdt(mode: EntryMode) -> [u64; 4] {
    match mode {
        EntryMode::Linux64 => [
            0,
            gdt_entry(0xa09b, 0, 0xfffff), // 64-bit code
            gdt_entry(0xc093, 0, 0xfffff), // data
            gdt_entry(0x808b, 0, 0xfffff), // TSS
        ],
        EntryMode::Pvh => [
            0,
            gdt_entry(0xc09b, 0, 0xfffff), // 32-bit flat code, 4 GiB
            gdt_entry(0xc093, 0, 0xfffff), // flat data
            gdt_entry(0x008b, 0, 0x67),    // TSS
        ],
    }
}

/// Identity-maps the low 4 GiB with 2 MiB pages for the 64-bit entry.
fn write_page_tables(mem: &GuestMem) -> Result<(), CpuError> {
    let w = |v: u64, a: u64| {
        mem.write_obj(v, GuestAddress(a))
            .map_err(CpuError::GuestWrite)
    };
    w(PDPT_ADDR | 0x3, PML4_ADDR)?;
    for i in 0..4u64 {
        w((PD_ADDR + i * 0x1000) | 0x3, PDPT_ADDR + i * 8)?;
    }
    for i in 0..(4 * 512u64) {
        w((i << 21) | 0x83, PD_ADDR + i * 8)?;
    }
    Ok(())
}

/// Registers of the boot CPU at the kernel entry.
pub fn configure_boot_cpu(
    vcpu: &VcpuFd,
    mem: &GuestMem,
    mode: EntryMode,
    entry: u64,
    boot_info: u64,
) -> Result<(), CpuError> {
    let gdt = boot_gdt(mode);
    for (i, e) in gdt.iter().enumerate() {
        mem.write_obj(*e, GuestAddress(GDT_ADDR + i as u64 * 8))
            .map_err(CpuError::GuestWrite)?;
    }
    mem.write_obj(0u64, GuestAddress(IDT_ADDR))
        .map_err(CpuError::GuestWrite)?;

    let mut sregs: kvm_sregs = vcpu.get_sregs().map_err(CpuError::Regs)?;
    let code = segment_from_gdt(gdt[1], 1);
    let data = segment_from_gdt(gdt[2], 2);
    let tss = segment_from_gdt(gdt[3], 3);
    sregs.gdt.base = GDT_ADDR;
    sregs.gdt.limit = (gdt.len() * 8 - 1) as u16;
    sregs.idt.base = IDT_ADDR;
    sregs.idt.limit = 7;
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = tss;

    let mut regs = kvm_regs {
        rflags: 0x2,
        rip: entry,
        ..Default::default()
    };
    match mode {
        EntryMode::Linux64 => {
            write_page_tables(mem)?;
            sregs.cr3 = PML4_ADDR;
            sregs.cr4 |= X86_CR4_PAE;
            sregs.cr0 |= X86_CR0_PE | X86_CR0_PG | X86_CR0_ET;
            sregs.efer |= EFER_LME | EFER_LMA;
            regs.rsp = BOOT_STACK;
            regs.rbp = BOOT_STACK;
            regs.rsi = boot_info;
        }
        EntryMode::Pvh => {
            sregs.cr0 = X86_CR0_PE | X86_CR0_ET;
            sregs.cr4 = 0;
            sregs.efer = 0;
            regs.rbx = boot_info;
        }
    }
    vcpu.set_sregs(&sregs).map_err(CpuError::Regs)?;
    vcpu.set_regs(&regs).map_err(CpuError::Regs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_bindings::kvm_cpuid_entry2;

    #[test]
    fn gdt_round_trip() {
        let e = gdt_entry(0xa09b, 0, 0xfffff);
        assert_eq!(e, 0x00af_9b00_0000_ffff);
        let s = segment_from_gdt(e, 1);
        assert_eq!(
            (s.selector, s.l, s.db, s.present, s.type_),
            (8, 1, 0, 1, 0xb)
        );
        assert_eq!(s.limit, 0xffff_ffff);
        let pvh = segment_from_gdt(boot_gdt(EntryMode::Pvh)[1], 1);
        assert_eq!((pvh.l, pvh.db, pvh.g, pvh.base), (0, 1, 1, 0));
    }

    #[test]
    fn cpuid_topology() {
        let entries = [
            kvm_cpuid_entry2 {
                function: 1,
                ebx: 0x0000_0800,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: 0xb,
                index: 0,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: 0xb,
                index: 1,
                ..Default::default()
            },
        ];
        let mut c = CpuId::from_entries(&entries).unwrap();
        patch_cpuid(&mut c, 2, 4);
        let s = c.as_slice();
        assert_eq!(s[0].ebx >> 24, 2, "APIC id");
        assert_eq!((s[0].ebx >> 16) & 0xff, 4, "logical processors");
        assert_eq!(s[0].ebx & 0xffff, 0x0800, "clflush size kept");
        assert_ne!(s[0].edx & CPUID_HTT, 0);
        assert_ne!(s[0].ecx & CPUID_HYPERVISOR, 0);
        assert_eq!((s[1].ebx, s[1].edx, s[1].ecx >> 8), (1, 2, 1));
        assert_eq!((s[2].eax, s[2].ebx, s[2].ecx >> 8), (2, 4, 2));
    }

    #[test]
    fn log2() {
        assert_eq!(ceil_log2(1), 0);
        assert_eq!(ceil_log2(2), 1);
        assert_eq!(ceil_log2(3), 2);
        assert_eq!(ceil_log2(4), 2);
    }
}
