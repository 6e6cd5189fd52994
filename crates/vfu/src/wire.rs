//! The vfio-user wire format: the 16-byte header and every command's payload, decoded into typed
//! values and encoded back. Pure functions over byte slices, no I/O.
//!
//! Decoding validates lengths before anything is allocated: a payload must be exactly (or at
//! least, for variable parts) as long as its fixed fields say, counts are checked against the
//! negotiated `max_data_xfer_size`, and DMA address ranges are checked with `checked_add`. Region
//! offsets are the device's to check: the kernel answers an offset at or past the region end with
//! EINVAL whatever the count, before any arithmetic.

use vfio_bindings::bindings::vfio::{
    vfio_irq_info, vfio_irq_set, vfio_region_info, vfio_region_sparse_mmap_area,
    VFIO_REGION_INFO_CAP_SPARSE_MMAP,
};

use crate::errno::Errno;

/// Size of the message header.
pub const HEADER_SIZE: usize = 16;
/// Default `max_data_xfer_size` (1 MiB) from the spec.
pub const DEFAULT_MAX_DATA_XFER_SIZE: u32 = 1 << 20;
/// Default `max_msg_fds` from the spec.
pub const DEFAULT_MAX_MSG_FDS: u32 = 1;
/// Default `max_dma_maps` from the spec.
pub const DEFAULT_MAX_DMA_MAPS: u32 = 65535;
/// Largest fixed part of any message payload, added to `max_data_xfer_size` to bound messages.
pub const MAX_FIXED_PAYLOAD: u32 = 4096;

/// The largest message either side accepts once `max_data_xfer_size` is known: a header, the
/// data, and the fixed part of the largest command around it.
pub fn max_message_size(max_data_xfer_size: u32) -> usize {
    HEADER_SIZE + max_data_xfer_size as usize + MAX_FIXED_PAYLOAD as usize
}

/// Message type bits of `flags`.
pub const FLAG_TYPE_MASK: u32 = 0xf;
/// Type value of a command.
pub const FLAG_TYPE_COMMAND: u32 = 0;
/// Type value of a reply.
pub const FLAG_TYPE_REPLY: u32 = 1;
/// The sender wants no reply.
pub const FLAG_NO_REPLY: u32 = 1 << 4;
/// The reply reports an error in `error`.
pub const FLAG_ERROR: u32 = 1 << 5;

/// Command ids.
#[allow(missing_docs)]
pub mod cmd {
    pub const VERSION: u16 = 1;
    pub const DMA_MAP: u16 = 2;
    pub const DMA_UNMAP: u16 = 3;
    pub const DEVICE_GET_INFO: u16 = 4;
    pub const DEVICE_GET_REGION_INFO: u16 = 5;
    pub const DEVICE_GET_REGION_IO_FDS: u16 = 6;
    pub const DEVICE_GET_IRQ_INFO: u16 = 7;
    pub const DEVICE_SET_IRQS: u16 = 8;
    pub const REGION_READ: u16 = 9;
    pub const REGION_WRITE: u16 = 10;
    pub const DMA_READ: u16 = 11;
    pub const DMA_WRITE: u16 = 12;
    pub const DEVICE_RESET: u16 = 13;
    pub const REGION_WRITE_MULTI: u16 = 15;
    pub const DEVICE_FEATURE: u16 = 16;
    pub const MIG_DATA_READ: u16 = 17;
    pub const MIG_DATA_WRITE: u16 = 18;
}

/// The message header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Header {
    /// Chosen by the sender, echoed in the reply.
    pub msg_id: u16,
    /// Command id.
    pub cmd: u16,
    /// Whole message size including the header.
    pub msg_size: u32,
    /// Type, No_reply and Error bits.
    pub flags: u32,
    /// errno of an error reply.
    pub error: u32,
}

impl Header {
    /// Decodes the first 16 bytes of `buf`.
    pub fn decode(buf: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(buf);
        Ok(Self {
            msg_id: r.u16()?,
            cmd: r.u16()?,
            msg_size: r.u32()?,
            flags: r.u32()?,
            error: r.u32()?,
        })
    }

    /// Encodes into 16 bytes.
    pub fn encode(&self) -> [u8; HEADER_SIZE] {
        let mut out = [0u8; HEADER_SIZE];
        out[0..2].copy_from_slice(&self.msg_id.to_ne_bytes());
        out[2..4].copy_from_slice(&self.cmd.to_ne_bytes());
        out[4..8].copy_from_slice(&self.msg_size.to_ne_bytes());
        out[8..12].copy_from_slice(&self.flags.to_ne_bytes());
        out[12..16].copy_from_slice(&self.error.to_ne_bytes());
        out
    }

    /// The message type (command or reply).
    pub fn msg_type(&self) -> u32 {
        self.flags & FLAG_TYPE_MASK
    }

    /// True when the sender asked for no reply.
    pub fn no_reply(&self) -> bool {
        self.flags & FLAG_NO_REPLY != 0
    }

    /// True for an error reply.
    pub fn is_error(&self) -> bool {
        self.flags & FLAG_ERROR != 0
    }

