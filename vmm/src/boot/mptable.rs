//! Intel MultiProcessor Specification 1.4 table, so the guest finds every
//! vCPU, the IOAPIC and the ISA interrupt routing without ACPI.
//!
//! Layout at [`EBDA_START`]: the 16-byte floating pointer, then the
//! configuration table (header, one processor entry per vCPU, the ISA bus,
//! the IOAPIC, an interrupt source per IOAPIC pin, ExtINT/NMI local sources).

use vm_memory::{Bytes, GuestAddress};

use super::{BootError, EBDA_START};
use crate::memory::GuestMem;

pub const APIC_DEFAULT_BASE: u32 = 0xfee0_0000;
pub const IOAPIC_DEFAULT_BASE: u32 = 0xfec0_0000;
/// IOAPIC pins.
pub const IOAPIC_PINS: u8 = 24;
const APIC_VERSION: u8 = 0x14;
const MP_SPEC_REV: u8 = 4;
const CPU_ENABLED: u8 = 1;
const CPU_BOOTPROCESSOR: u8 = 2;
const CPU_STEPPING: u32 = 0x600;
const CPU_FEATURE_APIC: u32 = 0x200;
const CPU_FEATURE_FPU: u32 = 0x001;
const MP_PROCESSOR: u8 = 0;
const MP_BUS: u8 = 1;
const MP_IOAPIC: u8 = 2;
const MP_INTSRC: u8 = 3;
const MP_LINTSRC: u8 = 4;
const MP_INT: u8 = 0;
const MP_NMI: u8 = 1;
const MP_EXTINT: u8 = 3;
const MPC_APIC_USABLE: u8 = 1;
const MP_IRQPOL_DEFAULT: u16 = 0;
const MPF_SIZE: usize = 16;
const MPC_HEADER_SIZE: usize = 44;

/// The IOAPIC's id: after the vCPUs' APIC ids.
pub fn ioapic_id(cpus: u8) -> u8 {
    cpus + 1
}

fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b)))
}

/// Builds the floating pointer and configuration table as bytes placed at `base`.
pub fn build(cpus: u8, base: u64) -> Vec<u8> {
    let ioapic = ioapic_id(cpus);
    let mut entries: Vec<u8> = Vec::new();
    let mut count: u16 = 0;
    for cpu in 0..cpus {
        entries.extend_from_slice(&[
            MP_PROCESSOR,
            cpu,
            APIC_VERSION,
            CPU_ENABLED | if cpu == 0 { CPU_BOOTPROCESSOR } else { 0 },
        ]);
        entries.extend_from_slice(&CPU_STEPPING.to_le_bytes());
        entries.extend_from_slice(&(CPU_FEATURE_APIC | CPU_FEATURE_FPU).to_le_bytes());
        entries.extend_from_slice(&[0u8; 8]);
        count += 1;
    }
    entries.extend_from_slice(&[MP_BUS, 0]);
    entries.extend_from_slice(b"ISA   ");
    count += 1;
    entries.extend_from_slice(&[MP_IOAPIC, ioapic, APIC_VERSION, MPC_APIC_USABLE]);
    entries.extend_from_slice(&IOAPIC_DEFAULT_BASE.to_le_bytes());
    count += 1;
    for pin in 0..IOAPIC_PINS {
        entries.push(MP_INTSRC);
        entries.push(MP_INT);
        entries.extend_from_slice(&MP_IRQPOL_DEFAULT.to_le_bytes());
        entries.extend_from_slice(&[0, pin, ioapic, pin]);
        count += 1;
    }
    for (kind, dest, lint) in [(MP_EXTINT, 0u8, 0u8), (MP_NMI, 0xff, 1)] {
        entries.push(MP_LINTSRC);
        entries.push(kind);
        entries.extend_from_slice(&MP_IRQPOL_DEFAULT.to_le_bytes());
        entries.extend_from_slice(&[0, 0, dest, lint]);
        count += 1;
    }

    let table_addr = base + MPF_SIZE as u64;
    let mut table = Vec::with_capacity(MPC_HEADER_SIZE + entries.len());
    table.extend_from_slice(b"PCMP");
    table.extend_from_slice(&((MPC_HEADER_SIZE + entries.len()) as u16).to_le_bytes());
    table.push(MP_SPEC_REV);
    table.push(0); // checksum, below
    table.extend_from_slice(b"SPLITVM ");
    table.extend_from_slice(b"000000000000");
    table.extend_from_slice(&0u32.to_le_bytes()); // oem table pointer
    table.extend_from_slice(&0u16.to_le_bytes()); // oem table size
    table.extend_from_slice(&count.to_le_bytes());
    table.extend_from_slice(&APIC_DEFAULT_BASE.to_le_bytes());
    table.extend_from_slice(&0u32.to_le_bytes()); // extended length + checksum + reserved
    debug_assert_eq!(table.len(), MPC_HEADER_SIZE);
    table.extend_from_slice(&entries);
    table[7] = checksum(&table);

    let mut mpf = Vec::with_capacity(MPF_SIZE);
    mpf.extend_from_slice(b"_MP_");
    mpf.extend_from_slice(&(table_addr as u32).to_le_bytes());
    mpf.push(1); // length in 16-byte units
    mpf.push(MP_SPEC_REV);
    mpf.push(0); // checksum, below
    mpf.extend_from_slice(&[0u8; 5]); // feature bytes: 0 = table present
    mpf[10] = checksum(&mpf);

    mpf.extend_from_slice(&table);
    mpf
}

