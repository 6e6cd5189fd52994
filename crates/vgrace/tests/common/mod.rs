//! Shared by the vgrace integration tests: a real server on a thread over a real socket.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs, dead_code)]

use std::path::PathBuf;
use std::thread::JoinHandle;

use vfu::client::Client;
use vfu::server::{bind_socket, Server, ServerConfig, Shutdown};
use vgrace_device::{GpuConfig, NvGraceGpu};

/// `vgrace ARGS...` run to completion, stdin closed: its status and output.
pub fn vgrace(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_vgrace"))
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap()
}

/// A server thread listening in a temp dir; stopped and joined on drop.
pub struct Running {
    _dir: tempfile::TempDir,
    pub path: PathBuf,
    pub shutdown: Shutdown,
    thread: Option<JoinHandle<()>>,
}

impl Running {
    /// A new client (VERSION negotiated).
    pub fn client(&self) -> Client {
        Client::connect(&self.path).unwrap()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shutdown.trigger();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Serves the device `cfg` describes with `config`.
pub fn serve(cfg: &GpuConfig, config: ServerConfig) -> Running {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gpu.sock");
    let (listener, _bound) = bind_socket(&path).unwrap();
    let dev = NvGraceGpu::new(cfg).unwrap();
    let shutdown = Shutdown::new().unwrap();
    let sd = shutdown.clone();
    let thread = std::thread::spawn(move || Server::new(dev, config).serve(listener, &sd).unwrap());
    Running {
        _dir: dir,
        path,
        shutdown,
        thread: Some(thread),
    }
}

/// A mounted tmpfs of `size`, unmounted on drop; `None` when this process may not mount.
pub struct Tmpfs(pub tempfile::TempDir);

impl Tmpfs {
    pub fn mount(size: &str) -> Option<Self> {
        let dir = tempfile::tempdir().unwrap();
        let r = nix::mount::mount(
            Some("tmpfs"),
            dir.path(),
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            Some(format!("size={size}").as_str()),
        );
        match r {
            Ok(()) => Some(Self(dir)),
            Err(nix::errno::Errno::EPERM) if !nix::unistd::geteuid().is_root() => None,
            Err(e) => panic!("cannot mount a tmpfs: {e}"),
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(self.0.path(), nix::mount::MntFlags::MNT_DETACH);
    }
}
