//! Moving whole messages (bytes + fds) over a stream.
//!
//! [`Transport`] is what sessions and the client talk to; [`UnixTransport`] is the AF_UNIX
//! implementation (and `MemTransport`, feature `testing`, an in-memory one). Receiving is
//! buffered: one `recvmsg` may bring several pipelined messages, so a request costs one syscall
//! to read and one `sendmsg` to answer, as a plain ping-pong would.
//!
//! File descriptors: Linux stops a stream read right after the segment that carried fds, so the
//! fds of one `recvmsg` belong to the message containing the last byte that call read. We record
//! that stream position with the fds and hand them to that message.
//!
//! Framing lives here (`Buffered` over any `Stream`, both crate-private); the AF_UNIX socket and
//! its system calls in `unix.rs`; an in-memory stream for tests and fuzzing in `mem.rs` (feature
//! `testing`).

#[cfg(any(test, feature = "testing"))]
mod mem;
mod unix;

#[cfg(any(test, feature = "testing"))]
pub use mem::MemTransport;
pub(crate) use unix::SocketTransport;
pub use unix::UnixTransport;

use std::collections::VecDeque;
use std::io::IoSlice;
use std::ops::Range;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::errno::Errno;

use crate::seam::FileSpan;
use crate::wire::{Decode, Header, HEADER_SIZE};

/// Most fds one message may carry (more close the connection). Enforced as fds arrive, so a
/// message that never completes cannot make us hold more than this many of the peer's fds.
pub(crate) const MAX_FDS_PER_MESSAGE: usize = 32;
const INITIAL_BUFFER: usize = 64 * 1024;
const DRAIN_CHUNK: usize = 64 * 1024;

/// Errors of a transport.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The peer closed the connection (cleanly, at a message boundary or not).
    #[error("peer closed the connection")]
    Closed,
    /// A system call failed.
    #[error("socket i/o failed")]
    Io(#[source] std::io::Error),
    /// The header's `msg_size` is smaller than a header.
    #[error("message size {0} is smaller than a header")]
    BadSize(u32),
    /// A message larger than the limit; its bytes were read and discarded.
    #[error("message of {size} bytes exceeds the limit of {limit}")]
    Oversized {
        /// Its header (to answer it).
        header: Header,
        /// Its size.
        size: u32,
        /// The limit.
        limit: usize,
    },
    /// More fds arrived than this side accepts.
    #[error("too many file descriptors in one message")]
    TooManyFds,
    /// A message stayed incomplete longer than the stall timeout.
    #[error("the peer stopped in the middle of a message for {0:?}")]
    Stalled(Duration),
}

impl From<Errno> for TransportError {
    fn from(e: Errno) -> Self {
        TransportError::Io(std::io::Error::from(e))
    }
}

/// One received message: header, where its payload lies in the receive buffer, and its fds.
#[derive(Debug)]
pub struct Frame {
    /// The header.
    pub header: Header,
    /// Payload bytes inside the transport's buffer (read them with [`Transport::payload`]).
    pub payload: Range<usize>,
    /// The fds that came with it.
    pub fds: Vec<OwnedFd>,
}

