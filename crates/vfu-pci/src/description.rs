//! What a PCI function looks like, as data: identity fields of the type 0 header, the
//! capabilities and where they sit, raw extended capabilities, and the BARs. The core builds
//! config space, its BAR table and its IRQ counts from one [`PciDescription`]; a variant only
//! says what differs about its device.

use vfu::device::{
    ERR_IRQ_INDEX, INTX_IRQ_INDEX, MSIX_IRQ_INDEX, MSI_IRQ_INDEX, PCI_NUM_IRQS, REQ_IRQ_INDEX,
};

use super::bar::{BarDesc, BarTable};
use super::config_space::{ConfigSpace, CAP_EXP, CAP_MSIX, CAP_PM};
use crate::error::PciError;

/// Status register bit: the capability list at 0x34 is valid.
const STATUS_CAP_LIST: u16 = 0x0010;
/// Command bits the guest may set: I/O, memory, bus master, parity error response, SERR#,
/// INTx disable.
const COMMAND_WRITABLE: [u8; 2] = [0x47, 0x05];
/// Device Capabilities bit 28: Function Level Reset supported.
pub(crate) const DEVCAP_FLR: u32 = 1 << 28;
/// Offset of Device Control from the start of the PCI Express capability.
pub(crate) const EXP_DEVCTL: usize = 0x08;
/// Device Control bit 15: initiate Function Level Reset (reads 0).
pub(crate) const DEVCTL_INITIATE_FLR: u16 = 1 << 15;
/// Device Control bit 9: phantom functions enable (not the client's: it could confuse the
/// IOMMU).
const DEVCTL_PHANTOM: u16 = 1 << 9;
/// Device Control 2 bit 5: ARI forwarding (set by the host at probe).
const DEVCTL2_ARI: u16 = 1 << 5;
/// Offset of the PMCSR from the start of the power management capability.
pub(crate) const PM_PMCSR: usize = 0x04;
/// Length of the PCI Express capability body after its id/next bytes (a v2 endpoint's
/// registers up to Link Status 2).
const EXP_BODY_LEN: usize = 0x3a;

/// The identity and fixed fields of a type 0 header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Header {
    /// Vendor id (0x00).
    pub vendor_id: u16,
    /// Device id (0x02).
    pub device_id: u16,
    /// Revision id (0x08).
    pub revision: u8,
    /// Class code as `base << 16 | subclass << 8 | prog-if` (0x09-0x0b).
    pub class_code: u32,
    /// Subsystem vendor id (0x2c).
    pub subsystem_vendor_id: u16,
    /// Subsystem id (0x2e).
    pub subsystem_id: u16,
    /// Interrupt pin (0x3d): 0 for none, 1-4 for INTA-INTD. A pin gives the device one INTx
    /// vector.
    pub interrupt_pin: u8,
}

/// A standard capability the core knows how to lay out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Capability {
    /// Power management v3; the guest moves the function between D0 and D3hot.
    PowerManagement,
    /// MSI-X with its table and PBA in BARs; the guest owns the enable and function-mask bits.
    /// `vectors` is also the MSI-X count of IRQ_INFO.
    MsiX {
        /// Table size (1-2048).
        vectors: u16,
        /// Region index of the BAR holding the table.
        table_bar: u8,
        /// Offset of the table in that BAR (8-byte aligned).
        table_offset: u32,
        /// Region index of the BAR holding the pending-bit array.
        pba_bar: u8,
        /// Offset of the PBA in that BAR (8-byte aligned).
        pba_offset: u32,
    },
    /// PCI Express v2 endpoint: the guest owns device control and link control. Its presence
    /// gives the device an error interrupt, as in the kernel.
    Express {
        /// Link speed code (1: 2.5 GT/s ... 4: 16 GT/s), reported as maximum and current.
        link_speed: u8,
        /// Link width in lanes, reported as maximum and negotiated.
        link_width: u8,
    },
}

/// A read-only extended capability, given as its body after the 4-byte header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtCapability {
    /// Offset in config space (the first one at 0x100).
    pub offset: u16,
    /// Extended capability id.
    pub id: u16,
    /// Capability version (4 bits).
    pub version: u8,
    /// The bytes after the header.
    pub body: Vec<u8>,
}

