//! Devices the VMM emulates itself: legacy ports and the virtio-mmio
//! transport in front of each vhost-user back end.

pub mod i8042;
pub mod power;
pub mod serial;
pub mod virtio_mmio;