/// A message stream carrying fds.
pub trait Transport: Send {
    /// Sends one message with one system call: `header`, then each of `parts`, with `fds`.
    fn send(
        &self,
        header: &Header,
        parts: &[&[u8]],
        fds: &[BorrowedFd<'_>],
    ) -> Result<(), TransportError>;
    /// Sends one message made of `header`, `parts`, then the bytes of `span` taken straight
    /// from its file (and its all-ones tail): a large REGION_READ reply without a copy through
    /// our memory.
    fn send_span(
        &self,
        header: &Header,
        parts: &[&[u8]],
        span: &FileSpan<'_>,
    ) -> Result<(), TransportError>;
    /// Receives the next whole message (at most `max_size` bytes including the header).
    fn recv(&mut self, max_size: usize) -> Result<Frame, TransportError>;
    /// The payload of a frame returned by the last `recv`.
    fn payload(&self, frame: &Frame) -> &[u8];
}

/// A byte stream that carries fds: what [`Buffered`] frames messages on.
pub(crate) trait Stream: Send {
    /// Reads available bytes into `buf` (blocking until at least one, or end of stream = 0),
    /// with the fds that came with them when `with_fds` is set.
    fn read(
        &mut self,
        buf: &mut [u8],
        with_fds: bool,
    ) -> Result<(usize, Vec<OwnedFd>), TransportError>;
    /// Writes all of `iov` as one unit, with `fds` attached to its first byte.
    fn write(&self, iov: &[IoSlice<'_>], fds: &[BorrowedFd<'_>]) -> Result<(), TransportError>;
    /// Waits up to `timeout` for bytes to read; false when none came.
    fn wait_readable(&self, timeout: Duration) -> Result<bool, TransportError>;
    /// Writes `iov`, then the bytes of `span` straight from its file, then its all-ones tail,
    /// as one message. The default reads the file into a buffer; sockets use `sendfile`.
    fn write_span(&self, iov: &[IoSlice<'_>], span: &FileSpan<'_>) -> Result<(), TransportError> {
        let mut data = vec![0xff; span.len + span.ones];
        read_span(span, &mut data[..span.len])?;
        let mut all: Vec<IoSlice<'_>> = iov.to_vec();
        all.push(IoSlice::new(&data));
        self.write(&all, &[])
    }
}

/// pread of a whole span; a file shorter than the span reads as all ones past its end (the
/// header promising those bytes may already be on its way).
fn read_span(span: &FileSpan<'_>, out: &mut [u8]) -> Result<(), TransportError> {
    let mut got = 0;
    while got < out.len() {
        match nix::sys::uio::pread(span.fd, &mut out[got..], (span.offset + got as u64) as i64) {
            Ok(0) => {
                out[got..].fill(0xff);
                break;
            }
            Ok(n) => got += n,
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Message framing over any [`Stream`]: a reusable receive buffer that may hold several
/// pipelined messages, and fd attribution by stream position.
#[derive(Debug)]
pub(crate) struct Buffered<S> {
    io: S,
    buf: Vec<u8>,
    /// Unconsumed bytes are `buf[start..end]`.
    start: usize,
    end: usize,
    /// Stream position of `buf[start]`.
    pos: u64,
    /// fds received, each batch with the stream position of the last byte read with it.
    fds: VecDeque<(u64, Vec<OwnedFd>)>,
    /// When false, reads skip fds (recv(2) on a socket) and any that arrive are discarded.
    accept_fds: bool,
    /// Most fds one message may bring; more end the connection as soon as they arrive.
    max_fds: usize,
    /// How long a message may stay incomplete once its first bytes arrived.
    stall_timeout: Option<Duration>,
    /// When we first waited for more of the message being assembled (its clock starts there,
    /// microseconds after its first bytes, so the common whole-message read never reads the
    /// clock).
    msg_started: Option<Instant>,
}

impl<S: Stream> Buffered<S> {
    /// Bytes received but not yet returned as messages.
    pub(crate) fn buffered(&self) -> usize {
        self.end - self.start
    }

    /// Frames messages over `io`.
    pub(crate) fn over(io: S) -> Self {
        Self {
            io,
            buf: vec![0; INITIAL_BUFFER],
            start: 0,
            end: 0,
            pos: 0,
            fds: VecDeque::new(),
            accept_fds: true,
            max_fds: MAX_FDS_PER_MESSAGE,
            stall_timeout: None,
            msg_started: None,
        }
    }

    /// Drops the peer (with [`TransportError::Stalled`]) when a message stays incomplete for
    /// longer than `timeout` after its first bytes arrived. Waiting between messages is never
    /// limited. `None` (the default) waits forever.
    pub(crate) fn set_stall_timeout(&mut self, timeout: Option<Duration>) {
        self.stall_timeout = timeout;
    }

    /// Whether reads take fds (recvmsg) or not (recv, a little cheaper). A client waiting for
    /// a reply that never carries fds (REGION_READ) turns it off for that wait.
    pub(crate) fn set_accept_fds(&mut self, on: bool) {
        self.accept_fds = on;
    }

    /// Receives one message as `prefix` (its first payload bytes) plus data read straight into
    /// `out`, so large REGION_READ replies are not copied through the receive buffer. Returns
    /// the header and the data length, or `None` for the length when the message does not have
    /// that shape (shorter than `prefix`, or more data than `out` holds); it is consumed either
    /// way. fds that come with it are closed.
    pub(crate) fn recv_into(
        &mut self,
        max_size: usize,
        prefix: &mut [u8],
        out: &mut [u8],
    ) -> Result<(Header, Option<usize>), TransportError> {
        let (header, size) = self.next_header(max_size)?;
        let payload = size - HEADER_SIZE;
        let msg_end = self.pos + size as u64;
        if payload < prefix.len() || payload - prefix.len() > out.len() {
            self.discard(size)?;
            return Ok((header, None));
        }
        let head = HEADER_SIZE + prefix.len();
        while self.end - self.start < head {
            self.fill(head, true)?;
        }
        prefix.copy_from_slice(&self.buf[self.start + HEADER_SIZE..self.start + head]);
        self.consume(head);
        let data = payload - prefix.len();
        let buffered = data.min(self.end - self.start);
        out[..buffered].copy_from_slice(&self.buf[self.start..self.start + buffered]);
        self.consume(buffered);
        let mut got = buffered;
        while got < data {
            // The receive buffer is empty here, so the rest of this message is next on the socket.
            let (n, _) = self.io.read(&mut out[got..data], false)?;
            if n == 0 {
                return Err(TransportError::Closed);
            }
            got += n;
            self.pos += n as u64;
        }
        drop(self.take_fds(msg_end));
        self.message_done();
        Ok((header, Some(data)))
    }

    /// Reads more bytes into the buffer; makes room for at least `want` unconsumed bytes.
    /// `mid_message` says bytes of the current message already arrived, so the stall timeout
    /// applies to this wait.
    fn fill(&mut self, want: usize, mid_message: bool) -> Result<(), TransportError> {
        if mid_message {
            self.wait_mid_message()?;
        }
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        if self.buf.len() - self.start < want {
            // Compact, then grow if one message does not fit.
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
            if self.buf.len() < want {
                self.buf.resize(want, 0);
            }
        }
        let read_at = self.end;
        let (n, fds) = self.io.read(&mut self.buf[read_at..], self.accept_fds)?;
        if n == 0 {
            drop(fds);
            return Err(TransportError::Closed);
        }
        self.end += n;
        if !fds.is_empty() {
            // Position of the last byte read by this call.
            let last = self.pos + (self.end - self.start) as u64 - 1;
            self.fds.push_back((last, fds));
            self.check_fd_limit()?;
        }
        Ok(())
    }

    /// Waits for more bytes of a message already begun, at most until its stall deadline.
    fn wait_mid_message(&mut self) -> Result<(), TransportError> {
        let Some(limit) = self.stall_timeout else {
            return Ok(());
        };
        let started = *self.msg_started.get_or_insert_with(Instant::now);
        let left = limit.saturating_sub(started.elapsed());
        if left.is_zero() || !self.io.wait_readable(left)? {
            return Err(TransportError::Stalled(limit));
        }
        Ok(())
    }

    /// The fds queued for the message being assembled (every batch read before its end; before
    /// its header is complete, all of them) may not exceed the limit. Checked on arrival, so an
    /// unfinished message cannot pile up fds; on failure every queued fd is closed.
    fn check_fd_limit(&mut self) -> Result<(), TransportError> {
        let msg_end = if self.end - self.start >= HEADER_SIZE {
            let at = self.start + 4;
            let mut size = [0u8; 4];
            size.copy_from_slice(&self.buf[at..at + 4]);
            self.pos + u64::from(u32::from_ne_bytes(size))
        } else {
            u64::MAX
        };
        let mut pending = 0;
        for (at, batch) in &self.fds {
            if *at < msg_end {
                pending += batch.len();
            } else if batch.len() > self.max_fds {
                pending = usize::MAX;
            }
        }
        if pending > self.max_fds {
            self.fds.clear();
            return Err(TransportError::TooManyFds);
        }
        Ok(())
    }

    /// The message being assembled is complete: the stall clock stops.
    fn message_done(&mut self) {
        self.msg_started = None;
    }

    fn take_fds(&mut self, msg_end: u64) -> Vec<OwnedFd> {
        let mut out = Vec::new();
        while let Some((at, _)) = self.fds.front() {
            if *at >= msg_end {
                break;
            }
            if let Some((_, batch)) = self.fds.pop_front() {
                out.extend(batch);
            }
        }
        out
    }

    /// Buffers and decodes the next header; returns it with the message size. A size below a
    /// header is fatal (nothing says where the next message starts); one above `max_size` is
    /// drained and reported so the caller can answer it and carry on.
    fn next_header(&mut self, max_size: usize) -> Result<(Header, usize), TransportError> {
        while self.end - self.start < HEADER_SIZE {
            let begun = self.end > self.start;
            self.fill(HEADER_SIZE, begun)?;
        }
        let header = Header::decode(&self.buf[self.start..self.start + HEADER_SIZE])
            .map_err(|_| TransportError::BadSize(0))?;
        let size = usize::try_from(header.msg_size)
            .map_err(|_| TransportError::BadSize(header.msg_size))?;
        if size < HEADER_SIZE {
            return Err(TransportError::BadSize(header.msg_size));
        }
        if size > max_size {
            self.discard(size)?;
            return Err(TransportError::Oversized {
                header,
                size: header.msg_size,
                limit: max_size,
            });
        }
        Ok((header, size))
    }

    fn consume(&mut self, n: usize) {
        self.start += n;
        self.pos += n as u64;
    }

    /// Discards `n` bytes from the stream without keeping them.
    fn discard(&mut self, mut n: usize) -> Result<(), TransportError> {
        while n > 0 {
            if self.start == self.end {
                self.fill(DRAIN_CHUNK.min(n), true)?;
            }
            let take = n.min(self.end - self.start);
            self.consume(take);
            n -= take;
        }
        let end = self.pos;
        drop(self.take_fds(end));
        self.message_done();
        Ok(())
    }
}

/// Most parts a message is sent in after its header (messages have at most 3).
const MAX_PARTS: usize = 4;

/// The header and `parts` as iovecs in a stack array (keeps the hot path free of allocations);
/// returns how many are used.
fn iovecs<'a>(
    head: &'a [u8],
    parts: &[&'a [u8]],
    iov: &mut [IoSlice<'a>; MAX_PARTS + 1],
) -> Result<usize, TransportError> {
    if parts.len() > MAX_PARTS {
        return Err(TransportError::Io(std::io::Error::other(
            "too many message parts",
        )));
    }
    iov[0] = IoSlice::new(head);
    for (slot, p) in iov[1..].iter_mut().zip(parts) {
        *slot = IoSlice::new(p);
    }
    Ok(parts.len() + 1)
}

/// Implements [`Transport`] for a newtype over a [`Buffered`] by forwarding to it: the public
/// transports keep the framing machinery private.
macro_rules! forward_transport {
    ($t:ty) => {
        impl $crate::transport::Transport for $t {
            fn send(
                &self,
                header: &$crate::wire::Header,
                parts: &[&[u8]],
                fds: &[std::os::fd::BorrowedFd<'_>],
            ) -> Result<(), $crate::transport::TransportError> {
                self.0.send(header, parts, fds)
            }
            fn send_span(
                &self,
                header: &$crate::wire::Header,
                parts: &[&[u8]],
                span: &$crate::FileSpan<'_>,
            ) -> Result<(), $crate::transport::TransportError> {
                self.0.send_span(header, parts, span)
            }
            fn recv(
                &mut self,
                max_size: usize,
            ) -> Result<$crate::transport::Frame, $crate::transport::TransportError> {
                self.0.recv(max_size)
            }
            fn payload(&self, frame: &$crate::transport::Frame) -> &[u8] {
                self.0.payload(frame)
            }
        }
    };
}
use forward_transport;

impl<S: Stream> Transport for Buffered<S> {
    fn send(
        &self,
        header: &Header,
        parts: &[&[u8]],
        fds: &[BorrowedFd<'_>],
    ) -> Result<(), TransportError> {
        let head = header.to_bytes();
        let mut iov = [IoSlice::new(&[]); MAX_PARTS + 1];
        let n = iovecs(&head, parts, &mut iov)?;
        self.io.write(&iov[..n], fds)
    }

    fn send_span(
        &self,
        header: &Header,
        parts: &[&[u8]],
        span: &FileSpan<'_>,
    ) -> Result<(), TransportError> {
        let head = header.to_bytes();
        let mut iov = [IoSlice::new(&[]); MAX_PARTS + 1];
        let n = iovecs(&head, parts, &mut iov)?;
        self.io.write_span(&iov[..n], span)
    }

    fn recv(&mut self, max_size: usize) -> Result<Frame, TransportError> {
        let (header, size) = self.next_header(max_size)?;
        while self.end - self.start < size {
            self.fill(size, true)?;
        }
        let msg_end = self.pos + size as u64;
        let fds = self.take_fds(msg_end);
        self.message_done();
        let payload = self.start + HEADER_SIZE..self.start + size;
        self.consume(size);
        Ok(Frame {
            header,
            payload,
            fds,
        })
    }

    fn payload(&self, frame: &Frame) -> &[u8] {
        self.buf.get(frame.payload.clone()).unwrap_or(&[])
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::wire::cmd;
    use std::os::fd::AsFd;

    fn hdr(id: u16, payload: usize) -> Header {
        Header {
            msg_id: id,
            cmd: cmd::REGION_READ,
            msg_size: (HEADER_SIZE + payload) as u32,
            flags: 0,
            error: 0,
        }
    }

    #[test]
    fn pipelined_messages_arrive_in_order() {
        let (a, mut b) = SocketTransport::pair().unwrap();
        for id in 0..10u16 {
            a.send(&hdr(id, 4), &[&[id as u8; 4]], &[]).unwrap();
        }
        for id in 0..10u16 {
            let f = b.recv(1 << 20).unwrap();
            assert_eq!(f.header.msg_id, id);
            assert_eq!(b.payload(&f), &[id as u8; 4]);
        }
    }

    #[test]
    fn fds_go_to_the_message_that_carried_them() {
        let (a, mut b) = SocketTransport::pair().unwrap();
        let file = tempfile::tempfile().unwrap();
        a.send(&hdr(1, 0), &[], &[]).unwrap();
        a.send(&hdr(2, 0), &[], &[file.as_fd()]).unwrap();
        a.send(&hdr(3, 0), &[], &[]).unwrap();
        let counts: Vec<usize> = (0..3).map(|_| b.recv(1 << 20).unwrap().fds.len()).collect();
        assert_eq!(counts, vec![0, 1, 0]);
    }

    #[test]
    fn oversized_message_is_drained_and_stream_stays_in_sync() {
        let (a, mut b) = SocketTransport::pair().unwrap();
        let t = std::thread::spawn(move || {
            a.send(&hdr(1, 200_000), &[&vec![7u8; 200_000]], &[])
                .unwrap();
            a.send(&hdr(2, 4), &[&[1, 2, 3, 4]], &[]).unwrap();
            a
        });
        assert!(matches!(
            b.recv(4096),
            Err(TransportError::Oversized { .. })
        ));
        let f = b.recv(4096).unwrap();
        assert_eq!(f.header.msg_id, 2);
        drop(t.join().unwrap());
    }

    #[test]
    fn mem_pair_frames_messages_and_fds_like_a_socket() {
        let (a, mut b) = MemTransport::mem_pair();
        let file = tempfile::tempfile().unwrap();
        a.send(&hdr(1, 4), &[&[1, 2, 3, 4]], &[]).unwrap();
        a.send(&hdr(2, 0), &[], &[file.as_fd()]).unwrap();
        a.close_write();
        let first = b.recv(1 << 20).unwrap();
        let second = b.recv(1 << 20).unwrap();
        assert_eq!(
            (
                first.header.msg_id,
                b.payload(&first).len(),
                first.fds.len()
            ),
            (1, 4, 0)
        );
        assert_eq!((second.header.msg_id, second.fds.len()), (2, 1));
        assert!(matches!(b.recv(1 << 20), Err(TransportError::Closed)));
    }

    #[test]
    fn closed_peer_is_reported() {
        let (a, mut b) = SocketTransport::pair().unwrap();
        drop(a);
        assert!(matches!(b.recv(4096), Err(TransportError::Closed)));
    }
}