/// Everything the core needs to build a function's config space, BARs and IRQ table.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PciDescription {
    /// Identity and fixed fields of the type 0 header.
    pub header: Header,
    /// Standard capabilities with their offsets, linked from 0x34 in this order.
    pub capabilities: Vec<(u8, Capability)>,
    /// Extended capabilities, linked in this order.
    pub ext_capabilities: Vec<ExtCapability>,
    /// The BARs; a BAR at region 0 is served by the core's register file.
    pub bars: Vec<BarDesc>,
}

impl PciDescription {
    /// Vectors per VFIO IRQ index, derived as the kernel does: INTx when there is an interrupt
    /// pin, MSI-X from its capability, the error interrupt for PCI Express functions, and always
    /// the request interrupt. MSI is not offered.
    pub fn irq_counts(&self) -> [u32; PCI_NUM_IRQS as usize] {
        let mut counts = [0; PCI_NUM_IRQS as usize];
        let mut set = |index: u32, n: u32| {
            if let Some(c) = counts.get_mut(index as usize) {
                *c = n;
            }
        };
        set(INTX_IRQ_INDEX, u32::from(self.header.interrupt_pin != 0));
        set(MSI_IRQ_INDEX, 0);
        for (_, cap) in &self.capabilities {
            match cap {
                Capability::MsiX { vectors, .. } => set(MSIX_IRQ_INDEX, u32::from(*vectors)),
                Capability::Express { .. } => set(ERR_IRQ_INDEX, 1),
                Capability::PowerManagement => {}
            }
        }
        set(REQ_IRQ_INDEX, 1);
        counts
    }

    /// Config offset of the first capability `pick` accepts.
    pub(crate) fn capability_offset(&self, pick: impl Fn(&Capability) -> bool) -> Option<usize> {
        self.capabilities
            .iter()
            .find(|(_, c)| pick(c))
            .map(|(offset, _)| usize::from(*offset))
    }

    /// Config space as described, sealed as its reset state.
    pub fn config_space(&self) -> Result<ConfigSpace, PciError> {
        let mut c = ConfigSpace::new();
        let h = &self.header;
        c.set_u16(0x00, h.vendor_id);
        c.set_u16(0x02, h.device_id);
        c.set(0x04, &[0, 0], &COMMAND_WRITABLE);
        if !self.capabilities.is_empty() {
            c.set_u16(0x06, STATUS_CAP_LIST);
        }
        let class = h.class_code.to_le_bytes();
        c.set(0x08, &[h.revision, class[0], class[1], class[2]], &[0; 4]);
        // Cache line size is the guest's; latency timer, header type 0 and BIST read 0.
        c.set(0x0c, &[0, 0, 0, 0], &[0xff, 0, 0, 0]);
        c.set_u16(0x2c, h.subsystem_vendor_id);
        c.set_u16(0x2e, h.subsystem_id);
        // Interrupt line is the guest's scratch byte.
        c.set(0x3c, &[0, h.interrupt_pin], &[0xff, 0]);
        c.set_bars(BarTable::new(&self.bars)?);
        for (offset, cap) in &self.capabilities {
            let (id, body, wmask) = capability_bytes(cap);
            c.add_capability(usize::from(*offset), id, &body, &wmask);
        }
        for (i, ext) in self.ext_capabilities.iter().enumerate() {
            let next = self.ext_capabilities.get(i + 1).map_or(0, |n| n.offset);
            let header =
                u32::from(ext.id) | (u32::from(ext.version & 0xf) << 16) | (u32::from(next) << 20);
            let at = usize::from(ext.offset);
            c.set_u32(at, header);
            c.set(at + 4, &ext.body, &[]);
        }
        c.seal();
        Ok(c)
    }
}

