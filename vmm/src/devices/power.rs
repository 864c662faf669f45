//! Power-off ports small guests use without ACPI: a write with SLP_EN
//! (bit 13) to QEMU's PM1a control ports 0x604 (q35/microvm style) or
//! 0xb004 (Bochs), as freestanding OSes commonly do.

use crate::bus::BusDevice;
use crate::exit::{ExitReason, ExitSignal};

pub const PORTS: [u64; 2] = [0x604, 0xb004];
const SLP_EN: u16 = 1 << 13;

pub struct PowerOff {
    exit: ExitSignal,
}

impl PowerOff {
    pub fn new(exit: ExitSignal) -> Self {
        Self { exit }
    }
}

impl BusDevice for PowerOff {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset != 0 || data.len() < 2 {
            return;
        }
        let v = u16::from_le_bytes([data[0], data[1]]);
        if v & SLP_EN != 0 {
            self.exit.trigger(ExitReason::PowerOff);
        }
    }
}

/// ACPI hardware-reduced sleep control register: SLP_EN (bit 5) with
/// SLP_TYP (bits 4:2) equal to the DSDT's `\_S5` value powers off.
pub struct AcpiSleepControl {
    exit: ExitSignal,
}

impl AcpiSleepControl {
    pub fn new(exit: ExitSignal) -> Self {
        Self { exit }
    }
}

impl BusDevice for AcpiSleepControl {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&v) = data.first() else { return };
        if offset == 0 && v & (1 << 5) != 0 && (v >> 2) & 0x7 == crate::boot::acpi::S5_SLP_TYP {
            self.exit.trigger(ExitReason::PowerOff);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acpi_s5_powers_off() {
        let exit = ExitSignal::new().unwrap();
        let mut p = AcpiSleepControl::new(exit.clone());
        p.write(0, &[(3 << 2) | (1 << 5)]); // S3: ignored
        assert_eq!(exit.reason(), None);
        p.write(0, &[(5 << 2) | (1 << 5)]);
        assert_eq!(exit.reason(), Some(ExitReason::PowerOff));
    }

    #[test]
    fn slp_en_powers_off() {
        let exit = ExitSignal::new().unwrap();
        let mut p = PowerOff::new(exit.clone());
        p.write(0, &[0, 0]);
        assert_eq!(exit.reason(), None);
        p.write(0, &0x2000u16.to_le_bytes());
        assert_eq!(exit.reason(), Some(ExitReason::PowerOff));
    }
}