    /// Payload length, or an error if `msg_size` is smaller than a header.
    pub fn payload_len(&self) -> Result<usize, WireError> {
        let size = usize::try_from(self.msg_size).map_err(|_| WireError::BadSize(self.msg_size))?;
        size.checked_sub(HEADER_SIZE)
            .ok_or(WireError::BadSize(self.msg_size))
    }

    /// The reply header for a command with `payload_len` bytes of reply payload.
    pub fn reply(&self, payload_len: usize) -> Self {
        Self {
            msg_id: self.msg_id,
            cmd: self.cmd,
            msg_size: u32::try_from(HEADER_SIZE + payload_len).unwrap_or(u32::MAX),
            flags: FLAG_TYPE_REPLY,
            error: 0,
        }
    }

    /// The error reply header for this command.
    pub fn error_reply(&self, errno: Errno) -> Self {
        Self {
            msg_id: self.msg_id,
            cmd: self.cmd,
            msg_size: HEADER_SIZE as u32,
            flags: FLAG_TYPE_REPLY | FLAG_ERROR,
            error: u32::try_from(errno as i32).unwrap_or(0),
        }
    }
}

/// Why a message could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The payload ended before a fixed field.
    #[error("payload too short: needed {needed} bytes, have {have}")]
    Short {
        /// Bytes needed.
        needed: usize,
        /// Bytes available.
        have: usize,
    },
    /// `msg_size` is below the header size or not representable.
    #[error("message size {0} is invalid")]
    BadSize(u32),
    /// A field holds a value the protocol does not allow.
    #[error("invalid {field}: {value:#x}")]
    Invalid {
        /// Which field.
        field: &'static str,
        /// Its value.
        value: u64,
    },
    /// A count exceeds the negotiated `max_data_xfer_size`.
    #[error("count {count} exceeds max_data_xfer_size {max}")]
    TooLarge {
        /// The count asked for.
        count: u64,
        /// The limit.
        max: u32,
    },
    /// offset + count overflows.
    #[error("offset {offset:#x} + count {count:#x} overflows")]
    Overflow {
        /// Offset.
        offset: u64,
        /// Count.
        count: u64,
    },
    /// The VERSION JSON is not valid.
    #[error("invalid version data: {0}")]
    Json(String),
    /// Unknown command id.
    #[error("unknown command {0}")]
    UnknownCommand(u16),
}

impl WireError {
    /// The errno an error reply carries for this decode failure.
    pub fn errno(&self) -> Errno {
        match self {
            WireError::TooLarge { .. } => Errno::E2BIG,
            WireError::Overflow { .. } => Errno::EOVERFLOW,
            WireError::UnknownCommand(_) => Errno::ENOSYS,
            _ => Errno::EINVAL,
        }
    }
}

/// A bounds-checked little cursor over a payload (host byte order, as the spec says).
#[derive(Debug)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// Starts at the beginning of `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    /// Takes the next `n` bytes.
    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        let end = self.pos.checked_add(n).ok_or(WireError::Short {
            needed: usize::MAX,
            have: self.buf.len(),
        })?;
        let out = self.buf.get(self.pos..end).ok_or(WireError::Short {
            needed: end,
            have: self.buf.len(),
        })?;
        self.pos = end;
        Ok(out)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], WireError> {
        let b = self.bytes(N)?;
        let mut out = [0u8; N];
        out.copy_from_slice(b);
        Ok(out)
    }

    /// Next u16.
    pub fn u16(&mut self) -> Result<u16, WireError> {
        Ok(u16::from_ne_bytes(self.array()?))
    }

    /// Next u32.
    pub fn u32(&mut self) -> Result<u32, WireError> {
        Ok(u32::from_ne_bytes(self.array()?))
    }

    /// Next u64.
    pub fn u64(&mut self) -> Result<u64, WireError> {
        Ok(u64::from_ne_bytes(self.array()?))
    }

    /// The rest of the buffer.
    pub fn rest(&mut self) -> &'a [u8] {
        let out = self.buf.get(self.pos..).unwrap_or(&[]);
        self.pos = self.buf.len();
        out
    }

    /// Bytes not yet read.
    pub fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }
}

/// Appends host-order integers to a buffer.
pub trait Put {
    /// Appends a u16.
    fn put_u16(&mut self, v: u16);
    /// Appends a u32.
    fn put_u32(&mut self, v: u32);
    /// Appends a u64.
    fn put_u64(&mut self, v: u64);
}

impl Put for Vec<u8> {
    fn put_u16(&mut self, v: u16) {
        self.extend_from_slice(&v.to_ne_bytes());
    }
    fn put_u32(&mut self, v: u32) {
        self.extend_from_slice(&v.to_ne_bytes());
    }
    fn put_u64(&mut self, v: u64) {
        self.extend_from_slice(&v.to_ne_bytes());
    }
}

/// VERSION payload: major, minor, and the optional JSON capabilities text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    /// Major version.
    pub major: u16,
    /// Minor version.
    pub minor: u16,
    /// The JSON text without its terminating NUL (empty when absent).
    pub json: String,
}