/// Writes the MP table into the EBDA.
pub fn write(mem: &GuestMem, cpus: u8) -> Result<(), BootError> {
    let bytes = build(cpus, EBDA_START);
    if EBDA_START + bytes.len() as u64 > 0xa0000 {
        return Err(BootError::MpTable(format!(
            "{} bytes for {cpus} vCPUs",
            bytes.len()
        )));
    }
    mem.write_slice(&bytes, GuestAddress(EBDA_START))
        .map_err(BootError::GuestWrite)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    #[test]
    fn floating_pointer_and_checksums() {
        let b = build(2, EBDA_START);
        assert_eq!(&b[0..4], b"_MP_");
        assert_eq!(
            u32::from_le_bytes(b[4..8].try_into().unwrap()),
            EBDA_START as u32 + 16
        );
        assert_eq!(b[8], 1);
        assert_eq!(b[9], 4);
        assert_eq!(sum(&b[..16]), 0, "floating pointer checksum");
        let t = &b[16..];
        assert_eq!(&t[0..4], b"PCMP");
        let len = u16::from_le_bytes(t[4..6].try_into().unwrap()) as usize;
        assert_eq!(len, t.len());
        assert_eq!(sum(t), 0, "table checksum");
        assert_eq!(
            u32::from_le_bytes(t[36..40].try_into().unwrap()),
            APIC_DEFAULT_BASE
        );
    }

    #[test]
    fn entries_for_each_cpu_and_pin() {
        let cpus = 4;
        let b = build(cpus, EBDA_START);
        let t = &b[16..];
        let count = u16::from_le_bytes(t[34..36].try_into().unwrap());
        assert_eq!(
            count as usize,
            cpus as usize + 1 + 1 + IOAPIC_PINS as usize + 2
        );
        // Walk the entries.
        let mut off = MPC_HEADER_SIZE;
        let (mut procs, mut bsp, mut ioapics, mut intsrc, mut lint) = (0, 0, 0, 0, 0);
        while off < t.len() {
            match t[off] {
                MP_PROCESSOR => {
                    assert_eq!(t[off + 1], procs as u8, "apic ids in order");
                    if t[off + 3] & CPU_BOOTPROCESSOR != 0 {
                        bsp += 1;
                    }
                    procs += 1;
                    off += 20;
                }
                MP_BUS => {
                    assert_eq!(&t[off + 2..off + 8], b"ISA   ");
                    off += 8;
                }
                MP_IOAPIC => {
                    assert_eq!(t[off + 1], ioapic_id(cpus));
                    assert_eq!(
                        u32::from_le_bytes(t[off + 4..off + 8].try_into().unwrap()),
                        IOAPIC_DEFAULT_BASE
                    );
                    ioapics += 1;
                    off += 8;
                }
                MP_INTSRC => {
                    assert_eq!(t[off + 5], t[off + 7], "ISA irq n -> IOAPIC pin n");
                    intsrc += 1;
                    off += 8;
                }
                MP_LINTSRC => {
                    lint += 1;
                    off += 8;
                }
                x => panic!("unknown entry type {x}"),
            }
        }
        assert_eq!((procs, bsp, ioapics, intsrc, lint), (4, 1, 1, 24, 2));
    }

    #[test]
    fn fits_in_ebda_for_max_cpus() {
        let mem = crate::memory::create_guest_memory(16 << 20, false).unwrap();
        write(&mem, crate::cli::MAX_CPUS).unwrap();
    }
}
