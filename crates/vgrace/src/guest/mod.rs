//! What a guest (or the host under it) sees of the GPUs: the device layout (`vgrace layout`),
//! the node's NUMA and aperture shape, the QEMU arguments that attach the devices
//! (`vgrace qemu-args`, both views), the host view's function and its ACPI table (`vgrace acpi`).

pub mod acpi;
pub mod host_view;
pub mod layout;
pub mod libvirt;
pub mod node;
pub mod qemu_args;
pub mod qemu_host;
