//! The NVIDIA designated vendor-specific extended capability of gb200: it carries a capability
//! bitmap, and upstream reads the bit saying resmem may be mapped cacheable (the GH100 MIG bug
//! that forced the write-combine carve-out is fixed).

use vfu_pci::ExtCapability;
use vfu_pci::EXT_CAP_DVSEC;

/// Config space offset of the DVSEC on gb200 (the first extended capability).
pub const DVSEC_OFFSET: u16 = 0x100;
/// DVSEC id of the GPU capability register upstream looks for.
pub const GPU_CAP_DVSEC_ID: u16 = 3;
/// Offset of the capability bitmap from the start of the DVSEC.
pub const DVSEC_BITMAP_OFFSET: usize = 0xa;
/// Bitmap bit: MIG is supported with cached resmem (the hardware bug is fixed).
pub const MIG_SUPPORTED_WITH_CACHED_RESMEM: u16 = 1;
/// DVSEC length in its header 1: the 4-byte extended header, two DVSEC headers, the bitmap
/// and padding to a dword.
const DVSEC_LENGTH: u32 = 16;

/// The gb200 DVSEC: header 1 (vendor, revision 0, length), header 2 (the DVSEC id), then the
/// capability bitmap.
pub fn gpu_capability(vendor_id: u16) -> ExtCapability {
    let mut body = Vec::with_capacity(8);
    body.extend_from_slice(&(u32::from(vendor_id) | (DVSEC_LENGTH << 20)).to_le_bytes());
    body.extend_from_slice(&GPU_CAP_DVSEC_ID.to_le_bytes());
    body.extend_from_slice(&MIG_SUPPORTED_WITH_CACHED_RESMEM.to_le_bytes());
    ExtCapability {
        offset: DVSEC_OFFSET,
        id: EXT_CAP_DVSEC,
        version: 1,
        body,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bitmap_sits_at_its_offset_inside_the_declared_length() {
        let cap = gpu_capability(0x10de);
        let at = DVSEC_BITMAP_OFFSET - 4;
        assert_eq!(
            cap.body[at..at + 2],
            MIG_SUPPORTED_WITH_CACHED_RESMEM.to_le_bytes()
        );
        assert!(4 + cap.body.len() <= DVSEC_LENGTH as usize);
    }
}
