//! Moving whole messages (bytes + fds) over a stream.
//!
//! [`Transport`] is what sessions and the client talk to; [`UnixTransport`] is the AF_UNIX
//! implementation. Receiving is buffered: one `recvmsg` may bring several pipelined messages, so
//! a request costs one syscall to read and one `sendmsg` to answer, as a plain ping-pong would.
//!
//! File descriptors: Linux stops a stream read right after the segment that carried fds, so the
//! fds of one `recvmsg` belong to the message containing the last byte that call read. We record
//! that stream position with the fds and hand them to that message.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::ops::Range;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};

use crate::device::FileSpan;
use crate::wire::{Header, HEADER_SIZE};

/// Most fds one message may carry (more close the connection). Enforced as fds arrive, so a
/// message that never completes cannot make us hold more than this many of the peer's fds.
pub const MAX_FDS_PER_MESSAGE: usize = 32;
/// The kernel's limit of fds in one SCM_RIGHTS message (SCM_MAX_FD): our control buffer holds
/// that many, so the kernel never truncates the fds it hands us.
const SCM_MAX_FD: usize = 253;
const INITIAL_BUFFER: usize = 64 * 1024;
const DRAIN_CHUNK: usize = 64 * 1024;
/// Messages up to this size without fds are sent with one plain send(2).
const SMALL_SEND: usize = 512;

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
pub trait Stream: Send {
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

/// An AF_UNIX stream socket as a [`Stream`].
#[derive(Debug)]
pub struct SocketStream {
    stream: UnixStream,
    /// Reused control-message buffer for `recvmsg` (u64 elements keep it cmsghdr-aligned),
    /// large enough for SCM_MAX_FD fds.
    cmsg: Vec<u64>,
}

impl Stream for SocketStream {
    fn read(
        &mut self,
        buf: &mut [u8],
        with_fds: bool,
    ) -> Result<(usize, Vec<OwnedFd>), TransportError> {
        if with_fds {
            recv_with_fds(self.stream.as_raw_fd(), buf, &mut self.cmsg)
        } else {
            Ok((recv_plain(self.stream.as_raw_fd(), buf)?, Vec::new()))
        }
    }

    fn write(&self, iov: &[IoSlice<'_>], fds: &[BorrowedFd<'_>]) -> Result<(), TransportError> {
        let total: usize = iov.iter().map(|s| s.len()).sum();
        if fds.is_empty() && total <= SMALL_SEND {
            // Small messages without fds: one contiguous send(2), cheaper than sendmsg(2) (no
            // msghdr or iovec import), which is most of a 4-byte round trip's extra cost.
            let mut flat = [0u8; SMALL_SEND];
            let mut at = 0;
            for s in iov {
                flat[at..at + s.len()].copy_from_slice(s);
                at += s.len();
            }
            return send_flat(self.stream.as_fd(), &flat[..at]);
        }
        let mut raw = [0 as RawFd; MAX_FDS_PER_MESSAGE];
        if fds.len() > raw.len() {
            return Err(TransportError::TooManyFds);
        }
        for (slot, f) in raw.iter_mut().zip(fds) {
            *slot = f.as_raw_fd();
        }
        send_all(
            self.stream.as_fd(),
            iov,
            &raw[..fds.len()],
            MsgFlags::empty(),
        )
    }

