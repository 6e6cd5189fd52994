//! GET_IRQ_INFO and SET_IRQS (`vfio_irq_info`, and `vfio_irq_set` followed by its data).

use vfio_bindings::bindings::vfio::{vfio_irq_info, vfio_irq_set};

use super::codec::fields;

/// Size of `vfio_irq_info`.
pub(crate) const IRQ_INFO_SIZE: usize = 16;
/// Size of the fixed part of `vfio_irq_set`.
pub(crate) const IRQ_SET_SIZE: usize = 20;

fields!(vfio_irq_info {
    argsz: u32,
    flags: u32,
    index: u32,
    count: u32
});
fields!(vfio_irq_set { argsz: u32, flags: u32, index: u32, start: u32, count: u32 }; default _);
