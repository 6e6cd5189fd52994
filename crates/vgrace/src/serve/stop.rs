//! How `vgrace serve` stops: the signal thread, the watchdog past [`STOP_BOUND`], and the way
//! out that removes the sockets and flushes file-backed memory whatever state the threads are in.

use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use tracing::{error, info, warn};
use vfu::server::BoundPath;
use vfu::server::{Controls, Shutdown};
use vfu::Device;
use vgrace_device::backing::FileSync;
use vgrace_device::NvGraceGpu;

/// How long the threads get to stop after a stop signal before the process exits without them.
pub const STOP_BOUND: Duration = Duration::from_secs(3);

/// What the way out does whatever state the threads are in: remove the sockets this process
/// created, flush file-backed memory. Done once, by whoever gets there first (the main thread,
/// or the watchdog past [`STOP_BOUND`]).
#[derive(Default)]
pub struct Exit {
    pub created: Vec<BoundPath>,
    /// File backings (their path for the log, and a handle of their own, so flushing them never
    /// needs the device lock a stuck session may hold).
    pub files: Vec<(String, FileSync)>,
    /// Every device with its server's controls, to ask their clients to let go at a stop.
    pub devices: Vec<(Arc<Mutex<NvGraceGpu>>, Controls)>,
    done: bool,
}

/// How long clients asked to release their device (the request interrupt) get before the stop
/// goes on and cuts their connections.
const REQUEST_GRACE: Duration = Duration::from_secs(1);

/// Signals the request interrupt to every client that wired one, as the kernel does when a
/// device is being removed (`vfio_pci_core_request`; QEMU answers with an unplug request), then
/// waits up to [`REQUEST_GRACE`] for those clients to leave. A device whose lock stays held (a
/// request stuck inside it) is not asked: the watchdog bounds the stop anyway.
fn ask_clients_to_release(devices: &[(Arc<Mutex<NvGraceGpu>>, Controls)]) {
    let asked: Vec<&Controls> = devices
        .iter()
        .filter(|(device, _)| {
            let until = Instant::now() + Duration::from_millis(100);
            loop {
                if let Ok(mut d) = device.try_lock() {
                    return d.request_release();
                }
                if Instant::now() >= until {
                    return false;
                }
                thread::sleep(Duration::from_millis(5));
            }
        })
        .map(|(_, controls)| controls)
        .collect();
    if asked.is_empty() {
        return;
    }
    info!(
        clients = asked.len(),
        "asked the clients to release their devices (request interrupt)"
    );
    let until = Instant::now() + REQUEST_GRACE;
    while Instant::now() < until && asked.iter().any(|c| c.client().is_some()) {
        thread::sleep(Duration::from_millis(20));
    }
}

/// The way-out state, shared by the main, signal and watchdog threads.
pub type Finisher = Arc<Mutex<Exit>>;

/// The way-out state, even if a thread panicked holding it.
pub fn exit_state(f: &Finisher) -> MutexGuard<'_, Exit> {
    f.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Removes the sockets and flushes the files, unless already done; true if this call did it.
pub fn finish(f: &Finisher) -> bool {
    let mut exit = exit_state(f);
    if exit.done {
        return false;
    }
    exit.done = true;
    remove_sockets(&exit.created);
    // Let go of the devices: once the servers are gone this is the last reference, and the
    // device's drop grows a shrunk backing file back before the flush below. Kept, the watchdog
    // thread's handle on this state would keep them alive until the process exits undropped.
    drop(std::mem::take(&mut exit.devices));
    for (name, file) in &exit.files {
        if let Err(e) = file.finish() {
            error!("cannot flush the backing file {name} to disk: {e}");
        }
    }
    true
}

/// Exits now, without the threads that did not stop: the watchdog's and a second signal's way
/// out.
fn give_up(f: &Finisher, why: &str) -> ! {
    warn!("{why}: exiting without them");
    if !finish(f) {
        // The main thread is finishing right now; give it a moment to end on its own.
        thread::sleep(Duration::from_secs(1));
    }
    crate::logging::flush(crate::EXIT_FLUSH);
    std::process::exit(1)
}

/// The thread that turns the first stop signal into a stop (and a second one into an exit).
pub struct SignalWatch {
    handle: signal_hook::iterator::Handle,
    thread: thread::JoinHandle<()>,
}

impl SignalWatch {
    /// Installs the handlers for SIGTERM, SIGINT and SIGHUP. SIGHUP (the controlling terminal or
    /// session going away) stops the same way instead of killing the process and leaving the
    /// socket behind. At the first signal the watchdog starts, the clients are asked to release
    /// their devices and `shutdown` is triggered.
    pub fn install(shutdown: &Shutdown, finisher: &Finisher) -> Result<Self> {
        let mut signals =
            Signals::new([SIGTERM, SIGINT, SIGHUP]).context("cannot install signal handlers")?;
        let handle = signals.handle();
        let on_signal = shutdown.clone();
        let on_stop = finisher.clone();
        let thread = thread::spawn(move || {
            let mut arriving = signals.forever();
            if let Some(sig) = arriving.next() {
                info!(signal = sig, "stopping");
                start_watchdog(&on_stop);
                let devices = exit_state(&on_stop).devices.clone();
                ask_clients_to_release(&devices);
                on_signal.trigger();
                // A second signal: the operator does not want to wait for the bound.
                if let Some(sig) = arriving.next() {
                    give_up(&on_stop, &format!("signal {sig} while stopping"));
                }
            }
        });
        Ok(Self { handle, thread })
    }

    /// Stops watching and waits for the thread.
    pub fn close(self) {
        self.handle.close();
        let _ = self.thread.join();
    }
}

/// Exits the process [`STOP_BOUND`] from now unless it ended before.
fn start_watchdog(finisher: &Finisher) {
    let late = finisher.clone();
    // If this cannot start, the stop still happens, only without a bound.
    let _ = thread::Builder::new()
        .name("vgrace-watchdog".into())
        .spawn(move || {
            thread::sleep(STOP_BOUND);
            give_up(
                &late,
                &format!(
                    "threads still busy {}s after the stop signal (a client request stuck \
                     inside a device?)",
                    STOP_BOUND.as_secs()
                ),
            );
        });
}

/// Removes the socket files we created, leaving alone any path that now names something else
/// (a newer server's socket, a file put there after we started).
fn remove_sockets(created: &[BoundPath]) {
    for bound in created {
        match bound.remove() {
            Ok(true) => {}
            Ok(false) => warn!(
                "not removing {}: it is gone or no longer the socket this server created",
                bound.path.display()
            ),
            Err(e) => error!("cannot remove {}: {e}", bound.path.display()),
        }
    }
}

/// A write past the process's file-size limit (`ulimit -f`) raises SIGXFSZ, which would kill
/// every device. Blocked (in this thread, before any server thread exists, so every thread
/// inherits the mask), the write fails with EFBIG instead and the client gets that errno.
pub fn ignore_file_size_signal() -> Result<()> {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    set.add(Signal::SIGXFSZ);
    set.thread_block().context("cannot block SIGXFSZ")?;
    Ok(())
}
