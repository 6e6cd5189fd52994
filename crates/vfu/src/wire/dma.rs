//! DMA_MAP, DMA_UNMAP, and the server-to-client DMA_READ / DMA_WRITE.

use super::codec::{fields, layout, Layout, Put, Reader, WireError};

/// DMA_MAP payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DmaMap {
    /// Size of the structure (32).
    pub argsz: u32,
    /// READ (bit 0) / WRITE (bit 1).
    pub flags: u32,
    /// Where the region starts in the fd that comes with the message.
    pub offset: u64,
    /// DMA address of the region's first byte.
    pub address: u64,
    /// Length of the region in bytes (not zero).
    pub size: u64,
}

/// DMA_MAP flag: readable.
pub const DMA_FLAG_READ: u32 = 1;
/// DMA_MAP flag: writeable.
pub const DMA_FLAG_WRITE: u32 = 2;

impl DmaMap {
    /// Encoded size.
    pub const SIZE: usize = 32;
}

fields!(DmaMap { argsz: u32, flags: u32, offset: u64, address: u64, size: u64 } check check_map);

/// Known flags only, a size, and neither address+size nor offset+size overflowing.
fn check_map(m: &DmaMap) -> Result<(), WireError> {
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
    for start in [m.address, m.offset] {
        start.checked_add(m.size).ok_or(WireError::Overflow {
            offset: start,
            count: m.size,
        })?;
    }
    Ok(())
}

/// DMA_UNMAP payload (also the reply payload).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DmaUnmap {
    /// Max reply size.
    pub argsz: u32,
    /// Unused (dirty bitmap flags are not supported).
    pub flags: u32,
    /// DMA address of the region to remove (exactly as mapped).
    pub address: u64,
    /// Its length (exactly as mapped).
    pub size: u64,
}

impl DmaUnmap {
    /// Encoded size.
    pub const SIZE: usize = 24;
}

fields!(DmaUnmap {
    argsz: u32,
    flags: u32,
    address: u64,
    size: u64
});

/// DMA_READ/DMA_WRITE fixed part (requests, and DMA_READ's reply before its data).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DmaAccess {
    /// Client DMA address.
    pub address: u64,
    /// Bytes to transfer (checked against `max_data_xfer_size` by whoever serves it).
    pub count: u64,
}

fields!(DmaAccess { address: u64, count: u64 } check check_access);

/// address + count may not wrap.
fn check_access(a: &DmaAccess) -> Result<(), WireError> {
    a.address
        .checked_add(a.count)
        .ok_or(WireError::Overflow {
            offset: a.address,
            count: a.count,
        })
        .map(|_| ())
}

/// The reply to DMA_WRITE: the address, and the count of bytes written as a **u32** (the
/// protocol's table for this reply gives `count` 4 bytes, unlike DMA_READ's reply and both
/// requests, which carry 8: the layout is the specification's, not a slip of ours).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DmaWriteReply {
    /// Client DMA address written.
    pub address: u64,
    /// Bytes written.
    pub count: u32,
}

impl DmaWriteReply {
    /// Payload size.
    pub(crate) const SIZE: usize = 12;
}

impl Layout for DmaWriteReply {
    fn read(r: &mut Reader<'_>) -> Result<Self, WireError> {
        let reply = Self {
            address: r.u64()?,
            count: r.u32()?,
        };
        if r.remaining() != 0 {
            return Err(WireError::Invalid {
                field: "DMA_WRITE reply size",
                value: (Self::SIZE + r.remaining()) as u64,
            });
        }
        Ok(reply)
    }

    fn write(&self, out: &mut Vec<u8>) {
        out.put_u64(self.address);
        out.put_u32(self.count);
    }
}

layout!(DmaWriteReply);
