//! The listening socket: created 0600 at a path, refusing to clobber a live server, and removed
//! at exit only while it is still ours.

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use crate::error::Error;

/// A socket file this process created, identified by the inode it was created with, so that it
/// is removed only while the path still names that very socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoundPath {
    /// Where the socket was created.
    pub path: PathBuf,
    /// The device of the socket's inode (`st_dev`).
    pub dev: u64,
    /// The socket's inode number (`st_ino`).
    pub ino: u64,
}

impl BoundPath {
    /// Removes the path if it is still the socket we created: same device and inode, and still
    /// a socket. Returns `Ok(true)` when removed and `Ok(false)` when the path is gone or now
    /// names something else (a newer server's socket, a file someone put there), which is left
    /// alone.
    ///
    /// Checking and unlinking are two system calls: something replacing the path between them
    /// would be removed. POSIX has no way to unlink a name only if it refers to a given inode,
    /// so this narrows the window to a few instructions instead of closing it.
    pub fn remove(&self) -> std::io::Result<bool> {
        let meta = match std::fs::symlink_metadata(&self.path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e),
        };
        if !self.is(&meta) {
            return Ok(false);
        }
        match std::fs::remove_file(&self.path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Whether `meta` (from `symlink_metadata`) describes the socket we created.
    fn is(&self, meta: &std::fs::Metadata) -> bool {
        meta.file_type().is_socket() && meta.dev() == self.dev && meta.ino() == self.ino
    }
}

/// Creates a listening socket at `path` with mode 0600 whatever the umask. A stale socket file
/// is replaced; a live one (something accepts connections) is refused. Returns the listener and
/// the identity of the socket file, to remove it at exit with [`BoundPath::remove`].
pub fn bind_socket(path: &Path) -> Result<(UnixListener, BoundPath), Error> {
    let name = path.display().to_string();
    let sock_err = |source| Error::Socket {
        path: name.clone(),
        source,
    };
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(sock_err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "the path exists and is not a socket",
            )));
        }
        if UnixStream::connect(path).is_ok() {
            return Err(Error::SocketInUse(name));
        }
        std::fs::remove_file(path).map_err(sock_err)?;
    }
    // Bind inside a private directory would avoid the window between bind and chmod; instead
    // we bind with a restrictive umask so the socket is never more open than 0600.
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let bound = UnixListener::bind(path);
    nix::sys::stat::umask(old);
    let listener = bound.map_err(sock_err)?;
    let meta = std::fs::symlink_metadata(path).map_err(sock_err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(sock_err)?;
    let bound = BoundPath {
        path: path.to_path_buf(),
        dev: meta.dev(),
        ino: meta.ino(),
    };
    Ok((listener, bound))
}
