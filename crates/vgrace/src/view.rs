//! Which function `vgrace serve` shows: the VFIO view (the default) or the host view (see
//! `host_view`). Its own module so the CLI, the config file and the host view share it.

use serde::Deserialize;

/// Which function `vgrace serve` shows a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum View {
    /// What nvgrace-gpu-vfio-pci gives a VMM: the memory as emulated BARs 2/4 (the default).
    #[default]
    Vfio,
    /// The hardware as the host's PCI bus shows it: no memory BARs; the memory is host memory
    /// at `nvidia,gpu-mem-base-pa` (for an L1 guest that runs the real driver).
    Host,
}