/// Capabilities negotiated by VERSION.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caps {
    /// Most fds one message may carry.
    pub max_msg_fds: u32,
    /// Largest `count` of a data transfer.
    pub max_data_xfer_size: u32,
    /// Most simultaneous DMA regions.
    pub max_dma_maps: u32,
    /// Supported DMA page sizes.
    pub pgsizes: u64,
    /// REGION_WRITE_MULTI allowed.
    pub write_multiple: bool,
    /// Twin-socket mode: server-to-client commands (DMA_READ/DMA_WRITE) on a socket of their
    /// own. In a request: the sender supports it; in a reply: it is set up, and `fd_index`
    /// names the reply's fd that is the client end.
    pub twin_socket: Option<u32>,
}

impl Default for Caps {
    fn default() -> Self {
        Self {
            max_msg_fds: DEFAULT_MAX_MSG_FDS,
            max_data_xfer_size: DEFAULT_MAX_DATA_XFER_SIZE,
            max_dma_maps: DEFAULT_MAX_DMA_MAPS,
            pgsizes: 4096,
            write_multiple: false,
            twin_socket: None,
        }
    }
}

impl Version {
    /// Decodes a VERSION payload; the JSON must be UTF-8 and NUL-terminated when present.
    pub fn decode(payload: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(payload);
        let major = r.u16()?;
        let minor = r.u16()?;
        let rest = r.rest();
        let text = match rest.split_last() {
            None => "",
            Some((0, body)) => {
                std::str::from_utf8(body).map_err(|e| WireError::Json(e.to_string()))?
            }
            Some(_) => return Err(WireError::Json("version data is not NUL-terminated".into())),
        };
        Ok(Self {
            major,
            minor,
            json: text.trim_end_matches('\0').to_string(),
        })
    }

    /// Encodes (appending the NUL when there is JSON).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(5 + self.json.len());
        out.put_u16(self.major);
        out.put_u16(self.minor);
        if !self.json.is_empty() {
            out.extend_from_slice(self.json.as_bytes());
            out.push(0);
        }
        out
    }

    /// Parses the capabilities object; absent fields take the spec's defaults, unknown ones
    /// are ignored (peers add their own), and a field of the wrong type is an error.
    pub fn caps(&self) -> Result<Caps, WireError> {
        let mut caps = Caps::default();
        if self.json.trim().is_empty() {
            return Ok(caps);
        }
        let doc: VersionJson =
            serde_json::from_str(&self.json).map_err(|e| WireError::Json(e.to_string()))?;
        let Some(c) = doc.capabilities else {
            return Ok(caps);
        };
        caps.max_msg_fds = c.max_msg_fds.unwrap_or(caps.max_msg_fds);
        caps.max_data_xfer_size = c.max_data_xfer_size.unwrap_or(caps.max_data_xfer_size);
        caps.max_dma_maps = c.max_dma_maps.unwrap_or(caps.max_dma_maps);
        caps.pgsizes = c.pgsizes.unwrap_or(caps.pgsizes);
        caps.write_multiple = c.write_multiple.unwrap_or(caps.write_multiple);
        caps.twin_socket = c
            .twin_socket
            .and_then(|t| t.supported.then_some(t.fd_index));
        Ok(caps)
    }

    /// JSON text describing `caps`.
    pub fn caps_json(caps: &Caps) -> String {
        let doc = VersionJson {
            capabilities: Some(CapsJson {
                max_msg_fds: Some(caps.max_msg_fds),
                max_data_xfer_size: Some(caps.max_data_xfer_size),
                max_dma_maps: Some(caps.max_dma_maps),
                pgsizes: Some(caps.pgsizes),
                write_multiple: Some(caps.write_multiple),
                _migration: None,
                twin_socket: caps.twin_socket.map(|fd_index| TwinSocketJson {
                    supported: true,
                    fd_index,
                }),
            }),
        };
        serde_json::to_string(&doc).unwrap_or_default()
    }
}

/// The JSON after VERSION's numbers, as the spec lays it out.
#[derive(Debug, serde::Deserialize, serde::Serialize)]
struct VersionJson {
    #[serde(default)]
    capabilities: Option<CapsJson>,
}

/// `capabilities`: every field optional (absent means the spec's default).
#[derive(Debug, serde::Deserialize, serde::Serialize)]
struct CapsJson {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    max_msg_fds: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    max_data_xfer_size: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    max_dma_maps: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pgsizes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    write_multiple: Option<bool>,
    /// The legacy migration object older peers still send: accepted (it must be an object),
    /// not used and never echoed.
    #[serde(default, skip_serializing, rename = "migration")]
    _migration: Option<LegacyMigration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    twin_socket: Option<TwinSocketJson>,
}

/// `capabilities.migration` of older peers: any object (its fields are not ours to use).
#[derive(Debug, serde::Deserialize)]
struct LegacyMigration {}

/// `capabilities.twin_socket`.
#[derive(Debug, serde::Deserialize, serde::Serialize)]
struct TwinSocketJson {
    #[serde(default)]
    supported: bool,
    #[serde(default)]
    fd_index: u32,
}

/// DMA_MAP payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DmaMap {
    /// Size of the structure (32).
    pub argsz: u32,
    /// READ (bit 0) / WRITE (bit 1).
    pub flags: u32,
    /// Offset into the fd.
    pub offset: u64,
    /// DMA address.
    pub address: u64,
    /// Size.
    pub size: u64,
}

