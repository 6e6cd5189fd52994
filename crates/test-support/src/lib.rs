//! Dev-only helpers shared by the vgrace integration tests and `vgrace-bench`, written once:
//!
//! - [`msg`]: raw vfio-user messages (also malformed ones) and DEVICE_SET_IRQS requests with
//!   named fields ([`msg::IrqSet`]);
//! - [`mapping`]: a client's shared mapping of a region fd, through vm-memory (no raw `mmap`);
//! - [`procfs`]: fd, mapping, RSS and CPU-time figures of this or another process;
//! - [`serve`]: a `vgrace serve` child process, killed on drop, whose stderr a thread collects;
//! - [`diff`]: a line diff of a document's block and real output;
//! - [`qemu`]: the harness of the QEMU guest tests (chroot, launch, QMP, bounded waits, checks).
//!
//! Helpers panic on failures that mean the test environment is broken (a panic is a test
//! failure); what a benchmark must report as an error is returned as one.
#![allow(clippy::unwrap_used, clippy::expect_used)]
#![forbid(unsafe_code)]

pub mod diff;
pub mod mapping;
pub mod msg;
pub mod procfs;
pub mod qemu;
pub mod serve;

pub use mapping::SharedMapping;
pub use msg::{irq_flags, msg, with_size, IrqSet};
pub use procfs::Process;
pub use serve::ServeChild;
