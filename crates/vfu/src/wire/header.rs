//! The 16-byte message header and its flag bits.

use super::codec::fields;
use super::{FLAG_ERROR, FLAG_NO_REPLY, FLAG_TYPE_MASK, FLAG_TYPE_REPLY, HEADER_SIZE};
use crate::errno::Errno;

/// The message header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Header {
    /// Chosen by the sender, echoed in the reply.
    pub msg_id: u16,
    /// Command id.
    pub cmd: u16,
    /// Whole message size including the header.
    pub msg_size: u32,
    /// Type, No_reply and Error bits.
    pub flags: u32,
    /// errno of an error reply.
    pub error: u32,
}

fields!(Header {
    msg_id: u16,
    cmd: u16,
    msg_size: u32,
    flags: u32,
    error: u32
});

impl Header {
    /// The 16 bytes on the stack: every message's hot path sends them without allocating.
    pub fn to_bytes(&self) -> [u8; HEADER_SIZE] {
        let mut out = [0u8; HEADER_SIZE];
        out[0..2].copy_from_slice(&self.msg_id.to_ne_bytes());
        out[2..4].copy_from_slice(&self.cmd.to_ne_bytes());
        out[4..8].copy_from_slice(&self.msg_size.to_ne_bytes());
        out[8..12].copy_from_slice(&self.flags.to_ne_bytes());
        out[12..16].copy_from_slice(&self.error.to_ne_bytes());
        out
    }

    /// The message type (command or reply).
    pub(crate) fn msg_type(&self) -> u32 {
        self.flags & FLAG_TYPE_MASK
    }

    /// True when the sender asked for no reply.
    pub(crate) fn no_reply(&self) -> bool {
        self.flags & FLAG_NO_REPLY != 0
    }

    /// True for an error reply.
    pub fn is_error(&self) -> bool {
        self.flags & FLAG_ERROR != 0
    }

    /// The reply header for a command with `payload_len` bytes of reply payload.
    pub(crate) fn reply(&self, payload_len: usize) -> Self {
        Self {
            msg_id: self.msg_id,
            cmd: self.cmd,
            msg_size: u32::try_from(HEADER_SIZE + payload_len).unwrap_or(u32::MAX),
            flags: FLAG_TYPE_REPLY,
            error: 0,
        }
    }

    /// The error reply header for this command.
    pub(crate) fn error_reply(&self, errno: Errno) -> Self {
        Self {
            msg_id: self.msg_id,
            cmd: self.cmd,
            msg_size: HEADER_SIZE as u32,
            flags: FLAG_TYPE_REPLY | FLAG_ERROR,
            error: u32::try_from(errno as i32).unwrap_or(0),
        }
    }
}
