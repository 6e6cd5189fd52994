//! The listening socket: created 0600 at a path, refusing to clobber anything, and removed at
//! exit only while it is still ours.
//!
//! # How the socket gets to its path
//!
//! `bind(2)` creates the socket file with mode `0777 & !umask`, and a `chmod` by path afterwards
//! would follow whatever was swapped in at the path meanwhile (in a world-writable directory, a
//! symlink to someone else's file). Changing the umask around `bind` avoids the chmod but the
//! umask is process-wide, so it would also restrict files other threads create meanwhile.
//!
//! Instead the socket is bound inside a fresh private directory (mode 0700, random name) next
//! to the path, set to 0600 there (relative to that directory's descriptor, where nobody else
//! can put anything), then hard-linked to the final path. `link(2)` never follows or replaces
//! an existing entry: if anything appeared at the path meanwhile it fails with `EEXIST` and
//! nothing is clobbered. The private directory is removed before returning. The socket thus
//! appears at its path already 0600, and neither the process umask nor any other file is
//! touched.
//!
//! The private directory sits in the same directory as the path (a hard link cannot cross
//! file systems), under a name of 12 bytes plus `/s`; a path within a few bytes of the 107-byte
//! `sun_path` limit may therefore be refused although its own length would fit.

use std::hash::{BuildHasher, Hasher};
use std::os::fd::OwnedFd;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use nix::fcntl::{AtFlags, OFlag, AT_FDCWD};
use nix::sys::stat::{FchmodatFlags, Mode};
use nix::unistd::UnlinkatFlags;

use crate::error::Error;

/// Longest socket path a client can connect to: `sun_path` holds 108 bytes, the NUL included.
pub const SUN_PATH_MAX: usize = 107;

/// The name of the socket inside the private directory.
const TEMP_NAME: &str = "s";

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

/// Who may reach a socket file: its mode and, optionally, its group. The default is 0600 and the
/// process's own group: only the server's user can connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketAccess {
    /// Permission bits (at most 0o777; connecting needs write permission).
    pub mode: u32,
    /// The group to give the socket file, if not the process's own.
    pub gid: Option<u32>,
}

impl Default for SocketAccess {
    fn default() -> Self {
        Self {
            mode: 0o600,
            gid: None,
        }
    }
}

/// Creates a listening socket at `path` with mode 0600 whatever the umask, without changing the
/// umask or following anything at the path (see the module documentation). A stale socket file
/// is replaced; a live one (something accepts connections) is refused, and so is anything that
/// is not a socket, including a symlink. Returns the listener and the identity of the socket
/// file, to remove it at exit with [`BoundPath::remove`].
pub fn bind_socket(path: &Path) -> Result<(UnixListener, BoundPath), Error> {
    bind_socket_with(path, SocketAccess::default())
}

/// [`bind_socket`] with another mode and group (e.g. 0660 and the group a VMM runs in). Both are
/// set inside the private directory, so the socket appears at its path already with them.
pub fn bind_socket_with(
    path: &Path,
    access: SocketAccess,
) -> Result<(UnixListener, BoundPath), Error> {
    let name = path.display().to_string();
    let sock_err = |source| Error::Socket {
        path: name.clone(),
        source,
    };
    // Binding goes through a short private path, so a long one would bind and be unreachable.
    if path.as_os_str().len() > SUN_PATH_MAX {
        return Err(sock_err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("longer than the {SUN_PATH_MAX} bytes a unix socket address holds"),
        )));
    }
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
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let private = PrivateDir::create(parent).map_err(sock_err)?;
    let listener = UnixListener::bind(private.path.join(TEMP_NAME)).map_err(sock_err)?;
    // Relative to the private directory's descriptor, where only we can create entries: "s" is
    // the socket just bound (had the directory been swapped by its path, bind went elsewhere and
    // this fails with ENOENT).
    if let Some(gid) = access.gid {
        // Group first: chown may clear mode bits, the chmod after it sets them for good.
        nix::unistd::fchownat(
            &private.fd,
            TEMP_NAME,
            None,
            Some(nix::unistd::Gid::from_raw(gid)),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(|e| sock_err(e.into()))?;
    }
    nix::sys::stat::fchmodat(
        &private.fd,
        TEMP_NAME,
        Mode::from_bits_truncate(access.mode & 0o777),
        FchmodatFlags::FollowSymlink,
    )
    .map_err(|e| sock_err(e.into()))?;
    let stat = nix::sys::stat::fstatat(&private.fd, TEMP_NAME, AtFlags::AT_SYMLINK_NOFOLLOW)
        .map_err(|e| sock_err(e.into()))?;
    // link(2) fails with EEXIST rather than replace anything that appeared at the path.
    nix::unistd::linkat(&private.fd, TEMP_NAME, AT_FDCWD, path, AtFlags::empty()).map_err(|e| {
        if e == nix::errno::Errno::EEXIST {
            sock_err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "something appeared at the path while binding",
            ))
        } else {
            sock_err(e.into())
        }
    })?;
    drop(private);
    let bound = BoundPath {
        path: path.to_path_buf(),
        dev: stat.st_dev,
        ino: stat.st_ino,
    };
    Ok((listener, bound))
}

/// A fresh directory only we can enter, removed (with the socket name in it) on drop.
struct PrivateDir {
    path: PathBuf,
    fd: OwnedFd,
}

impl PrivateDir {
    /// Creates a 0700 directory with a random name in `parent` and opens it without following
    /// symlinks.
    fn create(parent: &Path) -> std::io::Result<Self> {
        let mut tries = 0;
        let path = loop {
            // RandomState is seeded from the OS per process and varies per instance. mkdir is
            // atomic, so a guessed name only makes us retry; it never lets anyone in.
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u32(std::process::id());
            let candidate = parent.join(format!(".vfu{:08x}", h.finish() as u32));
            match std::fs::DirBuilder::new().mode(0o700).create(&candidate) {
                Ok(()) => break candidate,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && tries < 16 => tries += 1,
                Err(e) => return Err(e),
            }
        };
        let opened = nix::fcntl::open(
            &path,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        );
        let fd = match opened {
            Ok(fd) => fd,
            Err(e) => {
                let _ = std::fs::remove_dir(&path);
                return Err(e.into());
            }
        };
        let dir = Self { path, fd };
        // Whatever we opened must be a directory of ours that nobody else can write to (the
        // parent may let others rename our directory and put theirs in its place).
        let st = nix::sys::stat::fstat(&dir.fd)?;
        if st.st_uid != nix::unistd::geteuid().as_raw() || st.st_mode & 0o077 != 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                "the private directory for binding was tampered with",
            ));
        }
        Ok(dir)
    }
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        let _ = nix::unistd::unlinkat(&self.fd, TEMP_NAME, UnlinkatFlags::NoRemoveDir);
        // rmdir removes only an empty directory and never follows a symlink.
        let _ = std::fs::remove_dir(&self.path);
    }
}
