//! The virtio-blk configuration space (virtio 1.2, 5.2.4) the back end serves
//! through VHOST_USER_GET_CONFIG, and the limits it promises there.

use crate::image::SECTOR_SIZE;

/// Largest data segment the back end announces (VIRTIO_BLK_F_SIZE_MAX).
pub const SIZE_MAX: u32 = 1 << 20;
/// Discard and write-zeroes: sectors per segment, and segments per request.
pub const MAX_DISCARD_SECTORS: u32 = (1 << 30) / SECTOR_SIZE as u32;
pub const MAX_DISCARD_SEG: u32 = 32;
/// Size of the struct virtio_blk_config fields we serve (up to write_zeroes_may_unmap + padding).
pub const CONFIG_LEN: usize = 60;

/// The device's configuration.
#[derive(Debug, Clone, Copy)]
pub struct BlkConfig {
    pub capacity_sectors: u64,
    pub seg_max: u32,
    pub num_queues: u16,
}

impl BlkConfig {
    /// The little-endian bytes of struct virtio_blk_config.
    pub fn to_bytes(self) -> [u8; CONFIG_LEN] {
        let mut b = [0u8; CONFIG_LEN];
        let mut put = |off: usize, v: &[u8]| b[off..off + v.len()].copy_from_slice(v);
        put(0, &self.capacity_sectors.to_le_bytes());
        put(8, &SIZE_MAX.to_le_bytes()); // size_max
        put(12, &self.seg_max.to_le_bytes()); // seg_max
                                              // 16..20 geometry: not offered.
        put(20, &(SECTOR_SIZE as u32).to_le_bytes()); // blk_size
                                                      // 24 physical_block_exp, 25 alignment_offset: 0.
        put(26, &1u16.to_le_bytes()); // min_io_size (in blk_size units)
                                      // 28 opt_io_size: 0; 32 writeback: 0; 33 unused.
        put(34, &self.num_queues.to_le_bytes());
        put(36, &MAX_DISCARD_SECTORS.to_le_bytes());
        put(40, &MAX_DISCARD_SEG.to_le_bytes());
        put(44, &(4096 / SECTOR_SIZE as u32).to_le_bytes()); // discard_sector_alignment
        put(48, &MAX_DISCARD_SECTORS.to_le_bytes()); // max_write_zeroes_sectors
        put(52, &MAX_DISCARD_SEG.to_le_bytes()); // max_write_zeroes_seg
        put(56, &[1]); // write_zeroes_may_unmap
        b
    }

    /// `size` bytes from `offset`, zero beyond the structure (a front end may
    /// read a larger or newer layout than we know).
    pub fn read(&self, offset: u32, size: u32) -> Vec<u8> {
        let bytes = self.to_bytes();
        let mut out = vec![0u8; size as usize];
        let start = (offset as usize).min(CONFIG_LEN);
        let end = (offset as usize)
            .saturating_add(size as usize)
            .min(CONFIG_LEN);
        out[..end - start].copy_from_slice(&bytes[start..end]);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_matches_the_spec() {
        let c = BlkConfig {
            capacity_sectors: 0x1234,
            seg_max: 126,
            num_queues: 4,
        };
        let b = c.to_bytes();
        assert_eq!(u64::from_le_bytes(b[0..8].try_into().unwrap()), 0x1234);
        assert_eq!(u32::from_le_bytes(b[12..16].try_into().unwrap()), 126);
        assert_eq!(u32::from_le_bytes(b[20..24].try_into().unwrap()), 512);
        assert_eq!(u16::from_le_bytes(b[34..36].try_into().unwrap()), 4);
        assert_eq!(c.read(34, 2), vec![4, 0]);
        assert_eq!(c.read(200, 4), vec![0; 4]);
        assert_eq!(c.read(58, 4), vec![0; 4]);
    }
}