/// Id, body and body write mask of a standard capability.
fn capability_bytes(cap: &Capability) -> (u8, Vec<u8>, Vec<u8>) {
    match *cap {
        Capability::PowerManagement => (
            CAP_PM,
            // PMC: version 3; PMCSR: the power state bits are the guest's.
            vec![0x03, 0x00, 0x00, 0x00, 0x00, 0x00],
            vec![0, 0, 0x03, 0, 0, 0],
        ),
        Capability::MsiX {
            vectors,
            table_bar,
            table_offset,
            pba_bar,
            pba_offset,
        } => {
            let mut body = Vec::with_capacity(10);
            body.extend_from_slice(&vectors.saturating_sub(1).to_le_bytes());
            body.extend_from_slice(&(table_offset | u32::from(table_bar & 7)).to_le_bytes());
            body.extend_from_slice(&(pba_offset | u32::from(pba_bar & 7)).to_le_bytes());
            // Read-only through VFIO: the kernel gives MSI-X no permission bits (the default
            // `cap_perms` entry reads the device, drops writes); the client enables vectors with
            // SET_IRQS and a VMM emulates the capability for its guest.
            (CAP_MSIX, body, vec![0; 10])
        }
        Capability::Express {
            link_speed,
            link_width,
        } => {
            // Offsets below are from the end of the id/next bytes.
            let mut body = vec![0u8; EXP_BODY_LEN];
            // Capabilities register: version 2, endpoint.
            body[0..2].copy_from_slice(&0x0002u16.to_le_bytes());
            // Device capabilities: role-based error reporting and Function Level Reset.
            body[2..6].copy_from_slice(&(0x0000_8000u32 | DEVCAP_FLR).to_le_bytes());
            let link = u16::from(link_speed & 0xf) | (u16::from(link_width & 0x3f) << 4);
            // Link capabilities (maximum) and link status (current).
            body[0x0a..0x0c].copy_from_slice(&link.to_le_bytes());
            body[0x10..0x12].copy_from_slice(&link.to_le_bytes());
            // Write permissions as `init_pci_cap_exp_perm` grants them: Device Control but
            // phantom functions (initiate-FLR included: the core acts on it and clears it),
            // Device Control 2 but ARI; Link Control and the rest are read-only.
            let mut wmask = vec![0u8; EXP_BODY_LEN];
            wmask[0x06..0x08].copy_from_slice(&(!DEVCTL_PHANTOM).to_le_bytes());
            wmask[0x26..0x28].copy_from_slice(&(!DEVCTL2_ARI).to_le_bytes());
            (CAP_EXP, body, wmask)
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn plain() -> PciDescription {
        PciDescription {
            header: Header {
                vendor_id: 0x1af4,
                device_id: 0x1000,
                revision: 1,
                class_code: 0x02_00_00,
                subsystem_vendor_id: 0x1af4,
                subsystem_id: 1,
                interrupt_pin: 0,
            },
            capabilities: Vec::new(),
            ext_capabilities: Vec::new(),
            bars: Vec::new(),
        }
    }

    fn u32_at(c: &ConfigSpace, at: usize) -> u32 {
        let mut b = [0u8; 4];
        c.read(at, &mut b);
        u32::from_le_bytes(b)
    }

    #[test]
    fn no_capabilities_means_no_cap_list_bit_and_only_the_request_irq() {
        let d = plain();
        let c = d.config_space().unwrap();
        assert_eq!(u32_at(&c, 0x04) >> 16, 0);
        assert_eq!(u32_at(&c, 0x08), 0x0200_0001);
        assert_eq!(d.irq_counts(), [0, 0, 0, 0, 1]);
    }

    #[test]
    fn extended_capabilities_chain_through_next_pointers() {
        let mut d = plain();
        for (offset, id) in [(0x100, 0x23), (0x140, 0x0b)] {
            d.ext_capabilities.push(ExtCapability {
                offset,
                id,
                version: 1,
                body: vec![0xaa; 4],
            });
        }
        let c = d.config_space().unwrap();
        assert_eq!(u32_at(&c, 0x100), 0x23 | (1 << 16) | (0x140 << 20));
        assert_eq!(u32_at(&c, 0x140), 0x0b | (1 << 16));
        assert_eq!(u32_at(&c, 0x144), 0xaaaa_aaaa);
    }

    #[test]
    fn a_bad_bar_is_refused() {
        let mut d = plain();
        d.bars.push(BarDesc::mem64(3, 4096, false));
        assert!(matches!(
            d.config_space(),
            Err(PciError::BadBar { index: 3, .. })
        ));
    }
}