    fn wait_readable(&self, timeout: Duration) -> Result<bool, TransportError> {
        let ms = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
        let mut fds = [PollFd::new(self.stream.as_fd(), PollFlags::POLLIN)];
        loop {
            match poll(&mut fds, PollTimeout::from(ms)) {
                Ok(n) => return Ok(n > 0),
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    fn write_span(&self, iov: &[IoSlice<'_>], span: &FileSpan<'_>) -> Result<(), TransportError> {
        // Header first, then the file's bytes go from the page cache to the socket without
        // passing through our memory. We are the only writer, so the pieces stay one message.
        send_all(self.stream.as_fd(), iov, &[], MsgFlags::empty())?;
        let mut offset = i64::try_from(span.offset)
            .map_err(|_| TransportError::Io(std::io::Error::from(Errno::EOVERFLOW)))?;
        let mut left = span.len;
        let mut ones = span.ones;
        while left > 0 {
            match nix::sys::sendfile::sendfile64(
                self.stream.as_fd(),
                span.fd,
                Some(&mut offset),
                left,
            ) {
                Ok(0) => {
                    // The file ended under us (truncated since the device checked it): the
                    // header is out, so the rest reads as all ones, like a dead device.
                    tracing::warn!(missing = left, "file ended during a read: sent all ones");
                    ones += left;
                    left = 0;
                }
                Ok(n) => left -= n,
                Err(Errno::EINTR | Errno::EAGAIN) => continue,
                Err(Errno::EPIPE | Errno::ECONNRESET) => return Err(TransportError::Closed),
                Err(e) => return Err(e.into()),
            }
        }
        const ONES: [u8; 4096] = [0xff; 4096];
        while ones > 0 {
            let n = ones.min(ONES.len());
            send_flat(self.stream.as_fd(), &ONES[..n])?;
            ones -= n;
        }
        Ok(())
    }
}

/// Message framing over any [`Stream`]: a reusable receive buffer that may hold several
/// pipelined messages, and fd attribution by stream position.
#[derive(Debug)]
pub struct Buffered<S> {
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

/// The AF_UNIX transport.
pub type UnixTransport = Buffered<SocketStream>;

impl UnixTransport {
    /// Wraps a connected stream.
    pub fn new(stream: UnixStream) -> Self {
        // SAFETY: CMSG_SPACE only computes a length.
        let space = unsafe { libc::CMSG_SPACE((SCM_MAX_FD * std::mem::size_of::<RawFd>()) as u32) };
        Buffered::over(SocketStream {
            stream,
            cmsg: vec![0u64; (space as usize).div_ceil(8)],
        })
    }

    /// The underlying socket.
    pub fn stream(&self) -> &UnixStream {
        &self.io.stream
    }

    /// A connected pair, for tests.
    pub fn pair() -> std::io::Result<(Self, Self)> {
        let (a, b) = UnixStream::pair()?;
        Ok((Self::new(a), Self::new(b)))
    }
}

impl<S: Stream> Buffered<S> {
    /// Bytes received but not yet returned as messages.
    pub fn buffered(&self) -> usize {
        self.end - self.start
    }

    /// Frames messages over `io`.
    pub fn over(io: S) -> Self {
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
    pub fn set_stall_timeout(&mut self, timeout: Option<Duration>) {
        self.stall_timeout = timeout;
    }

    /// Whether reads take fds (recvmsg) or not (recv, a little cheaper). A client waiting for
    /// a reply that never carries fds (REGION_READ) turns it off for that wait.
    pub fn set_accept_fds(&mut self, on: bool) {
        self.accept_fds = on;
    }

    /// Receives one message as `prefix` (its first payload bytes) plus data read straight into
    /// `out`, so large REGION_READ replies are not copied through the receive buffer. Returns
    /// the header and the data length, or `None` for the length when the message does not have
    /// that shape (shorter than `prefix`, or more data than `out` holds); it is consumed either
    /// way. fds that come with it are closed.
    pub fn recv_into(
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

impl<S: Stream> Transport for Buffered<S> {
    fn send(
        &self,
        header: &Header,
        parts: &[&[u8]],
        fds: &[BorrowedFd<'_>],
    ) -> Result<(), TransportError> {
        let head = header.encode();
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
        let head = header.encode();
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

/// One recv(2), retrying on EINTR.
fn recv_plain(fd: RawFd, buf: &mut [u8]) -> Result<usize, TransportError> {
    loop {
        match nix::sys::socket::recv(fd, buf, MsgFlags::empty()) {
            Ok(n) => return Ok(n),
            Err(Errno::EINTR) => continue,
            Err(Errno::ECONNRESET) => return Err(TransportError::Closed),
            Err(e) => return Err(e.into()),
        }
    }
}

/// One `recvmsg`, retrying on EINTR; returns bytes read and the fds that came with them.
/// Every fd the kernel installed is owned (and so closed when dropped), also when the control
/// data was truncated: nix refuses to walk truncated control data, so we walk it ourselves.
fn recv_with_fds(
    fd: RawFd,
    buf: &mut [u8],
    cmsg: &mut [u64],
) -> Result<(usize, Vec<OwnedFd>), TransportError> {
    loop {
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        // SAFETY: an all-zero msghdr is a valid value (null pointers, zero lengths).
        let mut hdr: libc::msghdr = unsafe { std::mem::zeroed() };
        hdr.msg_iov = &mut iov;
        hdr.msg_iovlen = 1;
        hdr.msg_control = cmsg.as_mut_ptr().cast();
        hdr.msg_controllen = std::mem::size_of_val(cmsg) as _;
        // SAFETY: `hdr` points at `iov` and `cmsg`, both live and of the lengths stated, for the
        // whole call.
        let n = unsafe { libc::recvmsg(fd, &mut hdr, libc::MSG_CMSG_CLOEXEC) };
        if n < 0 {
            match Errno::last() {
                Errno::EINTR => continue,
                Errno::ECONNRESET => return Err(TransportError::Closed),
                e => return Err(e.into()),
            }
        }
        let fds = owned_fds(&hdr);
        if hdr.msg_flags & libc::MSG_CTRUNC != 0 {
            // More fds than any message may carry; the ones we got are closed with `fds`.
            return Err(TransportError::TooManyFds);
        }
        return Ok((n as usize, fds));
    }
}

/// Takes ownership of every fd in the SCM_RIGHTS control messages `recvmsg` left in `hdr`.
// cmsg_len and msg_controllen are usize on glibc and u32 on musl: the casts are for the latter.
#[allow(clippy::unnecessary_cast)]
fn owned_fds(hdr: &libc::msghdr) -> Vec<OwnedFd> {
    let mut fds = Vec::new();
    let control = hdr.msg_control as usize;
    let control_end = control + hdr.msg_controllen as usize;
    // SAFETY: `hdr` was filled by recvmsg; CMSG_FIRSTHDR only reads its control fields.
    let mut c = unsafe { libc::CMSG_FIRSTHDR(hdr) };
    while !c.is_null() {
        // SAFETY: CMSG_FIRSTHDR/CMSG_NXTHDR return headers that lie inside the control buffer,
        // which is aligned for cmsghdr (u64 elements).
        let (level, kind, len) = unsafe { ((*c).cmsg_level, (*c).cmsg_type, (*c).cmsg_len) };
        if level == libc::SOL_SOCKET && kind == libc::SCM_RIGHTS {
            // SAFETY: `c` is a valid header inside the buffer (above).
            let data = unsafe { libc::CMSG_DATA(c) } as usize;
            // The kernel's cmsg_len counts only the fds it installed; never read past the buffer.
            let end = (c as usize).saturating_add(len as usize).min(control_end);
            let count = end.saturating_sub(data) / std::mem::size_of::<RawFd>();
            for i in 0..count {
                // SAFETY: `data + i * 4` lies inside the received control data (bounded above);
                // the read is unaligned-safe.
                let raw = unsafe { std::ptr::read_unaligned((data as *const RawFd).add(i)) };
                // SAFETY: SCM_RIGHTS just installed `raw` in our fd table and nothing else owns
                // it; wrapping it makes sure it is closed.
                fds.push(unsafe { OwnedFd::from_raw_fd(raw) });
            }
        }
        // SAFETY: as for CMSG_FIRSTHDR; CMSG_NXTHDR returns null past the control data.
        c = unsafe { libc::CMSG_NXTHDR(hdr, c) };
    }
    fds
}

/// send(2) of one contiguous buffer until every byte is out.
fn send_flat(fd: BorrowedFd<'_>, mut buf: &[u8]) -> Result<(), TransportError> {
    while !buf.is_empty() {
        match nix::sys::socket::send(fd.as_raw_fd(), buf, MsgFlags::MSG_NOSIGNAL) {
            Ok(n) => buf = &buf[n..],
            Err(Errno::EINTR) => continue,
            Err(Errno::EPIPE | Errno::ECONNRESET) => return Err(TransportError::Closed),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// `sendmsg` until every byte is out; fds go with the first call only.
fn send_all(
    fd: BorrowedFd<'_>,
    iov: &[IoSlice<'_>],
    fds: &[RawFd],
    extra: MsgFlags,
) -> Result<(), TransportError> {
    let flags = MsgFlags::MSG_NOSIGNAL | extra;
    let total: usize = iov.iter().map(|s| s.len()).sum();
    let cmsgs = [ControlMessage::ScmRights(fds)];
    let with_fds: &[ControlMessage<'_>] = if fds.is_empty() { &[] } else { &cmsgs };
    // The common case: everything goes out in one call, with no copying of the slice list.
    let mut sent = loop {
        match sendmsg::<()>(fd.as_raw_fd(), iov, with_fds, flags, None) {
            Ok(n) => break n,
            Err(Errno::EINTR) => continue,
            Err(Errno::EPIPE | Errno::ECONNRESET) => return Err(TransportError::Closed),
            Err(e) => return Err(e.into()),
        }
    };
    while sent < total {
        // A partial send (large message, full socket buffer): rebuild the rest; fds went first.
        let mut skip = sent;
        let mut rest: Vec<IoSlice<'_>> = Vec::with_capacity(iov.len());
        for s in iov {
            if skip >= s.len() {
                skip -= s.len();
                continue;
            }
            rest.push(IoSlice::new(&s[skip..]));
            skip = 0;
        }
        match sendmsg::<()>(fd.as_raw_fd(), &rest, &[], flags, None) {
            Ok(n) => sent += n,
            Err(Errno::EINTR) => continue,
            Err(Errno::EPIPE | Errno::ECONNRESET) => return Err(TransportError::Closed),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

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
pub struct MemStream {
    rx: std::sync::Arc<Shared>,
    tx: std::sync::Arc<Shared>,
}

/// The in-memory transport.
pub type MemTransport = Buffered<MemStream>;

impl MemTransport {
    /// A connected in-memory pair.
    pub fn mem_pair() -> (Self, Self) {
        let a = std::sync::Arc::new(Shared::default());
        let b = std::sync::Arc::new(Shared::default());
        (
            Buffered::over(MemStream {
                rx: a.clone(),
                tx: b.clone(),
            }),
            Buffered::over(MemStream { rx: b, tx: a }),
        )
    }

    /// Writes raw bytes (not necessarily a message) to the peer, for hostile-input tests.
    pub fn write_raw(&self, bytes: &[u8]) -> Result<(), TransportError> {
        self.io.write(&[IoSlice::new(bytes)], &[])
    }

    /// Ends this side's writing: the peer reads end of stream once it has drained the rest.
    pub fn close_write(&self) {
        self.io.close();
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::wire::cmd;

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
        let (a, mut b) = UnixTransport::pair().unwrap();
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
        let (a, mut b) = UnixTransport::pair().unwrap();
        let file = tempfile::tempfile().unwrap();
        a.send(&hdr(1, 0), &[], &[]).unwrap();
        a.send(&hdr(2, 0), &[], &[file.as_fd()]).unwrap();
        a.send(&hdr(3, 0), &[], &[]).unwrap();
        let counts: Vec<usize> = (0..3).map(|_| b.recv(1 << 20).unwrap().fds.len()).collect();
        assert_eq!(counts, vec![0, 1, 0]);
    }

    #[test]
    fn oversized_message_is_drained_and_stream_stays_in_sync() {
        let (a, mut b) = UnixTransport::pair().unwrap();
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
        let (a, mut b) = UnixTransport::pair().unwrap();
        drop(a);
        assert!(matches!(b.recv(4096), Err(TransportError::Closed)));
    }
}
