//! `vfu`: the vfio-user protocol, as used by vgrace.
//!
//! Layers, from the wire up: [`wire`] (pure encode/decode of every message, no I/O),
//! [`transport`] (a byte stream that also carries fds), [`server`] (one session per client,
//! dispatching to a [`Device`]) and [`client`] (used by tests, benchmarks and `vgrace check`).
//! [`dma`] and [`irq`] hold per-client DMA regions and interrupt eventfds.

pub mod client;
pub mod device;
pub mod dma;
pub mod errno;
pub mod error;
pub mod irq;
pub mod listen;
pub mod server;
pub mod transport;
pub mod wire;

pub use device::{Device, DeviceInfo, FileSpan, IrqInfo, RegionInfo, SetIrqs, SparseArea};
pub use errno::Errno;
pub use error::Error;
