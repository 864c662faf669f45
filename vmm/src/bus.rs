//! Port I/O and MMIO buses (address range -> device) and the allocator that
//! hands out device MMIO windows and IRQ lines.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// A device on a bus. `offset` is relative to the device's base.
pub trait BusDevice: Send {
    fn read(&mut self, offset: u64, data: &mut [u8]);
    fn write(&mut self, offset: u64, data: &[u8]);
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    #[error("bus range {base:#x}+{len:#x} overlaps an existing device")]
    Overlap { base: u64, len: u64 },
    #[error("empty bus range at {0:#x}")]
    Empty(u64),
    #[error("out of device MMIO space")]
    NoMmioSpace,
    #[error("out of device IRQ lines (last usable is {0})")]
    NoIrq(u32),
}

/// One bus: non-overlapping ranges.
#[derive(Default, Clone)]
pub struct Bus {
    devices: BTreeMap<u64, (u64, Arc<Mutex<dyn BusDevice>>)>,
}

impl Bus {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn insert(
        &mut self,
        dev: Arc<Mutex<dyn BusDevice>>,
        base: u64,
        len: u64,
    ) -> Result<(), BusError> {
        if len == 0 {
            return Err(BusError::Empty(base));
        }
        let end = base
            .checked_add(len)
            .ok_or(BusError::Overlap { base, len })?;
        // Previous range must end before `base`; next must start at/after `end`.
        if let Some((b, (l, _))) = self.devices.range(..end).next_back() {
            if b + l > base {
                return Err(BusError::Overlap { base, len });
            }
        }
        self.devices.insert(base, (len, dev));
        Ok(())
    }

    fn find(&self, addr: u64) -> Option<(u64, &Arc<Mutex<dyn BusDevice>>)> {
        let (base, (len, dev)) = self.devices.range(..=addr).next_back()?;
        (addr - base < *len).then_some((*base, dev))
    }

    /// Dispatches a read; returns false (and leaves `data`) if no device.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr) {
            Some((base, dev)) => {
                dev.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .read(addr - base, data);
                true
            }
            None => false,
        }
    }

    /// Dispatches a write; returns false if no device.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.find(addr) {
            Some((base, dev)) => {
                dev.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .write(addr - base, data);
                true
            }
            None => false,
        }
    }
}

/// Start of the virtio-mmio window area (below 4 GiB, in the MMIO hole).
pub const DEVICE_MMIO_BASE: u64 = 0xd000_0000;
/// One device's window.
pub const DEVICE_MMIO_SIZE: u64 = 0x1000;
/// Upper end of the window area (IOAPIC sits at 0xfec0_0000).
pub const DEVICE_MMIO_END: u64 = 0xfe00_0000;
/// First device IRQ (0-4 are timer, keyboard, cascade, COM2, COM1).
pub const FIRST_DEVICE_IRQ: u32 = 5;
/// Last IOAPIC pin.
pub const LAST_IRQ: u32 = 23;

/// Hands out MMIO windows and IRQ lines in order.
#[derive(Debug)]
pub struct Allocator {
    next_mmio: u64,
    next_irq: u32,
}

impl Default for Allocator {
    fn default() -> Self {
        Self {
            next_mmio: DEVICE_MMIO_BASE,
            next_irq: FIRST_DEVICE_IRQ,
        }
    }
}

impl Allocator {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn mmio(&mut self, size: u64) -> Result<u64, BusError> {
        let base = self.next_mmio;
        let end = base.checked_add(size).ok_or(BusError::NoMmioSpace)?;
        if end > DEVICE_MMIO_END {
            return Err(BusError::NoMmioSpace);
        }
        self.next_mmio = end;
        Ok(base)
    }

    pub fn irq(&mut self) -> Result<u32, BusError> {
        let irq = self.next_irq;
        if irq > LAST_IRQ {
            return Err(BusError::NoIrq(LAST_IRQ));
        }
        self.next_irq += 1;
        Ok(irq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Echo(u8);
    impl BusDevice for Echo {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data[0] = self.0 + offset as u8;
        }
        fn write(&mut self, _offset: u64, data: &[u8]) {
            self.0 = data[0];
        }
    }

    #[test]
    fn dispatch_and_overlap() {
        let mut bus = Bus::new();
        bus.insert(Arc::new(Mutex::new(Echo(10))), 0x100, 0x10)
            .unwrap();
        bus.insert(Arc::new(Mutex::new(Echo(20))), 0x110, 0x10)
            .unwrap();
        assert_eq!(
            bus.insert(Arc::new(Mutex::new(Echo(0))), 0x10f, 2),
            Err(BusError::Overlap {
                base: 0x10f,
                len: 2
            })
        );
        assert_eq!(
            bus.insert(Arc::new(Mutex::new(Echo(0))), 0xf0, 0x11),
            Err(BusError::Overlap {
                base: 0xf0,
                len: 0x11
            })
        );
        let mut b = [0u8];
        assert!(bus.read(0x103, &mut b));
        assert_eq!(b[0], 13);
        assert!(bus.read(0x110, &mut b));
        assert_eq!(b[0], 20);
        assert!(!bus.read(0x120, &mut b));
        assert!(!bus.read(0xff, &mut b));
        assert!(bus.write(0x100, &[5]));
        bus.read(0x100, &mut b);
        assert_eq!(b[0], 5);
    }

    #[test]
    fn allocator() {
        let mut a = Allocator::new();
        assert_eq!(a.mmio(0x1000).unwrap(), 0xd000_0000);
        assert_eq!(a.mmio(0x1000).unwrap(), 0xd000_1000);
        assert_eq!(a.irq().unwrap(), 5);
        assert_eq!(a.irq().unwrap(), 6);
        for _ in 7..=23 {
            a.irq().unwrap();
        }
        assert_eq!(a.irq(), Err(BusError::NoIrq(23)));
    }
}
