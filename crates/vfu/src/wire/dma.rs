//! DMA_MAP, DMA_UNMAP, and the server-to-client DMA_READ / DMA_WRITE.

use super::codec::{Put, Reader, WireError};

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
