//! virtio-mmio transport (virtio 1.x, version 2 register layout) in front
//! of a vhost-user back end.
//!
//! The transport is the device model: it keeps everything the driver
//! negotiated (features, ring sizes and addresses) and hands it to the
//! generic [`VhostUserProxy`] at DRIVER_OK. Notifications never pass through
//! here: QueueNotify writes hit an ioeventfd (the back end's kick fd) in KVM,
//! and the back end's call fd is an irqfd on this device's IRQ line.
//!
//! When the back end goes away the device keeps all of that; a reconnect
//! (`vhost_user/reconnect.rs`) hands a new connection to
//! [`VirtioMmioDevice::reattach`], which restarts the rings where the guest
//! is, or sets DEVICE_NEEDS_RESET if the new back end cannot honour what
//! the driver negotiated.

use serde_json::{json, Value};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::bus::BusDevice;
use crate::memory::GuestMem;
use crate::vhost_user::inflight::InflightFd;
use crate::vhost_user::proxy::{
    ConnState, Connection, InflightStep, ProxyError, RingConfig, RingStart, VhostUserProxy,
    VIRTIO_F_VERSION_1,
};
use crate::vhost_user::reconnect::Link;
use crate::vhost_user::DeviceType;

pub const MMIO_MAGIC: u32 = 0x7472_6976; // "virt"
pub const MMIO_VERSION: u32 = 2;
pub const VENDOR_ID: u32 = 0x5356_4d56; // "VMVS"
pub const QUEUE_MAX_SIZE: u16 = 256;

pub const REG_MAGIC: u64 = 0x000;
pub const REG_VERSION: u64 = 0x004;
pub const REG_DEVICE_ID: u64 = 0x008;
pub const REG_VENDOR_ID: u64 = 0x00c;
pub const REG_DEVICE_FEATURES: u64 = 0x010;
pub const REG_DEVICE_FEATURES_SEL: u64 = 0x014;
pub const REG_DRIVER_FEATURES: u64 = 0x020;
pub const REG_DRIVER_FEATURES_SEL: u64 = 0x024;
pub const REG_QUEUE_SEL: u64 = 0x030;
pub const REG_QUEUE_NUM_MAX: u64 = 0x034;
pub const REG_QUEUE_NUM: u64 = 0x038;
pub const REG_QUEUE_READY: u64 = 0x044;
pub const REG_QUEUE_NOTIFY: u64 = 0x050;
pub const REG_INTERRUPT_STATUS: u64 = 0x060;
pub const REG_INTERRUPT_ACK: u64 = 0x064;
pub const REG_STATUS: u64 = 0x070;
pub const REG_QUEUE_DESC_LOW: u64 = 0x080;
pub const REG_QUEUE_DESC_HIGH: u64 = 0x084;
pub const REG_QUEUE_DRIVER_LOW: u64 = 0x090;
pub const REG_QUEUE_DRIVER_HIGH: u64 = 0x094;
pub const REG_QUEUE_DEVICE_LOW: u64 = 0x0a0;
pub const REG_QUEUE_DEVICE_HIGH: u64 = 0x0a4;
pub const REG_SHM_SEL: u64 = 0x0ac;
pub const REG_SHM_LEN_LOW: u64 = 0x0b0;
pub const REG_SHM_LEN_HIGH: u64 = 0x0b4;
pub const REG_SHM_BASE_LOW: u64 = 0x0b8;
pub const REG_SHM_BASE_HIGH: u64 = 0x0bc;
pub const REG_CONFIG_GENERATION: u64 = 0x0fc;
pub const REG_CONFIG: u64 = 0x100;

pub const STATUS_DRIVER_OK: u32 = 4;
pub const STATUS_FEATURES_OK: u32 = 8;
pub const STATUS_NEEDS_RESET: u32 = 0x40;

pub const INT_VRING: u32 = 1;
pub const INT_CONFIG: u32 = 2;

/// Transport feature bits we pass through: device-specific bits 0-23,
/// INDIRECT_DESC, EVENT_IDX, VERSION_1, IN_ORDER, ORDER_PLATFORM. Not
/// passed: PROTOCOL_FEATURES (vhost-user's own), packed rings and
/// NOTIFICATION_DATA (this transport does not implement them),
/// ACCESS_PLATFORM (no IOMMU).
pub const TRANSPORT_FEATURE_MASK: u64 =
    0x00ff_ffff | (1 << 28) | (1 << 29) | VIRTIO_F_VERSION_1 | (1 << 35) | (1 << 36);

