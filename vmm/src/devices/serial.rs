//! COM1: a vm-superio 8250 UART at 0x3f8, IRQ 4 by irqfd, output to
//! stdout, a file or nowhere; stdin feeds its receive FIFO.

use std::io::{Read, Write};
use std::sync::{Arc, Mutex};

use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use crate::bus::BusDevice;

pub const COM1_PORT: u64 = 0x3f8;
pub const COM1_LEN: u64 = 8;
pub const COM1_IRQ: u32 = 4;

/// Raises IRQ 4 by writing the irqfd.
pub struct IrqTrigger(pub EventFd);

impl Trigger for IrqTrigger {
    type E = std::io::Error;
    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

pub type SerialOut = Box<dyn Write + Send>;

pub struct SerialDevice {
    inner: Serial<IrqTrigger, vm_superio::serial::NoEvents, SerialOut>,
}

impl SerialDevice {
    pub fn new(irq: EventFd, out: SerialOut) -> Self {
        Self {
            inner: Serial::new(IrqTrigger(irq), out),
        }
    }

    pub fn enqueue_input(&mut self, bytes: &[u8]) {
        // A full FIFO drops input, as a real UART would.
        let _ = self.inner.enqueue_raw_bytes(bytes);
    }
}

impl BusDevice for SerialDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if data.len() == 1 {
            data[0] = self.inner.read(offset as u8);
        } else {
            data.fill(0);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if data.len() == 1 {
            if let Err(e) = self.inner.write(offset as u8, data[0]) {
                log::debug!("serial write: {e:?}");
            }
        }
    }
}

/// Copies stdin into the UART until EOF.
pub fn spawn_stdin_reader(serial: Arc<Mutex<SerialDevice>>) {
    let _ = std::thread::Builder::new()
        .name("serial-stdin".into())
        .spawn(move || {
            let mut buf = [0u8; 64];
            let mut stdin = std::io::stdin();
            loop {
                match stdin.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => serial
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .enqueue_input(&buf[..n]),
                }
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn thr_write_reaches_output() {
        let sink = Sink::default();
        let mut s = SerialDevice::new(EventFd::new(0).unwrap(), Box::new(sink.clone()));
        for b in b"hi\n" {
            s.write(0, &[*b]);
        }
        assert_eq!(&*sink.0.lock().unwrap(), b"hi\n");
        // LSR: transmitter empty.
        let mut lsr = [0u8];
        s.read(5, &mut lsr);
        assert_ne!(lsr[0] & 0x20, 0);
    }
}
