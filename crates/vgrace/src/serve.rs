//! `vgrace serve`: one server thread per device, stopped together by SIGTERM/SIGINT/SIGHUP.
//!
//! A stop always finishes: the threads get [`STOP_BOUND`] to end on their own; past it (a
//! session stuck inside a request, holding its device) or at a second signal the process
//! removes its sockets, flushes file-backed memory to disk and exits without them.

use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use tracing::{error, info, warn};
use vfu::server::{
    bind_socket_with, BoundPath, Controls, Server, ServerConfig, Shutdown, SocketAccess,
    SUN_PATH_MAX,
};
use vfu::Device;
use vgrace_device::backing::FileSync;
use vgrace_device::{LinuxVersion, NvGraceGpu};

use crate::activation::Activation;
use crate::cli::ServeArgs;
use crate::config::{self, DeviceEntry};
use crate::control::{self, EventBus, Managed, Plane};
use crate::units::human;

/// Where one device listens.
enum Endpoint {
    /// A socket we create at this path and remove on exit while it is still ours.
    Path(PathBuf),
    /// An inherited listening socket.
    Fd(i32),
    /// A listening socket the service manager passed (socket activation), and its name.
    Passed(i32, String),
}

/// How long the threads get to stop after a stop signal before the process exits without them.
pub const STOP_BOUND: Duration = Duration::from_secs(3);

