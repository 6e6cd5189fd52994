//! `vfu`: the vfio-user protocol, as used by vgrace.
//!
//! Layers, from the wire up: [`wire`] (pure encode/decode of every message, no I/O),
//! [`transport`] (a byte stream that also carries fds), [`server`] (one session per client,
//! dispatching to a [`Device`]) and [`client`] (used by tests, benchmarks and `vgrace check`).
//! [`dma`] and [`irq`] hold per-client DMA regions and interrupt eventfds.
//!
//! Serving a device takes an implementation of [`Device`] and three calls:
//!
//! ```no_run
//! # fn serve(device: impl vfu::Device) -> Result<(), vfu::Error> {
//! use vfu::server::{bind_socket, Server, ServerConfig, Shutdown};
//! let (listener, _socket_file) = bind_socket("/tmp/dev.sock".as_ref())?;
//! let stop = Shutdown::new()?; // stop.trigger() from another thread ends serve()
//! Server::new(device, ServerConfig::default()).serve(listener, &stop)
//! # }
//! ```
//!
//! A device that extends another (a PCI variant over the `vfu-pci` core) implements [`Variant`]
//! instead: one blanket implementation of [`Device`] forwards what the variant does not take over
//! to its core and range-checks the variant's own regions. `crates/vfu-pci/examples/doorbell.rs`
//! is a whole second device (a register file with a doorbell that raises INTx, and a memory BAR)
//! on this crate and `vfu-pci` alone, in about 90 lines of code;
//! `crates/vfu-pci/tests/example_doorbell.rs` serves it to the client.
//!
//! Every exported item has one path: the device seam ([`Device`], [`Variant`] and the types
//! they take), [`Errno`] and [`Error`] at the root; the rest in its module.

pub mod client;
pub mod device;
pub mod dma;
mod errno;
mod error;
pub mod irq;
mod listen;
mod seam;
pub mod server;
mod sync;
pub mod trace;
pub mod transport;
mod variant;
pub mod wire;

pub use errno::Errno;
pub use error::{error_chain, Error};
pub use seam::{
    AccessWait, Device, DeviceInfo, FileSpan, IrqInfo, RegionInfo, SetIrqs, SparseArea,
};
pub use variant::{clip, Variant};
