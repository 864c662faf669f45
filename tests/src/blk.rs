//! virtio-blk on top of the driver: request building, status parsing, config space, and a
//! `BlkDriver` that connects to a vhost-user-blk back end and runs requests.

use std::path::Path;
use std::time::Duration;

use crate::frontend::{
    FrontendConn, FrontendError, Negotiated, VhostUserProtocolFeatures, VIRTIO_F_VERSION_1,
    VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC,
};
use crate::mem::GuestMem;
use crate::virtq::{Desc, QueueError, RawDesc, SplitQueue, UsedElem};

/// Sector size of virtio-blk addressing.
pub const SECTOR_SIZE: u64 = 512;
/// Length of the virtio-blk request header.
pub const HEADER_LEN: u32 = 16;
/// Length of a GET_ID answer.
pub const ID_LEN: u32 = 20;
/// Length of one discard / write-zeroes segment.
pub const SEGMENT_LEN: u32 = 16;
/// Size of the config space we read (up to write_zeroes_may_unmap and padding).
pub const CONFIG_LEN: u32 = 60;

/// Request types.
pub mod req_type {
    #![allow(missing_docs)]
    pub const IN: u32 = 0;
    pub const OUT: u32 = 1;
    pub const FLUSH: u32 = 4;
    pub const GET_ID: u32 = 8;
    pub const GET_LIFETIME: u32 = 10;
    pub const DISCARD: u32 = 11;
    pub const WRITE_ZEROES: u32 = 13;
    pub const SECURE_ERASE: u32 = 14;
}

/// Status byte values.
pub mod status {
    #![allow(missing_docs)]
    pub const OK: u8 = 0;
    pub const IOERR: u8 = 1;
    pub const UNSUPP: u8 = 2;
    /// What we prefill the status byte with, so "not written" is visible.
    pub const UNWRITTEN: u8 = 0xff;
}

/// virtio-blk feature bits (as masks).
pub mod features {
    #![allow(missing_docs)]
    pub const SIZE_MAX: u64 = 1 << 1;
    pub const SEG_MAX: u64 = 1 << 2;
    pub const GEOMETRY: u64 = 1 << 4;
    pub const RO: u64 = 1 << 5;
    pub const BLK_SIZE: u64 = 1 << 6;
    pub const FLUSH: u64 = 1 << 9;
    pub const TOPOLOGY: u64 = 1 << 10;
    pub const CONFIG_WCE: u64 = 1 << 11;
    pub const MQ: u64 = 1 << 12;
    pub const DISCARD: u64 = 1 << 13;
    pub const WRITE_ZEROES: u64 = 1 << 14;
}

/// Name a status byte.
pub fn status_name(s: u8) -> &'static str {
    match s {
        status::OK => "OK",
        status::IOERR => "IOERR",
        status::UNSUPP => "UNSUPP",
        status::UNWRITTEN => "<not written>",
        _ => "<invalid>",
    }
}

/// The virtio-blk config space (the fields up to offset 60).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct BlkConfig {
    pub capacity: u64,
    pub size_max: u32,
    pub seg_max: u32,
    pub cylinders: u16,
    pub heads: u8,
    pub sectors: u8,
    pub blk_size: u32,
    pub physical_block_exp: u8,
    pub alignment_offset: u8,
    pub min_io_size: u16,
    pub opt_io_size: u32,
    pub writeback: u8,
    pub num_queues: u16,
    pub max_discard_sectors: u32,
    pub max_discard_seg: u32,
    pub discard_sector_alignment: u32,
    pub max_write_zeroes_sectors: u32,
    pub max_write_zeroes_seg: u32,
    pub write_zeroes_may_unmap: u8,
}