/// DMA_MAP flag: readable.
pub const DMA_FLAG_READ: u32 = 1;
/// DMA_MAP flag: writeable.
pub const DMA_FLAG_WRITE: u32 = 2;

impl DmaMap {
    /// Encoded size.
    pub const SIZE: usize = 32;

    /// Decodes and checks that address+size and offset+size do not overflow.
    pub fn decode(payload: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(payload);
        let m = Self {
            argsz: r.u32()?,
            flags: r.u32()?,
            offset: r.u64()?,
            address: r.u64()?,
            size: r.u64()?,
        };
        if m.flags & !(DMA_FLAG_READ | DMA_FLAG_WRITE) != 0 {
            return Err(WireError::Invalid {
                field: "dma flags",
                value: u64::from(m.flags),
            });
        }
        if m.size == 0 {
            return Err(WireError::Invalid {
                field: "dma size",
                value: 0,
            });
        }
        m.address.checked_add(m.size).ok_or(WireError::Overflow {
            offset: m.address,
            count: m.size,
        })?;
        m.offset.checked_add(m.size).ok_or(WireError::Overflow {
            offset: m.offset,
            count: m.size,
        })?;
        Ok(m)
    }

    /// Encodes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(Self::SIZE);
        out.put_u32(self.argsz);
        out.put_u32(self.flags);
        out.put_u64(self.offset);
        out.put_u64(self.address);
        out.put_u64(self.size);
        out
    }
}

/// DMA_UNMAP payload (also the reply payload).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DmaUnmap {
    /// Max reply size.
    pub argsz: u32,
    /// Unused (dirty bitmap flags are not supported).
    pub flags: u32,
    /// DMA address.
    pub address: u64,
    /// Size.
    pub size: u64,
}

impl DmaUnmap {
    /// Encoded size.
    pub const SIZE: usize = 24;

    /// Decodes.
    pub fn decode(payload: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(payload);
        Ok(Self {
            argsz: r.u32()?,
            flags: r.u32()?,
            address: r.u64()?,
            size: r.u64()?,
        })
    }

    /// Encodes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(Self::SIZE);
        out.put_u32(self.argsz);
        out.put_u32(self.flags);
        out.put_u64(self.address);
        out.put_u64(self.size);
        out
    }
}

/// DEVICE_GET_INFO payload (request and reply).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DeviceInfoMsg {
    /// Size needed for the reply (16).
    pub argsz: u32,
    /// VFIO_DEVICE_FLAGS_*.
    pub flags: u32,
    /// Number of regions.
    pub num_regions: u32,
    /// Number of IRQ indices.
    pub num_irqs: u32,
}

impl DeviceInfoMsg {
    /// Encoded size.
    pub const SIZE: usize = 16;

    /// Decodes.
    pub fn decode(payload: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(payload);
        Ok(Self {
            argsz: r.u32()?,
            flags: r.u32()?,
            num_regions: r.u32()?,
            num_irqs: r.u32()?,
        })
    }

    /// Encodes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(Self::SIZE);
        out.put_u32(self.argsz);
        out.put_u32(self.flags);
        out.put_u32(self.num_regions);
        out.put_u32(self.num_irqs);
        out
    }
}

/// Size of `vfio_region_info` on the wire.
pub const REGION_INFO_SIZE: usize = 32;

/// Decodes a `vfio_region_info` (the request, or the head of a reply).
pub fn decode_region_info(payload: &[u8]) -> Result<vfio_region_info, WireError> {
    let mut r = Reader::new(payload);
    Ok(vfio_region_info {
        argsz: r.u32()?,
        flags: r.u32()?,
        index: r.u32()?,
        cap_offset: r.u32()?,
        size: r.u64()?,
        offset: r.u64()?,
    })
}

/// Encodes a `vfio_region_info`.
pub fn encode_region_info(info: &vfio_region_info, out: &mut Vec<u8>) {
    out.put_u32(info.argsz);
    out.put_u32(info.flags);
    out.put_u32(info.index);
    out.put_u32(info.cap_offset);
    out.put_u64(info.size);
    out.put_u64(info.offset);
}

/// Size of the sparse-mmap capability with `n` areas.
pub fn sparse_cap_size(n: usize) -> Option<usize> {
    n.checked_mul(16)?.checked_add(16)
}

/// Encodes a sparse-mmap capability (header id 1 version 1, `next` = 0, then the areas).
pub fn encode_sparse_cap(areas: &[vfio_region_sparse_mmap_area], out: &mut Vec<u8>) {
    out.put_u16(VFIO_REGION_INFO_CAP_SPARSE_MMAP as u16);
    out.put_u16(1);
    out.put_u32(0);
    out.put_u32(u32::try_from(areas.len()).unwrap_or(u32::MAX));
    out.put_u32(0);
    for a in areas {
        out.put_u64(a.offset);
        out.put_u64(a.size);
    }
}

