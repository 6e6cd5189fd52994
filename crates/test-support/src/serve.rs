//! A `vgrace serve` child process for tests and benchmarks that need a real server process (to
//! count its fds, limit it with prlimit, signal or kill it).

use std::ffi::OsStr;
use std::io::Read;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::procfs::{self, Process};

/// How long a server may take to listen.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A child process (normally `vgrace serve`): stdin and stdout are null, its stderr is collected
/// by a thread (so a chatty server never blocks on a full pipe), and it is killed and reaped on
/// drop, so a failing test leaves no server behind.
#[derive(Debug)]
pub struct ServeChild {
    child: Child,
    log: Arc<Mutex<String>>,
    drain: Option<JoinHandle<()>>,
}

impl ServeChild {
    /// Starts `bin serve ARGS...`; panics if it cannot be spawned.
    pub fn serve<S: AsRef<OsStr>>(
        bin: impl AsRef<OsStr>,
        args: impl IntoIterator<Item = S>,
    ) -> Self {
        let mut cmd = Command::new(bin);
        cmd.arg("serve").args(args);
        Self::spawn(cmd).unwrap()
    }

    /// Starts a prepared command (its stdin, stdout and stderr are replaced as described above).
    pub fn spawn(mut cmd: Command) -> std::io::Result<Self> {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?;
        let log = Arc::new(Mutex::new(String::new()));
        let mut err = child.stderr.take().expect("stderr is piped");
        let sink = log.clone();
        let drain = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Ok(Self {
            child,
            log,
            drain: Some(drain),
        })
    }

    /// Starts a prepared command with `stderr` as its stderr (a pipe the test holds, to close or
    /// never read): nothing is collected, so [`ServeChild::log`] stays empty.
    pub fn spawn_with_stderr(mut cmd: Command, stderr: Stdio) -> std::io::Result<Self> {
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()?;
        Ok(Self {
            child,
            log: Arc::default(),
            drain: None,
        })
    }

    /// Waits until every socket accepts a connection (a stale socket file may exist before the
    /// server binds); panics with the server's log if it exits or takes over 20 s.
    pub fn wait_listening(self, sockets: &[&Path]) -> Self {
        self.wait_until(sockets, "listen on", |s| UnixStream::connect(s).is_ok())
    }

    /// Waits until every path exists (for servers that refuse our connections); panics with the
    /// server's log if it exits or takes over 20 s.
    pub fn wait_created(self, paths: &[&Path]) -> Self {
        self.wait_until(paths, "create", |p| p.exists())
    }

    /// Polls `ready` on each path in turn until it holds; panics ("server did not {what} ...")
    /// with the server's log if the server exits or the 20 s start limit passes.
    fn wait_until(mut self, paths: &[&Path], what: &str, ready: impl Fn(&Path) -> bool) -> Self {
        let deadline = Instant::now() + START_TIMEOUT;
        for p in paths {
            while !ready(p) {
                assert!(
                    Instant::now() < deadline,
                    "server did not {what} {}: {}",
                    p.display(),
                    self.log()
                );
                assert!(self.alive(), "server exited: {}", self.log());
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        self
    }

    /// The child's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The child as a [`Process`] for the [`procfs`] figures.
    pub fn process(&self) -> Process {
        Process::Pid(self.pid())
    }

    /// Number of fds the server holds.
    pub fn fd_count(&self) -> usize {
        procfs::fd_count(self.process())
    }

    /// User + system CPU time of the server, in clock ticks.
    pub fn cpu_ticks(&self) -> u64 {
        procfs::cpu_ticks(self.process())
    }

    /// Waits until the server's fd count settles at `want` (a session ends asynchronously), at
    /// most 10 s; returns the last count.
    pub fn wait_fd_count(&self, want: usize) -> usize {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let n = self.fd_count();
            if n == want || Instant::now() > deadline {
                return n;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// True while the child runs.
    pub fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// What the server wrote to stderr so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Sends `sig`, waits for the child to exit, and returns its status and its whole stderr.
    pub fn signal(&mut self, sig: nix::sys::signal::Signal) -> (ExitStatus, String) {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.pid()).unwrap());
        nix::sys::signal::kill(pid, sig).unwrap();
        self.wait()
    }

    /// Sends `sig` and waits at most `limit` for the child to exit: its status, how long it took,
    /// and its whole stderr; `None` when it still runs (it is killed on drop).
    pub fn signal_within(
        &mut self,
        sig: nix::sys::signal::Signal,
        limit: Duration,
    ) -> Option<(ExitStatus, Duration, String)> {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.pid()).unwrap());
        let sent = Instant::now();
        nix::sys::signal::kill(pid, sig).unwrap();
        while sent.elapsed() < limit {
            if self.child.try_wait().unwrap().is_some() {
                let took = sent.elapsed();
                let (status, log) = self.wait();
                return Some((status, took, log));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }

    /// SIGKILLs the child and waits for it; returns its status and its whole stderr.
    pub fn kill(&mut self) -> (ExitStatus, String) {
        self.child.kill().unwrap();
        self.wait()
    }

    /// Waits up to `limit` for the child to exit by itself (polling, so a hung child cannot hang
    /// the test): its status and whole stderr, or `None` while it still runs.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<(ExitStatus, String)> {
        let deadline = Instant::now() + limit;
        while self.alive() {
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(self.wait())
    }

    fn wait(&mut self) -> (ExitStatus, String) {
        let status = self.child.wait().unwrap();
        // The pipe is at end of file once the child is gone: the thread has read everything.
        if let Some(t) = self.drain.take() {
            let _ = t.join();
        }
        (status, self.log())
    }
}

impl Drop for ServeChild {
    fn drop(&mut self) {
        // Both are no-ops for a child already reaped (std does not signal a reaped pid).
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
