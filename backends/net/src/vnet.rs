//! The virtio-net header (virtio 1.x: 12 bytes, struct virtio_net_hdr_mrg_rxbuf)
//! and what a guest may put in it on transmit.

use crate::tap::VNET_HDR_LEN;
use virtio_bindings::virtio_net::*;

pub const F_NEEDS_CSUM: u8 = VIRTIO_NET_HDR_F_NEEDS_CSUM as u8;
pub const GSO_NONE: u8 = VIRTIO_NET_HDR_GSO_NONE as u8;
pub const GSO_TCPV4: u8 = VIRTIO_NET_HDR_GSO_TCPV4 as u8;
pub const GSO_TCPV6: u8 = VIRTIO_NET_HDR_GSO_TCPV6 as u8;
pub const GSO_ECN: u8 = VIRTIO_NET_HDR_GSO_ECN as u8;

/// Largest frame (without the header) a guest may send: a 64 KiB GSO packet
/// plus Ethernet and VLAN headers.
pub const MAX_FRAME: usize = 65535 + 14 + 4;

#[derive(Debug, Clone, Copy, Default)]
pub struct Header {
    pub flags: u8,
    pub gso_type: u8,
    pub hdr_len: u16,
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
}

impl Header {
    pub fn parse(b: &[u8; VNET_HDR_LEN]) -> Self {
        let u16_at = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        Header {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u16_at(2),
            gso_size: u16_at(4),
            csum_start: u16_at(6),
            csum_offset: u16_at(8),
        }
    }

    /// Checks a transmit header against the negotiated features and the
    /// frame's length (without the header); the reason when it is malformed.
    pub fn check_tx(&self, acked: u64, frame_len: usize) -> Result<(), String> {
        let has = |bit: u32| acked & (1u64 << bit) != 0;
        if frame_len < 14 {
            return Err(format!("runt frame of {frame_len} bytes"));
        }
        if frame_len > MAX_FRAME {
            return Err(format!("frame of {frame_len} bytes"));
        }
        if self.flags & !F_NEEDS_CSUM != 0 {
            return Err(format!("flags {:#x}", self.flags));
        }
        if self.flags & F_NEEDS_CSUM != 0 {
            if !has(VIRTIO_NET_F_CSUM) {
                return Err("NEEDS_CSUM without VIRTIO_NET_F_CSUM".into());
            }
            let end = usize::from(self.csum_start) + usize::from(self.csum_offset) + 2;
            if end > frame_len {
                return Err(format!(
                    "checksum at {}+{} past the {frame_len}-byte frame",
                    self.csum_start, self.csum_offset
                ));
            }
        }
        if self.gso_type & GSO_ECN != 0 {
            return Err("GSO ECN was not negotiated".into());
        }
        match self.gso_type {
            GSO_NONE => {}
            GSO_TCPV4 | GSO_TCPV6 => {
                let bit = if self.gso_type == GSO_TCPV4 {
                    VIRTIO_NET_F_HOST_TSO4
                } else {
                    VIRTIO_NET_F_HOST_TSO6
                };
                if !has(bit) {
                    return Err(format!("GSO type {} not negotiated", self.gso_type));
                }
                if self.gso_size == 0 {
                    return Err("GSO with gso_size 0".into());
                }
                if self.flags & F_NEEDS_CSUM == 0 {
                    return Err("GSO without NEEDS_CSUM".into());
                }
                if usize::from(self.hdr_len) > frame_len {
                    return Err(format!("hdr_len {} past the frame", self.hdr_len));
                }
            }
            t => return Err(format!("GSO type {t}")),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acked(bits: &[u32]) -> u64 {
        bits.iter().fold(0, |a, b| a | 1u64 << b)
    }

    fn hdr(flags: u8, gso: u8, gso_size: u16, start: u16, off: u16) -> Header {
        Header {
            flags,
            gso_type: gso,
            hdr_len: 54,
            gso_size,
            csum_start: start,
            csum_offset: off,
        }
    }

    #[test]
    fn plain_frames_pass_and_runts_fail() {
        assert!(Header::default().check_tx(0, 60).is_ok());
        assert!(Header::default().check_tx(0, 10).is_err());
        assert!(Header::default().check_tx(0, MAX_FRAME + 1).is_err());
    }

    #[test]
    fn checksum_offload_needs_the_feature_and_a_place_in_the_frame() {
        let h = hdr(F_NEEDS_CSUM, GSO_NONE, 0, 34, 16);
        assert!(h.check_tx(0, 100).is_err());
        let f = acked(&[VIRTIO_NET_F_CSUM]);
        assert!(h.check_tx(f, 100).is_ok());
        assert!(h.check_tx(f, 51).is_err());
        assert!(hdr(0x80, 0, 0, 0, 0).check_tx(f, 100).is_err());
    }

    #[test]
    fn gso_needs_its_feature_a_size_and_a_checksum() {
        let f = acked(&[VIRTIO_NET_F_CSUM, VIRTIO_NET_F_HOST_TSO4]);
        assert!(hdr(F_NEEDS_CSUM, GSO_TCPV4, 1448, 34, 16)
            .check_tx(f, 20000)
            .is_ok());
        assert!(hdr(F_NEEDS_CSUM, GSO_TCPV6, 1448, 54, 16)
            .check_tx(f, 20000)
            .is_err());
        assert!(hdr(F_NEEDS_CSUM, GSO_TCPV4, 0, 34, 16)
            .check_tx(f, 20000)
            .is_err());
        assert!(hdr(0, GSO_TCPV4, 1448, 34, 16).check_tx(f, 20000).is_err());
        assert!(hdr(F_NEEDS_CSUM, GSO_TCPV4 | GSO_ECN, 1448, 34, 16)
            .check_tx(f, 20000)
            .is_err());
        assert!(hdr(F_NEEDS_CSUM, 3, 1448, 34, 6)
            .check_tx(f, 20000)
            .is_err());
    }
}
