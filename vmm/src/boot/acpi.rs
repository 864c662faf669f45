//! Minimal ACPI tables, for kernels that find devices only through ACPI
//! (Debian's kernels: no MP-table parsing, no `virtio_mmio.device=`):
//! RSDP -> XSDT -> FADT (hardware-reduced) + MADT, and a DSDT that lists
//! every virtio-mmio device as `LNRO0005` and declares `\_S5`.
//!
//! Reset goes through the FADT reset register, port 0x64 value 0xFE (the
//! i8042 reset the VMM already turns into an exit); power-off through the
//! sleep control register at [`SLEEP_CONTROL_PORT`].

use vm_memory::{Bytes, GuestAddress};

use super::aml;
use super::mptable::{ioapic_id, APIC_DEFAULT_BASE, IOAPIC_DEFAULT_BASE};
use super::BootError;
use crate::memory::GuestMem;

/// RSDP in the BIOS read-only area Linux scans (0xe0000-0xfffff).
pub const RSDP_ADDR: u64 = 0xe_0000;
const XSDT_ADDR: u64 = RSDP_ADDR + 0x40;
const FADT_ADDR: u64 = RSDP_ADDR + 0x100;
const MADT_ADDR: u64 = RSDP_ADDR + 0x400;
const DSDT_ADDR: u64 = RSDP_ADDR + 0x1000;
const ACPI_END: u64 = 0x10_0000;

/// Hardware-reduced sleep control / status registers (I/O ports).
pub const SLEEP_CONTROL_PORT: u64 = 0x600;
pub const SLEEP_STATUS_PORT: u64 = 0x601;
/// SLP_TYP the DSDT's `\_S5` announces.
pub const S5_SLP_TYP: u8 = 5;

const OEM_ID: &[u8; 6] = b"SPLTVM";
const FADT_HW_REDUCED_ACPI: u32 = 1 << 20;
const FADT_RESET_REG_SUP: u32 = 1 << 10;
const FADT_PWR_BUTTON: u32 = 1 << 4;
const FADT_SLP_BUTTON: u32 = 1 << 5;
const IAPC_VGA_NOT_PRESENT: u16 = 1 << 2;
const IAPC_CMOS_RTC_NOT_PRESENT: u16 = 1 << 5;

/// A virtio-mmio device for the DSDT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MmioDevice {
    pub base: u64,
    pub size: u64,
    pub irq: u32,
}

fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b)))
}

/// A table: the 36-byte SDT header followed by `body`, checksummed.
pub fn sdt(signature: &[u8; 4], revision: u8, body: &[u8]) -> Vec<u8> {
    let mut t = Vec::with_capacity(36 + body.len());
    t.extend_from_slice(signature);
    t.extend_from_slice(&((36 + body.len()) as u32).to_le_bytes());
    t.push(revision);
    t.push(0); // checksum
    t.extend_from_slice(OEM_ID);
    let mut table_id = *b"SPLITVM ";
    table_id[7] = b' ';
    t.extend_from_slice(&table_id);
    t.extend_from_slice(&1u32.to_le_bytes()); // OEM revision
    t.extend_from_slice(b"SVMM"); // creator id
    t.extend_from_slice(&1u32.to_le_bytes()); // creator revision
    t.extend_from_slice(body);
    t[9] = checksum(&t);
    t
}

/// Generic Address Structure for an I/O port.
fn gas_io(port: u64, bits: u8) -> [u8; 12] {
    let mut g = [0u8; 12];
    g[0] = 1; // system I/O
    g[1] = bits;
    g[3] = 1; // byte access
    g[4..12].copy_from_slice(&port.to_le_bytes());
    g
}

pub fn rsdp(xsdt: u64) -> Vec<u8> {
    let mut r = Vec::with_capacity(36);
    r.extend_from_slice(b"RSD PTR ");
    r.push(0); // checksum of the first 20 bytes
    r.extend_from_slice(OEM_ID);
    r.push(2); // revision: ACPI 2.0+
    r.extend_from_slice(&0u32.to_le_bytes()); // no RSDT
    r.extend_from_slice(&36u32.to_le_bytes());
    r.extend_from_slice(&xsdt.to_le_bytes());
    r.push(0); // extended checksum
    r.extend_from_slice(&[0; 3]);
    r[8] = checksum(&r[..20]);
    r[32] = checksum(&r);
    r
}

pub fn fadt(dsdt: u64) -> Vec<u8> {
    let mut b = vec![0u8; 276 - 36];
    let at = |off: usize| off - 36;
    b[at(40)..at(44)].copy_from_slice(&(dsdt as u32).to_le_bytes());
    b[at(109)..at(111)]
        .copy_from_slice(&(IAPC_VGA_NOT_PRESENT | IAPC_CMOS_RTC_NOT_PRESENT).to_le_bytes());
    let flags = FADT_HW_REDUCED_ACPI | FADT_RESET_REG_SUP | FADT_PWR_BUTTON | FADT_SLP_BUTTON;
    b[at(112)..at(116)].copy_from_slice(&flags.to_le_bytes());
    b[at(116)..at(128)].copy_from_slice(&gas_io(0x64, 8));
    b[at(128)] = 0xfe; // reset value
    b[at(131)] = 5; // FADT minor version (6.5)
    b[at(140)..at(148)].copy_from_slice(&dsdt.to_le_bytes());
    b[at(244)..at(256)].copy_from_slice(&gas_io(SLEEP_CONTROL_PORT, 8));
    b[at(256)..at(268)].copy_from_slice(&gas_io(SLEEP_STATUS_PORT, 8));
    b[at(268)..at(276)].copy_from_slice(b"SPLITVM ");
    sdt(b"FACP", 6, &b)
}

