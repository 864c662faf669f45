//! Assembling and running the VM: KVM, memory slots, irqchip and PIT, boot
//! structures, buses, devices, vCPU threads, and the main wait loop.

use std::fs::File;
use std::io::Write;
use std::os::fd::RawFd;
use std::sync::{Arc, Mutex};

use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{IoEventAddress, Kvm, VcpuExit, VcpuFd, VmFd};
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::boot::{self, zero_page, EntryMode};
use crate::bus::{Allocator, Bus, DEVICE_MMIO_SIZE};
use crate::cli::{Config, SerialSpec};
use crate::cpu;
use crate::devices::i8042::{self, I8042};
use crate::devices::power::{self, AcpiSleepControl, PowerOff};
use crate::devices::serial::{self, SerialDevice, SerialOut};
use crate::devices::virtio_mmio::{VirtioMmioDevice, REG_QUEUE_NOTIFY};
use crate::exit::{ExitReason, ExitSignal};
use crate::memory::{self, GuestMem};
use crate::vhost_user::proxy::{ProxyError, VhostUserProxy};
use crate::vhost_user::reconnect;
use crate::vhost_user::DeviceType;

/// TSS for KVM's real-mode emulation, just below the IOAPIC/BIOS area.
const KVM_TSS_ADDR: usize = 0xfffb_d000;

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("cannot open /dev/kvm")]
    Kvm(#[source] kvm_ioctls::Error),
    #[error("KVM {0} failed")]
    KvmOp(&'static str, #[source] kvm_ioctls::Error),
    #[error(transparent)]
    Memory(#[from] memory::MemoryError),
    #[error(transparent)]
    Boot(#[from] boot::BootError),
    #[error(transparent)]
    Cpu(#[from] cpu::CpuError),
    #[error(transparent)]
    Bus(#[from] crate::bus::BusError),
    #[error("device {index} ({kind})")]
    Device {
        index: usize,
        kind: &'static str,
        #[source]
        source: ProxyError,
    },
    #[error("cannot open serial output {0}")]
    SerialFile(String, #[source] std::io::Error),
    #[error("eventfd")]
    EventFd(#[source] std::io::Error),
    #[error(transparent)]
    Api(#[from] crate::api::ApiError),
    #[error("cannot start vCPU thread")]
    Thread(#[source] std::io::Error),
}

/// The shared view the API and main loop need.
pub struct VmInfo {
    pub cpus: u8,
    pub memory: u64,
    pub devices: Vec<Arc<Mutex<VirtioMmioDevice>>>,
}

pub struct Vm {
    // Held for the VM's lifetime: KVM objects and the guest RAM mapping.
    _kvm: Kvm,
    _vm: VmFd,
    _mem: GuestMem,
    vcpus: Vec<VcpuFd>,
    pio: Arc<Bus>,
    mmio: Arc<Bus>,
    exit: ExitSignal,
    info: Arc<VmInfo>,
    serial: Arc<Mutex<SerialDevice>>,
    stdin_serial: bool,
    api: Option<crate::api::ApiServer>,
}

fn serial_out(spec: &SerialSpec) -> Result<SerialOut, VmError> {
    Ok(match spec {
        SerialSpec::Stdio => Box::new(std::io::stdout()),
        SerialSpec::None => Box::new(std::io::sink()),
        SerialSpec::File(p) => {
            Box::new(File::create(p).map_err(|e| VmError::SerialFile(p.display().to_string(), e))?)
        }
    })
}

impl Vm {
    pub fn new(cfg: &Config) -> Result<Self, VmError> {
        let kvm = Kvm::new().map_err(VmError::Kvm)?;
        let vm = kvm
            .create_vm()
            .map_err(|e| VmError::KvmOp("CREATE_VM", e))?;
        let mem = memory::create_guest_memory(cfg.memory.size, cfg.memory.hugepages)?;
        for (slot, region) in mem.iter().enumerate() {
            let r = kvm_userspace_memory_region {
                slot: slot as u32,
                flags: 0,
                guest_phys_addr: region.start_addr().0,
                memory_size: region.len(),
                userspace_addr: region.as_ptr() as u64,
            };
            // SAFETY: the region stays mapped for the VM's lifetime (`mem`
            // lives in `Vm`, and the process ends when the VM does).
            unsafe { vm.set_user_memory_region(r) }
                .map_err(|e| VmError::KvmOp("SET_USER_MEMORY_REGION", e))?;
        }
        vm.set_tss_address(KVM_TSS_ADDR)
            .map_err(|e| VmError::KvmOp("SET_TSS_ADDR", e))?;
        vm.create_irq_chip()
            .map_err(|e| VmError::KvmOp("CREATE_IRQCHIP", e))?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        vm.create_pit2(pit)
            .map_err(|e| VmError::KvmOp("CREATE_PIT2", e))?;

        // Kernel first: a file that is not a kernel is the cheapest error.
        let kernel = boot::load_kernel(&mem, &cfg.kernel)?;

        let exit = ExitSignal::new().map_err(VmError::EventFd)?;
        let mut pio = Bus::new();
        let mut mmio = Bus::new();

        // COM1 on IRQ 4 through an irqfd.
        let serial_irq = EventFd::new(EFD_NONBLOCK).map_err(VmError::EventFd)?;
        vm.register_irqfd(&serial_irq, serial::COM1_IRQ)
            .map_err(|e| VmError::KvmOp("IRQFD (serial)", e))?;
        let serial = Arc::new(Mutex::new(SerialDevice::new(
            serial_irq,
            serial_out(&cfg.serial)?,
        )));
        pio.insert(serial.clone(), serial::COM1_PORT, serial::COM1_LEN)?;
        for port in [i8042::DATA_PORT, i8042::COMMAND_PORT] {
            pio.insert(
                Arc::new(Mutex::new(I8042::new(port, exit.clone()))),
                port,
                1,
            )?;
        }
        for port in power::PORTS {
            pio.insert(Arc::new(Mutex::new(PowerOff::new(exit.clone()))), port, 2)?;
        }
        pio.insert(
            Arc::new(Mutex::new(AcpiSleepControl::new(exit.clone()))),
            boot::acpi::SLEEP_CONTROL_PORT,
            2,
        )?;

        // Devices: connect each back end, give it a window, an IRQ, its
        // ioeventfds and irqfds, and announce it on the command line.
        let mut alloc = Allocator::new();
        let mut cmdline = cfg.cmdline.trim().to_string();
        let mut devices = Vec::new();
        let mut acpi_devices = Vec::new();
        for (index, spec) in cfg.devices.iter().enumerate() {
            let ty = DeviceType::for_kind(spec.kind);
            let config_size = spec.config_size.unwrap_or(ty.config_size);
            let proxy = VhostUserProxy::connect(&spec.socket, &ty, config_size, spec.queues)
                .map_err(|source| VmError::Device {
                    index,
                    kind: ty.name,
                    source,
                })?;
            let base = alloc.mmio(DEVICE_MMIO_SIZE)?;
            let irq = alloc.irq()?;
            let dev = VirtioMmioDevice::new(ty, base, irq, mem.clone(), proxy)
                .map_err(VmError::EventFd)?;
            for (q, kick) in dev.kicks().iter().enumerate() {
                vm.register_ioevent(
                    kick,
                    &IoEventAddress::Mmio(base + REG_QUEUE_NOTIFY),
                    q as u32,
                )
                .map_err(|e| VmError::KvmOp("IOEVENTFD", e))?;
            }
            for call in dev.calls() {
                vm.register_irqfd(call, irq)
                    .map_err(|e| VmError::KvmOp("IRQFD", e))?;
            }
            let dev = Arc::new(Mutex::new(dev));
            mmio.insert(dev.clone(), base, DEVICE_MMIO_SIZE)?;
            cmdline.push_str(&format!(" virtio_mmio.device=4K@{base:#x}:{irq}"));
            log::info!(
                "{} device on {} at {base:#x}, IRQ {irq}",
                ty.name,
                spec.socket.display()
            );
            devices.push(dev);
            acpi_devices.push(boot::acpi::MmioDevice {
                base,
                size: DEVICE_MMIO_SIZE,
                irq,
            });
        }

        // Boot structures.
        let hdr = kernel.setup_header;
        let initrd = match &cfg.initramfs {
            Some(p) => Some(boot::load_initrd(
                &mem,
                p,
                kernel.kernel_end,
                zero_page::initrd_addr_max(hdr.as_ref()),
            )?),
            None => None,
        };
        let limit = match kernel.mode {
            EntryMode::Linux64 => zero_page::cmdline_limit(hdr.as_ref()),
            EntryMode::Pvh => boot::CMDLINE_MAX,
        };
        boot::write_cmdline(&mem, &cmdline, limit)?;
        boot::mptable::write(&mem, cfg.cpus)?;
        let rsdp = boot::acpi::write(&mem, cfg.cpus, &acpi_devices)?;
        let boot_info = match kernel.mode {
            EntryMode::Linux64 => {
                let zp = zero_page::build(hdr, cmdline.len() + 1, initrd, cfg.memory.size, rsdp);
                zero_page::write(&mem, &zp)?;
                boot::ZERO_PAGE_ADDR
            }
            EntryMode::Pvh => boot::pvh::write(&mem, initrd, cfg.memory.size, rsdp)?,
        };
        log::info!("command line: {cmdline}");

        // vCPUs.
        let supported = kvm
            .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
            .map_err(|e| VmError::KvmOp("GET_SUPPORTED_CPUID", e))?;
        let mut vcpus = Vec::new();
        for id in 0..cfg.cpus {
            let vcpu = vm
                .create_vcpu(u64::from(id))
                .map_err(|e| VmError::KvmOp("CREATE_VCPU", e))?;
            cpu::configure_common(&vcpu, &supported, id, cfg.cpus)?;
            if id == 0 {
                cpu::configure_boot_cpu(&vcpu, &mem, kernel.mode, kernel.entry, boot_info)?;
            }
            vcpus.push(vcpu);
        }

        let info = Arc::new(VmInfo {
            cpus: cfg.cpus,
            memory: cfg.memory.size,
            devices,
        });
        let api = match &cfg.api_socket {
            Some(p) => Some(crate::api::ApiServer::start(p, info.clone(), exit.clone())?),
            None => None,
        };
        Ok(Self {
            _kvm: kvm,
            _vm: vm,
            _mem: mem,
            vcpus,
            pio: Arc::new(pio),
            mmio: Arc::new(mmio),
            exit,
            info,
            serial,
            stdin_serial: cfg.serial == SerialSpec::Stdio,
            api,
        })
    }

    /// Runs until the guest or the API ends the VM.
    pub fn run(mut self) -> Result<ExitReason, VmError> {
        for (id, vcpu) in std::mem::take(&mut self.vcpus).into_iter().enumerate() {
            let pio = self.pio.clone();
            let mmio = self.mmio.clone();
            let exit = self.exit.clone();
            std::thread::Builder::new()
                .name(format!("vcpu{id}"))
                .spawn(move || vcpu_loop(id, vcpu, &pio, &mmio, &exit))
                .map_err(VmError::Thread)?;
        }
        if self.stdin_serial {
            serial::spawn_stdin_reader(self.serial.clone());
        }
        crate::exit::install_signal_handlers(&self.exit);
        let reason = wait_for_exit(&self.exit, &self.info);
        if let Some(api) = self.api.take() {
            api.cleanup();
        }
        let _ = std::io::stdout().flush();
        Ok(reason)
    }
}

/// Waits for the exit signal while watching back-end sockets for hang-up;
/// a device whose back end is gone (hang-up, or a failed exchange seen
/// elsewhere) gets a reconnect thread.
fn wait_for_exit(exit: &ExitSignal, info: &VmInfo) -> ExitReason {
    // The socket each device had at the last look. Refreshed every round
    // (a proxy may drop its connection itself, and the fd number be reused);
    // a device busy in a back-end exchange keeps its previous entry.
    let mut watched: Vec<Option<RawFd>> = vec![None; info.devices.len()];
    loop {
        for (i, dev) in info.devices.iter().enumerate() {
            let gone = match dev.try_lock() {
                Ok(d) => {
                    watched[i] = d.proxy().raw_fd();
                    !d.is_connected()
                }
                Err(_) => false,
            };
            if gone {
                reconnect::start(dev, exit);
            }
        }
        let mut fds = vec![libc::pollfd {
            fd: std::os::fd::AsRawFd::as_raw_fd(exit.eventfd()),
            events: libc::POLLIN,
            revents: 0,
        }];
        let mut owners = Vec::new();
        for (i, fd) in watched.iter().enumerate() {
            if let Some(fd) = fd {
                fds.push(libc::pollfd {
                    fd: *fd,
                    events: libc::POLLRDHUP,
                    revents: 0,
                });
                owners.push(i);
            }
        }
        // SAFETY: fds is a valid array of pollfd for the call's duration.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 100) };
        if let Some(sig) = crate::exit::pending_signal() {
            exit.trigger(ExitReason::Signal(sig));
        }
        if let Some(r) = exit.reason() {
            return r;
        }
        if n <= 0 {
            continue;
        }
        for (k, pfd) in fds.iter().enumerate().skip(1) {
            let hup = libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR | libc::POLLNVAL;
            if pfd.revents & hup == 0 {
                continue;
            }
            let dev = owners[k - 1];
            {
                let mut d = info.devices[dev].lock().unwrap_or_else(|e| e.into_inner());
                // Still the same connection? (It may have been replaced meanwhile.)
                if d.proxy().raw_fd() != Some(pfd.fd) {
                    continue;
                }
                eprintln!(
                    "vmm: warning: {} back end at {} disconnected; the VM keeps running, \
                     reconnecting",
                    d.device_type().name,
                    d.proxy().socket().display()
                );
                d.backend_gone("back end closed the connection");
            }
            watched[dev] = None;
            reconnect::start(&info.devices[dev], exit);
        }
    }
}

fn vcpu_loop(id: usize, mut vcpu: VcpuFd, pio: &Bus, mmio: &Bus, exit: &ExitSignal) {
    loop {
        if exit.reason().is_some() {
            return;
        }
        match vcpu.run() {
            Ok(VcpuExit::IoOut(port, data)) => {
                pio.write(u64::from(port), data);
            }
            Ok(VcpuExit::IoIn(port, data)) => {
                if !pio.read(u64::from(port), data) {
                    data.fill(0xff);
                }
            }
            Ok(VcpuExit::MmioRead(addr, data)) => {
                if !mmio.read(addr, data) {
                    data.fill(0);
                }
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                mmio.write(addr, data);
            }
            Ok(VcpuExit::Hlt) => {}
            Ok(VcpuExit::Shutdown) => {
                exit.trigger(ExitReason::TripleFault);
                return;
            }
            Ok(VcpuExit::SystemEvent(ty, _)) => {
                let r = match ty {
                    kvm_bindings::KVM_SYSTEM_EVENT_RESET => ExitReason::Reset,
                    kvm_bindings::KVM_SYSTEM_EVENT_SHUTDOWN => ExitReason::PowerOff,
                    other => ExitReason::Error(format!("vCPU {id}: system event {other}")),
                };
                exit.trigger(r);
                return;
            }
            Ok(VcpuExit::FailEntry(reason, cpu)) => {
                exit.trigger(ExitReason::Error(format!(
                    "vCPU {id}: KVM entry failed (hardware reason {reason:#x}, cpu {cpu})"
                )));
                return;
            }
            Ok(VcpuExit::InternalError) => {
                let regs = vcpu.get_regs().map(|r| r.rip).unwrap_or(0);
                exit.trigger(ExitReason::Error(format!(
                    "vCPU {id}: KVM internal error at rip {regs:#x} (this host's KVM may not \
                     support this guest)"
                )));
                return;
            }
            Ok(other) => log::debug!("vCPU {id}: unhandled exit {other:?}"),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {}
            Err(e) => {
                exit.trigger(ExitReason::Error(format!("vCPU {id}: KVM_RUN failed: {e}")));
                return;
            }
        }
    }
}
