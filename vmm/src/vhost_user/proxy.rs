//! The generic vhost-user front-end proxy.
//!
//! It owns the connection (a `vhost::vhost_user::Frontend`) and nothing the
//! guest negotiated: the transport passes acked features and ring
//! addresses in at [`VhostUserProxy::activate`], so a later reconnect can
//! replay the same state over a new connection.
//!
//! Handshake at connect: SET_OWNER, GET_FEATURES, GET/SET_PROTOCOL_FEATURES
//! (MQ, REPLY_ACK, CONFIG, CONFIGURE_MEM_SLOTS as offered), GET_QUEUE_NUM,
//! GET_CONFIG. At DRIVER_OK: SET_FEATURES, SET_MEM_TABLE, then per ring
//! SET_VRING_NUM/ADDR/BASE/KICK/CALL and SET_VRING_ENABLE. At reset:
//! SET_VRING_ENABLE(0) and GET_VRING_BASE per ring.
//!
//! With INFLIGHT_SHMFD the first start asks for the in-flight region
//! (GET_INFLIGHT_FD) after the memory table; a restart after a reconnect
//! hands it back (SET_INFLIGHT_FD) before the rings, and each ring's base is
//! the used index the guest sees (see `reconnect.rs`).

use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use vhost::vhost_user::message::{VhostUserConfigFlags, VhostUserHeaderFlag};
use vhost::vhost_user::{
    Frontend, VhostUserFrontend, VhostUserProtocolFeatures, VhostUserVirtioFeatures,
};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vm_memory::{GuestAddress, GuestMemoryBackend};
use vmm_sys_util::eventfd::EventFd;

use super::inflight::InflightFd;
use super::watchdog::Watchdog;
use super::DeviceType;
use crate::memory::GuestMem;

/// virtio 1.x; we are a non-legacy transport.
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;
/// Most queues a device may expose.
pub const MAX_QUEUES: u16 = 16;
/// How long a back end may take over one exchange (the handshake, starting
/// or stopping the rings) before it counts as gone: a hung back end must not
/// hang start-up or a vCPU forever.
pub const REPLY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Protocol features we use when the back end offers them.
pub fn wanted_protocol_features() -> VhostUserProtocolFeatures {
    VhostUserProtocolFeatures::MQ
        | VhostUserProtocolFeatures::REPLY_ACK
        | VhostUserProtocolFeatures::CONFIG
        | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
        | VhostUserProtocolFeatures::INFLIGHT_SHMFD
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("cannot connect to vhost-user back end at {path}: {source}")]
    Connect {
        path: String,
        #[source]
        source: vhost::Error,
    },
    #[error("vhost-user {step} failed: {source}")]
    Protocol {
        step: &'static str,
        #[source]
        source: vhost::Error,
    },
    #[error("back end at {path} lacks required feature {feature}")]
    MissingFeature { path: String, feature: String },
    #[error("back end at {path} offers {have} queues, {want} requested")]
    Queues { path: String, have: u64, want: u16 },
    #[error("guest ring address {0:#x} is not in guest memory")]
    BadRingAddress(u64),
    #[error("back end is not connected")]
    NotConnected,
    #[error("back end at {path} did not answer within {secs} s")]
    Timeout { path: String, secs: u64 },
}

impl ProxyError {
    /// The socket failed (as opposed to a refusal or a bad value): the
    /// connection is unusable.
    pub fn is_connection_lost(&self) -> bool {
        use vhost::vhost_user::Error as U;
        let ProxyError::Protocol { source, .. } = self else {
            return false;
        };
        match source {
            vhost::Error::IOError(_) => true,
            vhost::Error::VhostUserProtocol(u) => matches!(
                u,
                U::Disconnected
                    | U::PartialMessage
                    | U::SocketError(_)
                    | U::SocketBroken(_)
                    | U::SocketRetry(_)
                    | U::InvalidMessage
            ),
            _ => false,
        }
    }
}

fn step(step: &'static str) -> impl FnOnce(vhost::Error) -> ProxyError {
    move |source| ProxyError::Protocol { step, source }
}

/// A ring as the driver configured it (guest-physical addresses).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RingConfig {
    pub index: u16,
    pub size: u16,
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
}

