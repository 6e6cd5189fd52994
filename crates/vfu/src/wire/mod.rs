//! The vfio-user wire format: the 16-byte header and every command's payload, decoded into typed
//! values and encoded back. Pure functions over byte slices, no I/O.
//!
//! Decoding validates lengths before anything is allocated: a payload must be exactly (or at
//! least, for variable parts) as long as its fixed fields say, counts are checked against the
//! negotiated `max_data_xfer_size`, and DMA address ranges are checked with `checked_add`. Region
//! offsets are the device's to check: the kernel answers an offset at or past the region end with
//! EINVAL whatever the count, before any arithmetic.
//!
//! One file per message family; everything is re-exported here, so users name `wire::X`. Every
//! layout follows one convention: [`Encode`] (`encode_into` / `encode`) and [`Decode`]
//! (`decode(payload)`), a fixed part followed by data decoding as the pair `(fixed, data)`.
//! Limits that depend on the session (`max_data_xfer_size`) are checked by [`decode_command`]
//! and `check_count`, not by the layouts. Two hot-path layouts, [`Header`] and
//! [`RegionAccess`], also have `to_bytes() -> [u8; N]` so a round trip allocates nothing.

use vfio_bindings::bindings::vfio::{vfio_irq_info, vfio_irq_set, vfio_region_info};

mod codec;
mod dma;
mod feature;
mod header;
mod irq;
mod region;
mod version;

pub(crate) use codec::check_count;
pub use codec::{Decode, Encode, WireError};
pub use dma::*;
pub use feature::*;
pub use header::*;
pub(crate) use irq::*;
pub use region::*;
pub use version::*;

/// Size of the message header.
pub const HEADER_SIZE: usize = 16;
/// Default `max_data_xfer_size` (1 MiB) from the spec.
pub(crate) const DEFAULT_MAX_DATA_XFER_SIZE: u32 = 1 << 20;
/// Default `max_msg_fds` from the spec.
pub(crate) const DEFAULT_MAX_MSG_FDS: u32 = 1;
/// Default `max_dma_maps` from the spec.
pub(crate) const DEFAULT_MAX_DMA_MAPS: u32 = 65535;
/// Largest fixed part of any message payload, added to `max_data_xfer_size` to bound messages.
pub(crate) const MAX_FIXED_PAYLOAD: u32 = 4096;

/// The largest message either side accepts once `max_data_xfer_size` is known: a header, the
/// data, and the fixed part of the largest command around it.
pub(crate) fn max_message_size(max_data_xfer_size: u32) -> usize {
    HEADER_SIZE + max_data_xfer_size as usize + MAX_FIXED_PAYLOAD as usize
}

/// Message type bits of `flags`.
pub(crate) const FLAG_TYPE_MASK: u32 = 0xf;
/// Type value of a command.
pub(crate) const FLAG_TYPE_COMMAND: u32 = 0;
/// Type value of a reply.
pub const FLAG_TYPE_REPLY: u32 = 1;
/// The sender wants no reply.
pub const FLAG_NO_REPLY: u32 = 1 << 4;
/// The reply reports an error in `error`.
pub(crate) const FLAG_ERROR: u32 = 1 << 5;

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

    /// The command's name as the spec spells it (`REGION_READ`), or `UNKNOWN`.
    pub fn name(cmd: u16) -> &'static str {
        match cmd {
            VERSION => "VERSION",
            DMA_MAP => "DMA_MAP",
            DMA_UNMAP => "DMA_UNMAP",
            DEVICE_GET_INFO => "DEVICE_GET_INFO",
            DEVICE_GET_REGION_INFO => "DEVICE_GET_REGION_INFO",
            DEVICE_GET_REGION_IO_FDS => "DEVICE_GET_REGION_IO_FDS",
            DEVICE_GET_IRQ_INFO => "DEVICE_GET_IRQ_INFO",
            DEVICE_SET_IRQS => "DEVICE_SET_IRQS",
            REGION_READ => "REGION_READ",
            REGION_WRITE => "REGION_WRITE",
            DMA_READ => "DMA_READ",
            DMA_WRITE => "DMA_WRITE",
            DEVICE_RESET => "DEVICE_RESET",
            REGION_WRITE_MULTI => "REGION_WRITE_MULTI",
            DEVICE_FEATURE => "DEVICE_FEATURE",
            MIG_DATA_READ => "MIG_DATA_READ",
            MIG_DATA_WRITE => "MIG_DATA_WRITE",
            _ => "UNKNOWN",
        }
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

