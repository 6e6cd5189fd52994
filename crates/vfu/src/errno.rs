//! The errno carried by error replies. We reuse `nix`'s enum rather than a copy of our own.

pub use nix::errno::Errno;
