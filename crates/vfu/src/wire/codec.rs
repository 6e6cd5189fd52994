//! The building blocks every layout is read and written with: a bounds-checked reader, host-order
//! appends, the decode error, and the one convention every layout follows:
//!
//! - [`Encode`]: `encode_into` appends the bytes, `encode` returns them;
//! - [`Decode`]: `decode(payload)` reads the layout (a fixed layout from the whole payload, a
//!   fixed part followed by data as the pair `(fixed, data)`), checking lengths first.
//!
//! A type describes its fixed fields once, as a [`Layout`] (`read` and `write`); the
//! [`layout!`] macro derives `Encode` and `Decode` for it and for it followed by data.

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
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// Starts at the beginning of `buf`.
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    /// Takes the next `n` bytes.
    pub(crate) fn bytes(&mut self, n: usize) -> Result<&'a [u8], WireError> {
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
    pub(crate) fn u16(&mut self) -> Result<u16, WireError> {
        Ok(u16::from_ne_bytes(self.array()?))
    }

    /// Next u32.
    pub(crate) fn u32(&mut self) -> Result<u32, WireError> {
        Ok(u32::from_ne_bytes(self.array()?))
    }

    /// Next u64.
    pub(crate) fn u64(&mut self) -> Result<u64, WireError> {
        Ok(u64::from_ne_bytes(self.array()?))
    }

    /// The rest of the buffer.
    pub(crate) fn rest(&mut self) -> &'a [u8] {
        let out = self.buf.get(self.pos..).unwrap_or(&[]);
        self.pos = self.buf.len();
        out
    }

    /// Bytes not yet read.
    pub(crate) fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }
}

/// Appends host-order integers to a buffer.
pub(crate) trait Put {
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

/// A layout that can be written into a message.
pub trait Encode {
    /// Appends the bytes to `out`.
    fn encode_into(&self, out: &mut Vec<u8>);

    /// The bytes in a new buffer.
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_into(&mut out);
        out
    }
}

/// A layout read from a payload.
pub trait Decode<'a>: Sized {
    /// Reads the layout from `payload`, checking lengths before anything is allocated.
    fn decode(payload: &'a [u8]) -> Result<Self, WireError>;
}

/// The fixed fields of a layout, read and written in order; checks that need the whole value
/// go in `check`.
pub(crate) trait Layout: Sized {
    /// Reads the fields.
    fn read(r: &mut Reader<'_>) -> Result<Self, WireError>;
    /// Writes the fields.
    fn write(&self, out: &mut Vec<u8>);
    /// Refuses values the protocol does not allow (default: none).
    fn check(&self) -> Result<(), WireError> {
        Ok(())
    }
}

/// A [`Layout`] from the list of its fields in wire order (each a `u16`, `u32` or `u64`, in host
/// byte order), with an optional `check` function and `..Default::default()` for structs that
/// have more (unused) fields; then [`layout!`] on it.
macro_rules! fields {
    ($t:ty { $($f:ident: $k:ident),* $(,)? } $(check $check:path)? $(; default $d:tt)?) => {
        impl $crate::wire::codec::Layout for $t {
            fn read(
                r: &mut $crate::wire::codec::Reader<'_>,
            ) -> Result<Self, $crate::wire::WireError> {
                Ok(Self { $($f: r.$k()?,)* $(..fields!(@default $d))? })
            }
            fn write(&self, out: &mut Vec<u8>) {
                $(out.extend_from_slice(&self.$f.to_ne_bytes());)*
            }
            $(fn check(&self) -> Result<(), $crate::wire::WireError> {
                $check(self)
            })?
        }
        $crate::wire::codec::layout!($t);
    };
    (@default $d:tt) => { Default::default() };
}
pub(crate) use fields;

/// `Encode` and `Decode` for a [`Layout`]: alone (trailing bytes are ignored, as the kernel
/// ignores bytes past `argsz`), and followed by data as `(fixed, data)`.
macro_rules! layout {
    ($($t:ty),* $(,)?) => {$(
        impl $crate::wire::Encode for $t {
            fn encode_into(&self, out: &mut Vec<u8>) {
                $crate::wire::codec::Layout::write(self, out)
            }
        }
        impl<'a> $crate::wire::Decode<'a> for $t {
            fn decode(payload: &'a [u8]) -> Result<Self, $crate::wire::WireError> {
                let v = <$t as $crate::wire::codec::Layout>::read(
                    &mut $crate::wire::codec::Reader::new(payload),
                )?;
                $crate::wire::codec::Layout::check(&v)?;
                Ok(v)
            }
        }
        impl<'a> $crate::wire::Encode for ($t, &'a [u8]) {
            fn encode_into(&self, out: &mut Vec<u8>) {
                $crate::wire::codec::Layout::write(&self.0, out);
                out.extend_from_slice(self.1);
            }
        }
        impl<'a> $crate::wire::Decode<'a> for ($t, &'a [u8]) {
            fn decode(payload: &'a [u8]) -> Result<Self, $crate::wire::WireError> {
                let mut r = $crate::wire::codec::Reader::new(payload);
                let v = <$t as $crate::wire::codec::Layout>::read(&mut r)?;
                $crate::wire::codec::Layout::check(&v)?;
                Ok((v, r.rest()))
            }
        }
    )*};
}
pub(crate) use layout;

/// E2BIG-style refusal of a count above the negotiated `max_data_xfer_size`.
pub(crate) fn check_count(count: u64, max: u32) -> Result<(), WireError> {
    if count > u64::from(max) {
        return Err(WireError::TooLarge { count, max });
    }
    Ok(())
}
