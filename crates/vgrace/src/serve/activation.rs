//! systemd socket activation (`sd_listen_fds(3)`): the listening sockets a service manager
//! passes as fds 3, 4, ... with `LISTEN_FDS`, `LISTEN_PID` and `LISTEN_FDNAMES`.
//!
//! The variables are read and removed at the very start of `main`, before any thread exists
//! (changing the environment is not thread-safe) and so that no child inherits them; the fds are
//! checked later, when `serve` takes them over. An inherited fd serves the device whose socket
//! path it is bound to (one socket unit with several `ListenStream=` lines), or else the device
//! whose `id` or socket file name equals its name (`FileDescriptorName=`).

use std::os::fd::{AsFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::node_file::DeviceEntry;

/// The first fd a service manager passes (`SD_LISTEN_FDS_START`).
const FIRST_FD: RawFd = 3;
/// More than any node has devices: a larger count is a mistake, not a node.
const MAX_FDS: usize = 1024;

/// What the environment said, before the fds are looked at.
#[derive(Debug, Default)]
pub struct Activation {
    /// How many fds were passed, from 3 on (0: not activated).
    count: usize,
    /// Their names, one per fd (`unknown` when the manager gave none, as systemd does).
    names: Vec<String>,
    /// Why the environment cannot be used, reported only if `serve` runs.
    error: Option<String>,
}

/// One inherited listening socket.
#[derive(Debug)]
pub struct Inherited {
    /// Its fd number.
    pub fd: RawFd,
    /// Its `LISTEN_FDNAMES` name.
    pub name: String,
    /// The path it is bound to, if any.
    pub path: Option<PathBuf>,
    /// The socket.
    pub listener: UnixListener,
}

impl Activation {
    /// Reads and removes `LISTEN_PID`, `LISTEN_FDS` and `LISTEN_FDNAMES`. Call before any thread
    /// starts. Variables meant for another process (`LISTEN_PID` is not ours) are removed too.
    pub fn take_env() -> Self {
        let pid = std::env::var("LISTEN_PID").ok();
        let fds = std::env::var("LISTEN_FDS").ok();
        let names = std::env::var("LISTEN_FDNAMES").ok();
        for var in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
            std::env::remove_var(var);
        }
        let (Some(pid), Some(fds)) = (pid, fds) else {
            return Self::default();
        };
        if pid.trim().parse::<u32>().ok() != Some(std::process::id()) {
            return Self::default();
        }
        let count = match fds.trim().parse::<usize>() {
            Ok(n) if n <= MAX_FDS => n,
            _ => {
                return Self {
                    error: Some(format!("LISTEN_FDS={fds:?} is not a count of fds")),
                    ..Self::default()
                }
            }
        };
        let names: Vec<String> = match names {
            Some(n) => n.split(':').map(str::to_string).collect(),
            None => vec!["unknown".to_string(); count],
        };
        if names.len() != count {
            return Self {
                error: Some(format!(
                    "LISTEN_FDNAMES has {} names for LISTEN_FDS={count}",
                    names.len()
                )),
                ..Self::default()
            };
        }
        Self {
            count,
            names,
            error: None,
        }
    }

    /// Whether a service manager passed any socket.
    pub fn is_active(&self) -> bool {
        self.count > 0 || self.error.is_some()
    }

    /// Takes over the passed fds after checking each is a listening unix stream socket.
    pub fn take_fds(self) -> Result<Vec<Inherited>> {
        if let Some(e) = self.error {
            bail!("socket activation: {e}");
        }
        let mut out = Vec::with_capacity(self.count);
        for (i, name) in self.names.into_iter().enumerate() {
            let fd = FIRST_FD
                .checked_add(RawFd::try_from(i).context("too many fds")?)
                .context("too many fds")?;
            out.push(take_one(fd, name)?);
        }
        Ok(out)
    }
}

fn take_one(fd: RawFd, name: String) -> Result<Inherited> {
    use nix::sys::socket::{getsockname, getsockopt, sockopt, SockType, UnixAddr};
    let what = format!("socket activation: fd {fd} ({name})");
    let target = std::fs::read_link(format!("/proc/self/fd/{fd}"))
        .map_err(|_| anyhow::anyhow!("{what} is not open"))?;
    if !target.to_string_lossy().starts_with("socket:") {
        bail!("{what} is not a socket ({})", target.display());
    }
    // SAFETY: the fd is open (its /proc entry exists) and is a socket the service manager handed
    // to this process; `take_env` ran once, so nothing else in vgrace claims this number.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let addr: UnixAddr =
        getsockname(fd).map_err(|_| anyhow::anyhow!("{what} is not a unix socket"))?;
    if getsockopt(&owned, sockopt::SockType).context(what.clone())? != SockType::Stream {
        bail!("{what} is not a stream socket");
    }
    if !getsockopt(&owned, sockopt::AcceptConn).context(what.clone())? {
        bail!("{what} is not listening");
    }
    // Our clients' children (none today) must not inherit the listeners.
    nix::fcntl::fcntl(
        owned.as_fd(),
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    )
    .context(what)?;
    Ok(Inherited {
        fd,
        name,
        path: addr.path().map(Path::to_path_buf),
        listener: UnixListener::from(owned),
    })
}

/// Gives every entry its inherited socket: the one bound to the entry's socket path, else the one
/// named as the device's id or its socket's file name; a single socket serves a single device whatever its
/// name. Every entry needs one and every fd must be used.
pub fn assign(mut fds: Vec<Inherited>, entries: &[DeviceEntry]) -> Result<Vec<Inherited>> {
    // One socket for one device needs no name (`vgrace serve` without --config).
    if fds.len() == 1 && entries.len() == 1 {
        return Ok(fds);
    }
    let names: Vec<String> = fds.iter().map(|f| f.name.clone()).collect();
    let mut out = Vec::with_capacity(entries.len());
    for e in entries {
        let file_name = e
            .socket
            .file_name()
            .map(|n| n.to_string_lossy().into_owned());
        // The path first: it is unambiguous, while one socket unit gives all its fds one name.
        let want = crate::serve::announce::absolute(&e.socket);
        let by_path = fds.iter().position(|f| {
            f.path.as_deref().map(crate::serve::announce::absolute) == Some(want.clone())
        });
        let by_name = || {
            fds.iter()
                .position(|f| f.name == e.id || Some(&f.name) == file_name.as_ref())
        };
        let Some(i) = by_path.or_else(by_name) else {
            bail!(
                "socket activation: no passed socket for device {} (named {:?}{}, or bound to {}); \
                 passed: {}",
                e.id,
                e.id,
                file_name.map(|n| format!(" or {n:?}")).unwrap_or_default(),
                e.socket.display(),
                names.join(", ")
            );
        };
        out.push(fds.remove(i));
    }
    if let Some(extra) = fds.first() {
        bail!(
            "socket activation: passed socket fd {} ({}) matches no device",
            extra.fd,
            extra.name
        );
    }
    Ok(out)
}