/// What the way out does whatever state the threads are in: remove the sockets this process
/// created, flush file-backed memory. Done once, by whoever gets there first (the main thread,
/// or the watchdog past [`STOP_BOUND`]).
#[derive(Default)]
struct Exit {
    created: Vec<BoundPath>,
    /// File backings (their path for the log, and a handle of their own, so flushing them never
    /// needs the device lock a stuck session may hold).
    files: Vec<(String, FileSync)>,
    /// Every device with its server's controls, to ask their clients to let go at a stop.
    devices: Vec<(Arc<Mutex<NvGraceGpu>>, Controls)>,
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

type Finisher = Arc<Mutex<Exit>>;

fn exit_state(f: &Finisher) -> MutexGuard<'_, Exit> {
    f.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Removes the sockets and flushes the files, unless already done; true if this call did it.
fn finish(f: &Finisher) -> bool {
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

/// Runs until a signal arrives or every server has stopped.
pub fn run(args: ServeArgs, activation: Activation) -> Result<()> {
    let mut file_access = config::SocketSettings::default();
    let (entries, file_control) = match &args.config {
        Some(path) => {
            let node = config::load_node(path)?;
            file_access = node.socket_access;
            (node.devices, node.control)
        }
        None => (
            vec![DeviceEntry {
                id: "gpu0".to_string(),
                socket: args.socket.clone(),
                config: crate::device_config(&args.device)?,
                trace: args.trace.clone(),
                trace_max_size: args.trace_max_size,
                view: args.view,
            }],
            None,
        ),
    };
    let control_path = args.control.clone().or(file_control);
    let access = config::SocketSettings {
        mode: args.socket_mode.or(file_access.mode),
        group: args.socket_group.clone().or(file_access.group),
    }
    .resolve()?;
    // Socket activation: every device gets one of the passed sockets, checked before anything
    // is created.
    let passed = if activation.is_active() {
        if args.fd.is_some() {
            bail!("--fd and socket activation (LISTEN_FDS) both give sockets: use one");
        }
        let fds = activation.take_fds()?;
        let assigned = crate::activation::assign(fds, &entries)?;
        Some(
            assigned
                .into_iter()
                .map(|i| Endpoint::Passed(i.listener.into_raw_fd(), i.name))
                .collect::<Vec<_>>(),
        )
    } else {
        None
    };
    let own_paths = args.fd.is_none() && passed.is_none();
    // Before anything is created: a path no client can connect to is refused, not announced.
    if own_paths {
        for e in &entries {
            check_socket_path(&e.socket, "socket")?;
        }
    }
    if let Some(path) = &control_path {
        check_socket_path(path, "control socket")?;
    }
    crate::dirs::create_parents(&entries, own_paths)?;
    if let Some(path) = &control_path {
        crate::dirs::create_parent(path, "control socket")?;
    }
    crate::trace_setup::check(&entries, control_path.as_deref(), own_paths)?;
    // Where clients reach the passed sockets, for the next-steps lines.
    let passed_fds: Option<Vec<i32>> = passed.as_ref().map(|p| {
        p.iter()
            .filter_map(|e| match e {
                Endpoint::Passed(fd, _) => Some(*fd),
                _ => None,
            })
            .collect()
    });
    let mut passed = passed.map(Vec::into_iter);
    let mut endpoint_of = |e: &DeviceEntry| match (&mut passed, args.fd) {
        (Some(p), _) => p.next().unwrap_or(Endpoint::Fd(-1)),
        (None, Some(fd)) => Endpoint::Fd(fd),
        (None, None) => Endpoint::Path(e.socket.clone()),
    };

    // Build every device before creating any socket, so a bad entry leaves nothing behind.
    let mut devices = Vec::with_capacity(entries.len());
    // The host view's memory files, locked while we serve (QEMU maps them).
    let mut host_memory = Vec::new();
    for entry in &entries {
        let device = crate::host_view::build(entry, &mut host_memory)
            .with_context(|| format!("cannot create the device for {}", entry.socket.display()))?;
        // From 6.14 the probe polls the readiness registers and refuses a device that never
        // reads ready; --serve-unready offers it anyway (for guest-side tests).
        if entry.config.linux >= LinuxVersion::V6_14 && !args.serve_unready {
            device.probe_ready().with_context(|| {
                format!(
                    "not serving {} (Linux {}; --serve-unready serves it anyway)",
                    entry.socket.display(),
                    entry.config.linux
                )
            })?;
        }
        let trace = crate::trace_setup::open(entry)?;
        devices.push((endpoint_of(entry), device, trace));
    }

    // Signal handlers go in before any socket exists: once a client can see the socket, SIGTERM
    // already means a clean stop. SIGHUP (the controlling terminal or session going away) stops
    // the same way instead of killing the process and leaving the socket behind.
    ignore_file_size_signal()?;
    let shutdown = Shutdown::new().context("cannot create the shutdown event")?;
    let mut signals =
        Signals::new([SIGTERM, SIGINT, SIGHUP]).context("cannot install signal handlers")?;
    let signal_handle = signals.handle();
    let on_signal = shutdown.clone();
    let finisher = Finisher::default();
    for ((_, device, _), entry) in devices.iter().zip(&entries) {
        if let Some(file) = device.file_for_sync()? {
            exit_state(&finisher)
                .files
                .push((backing_name(entry), file));
        }
    }
    let on_stop = finisher.clone();
    let signal_thread = thread::spawn(move || {
        let mut arriving = signals.forever();
        if let Some(sig) = arriving.next() {
            info!(signal = sig, "stopping");
            let late = on_stop.clone();
            // If this cannot start, the stop still happens, only without a bound.
            let _ = thread::Builder::new()
                .name("vgrace-watchdog".into())
                .spawn(move || {
                    thread::sleep(STOP_BOUND);
                    give_up(
                        &late,
                        &format!(
                            "threads still busy {}s after the stop signal (a client request \
                             stuck inside a device?)",
                            STOP_BOUND.as_secs()
                        ),
                    );
                });
            let devices = exit_state(&on_stop).devices.clone();
            ask_clients_to_release(&devices);
            on_signal.trigger();
            // A second signal: the operator does not want to wait for the bound.
            if let Some(sig) = arriving.next() {
                give_up(&on_stop, &format!("signal {sig} while stopping"));
            }
        }
    });

    // The socket files we created, to remove at exit while they are still ours.
    let mut bound = Vec::with_capacity(devices.len());
    // The control socket goes first: a control client that can see it may already name every
    // device, and a bad path stops the start before any device socket exists.
    let control_listener = match &control_path {
        // The control socket drives faults and reads memory: it stays 0600 whatever the
        // device sockets' mode.
        Some(path) => match listen(&Endpoint::Path(path.clone()), SocketAccess::default()) {
            Ok((l, bound_path)) => {
                exit_state(&finisher).created.extend(bound_path);
                Some(l)
            }
            Err(e) => {
                signal_handle.close();
                let _ = signal_thread.join();
                return Err(e.context("cannot create the control socket"));
            }
        },
        None => None,
    };
    for (endpoint, device, trace) in devices {
        let listener = match listen(&endpoint, access) {
            Ok((l, path)) => {
                exit_state(&finisher).created.extend(path);
                l
            }
            Err(e) => {
                finish(&finisher);
                signal_handle.close();
                let _ = signal_thread.join();
                return Err(e);
            }
        };
        bound.push((endpoint, device, listener, trace));
    }

    let server_config = ServerConfig {
        stall_timeout: args.stall_timeout,
        allow_uids: (!args.allow_uid.is_empty()).then(|| args.allow_uid.clone()),
        ..ServerConfig::default()
    };
    let events = Arc::new(EventBus::default());
    let mut managed = Vec::with_capacity(bound.len());
    let mut workers = Vec::with_capacity(bound.len());
    // `bound` holds the entries' devices in the entries' order.
    for ((endpoint, device, listener, trace), entry) in bound.into_iter().zip(&entries) {
        let backing = backing_name(entry);
        let where_ = describe(&endpoint);
        let layout = device.layout();
        let mut bars: Vec<String> = layout
            .regions
            .iter()
            .map(|r| format!("BAR{} {}", r.bar, human(r.bar_size)))
            .collect();
        if let Some(size) = layout.bar1_size {
            bars.push(format!("BAR1 {} at region 2", human(size)));
        }
        for p in &layout.poisoned {
            warn!(
                region = p.region,
                offset = p.offset,
                "poisoned page on {where_}: reads that touch it answer EFAULT"
            );
        }
        match layout.core_only {
            None => info!(
                "serving {} 10de:{:04x} as Linux {} does, with {} of {} memory ({}) on {}",
                layout.profile,
                layout.device_id,
                layout.linux,
                human(layout.mem_size),
                backing,
                bars.join(", "),
                where_
            ),
            Some(why) => info!(
                "serving {} 10de:{:04x} as Linux {} does, as a plain vfio-pci function without \
                 memory regions because {why} (BAR0{}) on {}",
                layout.profile,
                layout.device_id,
                layout.linux,
                bars.iter().map(|b| format!(", {b}")).collect::<String>(),
                where_
            ),
        }
        let live = device.live_faults();
        let mut server = Server::shared(Arc::new(Mutex::new(device)), server_config.clone());
        exit_state(&finisher)
            .devices
            .push((server.shared_device(), server.controls().clone()));
        if control_listener.is_some() {
            let m = Managed {
                id: entry.id.clone(),
                socket: entry.socket.clone(),
                device: server.shared_device(),
                live,
                controls: server.controls().clone(),
                stats: Arc::default(),
                events: events.clone(),
                backing,
                started: Instant::now(),
            };
            server = server.with_observer(m.observer(trace));
            managed.push(m);
        } else if let Some(observer) = trace {
            server = server.with_observer(observer);
        }
        let shutdown = shutdown.clone();
        let name = where_.clone();
        workers.push(thread::spawn(move || -> Result<()> {
            server
                .serve(listener, &shutdown)
                .with_context(|| format!("server on {name} failed"))
        }));
    }
    let control_thread = control_listener.map(|listener| {
        let allow = (!args.allow_uid.is_empty()).then(|| args.allow_uid.clone());
        if let Some(path) = &control_path {
            let path = std::path::absolute(path).unwrap_or_else(|_| path.clone());
            info!(
                "control socket on {0}; drive it with: vgrace ctl --control {0} status",
                path.display()
            );
        }
        control::start(
            listener,
            Arc::new(Plane::new(
                managed,
                events,
                allow,
                args.control_idle_timeout,
            )),
            shutdown.clone(),
        )
    });

    crate::ready::announce(&args, &entries, passed_fds.as_deref());
    let mut failure = None;
    for worker in workers {
        let outcome = worker.join();
        // One server failing stops the others, so the process never half-runs.
        shutdown.trigger();
        match outcome {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                error!("{e:#}");
                failure.get_or_insert(e);
            }
            Err(_) => {
                failure.get_or_insert_with(|| anyhow::anyhow!("a server thread panicked"));
            }
        }
    }
    signal_handle.close();
    let _ = signal_thread.join();
    if let Some(t) = control_thread {
        let _ = t.join();
    }
    finish(&finisher);
    match failure {
        Some(e) => Err(e),
        None => {
            info!("stopped");
            Ok(())
        }
    }
}

/// Refuses a socket path longer than `sun_path` holds: it could be bound (see
/// `vfu::server::bind_socket`) but no client could ever connect to it.
fn check_socket_path(path: &std::path::Path, what: &str) -> Result<()> {
    let len = path.as_os_str().len();
    if len > SUN_PATH_MAX {
        bail!(
            "the {what} path {} is {len} bytes, longer than the {} a unix socket address holds: \
             no client could connect to it; use a shorter path",
            path.display(),
            SUN_PATH_MAX
        );
    }
    Ok(())
}

/// The listener for `endpoint`, and the socket file if we created one.
fn listen(endpoint: &Endpoint, access: SocketAccess) -> Result<(UnixListener, Option<BoundPath>)> {
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

fn describe(endpoint: &Endpoint) -> String {
    match endpoint {
        Endpoint::Path(p) => crate::ready::absolute(p).display().to_string(),
        Endpoint::Fd(fd) => format!("inherited fd {fd}"),
        Endpoint::Passed(fd, name) => format!("passed fd {fd} ({name})"),
    }
}

fn backing_name(entry: &DeviceEntry) -> String {
    match &entry.config.backing {
        vgrace_device::Backing::Memfd => "memfd".to_string(),
        vgrace_device::Backing::Hugetlbfs => "hugetlbfs".to_string(),
        vgrace_device::Backing::File(p) => format!("file {}", p.display()),
    }
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
fn ignore_file_size_signal() -> Result<()> {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    set.add(Signal::SIGXFSZ);
    set.thread_block().context("cannot block SIGXFSZ")?;
    Ok(())
}
