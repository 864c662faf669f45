//! vhost-user front end: one generic proxy for every device type.
//!
//! What differs between device types is data, not code: the virtio device
//! id, the default queue count, the config space size and the protocol
//! features the type cannot work without.

pub mod inflight;
pub mod proxy;
pub mod reconnect;
pub mod socket_watch;
pub mod watchdog;

use vhost::vhost_user::VhostUserProtocolFeatures;

use crate::cli::DeviceKind;

pub const VIRTIO_ID_NET: u32 = 1;
pub const VIRTIO_ID_BLOCK: u32 = 2;
pub const VIRTIO_ID_RNG: u32 = 4;
pub const VIRTIO_ID_PMEM: u32 = 27;
pub const VIRTIO_ID_CAN: u32 = 36;

/// Per-type facts the generic proxy and transport need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceType {
    pub name: &'static str,
    pub virtio_id: u32,
    /// Queues exposed when `queues=` is not given and the back end does
    /// not report a count (no MQ).
    pub default_queues: u16,
    /// Bytes of device config space read through GET_CONFIG.
    pub config_size: u32,
    /// Protocol features without which the device cannot work.
    pub required_protocol: VhostUserProtocolFeatures,
    /// Use the back end's queue count (GET_QUEUE_NUM) by default.
    pub queues_from_backend: bool,
    /// Feature bits that take something away from the device when a
    /// restarted back end newly offers them (blk: read-only), so the guest's
    /// driver must renegotiate.
    pub restricting_features: u64,
}

impl DeviceType {
    pub fn for_kind(kind: DeviceKind) -> Self {
        let none = VhostUserProtocolFeatures::empty();
        match kind {
            DeviceKind::Blk => DeviceType {
                name: "blk",
                virtio_id: VIRTIO_ID_BLOCK,
                default_queues: 1,
                // struct virtio_blk_config up to write_zeroes_may_unmap.
                config_size: 60,
                required_protocol: VhostUserProtocolFeatures::CONFIG,
                queues_from_backend: true,
                // VIRTIO_BLK_F_RO
                restricting_features: 1 << 5,
            },
            DeviceKind::Net => DeviceType {
                name: "net",
                virtio_id: VIRTIO_ID_NET,
                default_queues: 2,
                // mac, status, max_virtqueue_pairs, mtu.
                config_size: 12,
                required_protocol: none,
                queues_from_backend: false,
                restricting_features: 0,
            },
            DeviceKind::Rng => DeviceType {
                name: "rng",
                virtio_id: VIRTIO_ID_RNG,
                default_queues: 1,
                config_size: 0,
                required_protocol: none,
                queues_from_backend: false,
                restricting_features: 0,
            },
            DeviceKind::Pmem => DeviceType {
                name: "pmem",
                virtio_id: VIRTIO_ID_PMEM,
                default_queues: 1,
                config_size: 16,
                required_protocol: VhostUserProtocolFeatures::CONFIG,
                queues_from_backend: false,
                restricting_features: 0,
            },
            DeviceKind::Can => DeviceType {
                name: "can",
                virtio_id: VIRTIO_ID_CAN,
                default_queues: 3,
                config_size: 2,
                required_protocol: none,
                queues_from_backend: false,
                restricting_features: 0,
            },
            DeviceKind::Generic(id) => DeviceType {
                name: "generic",
                virtio_id: id,
                default_queues: 1,
                config_size: 0,
                required_protocol: none,
                queues_from_backend: true,
                restricting_features: 0,
            },
        }
    }
}
