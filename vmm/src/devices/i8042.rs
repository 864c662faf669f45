//! Just enough of the i8042 keyboard controller for the guest's reset:
//! command 0xFE on port 0x64 pulses the CPU reset line, which ends the VMM.

use crate::bus::BusDevice;
use crate::exit::{ExitReason, ExitSignal};

pub const DATA_PORT: u64 = 0x60;
pub const COMMAND_PORT: u64 = 0x64;
const CMD_RESET_CPU: u8 = 0xfe;

/// Registered at both ports; `offset` 0 is all we see, so keep the base.
pub struct I8042 {
    base: u64,
    exit: ExitSignal,
}

impl I8042 {
    pub fn new(base: u64, exit: ExitSignal) -> Self {
        Self { base, exit }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        // Status: output buffer empty, input buffer empty; data: nothing.
        data.fill(0);
    }

    fn write(&mut self, _offset: u64, data: &[u8]) {
        if self.base == COMMAND_PORT && data.first() == Some(&CMD_RESET_CPU) {
            self.exit.trigger(ExitReason::Reset);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_command_ends_vm() {
        let exit = ExitSignal::new().unwrap();
        let mut data = I8042::new(DATA_PORT, exit.clone());
        data.write(0, &[0xfe]);
        assert_eq!(exit.reason(), None);
        let mut cmd = I8042::new(COMMAND_PORT, exit.clone());
        let mut b = [0xffu8];
        cmd.read(0, &mut b);
        assert_eq!(b[0], 0);
        cmd.write(0, &[0xfe]);
        assert_eq!(exit.reason(), Some(ExitReason::Reset));
    }
}
