//! DEVICE_FEATURE and MIG_DATA_READ / MIG_DATA_WRITE (each a fixed part followed by data).

use vfio_bindings::bindings::vfio::{
    VFIO_DEVICE_FEATURE_GET, VFIO_DEVICE_FEATURE_PROBE, VFIO_DEVICE_FEATURE_SET,
};

use super::codec::{fields, Encode, WireError};

/// DEVICE_FEATURE fixed part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Feature {
    /// Largest reply the client takes (request) or the reply's whole size (reply).
    pub argsz: u32,
    /// Feature index (bits 0-15) and GET/SET/PROBE.
    pub flags: u32,
}

fields!(Feature { argsz: u32, flags: u32 } check check_feature);

/// At least one of GET/SET/PROBE and nothing else above the feature index.
fn check_feature(f: &Feature) -> Result<(), WireError> {
    let ops = f.flags & !0xffff;
    let known = VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_SET | VFIO_DEVICE_FEATURE_PROBE;
    if ops & !known != 0 || ops == 0 {
        return Err(WireError::Invalid {
            field: "feature flags",
            value: u64::from(f.flags),
        });
    }
    Ok(())
}

impl Feature {
    /// The reply to this request with the device's `data`: `argsz` says the whole size, and the
    /// data is included only when the client's `argsz` leaves room for it (as VFIO's ioctl).
    pub(crate) fn encode_reply(&self, data: &[u8]) -> Vec<u8> {
        let total = 8 + data.len();
        let fits = self.argsz as usize >= total;
        let reply = Self {
            argsz: u32::try_from(total).unwrap_or(u32::MAX),
            flags: self.flags,
        };
        (reply, if fits { data } else { &[][..] }).encode()
    }
}

/// MIG_DATA_READ/WRITE fixed part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MigData {
    /// Largest reply the client takes (read request) or the payload's whole size.
    pub argsz: u32,
    /// Bytes of migration data asked for (read) or carried (write, read reply).
    pub size: u32,
}

fields!(MigData {
    argsz: u32,
    size: u32
});

impl MigData {
    /// The fixed part for a message carrying `len` bytes (MIG_DATA_WRITE request, MIG_DATA_READ
    /// reply), or asking for `len` (MIG_DATA_READ request): `argsz` covers the whole payload.
    pub(crate) fn for_len(len: usize) -> Self {
        let size = u32::try_from(len).unwrap_or(u32::MAX);
        Self {
            argsz: size.saturating_add(8),
            size,
        }
    }
}
