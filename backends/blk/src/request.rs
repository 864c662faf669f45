//! Parsing a virtio-blk request from a descriptor chain, trusting nothing the
//! guest wrote: every address is checked against guest memory, every length
//! and direction against the request type, and loops or broken chains are
//! refused. A request that can be answered gets a status; one without a usable
//! status byte is returned to the guest with nothing written.

use crate::image::SECTOR_SIZE;
use virtio_bindings::virtio_blk::*;
use virtio_queue::desc::split::Descriptor;
use virtio_queue::DescriptorChain;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend};

/// The request types the device knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestType {
    In,
    Out,
    Flush,
    GetId,
    Discard,
    WriteZeroes,
    Unsupported(u32),
}

impl RequestType {
    fn from_u32(t: u32) -> Self {
        match t {
            VIRTIO_BLK_T_IN => RequestType::In,
            VIRTIO_BLK_T_OUT => RequestType::Out,
            VIRTIO_BLK_T_FLUSH => RequestType::Flush,
            VIRTIO_BLK_T_GET_ID => RequestType::GetId,
            VIRTIO_BLK_T_DISCARD => RequestType::Discard,
            VIRTIO_BLK_T_WRITE_ZEROES => RequestType::WriteZeroes,
            other => RequestType::Unsupported(other),
        }
    }

    /// Whether the device writes the data buffers (else it reads them).
    fn device_writes_data(self) -> bool {
        matches!(self, RequestType::In | RequestType::GetId)
    }
}

/// A guest buffer: already checked to lie inside guest memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub addr: GuestAddress,
    pub len: u32,
}

/// A parsed request.
#[derive(Debug)]
pub struct Request {
    pub kind: RequestType,
    pub sector: u64,
    pub data: Vec<Segment>,
    pub data_len: u64,
    pub status: GuestAddress,
}

/// Why a chain is not a valid request. `status` is where to report IOERR, when
/// the chain has a usable status byte.
#[derive(Debug)]
pub struct Invalid {
    pub status: Option<GuestAddress>,
    pub reason: &'static str,
}

/// The request header (struct virtio_blk_outhdr).
const HEADER_LEN: u32 = 16;

/// Parses `chain`; `max_data` bounds the data a request may carry.
pub fn parse<M>(mut chain: DescriptorChain<M>, max_data: u64) -> Result<Request, Invalid>
where
    M: std::ops::Deref,
    M::Target: GuestMemoryBackend,
{
    let descs: Vec<Descriptor> = chain.by_ref().collect();
    let mem = chain.memory();

    let fail = |status, reason| Err(Invalid { status, reason });
    let Some(last) = descs.last() else {
        return fail(None, "empty or unreadable descriptor chain");
    };
    if last.has_next() {
        // The iterator stopped early: a loop, an index past the table, or an
        // unreadable descriptor.
        return fail(None, "descriptor chain loops or is broken");
    }

    // Status: the last byte of the last descriptor, device-writable.
    if !last.is_write_only() || last.len() == 0 {
        return fail(None, "status descriptor is not a writable byte");
    }
    let status = match last.addr().checked_add(u64::from(last.len()) - 1) {
        Some(a) if mem.address_in_range(a) => a,
        _ => return fail(None, "status byte outside guest memory"),
    };
    let status_some = Some(status);

    // Header: the first 16 bytes of the first descriptor, device-readable.
    let first = descs[0];
    if descs.len() < 2 && first.len() < HEADER_LEN + 1 {
        return fail(status_some, "chain has no room for header and status");
    }
    if first.is_write_only() {
        return fail(status_some, "request header is device-writable");
    }
    if first.len() < HEADER_LEN {
        return fail(status_some, "request header shorter than 16 bytes");
    }
    let type_: u32 = mem.read_obj(first.addr()).map_err(|_| Invalid {
        status: status_some,
        reason: "request header outside guest memory",
    })?;
    let sector: u64 = mem
        .read_obj(first.addr().unchecked_add(8))
        .map_err(|_| Invalid {
            status: status_some,
            reason: "request header outside guest memory",
        })?;
    let kind = RequestType::from_u32(u32::from_le(type_));
    let sector = u64::from_le(sector);

    // Data: whatever lies between the header and the status byte.
    let mut raw: Vec<(GuestAddress, u32, bool)> = Vec::with_capacity(descs.len());
    for (i, d) in descs.iter().enumerate() {
        let mut addr = d.addr();
        let mut len = d.len();
        if i == 0 {
            addr = addr.unchecked_add(u64::from(HEADER_LEN));
            len -= HEADER_LEN;
        }
        if i == descs.len() - 1 {
            len -= 1;
        }
        if len > 0 {
            raw.push((addr, len, d.is_write_only()));
        }
    }

    let mut data = Vec::with_capacity(raw.len());
    let mut data_len: u64 = 0;
    for (addr, len, write_only) in raw {
        if write_only != kind.device_writes_data() && !matches!(kind, RequestType::Unsupported(_)) {
            return fail(status_some, "data descriptor has the wrong direction");
        }
        if addr.checked_add(u64::from(len)).is_none() || !mem.check_range(addr, len as usize) {
            return fail(status_some, "data buffer outside guest memory");
        }
        data_len += u64::from(len);
        if data_len > max_data {
            return fail(status_some, "request larger than the device's limits");
        }
        data.push(Segment { addr, len });
    }

    Ok(Request {
        kind,
        sector,
        data,
        data_len,
        status,
    })
}

/// Checks that `len` bytes at `sector` lie inside an image of `size` bytes,
/// returning the byte offset.
pub fn byte_range(sector: u64, len: u64, size: u64) -> Option<u64> {
    let offset = sector.checked_mul(SECTOR_SIZE)?;
    let end = offset.checked_add(len)?;
    (end <= size).then_some(offset)
}