pub fn madt(cpus: u8) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&APIC_DEFAULT_BASE.to_le_bytes());
    b.extend_from_slice(&1u32.to_le_bytes()); // PCAT_COMPAT: there are 8259s
    for cpu in 0..cpus {
        b.extend_from_slice(&[0, 8, cpu, cpu]);
        b.extend_from_slice(&1u32.to_le_bytes()); // enabled
    }
    b.extend_from_slice(&[1, 12, ioapic_id(cpus), 0]);
    b.extend_from_slice(&IOAPIC_DEFAULT_BASE.to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes()); // GSI base
    b.extend_from_slice(&[4, 6, 0xff, 0, 0, 1]); // all CPUs: NMI on LINT1
    sdt(b"APIC", 5, &b)
}

pub fn dsdt(devices: &[MmioDevice]) -> Vec<u8> {
    let devs: Vec<Vec<u8>> = devices
        .iter()
        .enumerate()
        .map(|(i, d)| {
            aml::device(
                &format!("V{i:03X}"),
                &[
                    aml::name_decl("_HID", aml::string("LNRO0005")),
                    aml::name_decl("_UID", aml::integer(i as u64)),
                    aml::name_decl(
                        "_CRS",
                        aml::mmio_irq_resources(d.base as u32, d.size as u32, d.irq),
                    ),
                ],
            )
        })
        .collect();
    let mut body = aml::scope("\\_SB", &devs);
    body.extend(aml::name_decl(
        "\\_S5",
        aml::package(&[aml::integer(S5_SLP_TYP.into()), aml::integer(0)]),
    ));
    sdt(b"DSDT", 6, &body)
}

pub fn xsdt(entries: &[u64]) -> Vec<u8> {
    let body: Vec<u8> = entries.iter().flat_map(|e| e.to_le_bytes()).collect();
    sdt(b"XSDT", 1, &body)
}

/// Writes all tables; returns the RSDP address.
pub fn write(mem: &GuestMem, cpus: u8, devices: &[MmioDevice]) -> Result<u64, BootError> {
    let dsdt = dsdt(devices);
    if DSDT_ADDR + dsdt.len() as u64 > ACPI_END {
        return Err(BootError::MpTable("DSDT too large".into()));
    }
    let w = |bytes: &[u8], addr: u64| {
        mem.write_slice(bytes, GuestAddress(addr))
            .map_err(BootError::GuestWrite)
    };
    w(&dsdt, DSDT_ADDR)?;
    w(&fadt(DSDT_ADDR), FADT_ADDR)?;
    w(&madt(cpus), MADT_ADDR)?;
    w(&xsdt(&[FADT_ADDR, MADT_ADDR]), XSDT_ADDR)?;
    w(&rsdp(XSDT_ADDR), RSDP_ADDR)?;
    Ok(RSDP_ADDR)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    #[test]
    fn rsdp_checksums() {
        let r = rsdp(0x1234);
        assert_eq!(r.len(), 36);
        assert_eq!(&r[..8], b"RSD PTR ");
        assert_eq!(sum(&r[..20]), 0);
        assert_eq!(sum(&r), 0);
        assert_eq!(u64::from_le_bytes(r[24..32].try_into().unwrap()), 0x1234);
    }

    #[test]
    fn fadt_layout() {
        let f = fadt(0xe1000);
        assert_eq!(f.len(), 276);
        assert_eq!(&f[..4], b"FACP");
        assert_eq!(sum(&f), 0);
        let flags = u32::from_le_bytes(f[112..116].try_into().unwrap());
        assert_ne!(flags & FADT_HW_REDUCED_ACPI, 0);
        assert_eq!(u64::from_le_bytes(f[140..148].try_into().unwrap()), 0xe1000);
        assert_eq!(f[116], 1, "reset register in I/O space");
        assert_eq!(u64::from_le_bytes(f[120..128].try_into().unwrap()), 0x64);
        assert_eq!(f[128], 0xfe);
        assert_eq!(
            u64::from_le_bytes(f[248..256].try_into().unwrap()),
            SLEEP_CONTROL_PORT
        );
    }

    #[test]
    fn madt_lists_cpus_and_ioapic() {
        let m = madt(2);
        assert_eq!(sum(&m), 0);
        let body = &m[44..];
        assert_eq!(&body[..8], &[0, 8, 0, 0, 1, 0, 0, 0]);
        assert_eq!(&body[8..16], &[0, 8, 1, 1, 1, 0, 0, 0]);
        assert_eq!(&body[16..20], &[1, 12, 3, 0]);
    }

    #[test]
    fn dsdt_has_devices() {
        let d = dsdt(&[
            MmioDevice {
                base: 0xd000_0000,
                size: 0x1000,
                irq: 5,
            },
            MmioDevice {
                base: 0xd000_1000,
                size: 0x1000,
                irq: 6,
            },
        ]);
        assert_eq!(sum(&d), 0);
        // For checking with `iasl -d`: VMM_DUMP_DSDT=/tmp/dsdt.dat cargo test -p vmm dsdt
        if let Some(p) = std::env::var_os("VMM_DUMP_DSDT") {
            std::fs::write(p, &d).unwrap();
        }
        let text = String::from_utf8_lossy(&d);
        assert_eq!(text.matches("LNRO0005").count(), 2);
        assert!(text.contains("V000") && text.contains("V001"));
        assert!(text.contains("_S5_"));
    }
}