/// A virtqueue as the driver set it up.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Queue {
    pub size: u16,
    pub ready: bool,
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
}

fn set_low(v: &mut u64, low: u32) {
    *v = (*v & !0xffff_ffff) | u64::from(low);
}

fn set_high(v: &mut u64, high: u32) {
    *v = (*v & 0xffff_ffff) | (u64::from(high) << 32);
}

pub struct VirtioMmioDevice {
    ty: DeviceType,
    mmio_base: u64,
    irq: u32,
    mem: GuestMem,
    proxy: VhostUserProxy,
    device_features: u64,
    device_features_sel: u32,
    driver_features: u64,
    driver_features_sel: u32,
    queue_sel: u32,
    queues: Vec<Queue>,
    status: u32,
    config: Vec<u8>,
    config_generation: u32,
    pending_config_irq: bool,
    shm_sel: u32,
    kicks: Vec<EventFd>,
    calls: Vec<EventFd>,
    /// The driver set DRIVER_OK: the rings should run (they do once a back
    /// end is connected).
    activated: bool,
    /// The in-flight region of the current driver session, if the back end
    /// tracks in-flight I/O.
    inflight: Option<InflightFd>,
    link: Link,
    name: String,
}

impl VirtioMmioDevice {
    pub fn new(
        ty: DeviceType,
        mmio_base: u64,
        irq: u32,
        mem: GuestMem,
        proxy: VhostUserProxy,
    ) -> std::io::Result<Self> {
        let n = proxy.info().queues as usize;
        let proxy_socket = proxy.socket().to_path_buf();
        let kicks = (0..n)
            .map(|_| EventFd::new(EFD_NONBLOCK))
            .collect::<Result<Vec<_>, _>>()?;
        let calls = (0..n)
            .map(|_| EventFd::new(EFD_NONBLOCK))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            ty,
            mmio_base,
            irq,
            mem,
            device_features: proxy.info().features & TRANSPORT_FEATURE_MASK,
            config: proxy.info().config.clone(),
            proxy,
            device_features_sel: 0,
            driver_features: 0,
            driver_features_sel: 0,
            queue_sel: 0,
            queues: vec![Queue::default(); n],
            status: 0,
            config_generation: 0,
            pending_config_irq: false,
            shm_sel: 0,
            kicks,
            calls,
            activated: false,
            inflight: None,
            link: Link::new(proxy_socket.as_path()),
            name: format!("{}@{mmio_base:#x}", ty.name),
        })
    }

    pub fn device_type(&self) -> &DeviceType {
        &self.ty
    }

    /// Kick eventfds, one per queue: ioeventfds on QueueNotify.
    pub fn kicks(&self) -> &[EventFd] {
        &self.kicks
    }

    /// Call eventfds, one per queue: irqfds on this device's IRQ.
    pub fn calls(&self) -> &[EventFd] {
        &self.calls
    }

    pub fn proxy(&self) -> &VhostUserProxy {
        &self.proxy
    }

    /// `blk@0xd0000000`, for log lines.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn link(&self) -> &Link {
        &self.link
    }

    pub fn link_mut(&mut self) -> &mut Link {
        &mut self.link
    }

    pub fn is_connected(&self) -> bool {
        !matches!(self.proxy.state(), ConnState::Disconnected(_))
    }

    /// The back end hung up or failed: keep the guest-facing state (rings,
    /// kicks queue up in the ioeventfds) until a reconnect restarts it.
    pub fn backend_gone(&mut self, why: &str) {
        self.proxy.mark_disconnected(why);
        self.link.went_down();
    }

    /// Takes over a new connection to a restarted back end. With the driver
    /// live, the rings restart where the guest is: same features, the
    /// in-flight region, each ring's base at the used index, then one kick
    /// per ring (requests queued while no back end listened) and one call
    /// (a completion the old back end published but never signalled).
    /// An error means the new back end failed too: retry later.
    pub fn reattach(&mut self, conn: Connection) -> Result<(), ProxyError> {
        let new_features = conn.info().features;
        self.proxy.attach(conn);
        if !self.activated {
            if self.status == 0 {
                // No driver session: offer what the new back end offers.
                self.device_features = new_features & TRANSPORT_FEATURE_MASK;
                self.config = self.proxy.info().config.clone();
            }
            self.link.came_back();
            return Ok(());
        }
        let lost = self.driver_features & !new_features;
        let restricting = new_features & self.ty.restricting_features & !self.device_features;
        if lost != 0 || restricting != 0 {
            let why = format!(
                "restarted back end cannot honour the negotiated features \
                 (negotiated {:#x}, now offered {:#x}: lost {lost:#x}, new restriction \
                 {restricting:#x})",
                self.driver_features,
                new_features & TRANSPORT_FEATURE_MASK
            );
            eprintln!(
                "vmm: error: {} back end at {}: {why}; device set DEVICE_NEEDS_RESET",
                self.name,
                self.proxy.socket().display()
            );
            self.link.set_needs_reset(Some(why));
            self.link.came_back();
            self.needs_reset();
            eprintln!(
                "vmm: {} back end at {} reconnected (reconnect {}), device needs reset",
                self.name,
                self.proxy.socket().display(),
                self.link.reconnects()
            );
            return Ok(());
        }
        // Requests the guest submitted and has not seen completed: the new
        // back end redoes them (in-flight region, or from the used index).
        let pending: u32 = self
            .ready_rings()
            .iter()
            .map(|r| u32::from(self.avail_idx(r).wrapping_sub(self.used_idx(r))))
            .sum();
        if let Err(e) = self.start_rings(true) {
            self.backend_gone(&e.to_string());
            return Err(e);
        }
        for k in &self.kicks {
            let _ = k.write(1);
        }
        for c in &self.calls {
            let _ = c.write(1);
        }
        self.link.came_back();
        eprintln!(
            "vmm: {} back end at {} reconnected (reconnect {}), rings restarted with \
             {pending} request(s) in flight",
            self.name,
            self.proxy.socket().display(),
            self.link.reconnects()
        );
        Ok(())
    }

    /// Guest memory and, per running ring, the used ring's idx address and
    /// current value: to see the first completion after a restart.
    pub fn used_snapshot(&self) -> (GuestMem, Vec<(u64, u16)>) {
        let rings = if self.activated {
            self.ready_rings()
        } else {
            Vec::new()
        };
        let v = rings
            .iter()
            .map(|r| (r.used + 2, self.used_idx(r)))
            .collect();
        (self.mem.clone(), v)
    }

    /// The rings the driver made ready.
    fn ready_rings(&self) -> Vec<RingConfig> {
        self.queues
            .iter()
            .enumerate()
            .filter(|(_, q)| q.ready && q.size > 0)
            .map(|(i, q)| RingConfig {
                index: i as u16,
                size: q.size,
                desc: q.desc,
                avail: q.avail,
                used: q.used,
            })
            .collect()
    }

    /// The used ring's idx as the guest sees it.
    fn used_idx(&self, ring: &RingConfig) -> u16 {
        self.mem
            .read_obj::<u16>(GuestAddress(ring.used + 2))
            .unwrap_or(0)
    }

    /// The avail ring's idx as the driver published it.
    fn avail_idx(&self, ring: &RingConfig) -> u16 {
        self.mem
            .read_obj::<u16>(GuestAddress(ring.avail + 2))
            .unwrap_or(0)
    }

    /// Programs the rings on the connected back end. `restart`: after a
    /// reconnect (bases from the used ring, the kept in-flight region);
    /// else the first start of a driver session (bases 0, a new region).
    fn start_rings(&mut self, restart: bool) -> Result<(), ProxyError> {
        let rings = self.ready_rings();
        let bases: Vec<u16> = if restart {
            rings.iter().map(|r| self.used_idx(r)).collect()
        } else {
            vec![0; rings.len()]
        };
        let max_size = rings.iter().map(|r| r.size).max().unwrap_or(0);
        let inflight = match &self.inflight {
            Some(region) if region.queue_size() >= max_size => InflightStep::Set(region),
            _ if max_size > 0 => InflightStep::Get {
                num_queues: self.queues.len() as u16,
                queue_size: max_size,
            },
            _ => InflightStep::None,
        };
        let start = RingStart {
            acked_features: self.driver_features,
            rings: &rings,
            bases: &bases,
            kicks: &self.kicks,
            calls: &self.calls,
            inflight,
        };
        if let Some(region) = self.proxy.activate(&self.mem, &start)? {
            log::info!("{}: in-flight tracking with {region:?}", self.name);
            self.inflight = Some(region);
        }
        log::info!(
            "{}: {} ring(s) started at base(s) {bases:?}",
            self.name,
            rings.len()
        );
        Ok(())
    }

    /// DEVICE_NEEDS_RESET plus a config interrupt, if the driver is live.
    fn needs_reset(&mut self) {
        if self.status & STATUS_DRIVER_OK != 0 {
            self.status |= STATUS_NEEDS_RESET;
            self.pending_config_irq = true;
            if let Some(c) = self.calls.first() {
                let _ = c.write(1);
            }
        }
    }

    /// JSON for the API's `status`.
    pub fn describe(&self) -> serde_json::Value {
        let state = self.proxy.state();
        let mut v = json!({
            "type": self.ty.name,
            "virtio_id": self.ty.virtio_id,
            "socket": self.proxy.socket().display().to_string(),
            "mmio_base": format!("{:#x}", self.mmio_base),
            "irq": self.irq,
            "queues": self.queues.len(),
            "backend_queues": self.proxy.info().queue_num,
            "backend_features": format!("{:#x}", self.proxy.info().features),
            "protocol_features": format!("{:#x}", self.proxy.info().protocol.bits()),
            "state": state.as_str(),
            "driver_status": self.status,
        });
        if let ConnState::Disconnected(why) = state {
            v["reason"] = json!(why);
        }
        if let (Some(obj), Value::Object(link)) = (v.as_object_mut(), self.link.describe()) {
            obj.extend(link);
        }
        v
    }

    fn reset(&mut self) {
        if self.activated && self.is_connected() {
            match self.proxy.deactivate() {
                Ok(bases) => log::debug!("{}: rings stopped at {bases:?}", self.ty.name),
                Err(e) => log::warn!("{}: stopping rings: {e}", self.ty.name),
            }
        }
        self.activated = false;
        self.inflight = None;
        self.link.set_needs_reset(None);
        // A back end restarted meanwhile may offer something else: the next
        // driver session sees the current one.
        self.device_features = self.proxy.info().features & TRANSPORT_FEATURE_MASK;
        self.config = self.proxy.info().config.clone();
        self.device_features_sel = 0;
        self.driver_features = 0;
        self.driver_features_sel = 0;
        self.queue_sel = 0;
        self.queues.iter_mut().for_each(|q| *q = Queue::default());
        self.status = 0;
        self.pending_config_irq = false;
    }

    fn activate(&mut self) {
        self.activated = true;
        if !self.is_connected() {
            log::warn!(
                "{}: driver ok while the back end is away: the rings start when it reconnects",
                self.name
            );
            return;
        }
        match self.start_rings(false) {
            Ok(()) => log::info!("{}: driver ok", self.name),
            Err(e) => {
                // The reconnect restarts the rings on the next back end.
                log::error!(
                    "{}: cannot start rings, back end disconnected: {e}",
                    self.name
                );
                self.backend_gone(&e.to_string());
            }
        }
    }

    fn set_status(&mut self, mut v: u32) {
        if v == 0 {
            self.reset();
            return;
        }
        let newly = v & !self.status;
        if newly & STATUS_FEATURES_OK != 0 {
            let ok = self.driver_features & !self.device_features == 0
                && self.driver_features & VIRTIO_F_VERSION_1 != 0;
            if !ok {
                log::warn!(
                    "{}: driver features {:#x} not acceptable (offered {:#x})",
                    self.ty.name,
                    self.driver_features,
                    self.device_features
                );
                v &= !STATUS_FEATURES_OK;
            }
        }
        let needs_reset = self.status & STATUS_NEEDS_RESET;
        self.status = v | needs_reset;
        if newly & STATUS_DRIVER_OK != 0 && self.status & STATUS_FEATURES_OK != 0 && !self.activated
        {
            self.activate();
        }
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    fn read_reg(&mut self, offset: u64) -> u32 {
        match offset {
            REG_MAGIC => MMIO_MAGIC,
            REG_VERSION => MMIO_VERSION,
            REG_DEVICE_ID => self.ty.virtio_id,
            REG_VENDOR_ID => VENDOR_ID,
            REG_DEVICE_FEATURES => match self.device_features_sel {
                0 => self.device_features as u32,
                1 => (self.device_features >> 32) as u32,
                _ => 0,
            },
            REG_QUEUE_NUM_MAX => self
                .selected_queue()
                .map_or(0, |_| u32::from(QUEUE_MAX_SIZE)),
            REG_QUEUE_READY => self.selected_queue().map_or(0, |q| q.ready as u32),
            // Completions go straight from the back end's call fd to the
            // irqchip, so we cannot know which cause fired: report "used
            // buffer" always (Linux ignores an interrupt with no bit set),
            // plus a config change when one is pending.
            REG_INTERRUPT_STATUS => {
                INT_VRING
                    | if self.pending_config_irq {
                        INT_CONFIG
                    } else {
                        0
                    }
            }
            REG_STATUS => self.status,
            REG_SHM_LEN_LOW | REG_SHM_LEN_HIGH => 0xffff_ffff,
            REG_SHM_BASE_LOW | REG_SHM_BASE_HIGH => 0xffff_ffff,
            REG_CONFIG_GENERATION => self.config_generation,
            _ => 0,
        }
    }

    fn write_reg(&mut self, offset: u64, v: u32) {
        match offset {
            REG_DEVICE_FEATURES_SEL => self.device_features_sel = v,
            REG_DRIVER_FEATURES => {
                if self.status & STATUS_FEATURES_OK == 0 {
                    match self.driver_features_sel {
                        0 => set_low(&mut self.driver_features, v),
                        1 => set_high(&mut self.driver_features, v),
                        _ => {}
                    }
                }
            }
            REG_DRIVER_FEATURES_SEL => self.driver_features_sel = v,
            REG_QUEUE_SEL => self.queue_sel = v,
            REG_QUEUE_NUM => {
                if let Some(q) = self.selected_queue() {
                    if v <= u32::from(QUEUE_MAX_SIZE) && v.is_power_of_two() {
                        q.size = v as u16;
                    }
                }
            }
            REG_QUEUE_READY => {
                if let Some(q) = self.selected_queue() {
                    q.ready = v == 1;
                }
            }
            // Reaches us only if the ioeventfd did not match (e.g. a bad
            // queue index): nothing to do.
            REG_QUEUE_NOTIFY => log::debug!("{}: unmatched notify {v}", self.ty.name),
            REG_INTERRUPT_ACK => {
                if v & INT_CONFIG != 0 {
                    self.pending_config_irq = false;
                }
            }
            REG_STATUS => self.set_status(v),
            REG_QUEUE_DESC_LOW
            | REG_QUEUE_DESC_HIGH
            | REG_QUEUE_DRIVER_LOW
            | REG_QUEUE_DRIVER_HIGH
            | REG_QUEUE_DEVICE_LOW
            | REG_QUEUE_DEVICE_HIGH => {
                if let Some(q) = self.selected_queue() {
                    let addr = match offset {
                        REG_QUEUE_DESC_LOW | REG_QUEUE_DESC_HIGH => &mut q.desc,
                        REG_QUEUE_DRIVER_LOW | REG_QUEUE_DRIVER_HIGH => &mut q.avail,
                        _ => &mut q.used,
                    };
                    match offset {
                        REG_QUEUE_DESC_HIGH | REG_QUEUE_DRIVER_HIGH | REG_QUEUE_DEVICE_HIGH => {
                            set_high(addr, v)
                        }
                        _ => set_low(addr, v),
                    }
                }
            }
            REG_SHM_SEL => self.shm_sel = v,
            _ => log::debug!(
                "{}: write {v:#x} to unknown register {offset:#x}",
                self.ty.name
            ),
        }
    }
}

