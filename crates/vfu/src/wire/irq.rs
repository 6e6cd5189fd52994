//! GET_IRQ_INFO and SET_IRQS (`vfio_irq_info`, and `vfio_irq_set` followed by its data).

use vfio_bindings::bindings::vfio::{vfio_irq_info, vfio_irq_set};

use super::codec::{layout, Layout, Put, Reader, WireError};

/// Size of `vfio_irq_info`.
pub const IRQ_INFO_SIZE: usize = 16;
/// Size of the fixed part of `vfio_irq_set`.
pub const IRQ_SET_SIZE: usize = 20;

impl Layout for vfio_irq_info {
    fn read(r: &mut Reader<'_>) -> Result<Self, WireError> {
        Ok(Self {
            argsz: r.u32()?,
            flags: r.u32()?,
            index: r.u32()?,
            count: r.u32()?,
        })
    }

    fn write(&self, out: &mut Vec<u8>) {
        out.put_u32(self.argsz);
        out.put_u32(self.flags);
        out.put_u32(self.index);
        out.put_u32(self.count);
    }
}

impl Layout for vfio_irq_set {
    fn read(r: &mut Reader<'_>) -> Result<Self, WireError> {
        Ok(Self {
            argsz: r.u32()?,
            flags: r.u32()?,
            index: r.u32()?,
            start: r.u32()?,
            count: r.u32()?,
            ..Default::default()
        })
    }

    fn write(&self, out: &mut Vec<u8>) {
        out.put_u32(self.argsz);
        out.put_u32(self.flags);
        out.put_u32(self.index);
        out.put_u32(self.start);
        out.put_u32(self.count);
    }
}
layout!(vfio_irq_info, vfio_irq_set);
