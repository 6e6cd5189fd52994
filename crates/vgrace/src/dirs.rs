//! The directories `vgrace serve` makes for its files: a missing parent of a socket path or of a
//! backing file (`/run/vgrace`, `/var/lib/vgrace` on a fresh machine) is created, mode 0755, and
//! logged; a parent that cannot be made is refused with one line naming it.

use std::io::ErrorKind;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;

use anyhow::{Context, Result};
use tracing::info;
use vgrace_device::Backing;

use crate::node_file::DeviceEntry;

/// The mode of the directories we create: others may reach the socket inside (the socket's own
/// mode, 0600, and `--allow-uid` decide who may connect).
const DIR_MODE: u32 = 0o755;

/// Creates the missing parent directories of every entry's backing file and, when serving on
/// paths (not an inherited `--fd`), of every socket.
pub fn create_parents(entries: &[DeviceEntry], sockets: bool) -> Result<()> {
    for entry in entries {
        if sockets {
            create_parent(&entry.socket, "socket")?;
        }
        if let Backing::File(path) = &entry.config.backing {
            create_parent(path, "backing file")?;
        }
    }
    Ok(())
}

/// Creates `path`'s missing ancestors, outermost first.
pub fn create_parent(path: &Path, what: &str) -> Result<()> {
    let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) else {
        return Ok(());
    };
    let cannot = |dir: &Path| {
        format!(
            "cannot create directory {} for the {what} {}",
            dir.display(),
            path.display()
        )
    };
    let mut missing = Vec::new();
    for dir in parent.ancestors().filter(|d| !d.as_os_str().is_empty()) {
        match std::fs::metadata(dir) {
            Ok(_) => break,
            Err(e) if e.kind() == ErrorKind::NotFound => missing.push(dir),
            Err(e) => return Err(e).with_context(|| cannot(dir)),
        }
    }
    for dir in missing.into_iter().rev() {
        let made = std::fs::DirBuilder::new()
            .mode(DIR_MODE)
            .create(dir)
            .and_then(|()| {
                // The umask may have taken bits away; the mode is part of what we promise.
                std::fs::set_permissions(dir, std::fs::Permissions::from_mode(DIR_MODE))
            });
        match made {
            Ok(()) => info!("created directory {}", dir.display()),
            // Made meanwhile by someone else (another server starting): fine if a directory.
            Err(e) if e.kind() == ErrorKind::AlreadyExists && dir.is_dir() => {}
            Err(e) => return Err(e).with_context(|| cannot(dir)),
        }
    }
    Ok(())
}

/// `path` made absolute against the current directory, as text for a command line.
pub fn absolute(path: &std::path::Path) -> anyhow::Result<String> {
    let p: std::path::PathBuf = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()?.join(path)
    };
    Ok(p.to_string_lossy().into_owned())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn missing_ancestors_are_made_0755_and_existing_ones_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("run/vgrace/gpu0.sock");
        create_parent(&sock, "socket").unwrap();
        for d in ["run", "run/vgrace"] {
            let mode = std::fs::metadata(dir.path().join(d))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o755, "{d}");
        }
        create_parent(&sock, "socket").unwrap();
        create_parent(Path::new("relative.sock"), "socket").unwrap();
    }

    #[test]
    fn a_file_in_the_way_is_refused_naming_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("file"), b"").unwrap();
        let sock = dir.path().join("file/sub/gpu0.sock");
        let err = format!("{:#}", create_parent(&sock, "socket").unwrap_err());
        assert!(err.contains("cannot create directory"), "{err}");
        assert!(err.contains("file/sub"), "{err}");
        assert!(err.contains("gpu0.sock"), "{err}");
    }
}