/// Walks a region-info reply's capability chain and returns the sparse-mmap areas, if any.
/// Offsets are relative to the start of `vfio_region_info`, i.e. of `payload`.
pub fn decode_sparse_areas(
    payload: &[u8],
    info: &vfio_region_info,
) -> Result<Vec<vfio_region_sparse_mmap_area>, WireError> {
    let mut areas = Vec::new();
    if info.cap_offset == 0 {
        return Ok(areas);
    }
    let mut next = info.cap_offset as usize;
    let mut hops = 0;
    while next != 0 {
        hops += 1;
        if hops > 16 || next < REGION_INFO_SIZE {
            return Err(WireError::Invalid {
                field: "cap_offset",
                value: next as u64,
            });
        }
        let cap = payload.get(next..).ok_or(WireError::Short {
            needed: next,
            have: payload.len(),
        })?;
        let mut r = Reader::new(cap);
        let id = r.u16()?;
        let _version = r.u16()?;
        let n = r.u32()? as usize;
        if id == VFIO_REGION_INFO_CAP_SPARSE_MMAP as u16 {
            let nr = r.u32()? as usize;
            let _reserved = r.u32()?;
            if nr > r.remaining() / 16 {
                return Err(WireError::Short {
                    needed: nr.saturating_mul(16),
                    have: r.remaining(),
                });
            }
            for _ in 0..nr {
                areas.push(vfio_region_sparse_mmap_area {
                    offset: r.u64()?,
                    size: r.u64()?,
                });
            }
        }
        next = n;
    }
    Ok(areas)
}

/// GET_REGION_IO_FDS request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegionIoFds {
    /// Max reply size.
    pub argsz: u32,
    /// Must be 0.
    pub flags: u32,
    /// Region index.
    pub index: u32,
    /// Must be 0 in the request.
    pub count: u32,
}

impl RegionIoFds {
    /// Decodes.
    pub fn decode(payload: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(payload);
        Ok(Self {
            argsz: r.u32()?,
            flags: r.u32()?,
            index: r.u32()?,
            count: r.u32()?,
        })
    }
}

/// Size of `vfio_irq_info`.
pub const IRQ_INFO_SIZE: usize = 16;

/// Decodes a `vfio_irq_info`.
pub fn decode_irq_info(payload: &[u8]) -> Result<vfio_irq_info, WireError> {
    let mut r = Reader::new(payload);
    Ok(vfio_irq_info {
        argsz: r.u32()?,
        flags: r.u32()?,
        index: r.u32()?,
        count: r.u32()?,
    })
}

/// Encodes a `vfio_irq_info`.
pub fn encode_irq_info(info: &vfio_irq_info) -> Vec<u8> {
    let mut out = Vec::with_capacity(IRQ_INFO_SIZE);
    out.put_u32(info.argsz);
    out.put_u32(info.flags);
    out.put_u32(info.index);
    out.put_u32(info.count);
    out
}

/// Size of the fixed part of `vfio_irq_set`.
pub const IRQ_SET_SIZE: usize = 20;

/// Decodes the fixed part of `vfio_irq_set`; returns it and the trailing data (bools).
pub fn decode_irq_set(payload: &[u8]) -> Result<(vfio_irq_set, &[u8]), WireError> {
    let mut r = Reader::new(payload);
    let set = vfio_irq_set {
        argsz: r.u32()?,
        flags: r.u32()?,
        index: r.u32()?,
        start: r.u32()?,
        count: r.u32()?,
        ..Default::default()
    };
    Ok((set, r.rest()))
}

/// Encodes the fixed part of `vfio_irq_set` followed by `data`.
pub fn encode_irq_set(set: &vfio_irq_set, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(IRQ_SET_SIZE + data.len());
    out.put_u32(set.argsz);
    out.put_u32(set.flags);
    out.put_u32(set.index);
    out.put_u32(set.start);
    out.put_u32(set.count);
    out.extend_from_slice(data);
    out
}

/// REGION_READ/REGION_WRITE fixed part (and their replies').
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegionAccess {
    /// Offset into the region.
    pub offset: u64,
    /// Region index.
    pub region: u32,
    /// Bytes to transfer.
    pub count: u32,
}

impl RegionAccess {
    /// Encoded size of the fixed part.
    pub const SIZE: usize = 16;

    /// Decodes and checks `count` against `max_xfer` (the offset is the device's to check).
    pub fn decode(payload: &[u8], max_xfer: u32) -> Result<(Self, &[u8]), WireError> {
        let mut r = Reader::new(payload);
        let a = Self {
            offset: r.u64()?,
            region: r.u32()?,
            count: r.u32()?,
        };
        if a.count > max_xfer {
            return Err(WireError::TooLarge {
                count: u64::from(a.count),
                max: max_xfer,
            });
        }
        // No offset+count overflow check here: the kernel refuses an offset at or past the
        // region's end with EINVAL before any arithmetic, and so must the device (see
        // `Device`); an overflow answer here would pre-empt that.
        Ok((a, r.rest()))
    }

    /// Encodes the fixed part.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.put_u64(self.offset);
        out.put_u32(self.region);
        out.put_u32(self.count);
    }

    /// The fixed part as bytes.
    pub fn to_bytes(&self) -> [u8; Self::SIZE] {
        let mut out = [0u8; Self::SIZE];
        out[0..8].copy_from_slice(&self.offset.to_ne_bytes());
        out[8..12].copy_from_slice(&self.region.to_ne_bytes());
        out[12..16].copy_from_slice(&self.count.to_ne_bytes());
        out
    }
}