/// Connection state as reported on the API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnState {
    /// Handshake done, rings not running.
    Connected,
    /// Rings programmed and enabled.
    Active,
    /// The back end went away (or a request failed).
    Disconnected(String),
}

impl ConnState {
    pub fn as_str(&self) -> &'static str {
        match self {
            ConnState::Connected => "connected",
            ConnState::Active => "active",
            ConnState::Disconnected(_) => "disconnected",
        }
    }
}

/// What the back end told us at connect time.
#[derive(Debug, Clone)]
pub struct BackendInfo {
    /// GET_FEATURES, including VHOST_USER_F_PROTOCOL_FEATURES.
    pub features: u64,
    /// Protocol features both sides use.
    pub protocol: VhostUserProtocolFeatures,
    /// GET_QUEUE_NUM (MQ) or `None`.
    pub queue_num: Option<u64>,
    /// Queues the device exposes to the guest.
    pub queues: u16,
    /// Config space from GET_CONFIG.
    pub config: Vec<u8>,
}

/// What to do about the in-flight region when the rings start.
pub enum InflightStep<'a> {
    /// Not negotiated, or the back end refused: no tracking.
    None,
    /// First start: ask the back end for a region of this geometry.
    Get { num_queues: u16, queue_size: u16 },
    /// Restart: hand the region the last back end filled to this one.
    Set(&'a InflightFd),
}

/// Everything [`VhostUserProxy::activate`] programs.
pub struct RingStart<'a> {
    pub acked_features: u64,
    pub rings: &'a [RingConfig],
    /// SET_VRING_BASE per entry of `rings`.
    pub bases: &'a [u16],
    pub kicks: &'a [EventFd],
    pub calls: &'a [EventFd],
    pub inflight: InflightStep<'a>,
}

/// A connected back end after the handshake, not yet given to a device.
/// Built without any lock held: a reconnect must not stall vCPUs while a
/// back end answers.
pub struct Connection {
    fe: Frontend,
    watchdog: Watchdog,
    info: BackendInfo,
}

impl Connection {
    pub fn info(&self) -> &BackendInfo {
        &self.info
    }
}

/// Connects to `socket` and runs the handshake under the watchdog. At
/// start-up (`patient`) a refused connection is retried for half a second
/// (the vhost crate's `Frontend::connect`); a reconnect tries once, its
/// caller does the backoff.
pub fn establish(
    socket: &Path,
    ty: &DeviceType,
    config_size: u32,
    requested_queues: Option<u16>,
    patient: bool,
) -> Result<Connection, ProxyError> {
    let path = socket.display().to_string();
    let connect_err = |source| ProxyError::Connect {
        path: path.clone(),
        source,
    };
    let mut fe = if patient {
        Frontend::connect(socket, u64::from(MAX_QUEUES)).map_err(connect_err)?
    } else {
        let stream = std::os::unix::net::UnixStream::connect(socket)
            .map_err(|e| connect_err(vhost::Error::IOError(e)))?;
        Frontend::from_stream(stream, u64::from(MAX_QUEUES))
    };
    let watchdog = Watchdog::new().map_err(|e| ProxyError::Connect {
        path: path.clone(),
        source: vhost::Error::IOError(e),
    })?;
    let (info, fired) = watchdog.guard(fe.as_raw_fd(), REPLY_TIMEOUT, || {
        VhostUserProxy::handshake(&mut fe, &path, ty, config_size, requested_queues)
    });
    if fired {
        return Err(ProxyError::Timeout {
            path,
            secs: REPLY_TIMEOUT.as_secs(),
        });
    }
    Ok(Connection {
        fe,
        watchdog,
        info: info?,
    })
}

/// What a reconnect needs, copied out of the proxy so that connecting runs
/// without the device lock.
#[derive(Debug, Clone)]
pub struct Target {
    socket: PathBuf,
    ty: DeviceType,
    config_size: u32,
    queues: u16,
}

impl Target {
    pub fn connect(&self) -> Result<Connection, ProxyError> {
        establish(
            &self.socket,
            &self.ty,
            self.config_size,
            Some(self.queues),
            false,
        )
    }
}

