//! DEVICE_FEATURE and MIG_DATA_READ / MIG_DATA_WRITE.

use super::codec::{Put, Reader, WireError};

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