/// DMA_READ/DMA_WRITE fixed part: address and count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DmaAccess {
    /// Client DMA address.
    pub address: u64,
    /// Bytes.
    pub count: u64,
}

impl DmaAccess {
    /// Decodes and checks `count` against `max_xfer`.
    pub fn decode(payload: &[u8], max_xfer: u32) -> Result<(Self, &[u8]), WireError> {
        let mut r = Reader::new(payload);
        let a = Self {
            address: r.u64()?,
            count: r.u64()?,
        };
        if a.count > u64::from(max_xfer) {
            return Err(WireError::TooLarge {
                count: a.count,
                max: max_xfer,
            });
        }
        a.address.checked_add(a.count).ok_or(WireError::Overflow {
            offset: a.address,
            count: a.count,
        })?;
        Ok((a, r.rest()))
    }

    /// Encodes the fixed part.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.put_u64(self.address);
        out.put_u64(self.count);
    }
}

/// The reply to DMA_WRITE: the address, and the count of bytes written as a **u32** (the
/// protocol's table for this reply gives `count` 4 bytes, unlike DMA_READ's reply and both
/// requests, which carry 8: the layout is the specification's, not a slip of ours).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DmaWriteReply {
    /// Client DMA address written.
    pub address: u64,
    /// Bytes written.
    pub count: u32,
}

impl DmaWriteReply {
    /// Payload size.
    pub const SIZE: usize = 12;

    /// Decodes a reply payload (exactly 12 bytes).
    pub fn decode(payload: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(payload);
        let reply = Self {
            address: r.u64()?,
            count: r.u32()?,
        };
        if r.remaining() != 0 {
            return Err(WireError::Invalid {
                field: "DMA_WRITE reply size",
                value: payload.len() as u64,
            });
        }
        Ok(reply)
    }

    /// Encodes the payload.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(Self::SIZE);
        out.put_u64(self.address);
        out.put_u32(self.count);
        out
    }
}

/// One write of REGION_WRITE_MULTI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MultiWrite {
    /// Offset into the region.
    pub offset: u64,
    /// Region index.
    pub region: u32,
    /// 1..=8 bytes.
    pub count: u32,
    /// The data (first `count` bytes used).
    pub data: [u8; 8],
}

/// Decodes REGION_WRITE_MULTI: `wr_cnt u64` then `wr_cnt` 24-byte writes.
pub fn decode_write_multi(payload: &[u8]) -> Result<Vec<MultiWrite>, WireError> {
    let mut r = Reader::new(payload);
    let n = r.u64()?;
    if n > (r.remaining() / 24) as u64 || n == 0 {
        return Err(WireError::Invalid {
            field: "wr_cnt",
            value: n,
        });
    }
    let mut out = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let offset = r.u64()?;
        let region = r.u32()?;
        let count = r.u32()?;
        if count == 0 || count > 8 {
            return Err(WireError::Invalid {
                field: "write_multi count",
                value: u64::from(count),
            });
        }
        // Offsets are the device's to check (EINVAL at or past the region end), as for
        // REGION_WRITE.
        let mut data = [0u8; 8];
        data.copy_from_slice(r.bytes(8)?);
        out.push(MultiWrite {
            offset,
            region,
            count,
            data,
        });
    }
    Ok(out)
}

/// DEVICE_FEATURE fixed part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Feature {
    /// Max reply size.
    pub argsz: u32,
    /// Feature index (bits 0-15) and GET/SET/PROBE.
    pub flags: u32,
}

impl Feature {
    /// Decodes; returns the fixed part and the data.
    pub fn decode(payload: &[u8]) -> Result<(Self, &[u8]), WireError> {
        let mut r = Reader::new(payload);
        let f = Self {
            argsz: r.u32()?,
            flags: r.u32()?,
        };
        let ops = f.flags & !0xffff;
        let known = vfio_bindings::bindings::vfio::VFIO_DEVICE_FEATURE_GET
            | vfio_bindings::bindings::vfio::VFIO_DEVICE_FEATURE_SET
            | vfio_bindings::bindings::vfio::VFIO_DEVICE_FEATURE_PROBE;
        if ops & !known != 0 || ops == 0 {
            return Err(WireError::Invalid {
                field: "feature flags",
                value: u64::from(f.flags),
            });
        }
        Ok((f, r.rest()))
    }

    /// The request: `argsz, flags`, then `data`.
    pub fn encode(&self, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 + data.len());
        out.put_u32(self.argsz);
        out.put_u32(self.flags);
        out.extend_from_slice(data);
        out
    }

    /// The reply to this request with the device's `data`: `argsz` says the whole size, and the
    /// data is included only when the client's `argsz` leaves room for it (as VFIO's ioctl).
    pub fn encode_reply(&self, data: &[u8]) -> Vec<u8> {
        let total = 8 + data.len();
        let fits = self.argsz as usize >= total;
        Self {
            argsz: u32::try_from(total).unwrap_or(u32::MAX),
            flags: self.flags,
        }
        .encode(if fits { data } else { &[] })
    }
}

/// MIG_DATA_READ/WRITE fixed part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MigData {
    /// Max reply size (read) or payload size.
    pub argsz: u32,
    /// Bytes.
    pub size: u32,
}