/// Decodes a client command's payload. `max_xfer` is the negotiated `max_data_xfer_size`:
/// counts above it are refused here, before the device or any allocation sees them.
pub fn decode_command<'a>(
    hdr: &Header,
    payload: &'a [u8],
    max_xfer: u32,
) -> Result<Command<'a>, WireError> {
    let length = |field: &'static str, ok: bool| -> Result<(), WireError> {
        if ok {
            Ok(())
        } else {
            Err(WireError::Invalid {
                field,
                value: payload.len() as u64,
            })
        }
    };
    Ok(match hdr.cmd {
        cmd::VERSION => Command::Version(Version::decode(payload)?),
        cmd::DMA_MAP => Command::DmaMap(DmaMap::decode(payload)?),
        cmd::DMA_UNMAP => Command::DmaUnmap(DmaUnmap::decode(payload)?),
        cmd::DEVICE_GET_INFO => Command::DeviceGetInfo(DeviceInfoMsg::decode(payload)?),
        cmd::DEVICE_GET_REGION_INFO => Command::RegionInfo(vfio_region_info::decode(payload)?),
        cmd::DEVICE_GET_REGION_IO_FDS => Command::RegionIoFds(RegionIoFds::decode(payload)?),
        cmd::DEVICE_GET_IRQ_INFO => Command::IrqInfo(vfio_irq_info::decode(payload)?),
        cmd::DEVICE_SET_IRQS => {
            let (set, data) = <(vfio_irq_set, &[u8])>::decode(payload)?;
            Command::SetIrqs(set, data)
        }
        cmd::REGION_READ => {
            let (a, rest) = <(RegionAccess, &[u8])>::decode(payload)?;
            check_count(u64::from(a.count), max_xfer)?;
            length("region read payload length", rest.is_empty())?;
            Command::RegionRead(a)
        }
        cmd::REGION_WRITE => {
            let (a, data) = <(RegionAccess, &[u8])>::decode(payload)?;
            check_count(u64::from(a.count), max_xfer)?;
            length("region write data length", data.len() == a.count as usize)?;
            Command::RegionWrite(a, data)
        }
        cmd::DEVICE_RESET => Command::Reset,
        cmd::REGION_WRITE_MULTI => Command::WriteMulti(WriteMulti::decode(payload)?.0),
        cmd::DEVICE_FEATURE => {
            let (f, data) = <(Feature, &[u8])>::decode(payload)?;
            Command::Feature(f, data)
        }
        cmd::MIG_DATA_READ => {
            let m = MigData::decode(payload)?;
            check_count(u64::from(m.size), max_xfer)?;
            Command::MigDataRead(m)
        }
        cmd::MIG_DATA_WRITE => {
            let (m, data) = <(MigData, &[u8])>::decode(payload)?;
            check_count(u64::from(m.size), max_xfer)?;
            length("mig data length", data.len() == m.size as usize)?;
            Command::MigDataWrite(m, data)
        }
        other => return Err(WireError::UnknownCommand(other)),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::codec::Put;
    use super::*;
    use crate::errno::Errno;
    use proptest::prelude::*;
    use vfio_bindings::bindings::vfio::vfio_region_sparse_mmap_area;

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
        let mut p = info.encode();
        SparseAreas(vec![vfio_region_sparse_mmap_area {
            offset: 0,
            size: 12345,
        }])
        .encode_into(&mut p);
        assert_eq!(vfio_region_info::decode(&p).unwrap().cap_offset, 32);
        let areas = SparseAreas::decode(&p).unwrap().0;
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
        let mut p = info.encode();
        p.put_u16(99);
        p.put_u16(1);
        p.put_u32(32);
        assert!(SparseAreas::decode(&p).is_err());
    }

    proptest! {
        #[test]
        fn decoder_never_panics(cmd_id in 0u16..24, payload in proptest::collection::vec(any::<u8>(), 0..200)) {
            let hdr = Header { cmd: cmd_id, msg_size: 16 + payload.len() as u32, ..Header::default() };
            let _ = decode_command(&hdr, &payload, 4096);
            let _ = Header::decode(&payload);
            let _ = SparseAreas::decode(&payload);
            let _ = WriteMulti::decode(&payload);
            let _ = <(vfio_irq_set, &[u8])>::decode(&payload);
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
