//! Stopping servers from another thread: a flag, an eventfd every poller watches, and a registry
//! of live connections to shut down.

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use nix::sys::eventfd::{EfdFlags, EventFd};
use nix::sys::socket::{shutdown, Shutdown as How};

use crate::error::Error;

#[derive(Debug)]
struct Inner {
    flag: AtomicBool,
    event: EventFd,
    /// Live connections, each as a duplicate fd the registry owns: shutting one down can never
    /// hit an fd number that its session already closed and the process reused.
    conns: Mutex<HashMap<u64, OwnedFd>>,
    next_id: AtomicU64,
}

/// Stops servers from another thread (e.g. a signal handler thread). Cloning shares it.
#[derive(Debug, Clone)]
pub struct Shutdown {
    inner: Arc<Inner>,
}

/// A connection registered with [`Shutdown`]; dropping it deregisters (and closes the registry's
/// duplicate).
#[derive(Debug)]
pub(crate) struct Registration {
    inner: Arc<Inner>,
    id: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Ok(mut c) = self.inner.conns.lock() {
            c.remove(&self.id);
        }
    }
}

impl Shutdown {
    /// A new, untriggered handle.
    pub fn new() -> Result<Self, Error> {
        let event = EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)?;
        Ok(Self {
            inner: Arc::new(Inner {
                flag: AtomicBool::new(false),
                event,
                conns: Mutex::new(HashMap::new()),
                next_id: AtomicU64::new(0),
            }),
        })
    }

    /// Stops every server using this handle: wakes their accept loops and ends live sessions.
    pub fn trigger(&self) {
        self.inner.flag.store(true, Ordering::SeqCst);
        // The eventfd is never read, so it stays readable: every poller wakes.
        let _ = self.inner.event.write(1);
        if let Ok(conns) = self.inner.conns.lock() {
            for fd in conns.values() {
                let _ = shutdown(std::os::fd::AsRawFd::as_raw_fd(fd), How::Both);
            }
        }
    }

    /// True once triggered.
    pub fn is_triggered(&self) -> bool {
        self.inner.flag.load(Ordering::SeqCst)
    }

    /// The eventfd that becomes readable on trigger.
    pub(crate) fn event(&self) -> std::os::fd::BorrowedFd<'_> {
        self.inner.event.as_fd()
    }

    /// Registers a live connection (by a duplicate of its fd). `None` when already triggered
    /// (the caller should not start the session) or when the fd cannot be duplicated.
    pub(crate) fn register(&self, conn: &impl AsFd) -> Result<Option<Registration>, Error> {
        let dup = conn.as_fd().try_clone_to_owned()?;
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut c) = self.inner.conns.lock() {
            c.insert(id, dup);
        }
        let reg = Registration {
            inner: self.inner.clone(),
            id,
        };
        // A trigger between the caller's check and the insert must not be lost.
        Ok((!self.is_triggered()).then_some(reg))
    }
}