pub struct VhostUserProxy {
    socket: PathBuf,
    ty: DeviceType,
    config_size: u32,
    frontend: Option<Frontend>,
    watchdog: Arc<Watchdog>,
    info: BackendInfo,
    state: ConnState,
    /// Rings running on the back end.
    active_rings: Vec<u16>,
}

impl VhostUserProxy {
    /// Connects and runs the handshake.
    pub fn connect(
        socket: &Path,
        ty: &DeviceType,
        config_size: u32,
        requested_queues: Option<u16>,
    ) -> Result<Self, ProxyError> {
        let conn = establish(socket, ty, config_size, requested_queues, true)?;
        Ok(Self {
            socket: socket.to_path_buf(),
            ty: *ty,
            config_size,
            frontend: Some(conn.fe),
            watchdog: Arc::new(conn.watchdog),
            info: conn.info,
            state: ConnState::Connected,
            active_rings: Vec::new(),
        })
    }

    /// Where and how to connect again (for a reconnect). The queue count
    /// is the one the guest sees: the new back end must offer it.
    pub fn target(&self) -> Target {
        Target {
            socket: self.socket.clone(),
            ty: self.ty,
            config_size: self.config_size,
            queues: self.info.queues,
        }
    }

    /// Takes over a connection made through [`VhostUserProxy::target`].
    pub fn attach(&mut self, conn: Connection) {
        self.frontend = Some(conn.fe);
        self.watchdog = Arc::new(conn.watchdog);
        self.info = conn.info;
        self.state = ConnState::Connected;
        self.active_rings.clear();
        log::info!("{}: back end reconnected", self.socket.display());
    }

