//! DEVICE_GET_INFO, GET_REGION_INFO (with the sparse-mmap capability), GET_REGION_IO_FDS,
//! REGION_READ / REGION_WRITE and REGION_WRITE_MULTI.

use vfio_bindings::bindings::vfio::{
    vfio_region_info, vfio_region_sparse_mmap_area, VFIO_REGION_INFO_CAP_SPARSE_MMAP,
};

use super::codec::{fields, Decode, Encode, Put, Reader, WireError};

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
}

fields!(DeviceInfoMsg {
    argsz: u32,
    flags: u32,
    num_regions: u32,
    num_irqs: u32
});

/// Size of `vfio_region_info` on the wire.
pub(crate) const REGION_INFO_SIZE: usize = 32;

fields!(vfio_region_info {
    argsz: u32,
    flags: u32,
    index: u32,
    cap_offset: u32,
    size: u64,
    offset: u64
});

/// The sparse-mmap capability of a REGION_INFO reply: encoded as the capability (header id 1
/// version 1, `next` 0, then the areas); decoded from a whole reply by walking its chain from
/// `cap_offset` (offsets count from the start of `vfio_region_info`, i.e. of the payload).
#[derive(Debug, Clone, Default)]
pub struct SparseAreas(pub Vec<vfio_region_sparse_mmap_area>);

impl SparseAreas {
    /// Size of the capability with `n` areas.
    pub(crate) fn encoded_len(n: usize) -> Option<usize> {
        n.checked_mul(16)?.checked_add(16)
    }
}

impl Encode for SparseAreas {
    fn encode_into(&self, out: &mut Vec<u8>) {
        out.put_u16(VFIO_REGION_INFO_CAP_SPARSE_MMAP as u16);
        out.put_u16(1);
        out.put_u32(0);
        out.put_u32(u32::try_from(self.0.len()).unwrap_or(u32::MAX));
        out.put_u32(0);
        for a in &self.0 {
            out.put_u64(a.offset);
            out.put_u64(a.size);
        }
    }
}

impl<'a> Decode<'a> for SparseAreas {
    fn decode(payload: &'a [u8]) -> Result<Self, WireError> {
        let info = vfio_region_info::decode(payload)?;
        let mut areas = Vec::new();
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
        Ok(Self(areas))
    }
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

fields!(RegionIoFds {
    argsz: u32,
    flags: u32,
    index: u32,
    count: u32
});

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

    /// The fixed part on the stack: the REGION_READ hot path sends it without allocating.
    pub fn to_bytes(&self) -> [u8; Self::SIZE] {
        let mut out = [0u8; Self::SIZE];
        out[0..8].copy_from_slice(&self.offset.to_ne_bytes());
        out[8..12].copy_from_slice(&self.region.to_ne_bytes());
        out[12..16].copy_from_slice(&self.count.to_ne_bytes());
        out
    }
}

// No offset+count overflow check: the kernel refuses an offset at or past the region's end with
// EINVAL before any arithmetic, and so must the device (see `Device`); an overflow answer here
// would pre-empt that. The count is checked against `max_data_xfer_size` by `decode_command`.
fields!(RegionAccess {
    offset: u64,
    region: u32,
    count: u32
});

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

/// REGION_WRITE_MULTI: `wr_cnt u64` then `wr_cnt` 24-byte writes of 1 to 8 bytes each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteMulti(pub Vec<MultiWrite>);

impl<'a> Decode<'a> for WriteMulti {
    fn decode(payload: &'a [u8]) -> Result<Self, WireError> {
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
        Ok(Self(out))
    }
}

impl Encode for WriteMulti {
    fn encode_into(&self, out: &mut Vec<u8>) {
        out.put_u64(self.0.len() as u64);
        for w in &self.0 {
            out.put_u64(w.offset);
            out.put_u32(w.region);
            out.put_u32(w.count);
            out.extend_from_slice(&w.data);
        }
    }
}