impl BlkConfig {
    /// Parse config bytes (missing bytes read as 0).
    pub fn parse(b: &[u8]) -> Self {
        let mut v = b.to_vec();
        v.resize(CONFIG_LEN as usize, 0);
        let u8_ = |o: usize| v[o];
        let u16_ = |o: usize| u16::from_le_bytes([v[o], v[o + 1]]);
        let u32_ = |o: usize| u32::from_le_bytes(v[o..o + 4].try_into().unwrap());
        BlkConfig {
            capacity: u64::from_le_bytes(v[0..8].try_into().unwrap()),
            size_max: u32_(8),
            seg_max: u32_(12),
            cylinders: u16_(16),
            heads: u8_(18),
            sectors: u8_(19),
            blk_size: u32_(20),
            physical_block_exp: u8_(24),
            alignment_offset: u8_(25),
            min_io_size: u16_(26),
            opt_io_size: u32_(28),
            writeback: u8_(32),
            num_queues: u16_(34),
            max_discard_sectors: u32_(36),
            max_discard_seg: u32_(40),
            discard_sector_alignment: u32_(44),
            max_write_zeroes_sectors: u32_(48),
            max_write_zeroes_seg: u32_(52),
            write_zeroes_may_unmap: u8_(56),
        }
    }
}

/// The 16-byte request header.
pub fn header_bytes(req_type: u32, sector: u64) -> [u8; 16] {
    let mut h = [0u8; 16];
    h[0..4].copy_from_slice(&req_type.to_le_bytes());
    h[8..16].copy_from_slice(&sector.to_le_bytes());
    h
}

/// One discard / write-zeroes segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// First sector.
    pub sector: u64,
    /// Number of sectors.
    pub num_sectors: u32,
    /// Bit 0: unmap (write-zeroes only).
    pub flags: u32,
}

impl Segment {
    /// Encode as the 16 bytes the device reads.
    pub fn bytes(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[0..8].copy_from_slice(&self.sector.to_le_bytes());
        b[8..12].copy_from_slice(&self.num_sectors.to_le_bytes());
        b[12..16].copy_from_slice(&self.flags.to_le_bytes());
        b
    }
}

/// A well-formed request: header, device-readable data segments, device-writable data
/// segments, status byte.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlkRequest {
    /// Request type ([`req_type`]).
    pub req_type: u32,
    /// Sector field of the header.
    pub sector: u64,
    /// Device-readable data buffers (OUT data, discard segments).
    pub out: Vec<Vec<u8>>,
    /// Lengths of device-writable data buffers (IN data, GET_ID).
    pub inp: Vec<u32>,
    /// Put the chain in an indirect table.
    pub indirect: bool,
}

impl BlkRequest {
    /// Any type, no data.
    pub fn new(req_type: u32, sector: u64) -> Self {
        BlkRequest {
            req_type,
            sector,
            out: vec![],
            inp: vec![],
            indirect: false,
        }
    }
    /// Read `len` bytes at `sector`.
    pub fn read(sector: u64, len: u32) -> Self {
        Self::new(req_type::IN, sector).with_in(len)
    }
    /// Write `data` at `sector`.
    pub fn write(sector: u64, data: &[u8]) -> Self {
        Self::new(req_type::OUT, sector).with_out(data.to_vec())
    }
    /// Flush.
    pub fn flush() -> Self {
        Self::new(req_type::FLUSH, 0)
    }
    /// Get the device id (20 bytes).
    pub fn get_id() -> Self {
        Self::new(req_type::GET_ID, 0).with_in(ID_LEN)
    }
    /// Discard segments.
    pub fn discard(segs: &[Segment]) -> Self {
        Self::new(req_type::DISCARD, 0).with_out(segs.iter().flat_map(|s| s.bytes()).collect())
    }
    /// Write-zeroes segments.
    pub fn write_zeroes(segs: &[Segment]) -> Self {
        Self::new(req_type::WRITE_ZEROES, 0).with_out(segs.iter().flat_map(|s| s.bytes()).collect())
    }
    /// Add a device-readable buffer.
    pub fn with_out(mut self, data: Vec<u8>) -> Self {
        self.out.push(data);
        self
    }
    /// Add a device-writable buffer.
    pub fn with_in(mut self, len: u32) -> Self {
        self.inp.push(len);
        self
    }
    /// Send through an indirect descriptor table.
    pub fn indirect(mut self) -> Self {
        self.indirect = true;
        self
    }
    /// Split every data buffer into pieces of at most `n` bytes (multi-descriptor chains).
    pub fn split(mut self, n: usize) -> Self {
        self.out = self
            .out
            .iter()
            .flat_map(|d| d.chunks(n.max(1)).map(|c| c.to_vec()).collect::<Vec<_>>())
            .collect();
        let mut inp = Vec::new();
        for &l in &self.inp {
            let mut left = l;
            while left > 0 {
                let c = left.min(n.max(1) as u32);
                inp.push(c);
                left -= c;
            }
        }
        self.inp = inp;
        self
    }
}

