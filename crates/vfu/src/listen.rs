//! The listening socket: created 0600 at a path, refusing to clobber a live server.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;

use crate::error::Error;

/// Creates a listening socket at `path` with mode 0600 whatever the umask. A stale socket
/// file is replaced; a live one (something accepts connections) is refused.
pub fn bind_socket(path: &Path) -> Result<UnixListener, Error> {
    let name = path.display().to_string();
    let sock_err = |source| Error::Socket {
        path: name.clone(),
        source,
    };
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        use std::os::unix::fs::FileTypeExt;
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
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(sock_err)?;
    Ok(listener)
}