impl BusDevice for VirtioMmioDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= REG_CONFIG {
            let start = (offset - REG_CONFIG) as usize;
            for (i, b) in data.iter_mut().enumerate() {
                *b = self.config.get(start + i).copied().unwrap_or(0);
            }
            return;
        }
        if data.len() != 4 || !offset.is_multiple_of(4) {
            data.fill(0);
            return;
        }
        data.copy_from_slice(&self.read_reg(offset).to_le_bytes());
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= REG_CONFIG {
            let start = (offset - REG_CONFIG) as usize;
            if start + data.len() > self.config.len() {
                return;
            }
            self.config[start..start + data.len()].copy_from_slice(data);
            if let Err(e) = self.proxy.set_config(start as u32, data) {
                log::warn!("{}: SET_CONFIG: {e}", self.ty.name);
            }
            return;
        }
        if data.len() != 4 || !offset.is_multiple_of(4) {
            return;
        }
        self.write_reg(
            offset,
            u32::from_le_bytes([data[0], data[1], data[2], data[3]]),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::DeviceKind;
    use std::io::{Read, Write};
    use std::os::unix::net::UnixListener;
    use std::sync::mpsc;

    const F_VERSION_1: u64 = 1 << 32;
    const F_DEVICE_BIT: u64 = 1 << 5;
    const F_PACKED: u64 = 1 << 34;

    /// A vhost-user back end without protocol features that records the
    /// request codes it gets and answers the GET_* ones.
    fn fake_backend(sock: &std::path::Path) -> mpsc::Receiver<(u32, Vec<u8>)> {
        fake_backend_offering(sock, F_VERSION_1 | F_DEVICE_BIT | F_PACKED)
    }

    /// The same, offering `features`; it also passes on each request's body.
    fn fake_backend_offering(
        sock: &std::path::Path,
        features: u64,
    ) -> mpsc::Receiver<(u32, Vec<u8>)> {
        let _ = std::fs::remove_file(sock);
        let listener = UnixListener::bind(sock).unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let (mut c, _) = listener.accept().unwrap();
            loop {
                let mut hdr = [0u8; 12];
                if c.read_exact(&mut hdr).is_err() {
                    return;
                }
                let req = u32::from_le_bytes(hdr[0..4].try_into().unwrap());
                let size = u32::from_le_bytes(hdr[8..12].try_into().unwrap()) as usize;
                let mut body = vec![0u8; size];
                c.read_exact(&mut body).unwrap();
                let _ = tx.send((req, body));
                let reply = |c: &mut std::os::unix::net::UnixStream, payload: &[u8]| {
                    let mut m = req.to_le_bytes().to_vec();
                    m.extend_from_slice(&5u32.to_le_bytes());
                    m.extend_from_slice(&(payload.len() as u32).to_le_bytes());
                    m.extend_from_slice(payload);
                    c.write_all(&m).unwrap();
                };
                match req {
                    1 => reply(&mut c, &features.to_le_bytes()),
                    // GET_VRING_BASE: index 0, num 7
                    11 => reply(&mut c, &[0, 0, 0, 0, 7, 0, 0, 0]),
                    _ => {}
                }
            }
        });
        rx
    }

    fn rd(d: &mut VirtioMmioDevice, off: u64) -> u32 {
        let mut b = [0u8; 4];
        d.read(off, &mut b);
        u32::from_le_bytes(b)
    }

    fn wr(d: &mut VirtioMmioDevice, off: u64, v: u32) {
        d.write(off, &v.to_le_bytes());
    }

    #[test]
    fn transport_registers_and_ring_programming() {
        let dir = std::env::temp_dir().join(format!("vmm-mmio-{}", std::process::id()));
        let _ = std::fs::remove_file(&dir);
        let rx = fake_backend(&dir);
        let ty = DeviceType::for_kind(DeviceKind::Rng);
        let proxy = VhostUserProxy::connect(&dir, &ty, 0, None).unwrap();
        let mem = crate::memory::create_guest_memory(16 << 20, false).unwrap();
        let mut d = VirtioMmioDevice::new(ty, 0xd000_0000, 5, mem, proxy).unwrap();

        assert_eq!(rd(&mut d, REG_MAGIC), MMIO_MAGIC);
        assert_eq!(rd(&mut d, REG_VERSION), 2);
        assert_eq!(rd(&mut d, REG_DEVICE_ID), 4);
        // Features: device bit and VERSION_1 pass, packed rings do not.
        wr(&mut d, REG_DEVICE_FEATURES_SEL, 0);
        assert_eq!(rd(&mut d, REG_DEVICE_FEATURES), F_DEVICE_BIT as u32);
        wr(&mut d, REG_DEVICE_FEATURES_SEL, 1);
        assert_eq!(
            rd(&mut d, REG_DEVICE_FEATURES),
            1,
            "VERSION_1 only, no packed"
        );
        // Queue 0 exists, queue 1 does not.
        wr(&mut d, REG_QUEUE_SEL, 1);
        assert_eq!(rd(&mut d, REG_QUEUE_NUM_MAX), 0);
        wr(&mut d, REG_QUEUE_SEL, 0);
        assert_eq!(rd(&mut d, REG_QUEUE_NUM_MAX), u32::from(QUEUE_MAX_SIZE));

        // A driver acking a feature not offered does not get FEATURES_OK.
        wr(&mut d, REG_STATUS, 1 | 2);
        wr(&mut d, REG_DRIVER_FEATURES_SEL, 1);
        wr(&mut d, REG_DRIVER_FEATURES, 1 | 4); // VERSION_1 + packed
        wr(&mut d, REG_STATUS, 1 | 2 | STATUS_FEATURES_OK);
        assert_eq!(rd(&mut d, REG_STATUS) & STATUS_FEATURES_OK, 0);
        wr(&mut d, REG_STATUS, 0);
        assert_eq!(rd(&mut d, REG_STATUS), 0);

        // Proper bring-up.
        wr(&mut d, REG_STATUS, 1 | 2);
        wr(&mut d, REG_DRIVER_FEATURES_SEL, 1);
        wr(&mut d, REG_DRIVER_FEATURES, 1);
        wr(&mut d, REG_STATUS, 1 | 2 | STATUS_FEATURES_OK);
        assert_ne!(rd(&mut d, REG_STATUS) & STATUS_FEATURES_OK, 0);
        wr(&mut d, REG_QUEUE_SEL, 0);
        wr(&mut d, REG_QUEUE_NUM, 16);
        wr(&mut d, REG_QUEUE_DESC_LOW, 0x10_0000);
        wr(&mut d, REG_QUEUE_DRIVER_LOW, 0x10_1000);
        wr(&mut d, REG_QUEUE_DEVICE_LOW, 0x10_2000);
        wr(&mut d, REG_QUEUE_READY, 1);
        assert_eq!(rd(&mut d, REG_QUEUE_READY), 1);
        wr(
            &mut d,
            REG_STATUS,
            1 | 2 | STATUS_FEATURES_OK | STATUS_DRIVER_OK,
        );
        assert_eq!(d.proxy().state(), &ConnState::Active);
        assert_eq!(rd(&mut d, REG_INTERRUPT_STATUS), INT_VRING);
        // Reset stops the ring.
        wr(&mut d, REG_STATUS, 0);
        assert_eq!(d.proxy().state(), &ConnState::Connected);
        assert_eq!(rd(&mut d, REG_QUEUE_READY), 0);

        let got: Vec<u32> = rx.try_iter().map(|(r, _)| r).collect();
        // SET_OWNER, GET_FEATURES | SET_FEATURES, SET_MEM_TABLE, SET_VRING_NUM,
        // SET_VRING_ADDR, SET_VRING_BASE, SET_VRING_KICK, SET_VRING_CALL |
        // GET_VRING_BASE (no SET_VRING_ENABLE: no protocol features).
        assert_eq!(got, vec![3, 1, 2, 5, 8, 9, 10, 12, 13, 11]);
        let _ = std::fs::remove_file(&dir);
    }

    /// A device driven to DRIVER_OK with ring 0 (size 16) at 0x10_0000.
    fn live_device(sock: &std::path::Path) -> (VirtioMmioDevice, mpsc::Receiver<(u32, Vec<u8>)>) {
        let rx = fake_backend(sock);
        let ty = DeviceType::for_kind(DeviceKind::Rng);
        let proxy = VhostUserProxy::connect(sock, &ty, 0, None).unwrap();
        let mem = crate::memory::create_guest_memory(16 << 20, false).unwrap();
        let mut d = VirtioMmioDevice::new(ty, 0xd000_0000, 5, mem, proxy).unwrap();
        wr(&mut d, REG_STATUS, 1 | 2);
        wr(&mut d, REG_DRIVER_FEATURES_SEL, 0);
        wr(&mut d, REG_DRIVER_FEATURES, F_DEVICE_BIT as u32);
        wr(&mut d, REG_DRIVER_FEATURES_SEL, 1);
        wr(&mut d, REG_DRIVER_FEATURES, 1);
        wr(&mut d, REG_STATUS, 1 | 2 | STATUS_FEATURES_OK);
        wr(&mut d, REG_QUEUE_SEL, 0);
        wr(&mut d, REG_QUEUE_NUM, 16);
        wr(&mut d, REG_QUEUE_DESC_LOW, 0x10_0000);
        wr(&mut d, REG_QUEUE_DRIVER_LOW, 0x10_1000);
        wr(&mut d, REG_QUEUE_DEVICE_LOW, 0x10_2000);
        wr(&mut d, REG_QUEUE_READY, 1);
        wr(
            &mut d,
            REG_STATUS,
            1 | 2 | STATUS_FEATURES_OK | STATUS_DRIVER_OK,
        );
        assert_eq!(d.proxy().state(), &ConnState::Active);
        (d, rx)
    }

    /// Up to `n` requests the fake back end got (messages without a reply
    /// may still be on their way: wait a little for each).
    fn take(rx: &mpsc::Receiver<(u32, Vec<u8>)>, n: usize) -> Vec<(u32, Vec<u8>)> {
        let mut v = Vec::new();
        while v.len() < n {
            match rx.recv_timeout(std::time::Duration::from_millis(300)) {
                Ok(m) => v.push(m),
                Err(_) => break,
            }
        }
        v
    }

    fn sock_path(tag: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("vmm-mmio-{tag}-{}", std::process::id()))
    }

    /// A back end that comes back: the whole handshake again, then the ring
    /// at the guest's used index, and one replayed kick and call.
    #[test]
    fn reattach_restarts_rings_at_the_used_index() {
        let sock = sock_path("reattach");
        let (mut d, _rx_a) = live_device(&sock);
        // The guest has published 7 requests, 5 completed.
        d.mem.write_obj(7u16, GuestAddress(0x10_1002)).unwrap();
        d.mem.write_obj(5u16, GuestAddress(0x10_2002)).unwrap();
        let _ = d.kicks()[0].read();
        let _ = d.calls()[0].read();

        d.backend_gone("test: killed");
        assert!(!d.is_connected());
        assert_eq!(d.describe()["state"], "disconnected");
        assert!(d.describe()["down_ms"].is_u64());
        // The guest still sees a live device.
        assert_eq!(rd(&mut d, REG_STATUS) & STATUS_NEEDS_RESET, 0);

        let rx_b = fake_backend(&sock);
        let conn = d.proxy().target().connect().unwrap();
        d.reattach(conn).unwrap();
        assert_eq!(d.proxy().state(), &ConnState::Active);
        let got = take(&rx_b, 9);
        let codes: Vec<u32> = got.iter().map(|(r, _)| *r).collect();
        // SET_OWNER, GET_FEATURES | SET_FEATURES, SET_MEM_TABLE, NUM, ADDR,
        // BASE, KICK, CALL (no protocol features: no inflight, no enable).
        assert_eq!(codes, vec![3, 1, 2, 5, 8, 9, 10, 12, 13]);
        let base = &got[6].1;
        assert_eq!(
            base[..8],
            [0, 0, 0, 0, 5, 0, 0, 0],
            "SET_VRING_BASE: ring 0 at used.idx 5"
        );
        let features = u64::from_le_bytes(got[2].1[..8].try_into().unwrap());
        assert_eq!(features, F_VERSION_1 | F_DEVICE_BIT, "the guest's features");
        assert_eq!(d.kicks()[0].read().unwrap(), 1, "kick replayed");
        assert_eq!(d.calls()[0].read().unwrap(), 1, "call replayed");
        let v = d.describe();
        assert_eq!(v["reconnects"], 1);
        assert!(v["down_ms"].is_null());
        assert_eq!(v["needs_reset"], false);
        let _ = std::fs::remove_file(&sock);
    }

    /// A back end that comes back without a feature the driver negotiated:
    /// DEVICE_NEEDS_RESET with a configuration interrupt, rings not started;
    /// after the driver's reset the device offers what the new one offers.
    #[test]
    fn reattach_with_fewer_features_needs_reset() {
        let sock = sock_path("fewer");
        let (mut d, _rx_a) = live_device(&sock);
        let _ = d.calls()[0].read();
        d.backend_gone("test: killed");

        let rx_b = fake_backend_offering(&sock, F_VERSION_1);
        let conn = d.proxy().target().connect().unwrap();
        d.reattach(conn).unwrap();
        let codes: Vec<u32> = take(&rx_b, 3).into_iter().map(|(r, _)| r).collect();
        assert_eq!(codes, vec![3, 1], "handshake only, no ring set-up");
        assert_ne!(rd(&mut d, REG_STATUS) & STATUS_NEEDS_RESET, 0);
        assert_eq!(rd(&mut d, REG_INTERRUPT_STATUS), INT_VRING | INT_CONFIG);
        assert_eq!(d.calls()[0].read().unwrap(), 1, "configuration interrupt");
        let v = d.describe();
        assert_eq!(v["needs_reset"], true);
        assert_eq!(v["state"], "connected");
        assert!(v["needs_reset_reason"]
            .as_str()
            .unwrap()
            .contains("lost 0x20"));
        // The driver resets the device and starts again.
        wr(&mut d, REG_STATUS, 0);
        assert_eq!(rd(&mut d, REG_STATUS), 0);
        assert_eq!(d.describe()["needs_reset"], false);
        assert_eq!(d.describe()["needs_reset_events"], 1);
        wr(&mut d, REG_DEVICE_FEATURES_SEL, 0);
        assert_eq!(rd(&mut d, REG_DEVICE_FEATURES), 0, "the new offer");
        let _ = std::fs::remove_file(&sock);
    }
}
