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
    conns: Mutex<HashMap<u64, Arc<OwnedFd>>>,
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

    /// Registers a live connection by a duplicate of its fd that the registry keeps until the
    /// registration drops. `None` when already triggered: the caller should not start.
    pub(crate) fn register(&self, conn: Arc<OwnedFd>) -> Option<Registration> {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut c) = self.inner.conns.lock() {
            c.insert(id, conn);
        }
        let reg = Registration {
            inner: self.inner.clone(),
            id,
        };
        // A trigger between the caller's check and the insert must not be lost.
        (!self.is_triggered()).then_some(reg)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;

    use super::*;

    /// The registry shuts down the connection it registered, never whatever socket later got the
    /// same fd number (before: it kept raw numbers, and a session's socket closed before
    /// deregistering could be reused by another device's socket).
    #[test]
    fn trigger_never_touches_a_reused_fd_number() {
        // Fd numbers are only predictable in a process where nothing else opens files: run the
        // body in a child process that runs this test alone.
        const ALONE: &str = "VFU_SHUTDOWN_TEST_ALONE";
        if std::env::var_os(ALONE).is_none() {
            let out = std::process::Command::new(std::env::current_exe().unwrap())
                .args([
                    "--exact",
                    "server::shutdown::tests::trigger_never_touches_a_reused_fd_number",
                    "--test-threads=1",
                ])
                .env(ALONE, "1")
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(out.status.success(), "{text}");
            assert!(text.contains("1 passed"), "{text}");
            return;
        }
        let s = Shutdown::new().unwrap();
        let (a, mut a_peer) = UnixStream::pair().unwrap();
        let number = std::os::fd::AsRawFd::as_raw_fd(&a);
        let _reg = s.register(Arc::new(a.as_fd().try_clone_to_owned().unwrap()));
        drop(a);
        // The lowest free number is handed out next; other tests' threads may take it first,
        // so open pairs (kept open) until one lands on `a`'s number.
        let mut others = Vec::new();
        let (mut b, mut b_peer) = loop {
            let (b, b_peer) = UnixStream::pair().unwrap();
            if std::os::fd::AsRawFd::as_raw_fd(&b) == number {
                break (b, b_peer);
            }
            others.push((b, b_peer));
            assert!(others.len() < 256, "fd number {number} never came back");
        };
        s.trigger();
        b.write_all(b"alive").unwrap();
        let mut got = [0u8; 5];
        b_peer.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"alive");
        b_peer.write_all(b"back").unwrap();
        let mut back = [0u8; 4];
        b.read_exact(&mut back).unwrap();
        // The registered connection itself was shut down: its peer reads end of stream.
        let mut rest = Vec::new();
        assert_eq!(a_peer.read_to_end(&mut rest).unwrap(), 0);
    }
}