/// The outcome of a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlkCompletion {
    /// Status byte ([`status::UNWRITTEN`] if the device did not write it).
    pub status: u8,
    /// The used element's len (bytes the device reports written).
    pub used_len: u32,
    /// Contents of the device-writable data buffers, concatenated.
    pub data: Vec<u8>,
}

/// A request laid out in guest memory by [`BlkDriver::build`].
#[derive(Clone, Debug)]
pub struct BuiltRequest {
    /// The descriptor chain (header, data, status).
    pub chain: Vec<Desc>,
    /// Guest address and length of each device-writable data buffer.
    pub ins: Vec<(u64, u32)>,
    /// Guest address of the status byte.
    pub status: u64,
}

/// Errors of the blk driver.
#[derive(Debug, thiserror::Error)]
pub enum BlkError {
    /// Front end error.
    #[error(transparent)]
    Frontend(#[from] FrontendError),
    /// Queue error (includes timeouts).
    #[error(transparent)]
    Queue(#[from] QueueError),
    /// Memory error.
    #[error(transparent)]
    Mem(#[from] crate::mem::MemError),
    /// The device completed a chain we were not waiting for.
    #[error("completed head {got}, expected {want}")]
    WrongHead { got: u32, want: u16 },
}

/// Options of [`BlkDriver::connect`].
#[derive(Clone, Debug)]
pub struct BlkOptions {
    /// Queues to start (None: all the back end offers).
    pub num_queues: Option<usize>,
    /// Entries per queue.
    pub queue_size: u16,
    /// Virtio features we are willing to ack (masked with what the back end offers).
    pub features: u64,
    /// Protocol features we are willing to ack.
    pub protocol: VhostUserProtocolFeatures,
    /// Guest memory regions `(gpa, size)`.
    pub mem_layout: Vec<(u64, usize)>,
    /// Time limit for each request.
    pub timeout: Duration,
    /// Time limit for connecting.
    pub connect_timeout: Duration,
}

impl Default for BlkOptions {
    fn default() -> Self {
        BlkOptions {
            num_queues: None,
            queue_size: 128,
            features: VIRTIO_F_VERSION_1
                | VIRTIO_RING_F_INDIRECT_DESC
                | VIRTIO_RING_F_EVENT_IDX
                | features::SIZE_MAX
                | features::SEG_MAX
                | features::GEOMETRY
                | features::RO
                | features::BLK_SIZE
                | features::FLUSH
                | features::TOPOLOGY
                | features::CONFIG_WCE
                | features::MQ
                | features::DISCARD
                | features::WRITE_ZEROES,
            protocol: VhostUserProtocolFeatures::MQ
                | VhostUserProtocolFeatures::REPLY_ACK
                | VhostUserProtocolFeatures::CONFIG
                | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS,
            mem_layout: vec![(0, crate::mem::DEFAULT_MEM_SIZE)],
            timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
        }
    }
}

/// A virtio-blk driver on a vhost-user-blk socket.
pub struct BlkDriver {
    /// The connection.
    pub conn: FrontendConn,
    /// Guest memory.
    pub mem: GuestMem,
    /// The started queues (queue `i` is ring `i`).
    pub queues: Vec<SplitQueue>,
    /// What was negotiated.
    pub negotiated: Negotiated,
    /// Config space (default if the CONFIG protocol feature is missing).
    pub config: BlkConfig,
    /// Time limit for each request.
    pub timeout: Duration,
}

impl BlkDriver {
    /// Connect with default options.
    pub fn connect(socket: impl AsRef<Path>) -> Result<Self, BlkError> {
        Self::connect_with(socket, &BlkOptions::default())
    }

    /// Connect, negotiate, read the config, set up guest memory and start the queues.
    pub fn connect_with(socket: impl AsRef<Path>, opts: &BlkOptions) -> Result<Self, BlkError> {
        let mut conn = FrontendConn::connect(socket, opts.connect_timeout)?;
        let negotiated = conn.negotiate(opts.features, opts.protocol)?;
        let config = if negotiated
            .protocol
            .contains(VhostUserProtocolFeatures::CONFIG)
        {
            BlkConfig::parse(&conn.get_config(0, CONFIG_LEN)?)
        } else {
            BlkConfig::default()
        };
        let mut mem = GuestMem::with_regions(&opts.mem_layout)?;
        let n = opts
            .num_queues
            .unwrap_or(negotiated.queue_num.max(1) as usize);
        let mut queues = Vec::new();
        for _ in 0..n {
            queues.push(SplitQueue::new(&mut mem, opts.queue_size)?);
        }
        conn.start_queues(&mem, &mut queues)?;
        Ok(BlkDriver {
            conn,
            mem,
            queues,
            negotiated,
            config,
            timeout: opts.timeout,
        })
    }

    /// Whether virtio feature `f` was acked.
    pub fn has_feature(&self, f: u64) -> bool {
        self.negotiated.acked & f == f
    }

    /// A header in guest memory.
    pub fn alloc_header(&mut self, req_type: u32, sector: u64) -> Result<u64, BlkError> {
        Ok(self.mem.alloc_bytes(&header_bytes(req_type, sector), 16)?)
    }

    /// A status byte in guest memory, prefilled with [`status::UNWRITTEN`].
    pub fn alloc_status(&mut self) -> Result<u64, BlkError> {
        Ok(self.mem.alloc_bytes(&[status::UNWRITTEN], 1)?)
    }

    /// Read one byte of guest memory (a status).
    pub fn status_at(&self, gpa: u64) -> Result<u8, BlkError> {
        Ok(self.mem.read(gpa, 1)?[0])
    }

    /// Publish a chain on queue `q` and kick.
    pub fn submit_chain(&mut self, q: usize, chain: &[Desc]) -> Result<u16, BlkError> {
        let head = self.queues[q].add_chain(&self.mem, chain)?;
        self.queues[q].kick()?;
        Ok(head)
    }

    /// Publish a chain through an indirect table on queue `q` and kick.
    pub fn submit_indirect(&mut self, q: usize, chain: &[Desc]) -> Result<u16, BlkError> {
        let head = self.queues[q].add_indirect(&mut self.mem, chain)?;
        self.queues[q].kick()?;
        Ok(head)
    }

    /// Publish raw descriptors on queue `q` and kick.
    pub fn submit_raw(&mut self, q: usize, descs: &[RawDesc]) -> Result<u16, BlkError> {
        let head = self.queues[q].add_raw(&self.mem, descs)?;
        self.queues[q].kick()?;
        Ok(head)
    }

    /// Wait for the next used element of queue `q`.
    pub fn wait(&mut self, q: usize) -> Result<UsedElem, BlkError> {
        let t = self.timeout;
        Ok(self.queues[q].wait_used(&self.mem, t)?)
    }

    /// Wait for the used element of chain `head` (the next one on the queue).
    pub fn wait_head(&mut self, q: usize, head: u16) -> Result<UsedElem, BlkError> {
        let e = self.wait(q)?;
        if e.id != head as u32 {
            return Err(BlkError::WrongHead {
                got: e.id,
                want: head,
            });
        }
        Ok(e)
    }

    /// Lay out `req` in guest memory (not yet published).
    pub fn build(&mut self, req: &BlkRequest) -> Result<BuiltRequest, BlkError> {
        let h = self.alloc_header(req.req_type, req.sector)?;
        let mut chain = vec![Desc::readable(h, HEADER_LEN)];
        for d in &req.out {
            let a = self.mem.alloc_bytes(d, 8)?;
            chain.push(Desc::readable(a, d.len() as u32));
        }
        let mut ins = Vec::new();
        for &l in &req.inp {
            let a = self.mem.alloc(l as u64, 8)?;
            // A pattern, so "the device did not write here" is visible.
            self.mem.fill(a, 0xa5, l as usize)?;
            chain.push(Desc::writable(a, l));
            ins.push((a, l));
        }
        let s = self.alloc_status()?;
        chain.push(Desc::writable(s, 1));
        Ok(BuiltRequest {
            chain,
            ins,
            status: s,
        })
    }

    /// Submit `req` on queue `q` and wait for it. Guest memory used by the request is freed
    /// after it completes.
    pub fn run_on(&mut self, q: usize, req: &BlkRequest) -> Result<BlkCompletion, BlkError> {
        let mark = self.mem.alloc_mark();
        let BuiltRequest {
            chain,
            ins,
            status: s,
        } = self.build(req)?;
        let head = if req.indirect {
            self.submit_indirect(q, &chain)?
        } else {
            self.submit_chain(q, &chain)?
        };
        let e = self.wait_head(q, head)?;
        let mut data = Vec::new();
        for (a, l) in ins {
            data.extend(self.mem.read(a, l as usize)?);
        }
        let status = self.status_at(s)?;
        self.mem.alloc_reset(mark);
        Ok(BlkCompletion {
            status,
            used_len: e.len,
            data,
        })
    }

    /// Run `req` on queue 0.
    pub fn run(&mut self, req: &BlkRequest) -> Result<BlkCompletion, BlkError> {
        self.run_on(0, req)
    }

    /// Read `len` bytes at `sector` (queue 0): (status, data).
    pub fn read(&mut self, sector: u64, len: u32) -> Result<(u8, Vec<u8>), BlkError> {
        let c = self.run(&BlkRequest::read(sector, len))?;
        Ok((c.status, c.data))
    }

    /// Write at `sector` (queue 0): status.
    pub fn write(&mut self, sector: u64, data: &[u8]) -> Result<u8, BlkError> {
        Ok(self.run(&BlkRequest::write(sector, data))?.status)
    }

    /// Flush (queue 0): status.
    pub fn flush(&mut self) -> Result<u8, BlkError> {
        Ok(self.run(&BlkRequest::flush())?.status)
    }

    /// GET_ID (queue 0): (status, 20 id bytes).
    pub fn get_id(&mut self) -> Result<(u8, Vec<u8>), BlkError> {
        let c = self.run(&BlkRequest::get_id())?;
        Ok((c.status, c.data))
    }

    /// Discard (queue 0): status.
    pub fn discard(&mut self, segs: &[Segment]) -> Result<u8, BlkError> {
        Ok(self.run(&BlkRequest::discard(segs))?.status)
    }

    /// Write zeroes (queue 0): status.
    pub fn write_zeroes(&mut self, segs: &[Segment]) -> Result<u8, BlkError> {
        Ok(self.run(&BlkRequest::write_zeroes(segs))?.status)
    }

    /// Stop every ring with GET_VRING_BASE; returns the bases.
    pub fn stop(&mut self) -> Result<Vec<u32>, BlkError> {
        let mut v = Vec::new();
        for i in 0..self.queues.len() {
            v.push(self.conn.get_vring_base(i)?);
        }
        Ok(v)
    }

    /// Close the connection.
    pub fn close(self) {
        self.conn.close()
    }
}

/// The id string of a GET_ID answer (up to the first NUL).
pub fn id_string(id: &[u8]) -> String {
    let end = id.iter().position(|&b| b == 0).unwrap_or(id.len());
    String::from_utf8_lossy(&id[..end]).into_owned()
}