impl MigData {
    /// Decodes; checks `size` against `max_xfer`.
    pub fn decode(payload: &[u8], max_xfer: u32) -> Result<(Self, &[u8]), WireError> {
        let mut r = Reader::new(payload);
        let m = Self {
            argsz: r.u32()?,
            size: r.u32()?,
        };
        if m.size > max_xfer {
            return Err(WireError::TooLarge {
                count: u64::from(m.size),
                max: max_xfer,
            });
        }
        Ok((m, r.rest()))
    }

    /// A message carrying `data` (MIG_DATA_WRITE request, MIG_DATA_READ reply): `argsz` is the
    /// whole payload, `size` the data's length.
    pub fn encode_with(data: &[u8]) -> Vec<u8> {
        let size = u32::try_from(data.len()).unwrap_or(u32::MAX);
        let mut out = Vec::with_capacity(8 + data.len());
        out.put_u32(size.saturating_add(8));
        out.put_u32(size);
        out.extend_from_slice(data);
        out
    }

    /// A MIG_DATA_READ request for up to `size` bytes.
    pub fn read_request(size: u32) -> Vec<u8> {
        let mut out = Vec::with_capacity(8);
        out.put_u32(size.saturating_add(8));
        out.put_u32(size);
        out
    }
}

/// A decoded command message from a client.
#[derive(Debug)]
pub enum Command<'a> {
    /// VERSION.
    Version(Version),
    /// DMA_MAP.
    DmaMap(DmaMap),
    /// DMA_UNMAP.
    DmaUnmap(DmaUnmap),
    /// DEVICE_GET_INFO.
    DeviceGetInfo(DeviceInfoMsg),
    /// DEVICE_GET_REGION_INFO.
    RegionInfo(vfio_region_info),
    /// DEVICE_GET_REGION_IO_FDS.
    RegionIoFds(RegionIoFds),
    /// DEVICE_GET_IRQ_INFO.
    IrqInfo(vfio_irq_info),
    /// DEVICE_SET_IRQS with its trailing data.
    SetIrqs(vfio_irq_set, &'a [u8]),
    /// REGION_READ.
    RegionRead(RegionAccess),
    /// REGION_WRITE with its data.
    RegionWrite(RegionAccess, &'a [u8]),
    /// DEVICE_RESET.
    Reset,
    /// REGION_WRITE_MULTI.
    WriteMulti(Vec<MultiWrite>),
    /// DEVICE_FEATURE with its data.
    Feature(Feature, &'a [u8]),
    /// MIG_DATA_READ.
    MigDataRead(MigData),
    /// MIG_DATA_WRITE with its data.
    MigDataWrite(MigData, &'a [u8]),
}

/// Decodes a client command's payload. `max_xfer` is the negotiated `max_data_xfer_size`.
pub fn decode_command<'a>(
    hdr: &Header,
    payload: &'a [u8],
    max_xfer: u32,
) -> Result<Command<'a>, WireError> {
    let exact = |need: usize| -> Result<(), WireError> {
        if payload.len() < need {
            Err(WireError::Short {
                needed: need,
                have: payload.len(),
            })
        } else {
            Ok(())
        }
    };
    Ok(match hdr.cmd {
        cmd::VERSION => Command::Version(Version::decode(payload)?),
        cmd::DMA_MAP => Command::DmaMap(DmaMap::decode(payload)?),
        cmd::DMA_UNMAP => Command::DmaUnmap(DmaUnmap::decode(payload)?),
        cmd::DEVICE_GET_INFO => Command::DeviceGetInfo(DeviceInfoMsg::decode(payload)?),
        cmd::DEVICE_GET_REGION_INFO => Command::RegionInfo(decode_region_info(payload)?),
        cmd::DEVICE_GET_REGION_IO_FDS => Command::RegionIoFds(RegionIoFds::decode(payload)?),
        cmd::DEVICE_GET_IRQ_INFO => Command::IrqInfo(decode_irq_info(payload)?),
        cmd::DEVICE_SET_IRQS => {
            let (set, data) = decode_irq_set(payload)?;
            Command::SetIrqs(set, data)
        }
        cmd::REGION_READ => {
            let (a, rest) = RegionAccess::decode(payload, max_xfer)?;
            if !rest.is_empty() {
                return Err(WireError::Invalid {
                    field: "region read payload length",
                    value: payload.len() as u64,
                });
            }
            Command::RegionRead(a)
        }
        cmd::REGION_WRITE => {
            let (a, data) = RegionAccess::decode(payload, max_xfer)?;
            if data.len() != a.count as usize {
                return Err(WireError::Invalid {
                    field: "region write data length",
                    value: data.len() as u64,
                });
            }
            Command::RegionWrite(a, data)
        }
        cmd::DEVICE_RESET => Command::Reset,
        cmd::REGION_WRITE_MULTI => Command::WriteMulti(decode_write_multi(payload)?),
        cmd::DEVICE_FEATURE => {
            let (f, data) = Feature::decode(payload)?;
            Command::Feature(f, data)
        }
        cmd::MIG_DATA_READ => {
            exact(8)?;
            Command::MigDataRead(MigData::decode(payload, max_xfer)?.0)
        }
        cmd::MIG_DATA_WRITE => {
            let (m, data) = MigData::decode(payload, max_xfer)?;
            if data.len() != m.size as usize {
                return Err(WireError::Invalid {
                    field: "mig data length",
                    value: data.len() as u64,
                });
            }
            Command::MigDataWrite(m, data)
        }
        other => return Err(WireError::UnknownCommand(other)),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn header_round_trips() {
        let h = Header {
            msg_id: 7,
            cmd: cmd::REGION_READ,
            msg_size: 32,
            flags: FLAG_NO_REPLY,
            error: 0,
        };
        assert_eq!(Header::decode(&h.encode()).unwrap(), h);
    }

    #[test]
    fn msg_size_below_header_is_invalid() {
        let h = Header {
            msg_size: 8,
            ..Header::default()
        };
        assert_eq!(h.payload_len(), Err(WireError::BadSize(8)));
    }

    #[test]
    fn region_read_count_over_max_is_e2big() {
        let a = RegionAccess {
            offset: 0,
            region: 0,
            count: 4097,
        };
        let hdr = Header {
            cmd: cmd::REGION_READ,
            ..Header::default()
        };
        let err = decode_command(&hdr, &a.to_bytes(), 4096).unwrap_err();
        assert_eq!(err.errno(), Errno::E2BIG);
    }

    #[test]
    fn region_read_offset_that_wraps_is_left_to_the_device() {
        let a = RegionAccess {
            offset: u64::MAX - 1,
            region: 0,
            count: 4,
        };
        let hdr = Header {
            cmd: cmd::REGION_READ,
            ..Header::default()
        };
        // Passed through: the device answers EINVAL (offset past the region) before any sum.
        assert!(matches!(
            decode_command(&hdr, &a.to_bytes(), 4096),
            Ok(Command::RegionRead(r)) if r.offset == u64::MAX - 1
        ));
    }

    #[test]
    fn region_write_data_must_match_count() {
        let mut p = Vec::new();
        RegionAccess {
            offset: 0,
            region: 0,
            count: 8,
        }
        .encode_into(&mut p);
        p.extend_from_slice(&[1, 2, 3, 4]);
        let hdr = Header {
            cmd: cmd::REGION_WRITE,
            ..Header::default()
        };
        assert!(decode_command(&hdr, &p, 4096).is_err());
    }

    #[test]
    fn version_caps_parse_with_legacy_migration() {
        let v = Version {
            major: 0,
            minor: 1,
            json: r#"{"capabilities":{"max_msg_fds":8,"max_data_xfer_size":65536,"migration":{"pgsize":4096,"max_bitmap_size":1}}}"#.into(),
        };
        let back = Version::decode(&v.encode()).unwrap();
        let caps = back.caps().unwrap();
        assert_eq!(caps.max_msg_fds, 8);
        assert_eq!(caps.max_data_xfer_size, 65536);
    }

    #[test]
    fn version_json_without_nul_is_refused() {
        let mut p = vec![0, 0, 0, 0];
        p.extend_from_slice(b"{}");
        assert!(Version::decode(&p).is_err());
    }

    #[test]
    fn sparse_cap_round_trips() {
        let info = vfio_region_info {
            argsz: 64,
            flags: 0xf,
            index: 4,
            cap_offset: 32,
            size: 1 << 30,
            offset: 0,
        };
        let mut p = Vec::new();
        encode_region_info(&info, &mut p);
        encode_sparse_cap(
            &[vfio_region_sparse_mmap_area {
                offset: 0,
                size: 12345,
            }],
            &mut p,
        );
        let back = decode_region_info(&p).unwrap();
        let areas = decode_sparse_areas(&p, &back).unwrap();
        assert_eq!(
            areas,
            vec![vfio_region_sparse_mmap_area {
                offset: 0,
                size: 12345
            }]
        );
    }

    #[test]
    fn cap_chain_loop_is_refused() {
        let info = vfio_region_info {
            argsz: 48,
            flags: 0xf,
            index: 4,
            cap_offset: 32,
            size: 4096,
            offset: 0,
        };
        let mut p = Vec::new();
        encode_region_info(&info, &mut p);
        p.put_u16(99);
        p.put_u16(1);
        p.put_u32(32);
        assert!(decode_sparse_areas(&p, &info).is_err());
    }

    proptest! {
        #[test]
        fn decoder_never_panics(cmd_id in 0u16..24, payload in proptest::collection::vec(any::<u8>(), 0..200)) {
            let hdr = Header { cmd: cmd_id, msg_size: 16 + payload.len() as u32, ..Header::default() };
            let _ = decode_command(&hdr, &payload, 4096);
            let _ = Header::decode(&payload);
            if let Ok(info) = decode_region_info(&payload) {
                let _ = decode_sparse_areas(&payload, &info);
            }
        }
    }

    #[test]
    fn dma_write_reply_count_is_four_bytes_as_the_spec_says() {
        let r = DmaWriteReply {
            address: 0x1000,
            count: 64,
        };
        let bytes = r.encode();
        assert_eq!(bytes.len(), 12);
        assert_eq!(DmaWriteReply::decode(&bytes).unwrap(), r);
        assert!(DmaWriteReply::decode(&[bytes.clone(), vec![0; 4]].concat()).is_err());
    }
}
