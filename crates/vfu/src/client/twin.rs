//! The client's side of twin-socket mode: the server sends DMA_READ/DMA_WRITE for memory this
//! client exported without an fd on a socket of their own, and the client answers them from
//! local buffers while it waits for its own replies.

use std::collections::BTreeMap;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use crate::errno::Errno;
use crate::error::Error;
use crate::transport::{SocketTransport, Transport, TransportError};
use crate::wire::{self, cmd, Decode, DmaAccess, DmaWriteReply, Encode};

/// The twin socket and the memory it serves, by DMA address.
#[derive(Debug)]
pub(super) struct Twin {
    t: SocketTransport,
    memory: BTreeMap<u64, Vec<u8>>,
}

impl Twin {
    pub(super) fn new(stream: UnixStream) -> Self {
        Self {
            t: SocketTransport::new(stream),
            memory: BTreeMap::new(),
        }
    }

    /// Exports `len` zeroed bytes at DMA address `address`.
    pub(super) fn export(&mut self, address: u64, len: usize) {
        self.memory.insert(address, vec![0; len]);
    }

    /// The exported region starting at `address`.
    pub(super) fn region(&mut self, address: u64) -> Option<&mut Vec<u8>> {
        self.memory.get_mut(&address)
    }

    /// Serves DMA requests until `main` (the client's own socket) has something to read.
    /// False when the server closed the twin socket.
    pub(super) fn serve_until_readable(
        &mut self,
        main: &SocketTransport,
        max_xfer: u32,
    ) -> Result<bool, Error> {
        loop {
            if main.buffered() > 0 {
                return Ok(true);
            }
            let (main_ready, twin_ready) = if self.t.buffered() > 0 {
                (false, true)
            } else {
                let mut fds = [
                    PollFd::new(main.stream().as_fd(), PollFlags::POLLIN),
                    PollFd::new(self.t.stream().as_fd(), PollFlags::POLLIN),
                ];
                match poll(&mut fds, PollTimeout::NONE) {
                    Ok(_) => {}
                    Err(Errno::EINTR) => continue,
                    Err(e) => return Err(e.into()),
                }
                let ready = |f: &PollFd<'_>| f.revents().is_some_and(|r| !r.is_empty());
                (ready(&fds[0]), ready(&fds[1]))
            };
            if twin_ready && !self.serve_one(max_xfer)? {
                return Ok(false);
            }
            if main_ready {
                return Ok(true);
            }
        }
    }

    /// Answers one request; false when the twin socket closed.
    fn serve_one(&mut self, max_xfer: u32) -> Result<bool, Error> {
        let f = match self.t.recv(wire::max_message_size(max_xfer)) {
            Ok(f) => f,
            Err(TransportError::Closed) => return Ok(false),
            Err(e) => return Err(e.into()),
        };
        let payload = self.t.payload(&f).to_vec();
        let h = f.header;
        let answer = serve_dma(&mut self.memory, h.cmd, &payload, max_xfer);
        if h.no_reply() {
            return Ok(true);
        }
        match answer {
            Ok(out) => self.t.send(&h.reply(out.len()), &[&out], &[])?,
            Err(errno) => self.t.send(&h.error_reply(errno), &[], &[])?,
        }
        Ok(true)
    }
}

/// A DMA_READ/DMA_WRITE against local memory: the reply payload, or the errno.
fn serve_dma(
    mem: &mut BTreeMap<u64, Vec<u8>>,
    command: u16,
    payload: &[u8],
    max_xfer: u32,
) -> Result<Vec<u8>, Errno> {
    let (a, data) = <(DmaAccess, &[u8])>::decode(payload).map_err(|e| e.errno())?;
    wire::check_count(a.count, max_xfer).map_err(|e| e.errno())?;
    let (base, region) = mem
        .range_mut(..=a.address)
        .next_back()
        .ok_or(Errno::EFAULT)?;
    let off = usize::try_from(a.address - *base).map_err(|_| Errno::EFAULT)?;
    let len = usize::try_from(a.count).map_err(|_| Errno::EFAULT)?;
    let end = off.checked_add(len).ok_or(Errno::EFAULT)?;
    let window = region.get_mut(off..end).ok_or(Errno::EFAULT)?;
    match command {
        cmd::DMA_READ => {
            let mut out = Vec::with_capacity(16 + len);
            a.encode_into(&mut out);
            out.extend_from_slice(window);
            Ok(out)
        }
        cmd::DMA_WRITE => {
            if data.len() != len {
                return Err(Errno::EINVAL);
            }
            window.copy_from_slice(data);
            Ok(DmaWriteReply {
                address: a.address,
                count: u32::try_from(len).map_err(|_| Errno::EINVAL)?,
            }
            .encode())
        }
        _ => Err(Errno::EINVAL),
    }
}
