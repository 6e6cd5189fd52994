//! The building blocks every layout is read and written with: a bounds-checked reader, host-order
//! appends, and the decode error.

use crate::errno::Errno;

/// Why a message could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The payload ended before a fixed field.
    #[error("payload too short: needed {needed} bytes, have {have}")]
    Short {
        /// Bytes needed.
        needed: usize,
        /// Bytes available.
        have: usize,
    },
    /// `msg_size` is below the header size or not representable.
    #[error("message size {0} is invalid")]
    BadSize(u32),
    /// A field holds a value the protocol does not allow.
    #[error("invalid {field}: {value:#x}")]
    Invalid {
        /// Which field.
        field: &'static str,
        /// Its value.
        value: u64,
    },
    /// A count exceeds the negotiated `max_data_xfer_size`.
    #[error("count {count} exceeds max_data_xfer_size {max}")]
    TooLarge {
        /// The count asked for.
        count: u64,
        /// The limit.
        max: u32,
    },
    /// offset + count overflows.
    #[error("offset {offset:#x} + count {count:#x} overflows")]
    Overflow {
        /// Offset.
        offset: u64,
        /// Count.
        count: u64,
    },
    /// The VERSION JSON is not valid.
    #[error("invalid version data: {0}")]
    Json(String),
    /// Unknown command id.
    #[error("unknown command {0}")]
    UnknownCommand(u16),
}

impl WireError {
    /// The errno an error reply carries for this decode failure.
    pub fn errno(&self) -> Errno {
        match self {
            WireError::TooLarge { .. } => Errno::E2BIG,
            WireError::Overflow { .. } => Errno::EOVERFLOW,
            WireError::UnknownCommand(_) => Errno::ENOSYS,
            _ => Errno::EINVAL,
        }
    }
}

/// A bounds-checked little cursor over a payload (host byte order, as the spec says).
#[derive(Debug)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// Starts at the beginning of `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    /// Takes the next `n` bytes.
    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        let end = self.pos.checked_add(n).ok_or(WireError::Short {
            needed: usize::MAX,
            have: self.buf.len(),
        })?;
        let out = self.buf.get(self.pos..end).ok_or(WireError::Short {
            needed: end,
            have: self.buf.len(),
        })?;
        self.pos = end;
        Ok(out)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], WireError> {
        let b = self.bytes(N)?;
        let mut out = [0u8; N];
        out.copy_from_slice(b);
        Ok(out)
    }

    /// Next u16.
    pub fn u16(&mut self) -> Result<u16, WireError> {
        Ok(u16::from_ne_bytes(self.array()?))
    }

    /// Next u32.
    pub fn u32(&mut self) -> Result<u32, WireError> {
        Ok(u32::from_ne_bytes(self.array()?))
    }

    /// Next u64.
    pub fn u64(&mut self) -> Result<u64, WireError> {
        Ok(u64::from_ne_bytes(self.array()?))
    }

    /// The rest of the buffer.
    pub fn rest(&mut self) -> &'a [u8] {
        let out = self.buf.get(self.pos..).unwrap_or(&[]);
        self.pos = self.buf.len();
        out
    }

    /// Bytes not yet read.
    pub fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }
}

/// Appends host-order integers to a buffer.
pub trait Put {
    /// Appends a u16.
    fn put_u16(&mut self, v: u16);
    /// Appends a u32.
    fn put_u32(&mut self, v: u32);
    /// Appends a u64.
    fn put_u64(&mut self, v: u64);
}

impl Put for Vec<u8> {
    fn put_u16(&mut self, v: u16) {
        self.extend_from_slice(&v.to_ne_bytes());
    }
    fn put_u32(&mut self, v: u32) {
        self.extend_from_slice(&v.to_ne_bytes());
    }
    fn put_u64(&mut self, v: u64) {
        self.extend_from_slice(&v.to_ne_bytes());
    }
}
