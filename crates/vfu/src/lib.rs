//! `vfu`: the vfio-user protocol, as used by vgrace.
//!
//! Layers, from the wire up: `wire` (pure encode/decode of every message, no I/O),
//! `transport` (a byte stream that also carries fds: a unix socket, or an in-memory pair for
//! tests), `server` (one session per client, dispatching to a [`Device`]) and `client` (used by
//! tests, benchmarks and `vgrace check`).

pub mod device;
pub mod errno;

pub use device::{Device, DeviceInfo, IrqInfo, RegionInfo, SetIrqs, SparseArea};
pub use errno::Errno;
