//! An in-memory [`Stream`] pair with unix-socket fd semantics, for tests and the session fuzzer.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::time::Duration;

use super::{Buffered, Stream, TransportError};

/// One direction of an in-memory stream: written chunks, each with the fds sent with it.
#[derive(Debug, Default)]
struct Pipe {
    chunks: VecDeque<(Vec<u8>, Vec<OwnedFd>)>,
    closed: bool,
}

#[derive(Debug, Default)]
struct Shared {
    pipe: std::sync::Mutex<Pipe>,
    ready: std::sync::Condvar,
}

/// An in-memory [`Stream`] for tests and fuzzing: same framing and fd semantics as a unix
/// socket (fds arrive with the first read of the chunk that carried them, and a read stops after
/// that chunk), no file descriptors of its own.
#[derive(Debug)]
pub(crate) struct MemStream {
    rx: std::sync::Arc<Shared>,
    tx: std::sync::Arc<Shared>,
}

/// The in-memory transport.
#[derive(Debug)]
pub struct MemTransport(Buffered<MemStream>);

super::forward_transport!(MemTransport);

impl MemTransport {
    /// A connected in-memory pair.
    pub fn mem_pair() -> (Self, Self) {
        let a = std::sync::Arc::new(Shared::default());
        let b = std::sync::Arc::new(Shared::default());
        (
            Self(Buffered::over(MemStream {
                rx: a.clone(),
                tx: b.clone(),
            })),
            Self(Buffered::over(MemStream { rx: b, tx: a })),
        )
    }

    /// Writes raw bytes (not necessarily a message) to the peer, for hostile-input tests.
    pub fn write_raw(&self, bytes: &[u8]) -> Result<(), TransportError> {
        self.0.io.write(&[IoSlice::new(bytes)], &[])
    }

    /// Ends this side's writing: the peer reads end of stream once it has drained the rest.
    pub fn close_write(&self) {
        self.0.io.close();
    }
}

impl MemStream {
    fn close(&self) {
        if let Ok(mut p) = self.tx.pipe.lock() {
            p.closed = true;
        }
        self.tx.ready.notify_all();
    }
}

impl Drop for MemStream {
    fn drop(&mut self) {
        self.close();
        // Reads on our side end too, like a socket closed by its owner.
        if let Ok(mut p) = self.rx.pipe.lock() {
            p.closed = true;
        }
        self.rx.ready.notify_all();
    }
}

impl Stream for MemStream {
    fn read(
        &mut self,
        buf: &mut [u8],
        with_fds: bool,
    ) -> Result<(usize, Vec<OwnedFd>), TransportError> {
        let poisoned = |_| TransportError::Io(std::io::Error::other("in-memory stream poisoned"));
        let mut p = self.rx.pipe.lock().map_err(poisoned)?;
        while p.chunks.is_empty() && !p.closed {
            p = self.rx.ready.wait(p).map_err(poisoned)?;
        }
        let mut n = 0;
        let mut fds = Vec::new();
        while n < buf.len() {
            let Some((chunk, chunk_fds)) = p.chunks.front_mut() else {
                break;
            };
            let had_fds = !chunk_fds.is_empty();
            if had_fds && n > 0 {
                break; // a chunk with fds starts a read of its own
            }
            fds.append(chunk_fds);
            let take = chunk.len().min(buf.len() - n);
            buf[n..n + take].copy_from_slice(&chunk[..take]);
            chunk.drain(..take);
            n += take;
            if chunk.is_empty() {
                p.chunks.pop_front();
            }
            if had_fds {
                break;
            }
        }
        if !with_fds {
            fds.clear();
        }
        Ok((n, fds))
    }

    fn wait_readable(&self, timeout: Duration) -> Result<bool, TransportError> {
        let poisoned = || TransportError::Io(std::io::Error::other("in-memory stream poisoned"));
        let p = self.rx.pipe.lock().map_err(|_| poisoned())?;
        let (p, _) = self
            .rx
            .ready
            .wait_timeout_while(p, timeout, |p| p.chunks.is_empty() && !p.closed)
            .map_err(|_| poisoned())?;
        Ok(!p.chunks.is_empty() || p.closed)
    }

    fn write(&self, iov: &[IoSlice<'_>], fds: &[BorrowedFd<'_>]) -> Result<(), TransportError> {
        let mut bytes = Vec::with_capacity(iov.iter().map(|s| s.len()).sum());
        for s in iov {
            bytes.extend_from_slice(s);
        }
        let owned = fds
            .iter()
            .map(|f| f.try_clone_to_owned())
            .collect::<Result<Vec<_>, _>>()
            .map_err(TransportError::Io)?;
        let poisoned = |_| TransportError::Io(std::io::Error::other("in-memory stream poisoned"));
        let mut p = self.tx.pipe.lock().map_err(poisoned)?;
        if p.closed {
            return Err(TransportError::Closed);
        }
        p.chunks.push_back((bytes, owned));
        drop(p);
        self.tx.ready.notify_all();
        Ok(())
    }
}
