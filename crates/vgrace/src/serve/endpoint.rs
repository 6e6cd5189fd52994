//! Where each device listens: a socket path we create, an fd inherited with `--fd`, or a socket
//! the service manager passed (socket activation).

use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use vfu::server::BoundPath;
use vfu::server::{bind_socket_with, SocketAccess};

/// Where one device listens.
pub enum Endpoint {
    /// A socket we create at this path and remove on exit while it is still ours.
    Path(PathBuf),
    /// An inherited listening socket.
    Fd(i32),
    /// A listening socket the service manager passed (socket activation), and its name.
    Passed(i32, String),
}

/// Refuses a socket path longer than `sun_path` holds: it could be bound (see
/// `vfu::server::bind_socket`) but no client could ever connect to it.
pub fn check_socket_path(path: &std::path::Path, what: &str) -> Result<()> {
    let len = path.as_os_str().len();
    if len > vfu::server::SUN_PATH_MAX {
        bail!(
            "the {what} path {} is {len} bytes, longer than the {} a unix socket address holds: \
             no client could connect to it; use a shorter path",
            path.display(),
            vfu::server::SUN_PATH_MAX
        );
    }
    Ok(())
}

/// The listener for `endpoint`, and the socket file if we created one.
pub fn listen(
    endpoint: &Endpoint,
    access: SocketAccess,
) -> Result<(UnixListener, Option<BoundPath>)> {
    match endpoint {
        Endpoint::Path(path) => {
            let (listener, bound) = bind_socket_with(path, access)
                .with_context(|| format!("cannot listen on {}", path.display()))?;
            Ok((listener, Some(bound)))
        }
        Endpoint::Fd(fd) | Endpoint::Passed(fd, _) => Ok((inherited_listener(*fd)?, None)),
    }
}

/// Takes over an inherited listening socket after checking that it is one.
fn inherited_listener(fd: i32) -> Result<UnixListener> {
    use nix::sys::socket::{getsockopt, sockopt};
    if fd < 0 {
        bail!("--fd {fd} is not a file descriptor");
    }
    let target = std::fs::read_link(format!("/proc/self/fd/{fd}"))
        .map_err(|_| anyhow::anyhow!("--fd {fd} is not an open file descriptor"))?;
    if !target.to_string_lossy().starts_with("socket:") {
        bail!("--fd {fd} is not a socket ({})", target.display());
    }
    // SAFETY: fd is open (its /proc entry exists), is a socket, and the process hands ownership of the
    // inherited descriptor to us; nothing else in vgrace uses this number.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let listening = getsockopt(&owned, sockopt::AcceptConn)
        .with_context(|| format!("--fd {fd} is not a socket"))?;
    if !listening {
        bail!("--fd {fd} is not a listening socket");
    }
    Ok(UnixListener::from(owned))
}

/// How the log names where a device listens.
pub fn describe(endpoint: &Endpoint) -> String {
    match endpoint {
        Endpoint::Path(p) => crate::serve::announce::absolute(p).display().to_string(),
        Endpoint::Fd(fd) => format!("inherited fd {fd}"),
        Endpoint::Passed(fd, name) => format!("passed fd {fd} ({name})"),
    }
}
