//! The region and IRQ indices of a VFIO PCI device (`VFIO_PCI_*_INDEX`), as the server and
//! devices name them.

/// Region index of PCI BAR0 (VFIO_PCI_BAR0_REGION_INDEX); BARn is `BAR0_REGION_INDEX + n`.
pub const BAR0_REGION_INDEX: u32 = 0;
/// Region index of the expansion ROM (VFIO_PCI_ROM_REGION_INDEX).
pub const ROM_REGION_INDEX: u32 = 6;
/// Region index of PCI config space (VFIO_PCI_CONFIG_REGION_INDEX).
pub const CONFIG_REGION_INDEX: u32 = 7;
/// Region index of the legacy VGA range (VFIO_PCI_VGA_REGION_INDEX).
pub const VGA_REGION_INDEX: u32 = 8;
/// Number of regions of a VFIO PCI device (VFIO_PCI_NUM_REGIONS).
pub const PCI_NUM_REGIONS: u32 = 9;

/// IRQ index of INTx (VFIO_PCI_INTX_IRQ_INDEX).
pub const INTX_IRQ_INDEX: u32 = 0;
/// IRQ index of MSI.
pub const MSI_IRQ_INDEX: u32 = 1;
/// IRQ index of MSI-X.
pub const MSIX_IRQ_INDEX: u32 = 2;
/// IRQ index of the error interrupt.
pub const ERR_IRQ_INDEX: u32 = 3;
/// IRQ index of the device request interrupt.
pub const REQ_IRQ_INDEX: u32 = 4;
/// Number of IRQ indices of a VFIO PCI device (VFIO_PCI_NUM_IRQS).
pub const PCI_NUM_IRQS: u32 = 5;
