//! The AF_UNIX stream socket as a [`Stream`]: `recvmsg` that owns every fd it is handed, one
//! `send`/`sendmsg` per message, and `sendfile` for file spans.

use std::io::IoSlice;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{getsockopt, sendmsg, sockopt, ControlMessage, MsgFlags};

use super::{Buffered, Stream, TransportError, MAX_FDS_PER_MESSAGE};
use crate::seam::FileSpan;

/// The kernel's limit of fds in one SCM_RIGHTS message (SCM_MAX_FD): our control buffer holds
/// that many, so the kernel never truncates the fds it hands us.
const SCM_MAX_FD: usize = 253;
/// Messages up to this size without fds are sent with one plain send(2).
const SMALL_SEND: usize = 512;

/// An AF_UNIX stream socket as a [`Stream`].
#[derive(Debug)]
pub(crate) struct SocketStream {
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
                Err(Errno::EINTR) => continue,
                // The send timeout passed with the socket full: the peer stopped reading.
                Err(Errno::EAGAIN) => return Err(stalled_send(self.stream.as_fd())),
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

/// The AF_UNIX transport, as the server and the client use it.
pub(crate) type SocketTransport = Buffered<SocketStream>;

/// A vfio-user message stream over a connected AF_UNIX socket (for
/// [`crate::server::Server::serve_connection`]).
#[derive(Debug)]
pub struct UnixTransport(SocketTransport);

impl UnixTransport {
    /// Wraps a connected stream.
    pub fn new(stream: UnixStream) -> Self {
        Self(SocketTransport::new(stream))
    }
}

super::forward_transport!(UnixTransport);

impl SocketTransport {
    /// Wraps a connected stream.
    pub(crate) fn new(stream: UnixStream) -> Self {
        // SAFETY: CMSG_SPACE only computes a length.
        let space = unsafe { libc::CMSG_SPACE((SCM_MAX_FD * std::mem::size_of::<RawFd>()) as u32) };
        Buffered::over(SocketStream {
            stream,
            cmsg: vec![0u64; (space as usize).div_ceil(8)],
        })
    }

    /// The underlying socket.
    pub(crate) fn stream(&self) -> &UnixStream {
        &self.io.stream
    }

    /// A connected pair, for tests.
    #[cfg(test)]
    pub(crate) fn pair() -> std::io::Result<(Self, Self)> {
        let (a, b) = UnixStream::pair()?;
        Ok((Self::new(a), Self::new(b)))
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
            Err(Errno::EAGAIN) => return Err(stalled_send(fd)),
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
            Err(Errno::EAGAIN) => return Err(stalled_send(fd)),
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
            Err(Errno::EAGAIN) => return Err(stalled_send(fd)),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// A blocking send that came back EAGAIN: its send timeout passed while the peer read nothing.
fn stalled_send(fd: BorrowedFd<'_>) -> TransportError {
    let timeout = getsockopt(&fd, sockopt::SendTimeout)
        .map(|tv| {
            Duration::from_secs(u64::try_from(tv.tv_sec()).unwrap_or(0))
                + Duration::from_micros(u64::try_from(tv.tv_usec()).unwrap_or(0))
        })
        .unwrap_or_default();
    TransportError::Stalled(timeout)
}