    fn handshake(
        fe: &mut Frontend,
        path: &str,
        ty: &DeviceType,
        config_size: u32,
        requested_queues: Option<u16>,
    ) -> Result<BackendInfo, ProxyError> {
        let path = path.to_string();
        fe.set_owner().map_err(step("SET_OWNER"))?;
        let features = fe.get_features().map_err(step("GET_FEATURES"))?;
        if features & VIRTIO_F_VERSION_1 == 0 {
            return Err(ProxyError::MissingFeature {
                path,
                feature: "VIRTIO_F_VERSION_1".into(),
            });
        }
        let mut protocol = VhostUserProtocolFeatures::empty();
        if features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() != 0 {
            let offered = fe
                .get_protocol_features()
                .map_err(step("GET_PROTOCOL_FEATURES"))?;
            protocol = offered & wanted_protocol_features();
            fe.set_protocol_features(protocol)
                .map_err(step("SET_PROTOCOL_FEATURES"))?;
        }
        let missing = ty.required_protocol - protocol;
        if !missing.is_empty() {
            return Err(ProxyError::MissingFeature {
                path,
                feature: format!(
                    "protocol feature {}",
                    missing
                        .iter_names()
                        .map(|(n, _)| n)
                        .collect::<Vec<_>>()
                        .join("|")
                ),
            });
        }
        let queue_num = if protocol.contains(VhostUserProtocolFeatures::MQ) {
            Some(fe.get_queue_num().map_err(step("GET_QUEUE_NUM"))?)
        } else {
            None
        };
        let queues = match (requested_queues, queue_num) {
            (Some(q), Some(n)) if u64::from(q) > n => {
                return Err(ProxyError::Queues {
                    path,
                    have: n,
                    want: q,
                });
            }
            (Some(q), _) => q,
            (None, Some(n)) if ty.queues_from_backend => n.clamp(1, u64::from(MAX_QUEUES)) as u16,
            (None, _) => ty.default_queues,
        };
        if queues > MAX_QUEUES {
            return Err(ProxyError::Queues {
                path,
                have: u64::from(MAX_QUEUES),
                want: queues,
            });
        }
        let mut config = Vec::new();
        if config_size > 0 && protocol.contains(VhostUserProtocolFeatures::CONFIG) {
            let buf = vec![0u8; config_size as usize];
            let (_, payload) = fe
                .get_config(0, config_size, VhostUserConfigFlags::empty(), &buf)
                .map_err(step("GET_CONFIG"))?;
            config = payload;
        }
        config.resize(config_size as usize, 0);
        log::info!(
            "{path}: connected, features {features:#x}, protocol {:?}, queues {queue_num:?}",
            protocol
        );
        Ok(BackendInfo {
            features,
            protocol,
            queue_num,
            queues,
            config,
        })
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub fn info(&self) -> &BackendInfo {
        &self.info
    }

    pub fn state(&self) -> &ConnState {
        &self.state
    }

    /// The socket, to watch for hang-up.
    pub fn raw_fd(&self) -> Option<RawFd> {
        self.frontend.as_ref().map(|f| f.as_raw_fd())
    }

    /// Forgets the connection; the device model keeps its state.
    pub fn mark_disconnected(&mut self, why: &str) {
        if !matches!(self.state, ConnState::Disconnected(_)) {
            log::info!("{}: back end disconnected: {why}", self.socket.display());
        }
        self.state = ConnState::Disconnected(why.to_string());
        self.frontend = None;
        self.active_rings.clear();
    }

    fn fe(&mut self) -> Result<&mut Frontend, ProxyError> {
        self.frontend.as_mut().ok_or(ProxyError::NotConnected)
    }

    fn ack(&mut self, on: bool) {
        if self
            .info
            .protocol
            .contains(VhostUserProtocolFeatures::REPLY_ACK)
        {
            if let Some(fe) = &self.frontend {
                fe.set_hdr_flags(if on {
                    VhostUserHeaderFlag::NEED_REPLY
                } else {
                    VhostUserHeaderFlag::empty()
                });
            }
        }
    }

    fn protocol_features_on(&self) -> bool {
        self.info.features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() != 0
    }

    /// Writes device config through SET_CONFIG (when CONFIG was negotiated).
    /// Flags 0: VHOST_SET_CONFIG_TYPE_FRONTEND (1 would mean migration).
    /// Runs one exchange under the watchdog; a back end that does not
    /// answer in time is dropped (its socket shut down).
    fn guarded<T>(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<T, ProxyError>,
    ) -> Result<T, ProxyError> {
        let fd = self.raw_fd().ok_or(ProxyError::NotConnected)?;
        let wd = self.watchdog.clone();
        let (r, fired) = wd.guard(fd, REPLY_TIMEOUT, || f(self));
        if fired {
            let path = self.socket.display().to_string();
            let secs = REPLY_TIMEOUT.as_secs();
            self.mark_disconnected(&format!("no answer within {secs} s"));
            return Err(ProxyError::Timeout { path, secs });
        }
        // A broken connection counts as a dead back end (the reconnect
        // takes over), like a hang-up seen by the main loop.
        if let Err(e) = &r {
            if e.is_connection_lost() {
                self.mark_disconnected(&e.to_string());
            }
        }
        r
    }

    pub fn set_config(&mut self, offset: u32, data: &[u8]) -> Result<(), ProxyError> {
        self.guarded(|p| p.set_config_inner(offset, data))
    }

    fn set_config_inner(&mut self, offset: u32, data: &[u8]) -> Result<(), ProxyError> {
        if !self
            .info
            .protocol
            .contains(VhostUserProtocolFeatures::CONFIG)
        {
            return Ok(());
        }
        self.ack(true);
        let r = self
            .fe()?
            .set_config(offset, VhostUserConfigFlags::empty(), data)
            .map_err(step("SET_CONFIG"));
        self.ack(false);
        r
    }

    /// Starts the rings (DRIVER_OK, or a restart after a reconnect).
    /// Returns the in-flight region when `start.inflight` asked for one.
    pub fn activate(
        &mut self,
        mem: &GuestMem,
        start: &RingStart<'_>,
    ) -> Result<Option<InflightFd>, ProxyError> {
        let r = self.guarded(|p| {
            p.ack(true);
            let r = p.activate_inner(mem, start);
            p.ack(false);
            r
        });
        if r.is_ok() {
            self.state = ConnState::Active;
        }
        r
    }

    fn activate_inner(
        &mut self,
        mem: &GuestMem,
        start: &RingStart<'_>,
    ) -> Result<Option<InflightFd>, ProxyError> {
        let features = start.acked_features
            | (self.info.features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits());
        let protocol_on = self.protocol_features_on();
        let inflight_on = self
            .info
            .protocol
            .contains(VhostUserProtocolFeatures::INFLIGHT_SHMFD);
        let regions = mem
            .iter()
            .map(VhostUserMemoryRegionInfo::from_guest_region)
            .collect::<Result<Vec<_>, _>>()
            .map_err(step("memory region info"))?;
        let fe = self.fe()?;
        fe.set_features(features).map_err(step("SET_FEATURES"))?;
        fe.set_mem_table(&regions).map_err(step("SET_MEM_TABLE"))?;
        let mut got = None;
        match start.inflight {
            InflightStep::Get {
                num_queues,
                queue_size,
            } if inflight_on => {
                // A request with its own reply: no REPLY_ACK on top.
                fe.set_hdr_flags(VhostUserHeaderFlag::empty());
                let r = fe.get_inflight_fd(&InflightFd::request(num_queues, queue_size));
                self.ack(true);
                match r {
                    Ok((desc, file)) => got = Some(InflightFd::new(file, desc)),
                    // Tracking is an extra: run without it.
                    Err(e) => log::warn!(
                        "{}: GET_INFLIGHT_FD failed, no in-flight tracking: {e}",
                        self.socket.display()
                    ),
                }
            }
            InflightStep::Set(region) if inflight_on => {
                self.fe()?
                    .set_inflight_fd(region.desc(), region.raw_fd())
                    .map_err(step("SET_INFLIGHT_FD"))?;
            }
            _ => {}
        }
        let fe = self.fe()?;
        let hva = |gpa: u64| {
            mem.get_host_address(GuestAddress(gpa))
                .map(|p| p as u64)
                .map_err(|_| ProxyError::BadRingAddress(gpa))
        };
        let mut started = Vec::new();
        for (k, ring) in start.rings.iter().enumerate() {
            let i = ring.index as usize;
            let cfg = VringConfigData {
                queue_max_size: ring.size,
                queue_size: ring.size,
                flags: 0,
                desc_table_addr: hva(ring.desc)?,
                used_ring_addr: hva(ring.used)?,
                avail_ring_addr: hva(ring.avail)?,
                log_addr: None,
            };
            let base = start.bases.get(k).copied().unwrap_or(0);
            fe.set_vring_num(i, ring.size)
                .map_err(step("SET_VRING_NUM"))?;
            fe.set_vring_addr(i, &cfg).map_err(step("SET_VRING_ADDR"))?;
            fe.set_vring_base(i, base).map_err(step("SET_VRING_BASE"))?;
            fe.set_vring_kick(i, &start.kicks[i])
                .map_err(step("SET_VRING_KICK"))?;
            fe.set_vring_call(i, &start.calls[i])
                .map_err(step("SET_VRING_CALL"))?;
            started.push(ring.index);
        }
        if protocol_on {
            for ring in start.rings {
                fe.set_vring_enable(ring.index as usize, true)
                    .map_err(step("SET_VRING_ENABLE"))?;
            }
        }
        self.active_rings = started;
        Ok(got)
    }

    /// Stops the rings (device reset or driver unload). Returns each
    /// ring's last avail index from GET_VRING_BASE.
    pub fn deactivate(&mut self) -> Result<Vec<(u16, u32)>, ProxyError> {
        if self.active_rings.is_empty() {
            return Ok(Vec::new());
        }
        self.guarded(|p| p.deactivate_inner())
    }

    fn deactivate_inner(&mut self) -> Result<Vec<(u16, u32)>, ProxyError> {
        let rings = std::mem::take(&mut self.active_rings);
        if rings.is_empty() {
            return Ok(Vec::new());
        }
        let protocol_on = self.protocol_features_on();
        let mut bases = Vec::new();
        self.ack(true);
        let r = (|| {
            let fe = self.fe()?;
            if protocol_on {
                for i in &rings {
                    fe.set_vring_enable(*i as usize, false)
                        .map_err(step("SET_VRING_ENABLE"))?;
                }
            }
            Ok::<(), ProxyError>(())
        })();
        self.ack(false);
        r?;
        let fe = self.fe()?;
        for i in &rings {
            let base = fe
                .get_vring_base(*i as usize)
                .map_err(step("GET_VRING_BASE"))?;
            bases.push((*i, base));
        }
        if self.state == ConnState::Active {
            self.state = ConnState::Connected;
        }
        Ok(bases)
    }
}
