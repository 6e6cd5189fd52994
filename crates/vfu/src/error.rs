//! The crate's error type.

use crate::transport::TransportError;
use crate::wire::WireError;

/// Errors of the server, the client and socket set-up.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Socket set-up failed.
    #[error("cannot set up the socket {path}")]
    Socket {
        /// The path involved.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Another server is already listening on the path.
    #[error("a server is already listening on {0}")]
    SocketInUse(String),
    /// A transport error.
    #[error("transport error")]
    Transport(#[from] TransportError),
    /// A malformed message.
    #[error("malformed message")]
    Wire(#[from] WireError),
    /// The peer answered with an error reply.
    #[error("the server answered {errno} to command {cmd}")]
    Remote {
        /// Command id.
        cmd: u16,
        /// errno from the reply.
        errno: nix::errno::Errno,
    },
    /// The peer broke the protocol (unexpected reply, wrong sizes).
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// Some other system call failed.
    #[error("system call failed")]
    Sys(#[from] nix::errno::Errno),
    /// An I/O error.
    #[error("i/o error")]
    Io(#[from] std::io::Error),
}

impl Error {
    /// The errno of an error reply, if this is one.
    pub fn remote_errno(&self) -> Option<nix::errno::Errno> {
        match self {
            Error::Remote { errno, .. } => Some(*errno),
            _ => None,
        }
    }
}

/// An error with its causes, "outer: inner: ...", for log lines and event streams.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out
}
