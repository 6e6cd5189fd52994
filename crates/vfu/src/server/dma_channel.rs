//! The server end of a twin socket: DMA_READ/DMA_WRITE messages for the DMA regions the client
//! mapped without an fd, behind [`DmaTransfer`] so that the DMA table holds no protocol client.

use crate::dma::{DmaTransfer, CHANNEL_TIMEOUT};
use crate::errno::Errno;
use crate::transport::Transport;
use crate::wire::{Decode, DmaAccess, DmaWriteReply, Encode};

/// The server end of a twin socket: where DMA_READ/DMA_WRITE go for regions without an fd.
#[derive(Debug)]
pub(crate) struct DmaChannel {
    t: crate::transport::SocketTransport,
    next_id: u16,
    max_xfer: u32,
    /// A send or reply failed or timed out: the stream may be out of step, so every later
    /// transfer is EIO at once.
    broken: bool,
}

impl DmaChannel {
    /// A channel over the server end of the twin socket; transfers are split at `max_xfer`,
    /// and each waits at most [`CHANNEL_TIMEOUT`] for the client.
    pub(crate) fn new(stream: std::os::unix::net::UnixStream, max_xfer: u32) -> Self {
        let bounded = stream
            .set_read_timeout(Some(CHANNEL_TIMEOUT))
            .and_then(|()| stream.set_write_timeout(Some(CHANNEL_TIMEOUT)));
        Self {
            t: crate::transport::SocketTransport::new(stream),
            next_id: 0,
            max_xfer: max_xfer.max(1),
            // Without a bound the channel is never used: a client could stall it for good.
            broken: bounded.is_err(),
        }
    }

    /// One command and its reply; an error reply becomes its errno, anything malformed EIO.
    fn call(&mut self, cmd: u16, parts: &[&[u8]]) -> Result<Vec<u8>, Errno> {
        if self.broken {
            return Err(Errno::EIO);
        }
        match self.exchange(cmd, parts) {
            Ok(reply) => reply,
            Err(e) => {
                self.broken = true;
                Err(e)
            }
        }
    }

    /// One command and its reply: the client's error reply inside, anything that leaves the
    /// stream out of step (a failed or timed-out send or receive, a stray reply) outside.
    fn exchange(&mut self, cmd: u16, parts: &[&[u8]]) -> Result<Result<Vec<u8>, Errno>, Errno> {
        use crate::wire::{Header, FLAG_TYPE_COMMAND, HEADER_SIZE};
        self.next_id = self.next_id.wrapping_add(1);
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let msg_size = u32::try_from(HEADER_SIZE + len).map_err(|_| Errno::E2BIG)?;
        let h = Header {
            msg_id: self.next_id,
            cmd,
            msg_size,
            flags: FLAG_TYPE_COMMAND,
            error: 0,
        };
        self.t.send(&h, parts, &[]).map_err(|_| Errno::EIO)?;
        let max = crate::wire::max_message_size(self.max_xfer);
        let f = self.t.recv(max).map_err(|_| Errno::EIO)?;
        if f.header.msg_id != h.msg_id
            || f.header.cmd != cmd
            || f.header.msg_type() == FLAG_TYPE_COMMAND
        {
            return Err(Errno::EIO);
        }
        if f.header.is_error() {
            // A well-formed error reply: the stream is in step.
            return Ok(Err(Errno::from_raw(
                i32::try_from(f.header.error).unwrap_or(libc::EIO),
            )));
        }
        Ok(Ok(self.t.payload(&f).to_vec()))
    }

    fn read_chunks(&mut self, mut address: u64, buf: &mut [u8]) -> Result<(), Errno> {
        for chunk in buf.chunks_mut(self.max_xfer as usize) {
            let count = chunk.len() as u64;
            let req = DmaAccess { address, count }.encode();
            let reply = self.call(crate::wire::cmd::DMA_READ, &[&req])?;
            let (a, data) = <(DmaAccess, &[u8])>::decode(&reply).map_err(|_| Errno::EIO)?;
            if a.address != address || a.count != count || data.len() != chunk.len() {
                return Err(Errno::EIO);
            }
            chunk.copy_from_slice(data);
            address += count;
        }
        Ok(())
    }

    fn write_chunks(&mut self, mut address: u64, data: &[u8]) -> Result<(), Errno> {
        for chunk in data.chunks(self.max_xfer as usize) {
            let count = chunk.len() as u64;
            let req = DmaAccess { address, count }.encode();
            let reply = self.call(crate::wire::cmd::DMA_WRITE, &[&req, chunk])?;
            let done = DmaWriteReply::decode(&reply).map_err(|_| Errno::EIO)?;
            if done.address != address || u64::from(done.count) != count {
                return Err(Errno::EIO);
            }
            address += count;
        }
        Ok(())
    }
}

impl DmaTransfer for DmaChannel {
    fn read(&mut self, address: u64, buf: &mut [u8]) -> Result<(), Errno> {
        self.read_chunks(address, buf)
    }

    fn write(&mut self, address: u64, data: &[u8]) -> Result<(), Errno> {
        self.write_chunks(address, data)
    }
}
