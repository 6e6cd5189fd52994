//! GET_IRQ_INFO and SET_IRQS.

use vfio_bindings::bindings::vfio::{vfio_irq_info, vfio_irq_set};

use super::codec::{Put, Reader, WireError};

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
