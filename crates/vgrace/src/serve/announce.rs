//! What `vgrace serve` says once it listens: the absolute socket paths and the next steps, as
//! commands to copy (`attach with: vgrace qemu-args ...`, `check with: vgrace check ...`) that
//! describe the device being served, not the defaults.

use std::path::{Path, PathBuf};

use tracing::info;
use vgrace_device::{GpuConfig, LinuxVersion};

use crate::cli::ServeArgs;
use crate::node_file::DeviceEntry;

/// `path` made absolute against the working directory (unchanged if that cannot be read).
pub fn absolute(path: &Path) -> PathBuf {
    if path.is_absolute() {
        return path.to_path_buf();
    }
    std::env::current_dir().map_or_else(|_| path.to_path_buf(), |cwd| cwd.join(path))
}

/// Logs the next steps, one line each, once every device listens.
/// `passed` holds each entry's socket-activation fd, when the service manager passed them.
pub fn announce(args: &ServeArgs, entries: &[DeviceEntry], passed: Option<&[i32]>) {
    for line in next_steps(args, entries, passed) {
        info!("{line}");
    }
}

/// The lines [`announce`] logs.
fn next_steps(args: &ServeArgs, entries: &[DeviceEntry], passed: Option<&[i32]>) -> Vec<String> {
    let sockets: Vec<(Option<PathBuf>, &GpuConfig)> = match (passed, args.fd) {
        (Some(fds), _) => entries
            .iter()
            .zip(fds)
            .map(|(e, fd)| (inherited_path(*fd), &e.config))
            .collect(),
        (None, Some(fd)) => entries
            .iter()
            .map(|e| (inherited_path(fd), &e.config))
            .collect(),
        (None, None) => entries
            .iter()
            .map(|e| (Some(absolute(&e.socket)), &e.config))
            .collect(),
    };
    let mut lines = Vec::new();
    match &args.config {
        Some(config) => lines.push(format!(
            "attach with: vgrace qemu-args --config {}",
            shell_word(&absolute(config))
        )),
        None => {
            let socket = match sockets.first() {
                Some((Some(path), _)) => shell_word(path),
                _ => "PATH".to_string(),
            };
            lines.push(format!(
                "attach with: vgrace qemu-args --socket {socket}{}",
                entries
                    .first()
                    .map(|e| device_flags(&e.config))
                    .unwrap_or_default()
            ));
        }
    }
    for (path, config) in &sockets {
        let linux = if config.linux == LinuxVersion::V7_2 {
            String::new()
        } else {
            format!(" --linux {}", config.linux)
        };
        match path {
            Some(path) => lines.push(format!(
                "check with: vgrace check --socket {}{linux}",
                shell_word(path)
            )),
            None => lines.push(format!(
                "check with: vgrace check --socket PATH{linux} (PATH: where the inherited socket \
                 is bound)"
            )),
        }
    }
    lines
}

/// The device flags that make `qemu-args` describe the served device: the ones that shape its
/// layout, where they differ from the defaults.
fn device_flags(device: &GpuConfig) -> String {
    let defaults = GpuConfig::default();
    let mut flags = String::new();
    if device.profile != defaults.profile {
        flags.push_str(&format!(" --profile {}", device.profile));
    }
    if let Some(id) = device.device_id {
        flags.push_str(&format!(" --device-id {id:#06x}"));
    }
    if device.mem_size != defaults.mem_size {
        flags.push_str(&format!(
            " --mem-size {}",
            crate::units::qemu_size(device.mem_size)
        ));
    }
    if device.linux != defaults.linux {
        flags.push_str(&format!(" --linux {}", device.linux));
    }
    if device.bar1_size != defaults.bar1_size {
        flags.push_str(&format!(
            " --bar1-size {}",
            crate::units::qemu_size(device.bar1_size)
        ));
    }
    if !device.mem_properties {
        flags.push_str(" --no-mem-properties");
    }
    flags
}

/// The path an inherited listening socket is bound to, if it has one.
fn inherited_path(fd: i32) -> Option<PathBuf> {
    let addr: nix::sys::socket::UnixAddr = nix::sys::socket::getsockname(fd).ok()?;
    addr.path().map(absolute)
}

/// `path` as one shell word: as is when it holds only safe characters, else single-quoted.
fn shell_word(path: &Path) -> String {
    let s = path.to_string_lossy();
    let safe = |c: char| c.is_ascii_alphanumeric() || "/._-+,:=@%".contains(c);
    if !s.is_empty() && s.chars().all(safe) {
        s.into_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn paths_with_spaces_or_quotes_are_quoted() {
        assert_eq!(shell_word(Path::new("/run/gpu0.sock")), "/run/gpu0.sock");
        assert_eq!(
            shell_word(Path::new("/tmp/my gpu.sock")),
            "'/tmp/my gpu.sock'"
        );
        assert_eq!(shell_word(Path::new("/tmp/it's")), r"'/tmp/it'\''s'");
    }

    #[test]
    fn relative_paths_become_absolute() {
        let p = absolute(Path::new("vgrace.sock"));
        assert!(p.is_absolute());
        assert!(p.ends_with("vgrace.sock"));
    }
}
