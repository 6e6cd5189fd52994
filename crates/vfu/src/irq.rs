//! Interrupt eventfds: [`signal`] for devices that keep their own (vfu-pci's interrupts), and
//! `IrqTable` (feature `testing`), a whole table as DEVICE_SET_IRQS configures it, for test
//! devices.

use std::os::fd::BorrowedFd;

use nix::fcntl::{fcntl, FcntlArg, OFlag};

use crate::errno::Errno;

#[cfg(any(test, feature = "testing"))]
mod table;

#[cfg(any(test, feature = "testing"))]
pub use table::IrqTable;

/// Makes `fd` non-blocking (O_NONBLOCK). The flag belongs to the open file, which the client
/// shares: set when an eventfd arrives, and again before each signal in case the client cleared
/// it through its own copy.
pub(crate) fn make_nonblocking(fd: BorrowedFd<'_>) -> Result<(), Errno> {
    let flags = OFlag::from_bits_retain(fcntl(fd, FcntlArg::F_GETFL)?);
    if !flags.contains(OFlag::O_NONBLOCK) {
        fcntl(fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    }
    Ok(())
}

/// Adds 1 to an eventfd without ever waiting: a blocking write on a counter that a client
/// filled to its maximum would wait, holding the device lock, until someone reads it, which
/// after the client closed its copy is never. EAGAIN means the counter is full, so the
/// interrupt is already pending: that is a delivery, not a failure. Returns whether the
/// interrupt was delivered.
pub fn signal(fd: BorrowedFd<'_>) -> bool {
    if make_nonblocking(fd).is_err() {
        return false;
    }
    match nix::unistd::write(fd, &1u64.to_ne_bytes()) {
        Ok(_) | Err(Errno::EAGAIN) => true,
        Err(_) => false,
    }
}
