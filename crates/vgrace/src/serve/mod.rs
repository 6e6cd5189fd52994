//! `vgrace serve`: one server thread per device, stopped together by SIGTERM/SIGINT/SIGHUP.
//!
//! A stop always finishes: the threads get [`stop::STOP_BOUND`] to end on their own; past it (a
//! session stuck inside a request, holding its device) or at a second signal the process
//! removes its sockets, flushes file-backed memory to disk and exits without them.
//!
//! [`run`] goes through the phases in order: plan (read and check what to serve), build every
//! device, install the stop, bind, spawn the servers (and the control plane), announce, wait.

pub mod activation;
pub mod announce;
pub mod control;
mod endpoint;
mod stop;
pub mod trace_setup;

use std::os::fd::IntoRawFd;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use tracing::{error, info, warn};
use vfu::server::observe::Observer;
use vfu::server::{Server, ServerConfig, Shutdown, SocketAccess};
use vgrace_device::backing::Memory;
use vgrace_device::{LinuxVersion, NvGraceGpu};

use crate::cli::ServeArgs;
use crate::node_file::{self, DeviceEntry};
use crate::units::human;
use activation::Activation;
use control::{EventBus, Managed, Plane};
use endpoint::{check_socket_path, describe, listen, Endpoint};
use stop::{exit_state, finish, ignore_file_size_signal, Finisher, SignalWatch};

/// What `serve` serves, read from the command line or the node file and checked before anything
/// is created.
struct Plan {
    entries: Vec<DeviceEntry>,
    control_path: Option<PathBuf>,
    access: SocketAccess,
    /// One per entry, in the entries' order.
    endpoints: Vec<Endpoint>,
    /// Where clients reach the passed sockets (socket activation), for the next-steps lines.
    passed_fds: Option<Vec<i32>>,
}

/// One device built (not yet bound), with where it will listen and its trace.
struct Built {
    endpoint: Endpoint,
    device: NvGraceGpu,
    trace: Option<Arc<dyn Observer>>,
}

/// One device with its listening socket.
struct Bound {
    built: Built,
    listener: UnixListener,
}

/// A server thread.
type Worker = JoinHandle<Result<()>>;

/// Runs until a signal arrives or every server has stopped.
pub fn run(args: ServeArgs, activation: Activation) -> Result<()> {
    let mut plan = plan(&args, activation)?;
    // Build every device before creating any socket, so a bad entry leaves nothing behind. The
    // host view's memory files stay locked while we serve (QEMU maps them).
    let mut host_memory = Vec::new();
    let endpoints = std::mem::take(&mut plan.endpoints);
    let built = build_devices(&args, &plan.entries, endpoints, &mut host_memory)?;

    // Signal handlers go in before any socket exists: once a client can see the socket, SIGTERM
    // already means a clean stop.
    ignore_file_size_signal()?;
    let shutdown = Shutdown::new().context("cannot create the shutdown event")?;
    let finisher = Finisher::default();
    for (b, entry) in built.iter().zip(&plan.entries) {
        if let Some(file) = b.device.file_for_sync()? {
            exit_state(&finisher)
                .files
                .push((backing_name(entry), file));
        }
    }
    let signals = SignalWatch::install(&shutdown, &finisher)?;

    // The control socket goes first: a control client that can see it may already name every
    // device, and a bad path stops the start before any device socket exists.
    let control_listener = match bind_control(plan.control_path.as_deref(), &finisher) {
        Ok(l) => l,
        Err(e) => {
            signals.close();
            return Err(e);
        }
    };
    let bound = match bind_devices(built, plan.access, &finisher) {
        Ok(b) => b,
        Err(e) => {
            finish(&finisher);
            signals.close();
            return Err(e);
        }
    };

    let events = Arc::new(EventBus::default());
    let managing = control_listener.is_some().then_some(&events);
    let (workers, managed) =
        spawn_servers(&args, &plan.entries, bound, managing, &shutdown, &finisher);
    let control_thread = control_listener
        .map(|listener| start_control(&args, &plan, listener, managed, events.clone(), &shutdown));

    announce::announce(&args, &plan.entries, plan.passed_fds.as_deref());
    let failure = wait(workers, &shutdown);
    signals.close();
    if let Some(t) = control_thread {
        let _ = t.join();
    }
    finish(&finisher);
    drop(host_memory);
    match failure {
        Some(e) => Err(e),
        None => {
            info!("stopped");
            Ok(())
        }
    }
}

/// Reads what to serve (the node file or the device flags), takes the passed sockets and
/// prepares the paths, all before any device or socket exists.
fn plan(args: &ServeArgs, activation: Activation) -> Result<Plan> {
    let (entries, file_control, file_access) = match &args.config {
        Some(path) => {
            let node = node_file::load_node(path)?;
            (node.devices, node.control, node.socket_access)
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
            node_file::SocketSettings::default(),
        ),
    };
    let control_path = args.control.clone().or(file_control);
    let access = node_file::SocketSettings {
        mode: args.socket_mode.or(file_access.mode),
        group: args.socket_group.clone().or(file_access.group),
    }
    .resolve()?;
    let passed = passed_endpoints(args, activation, &entries)?;
    let own_paths = args.fd.is_none() && passed.is_none();
    prepare_paths(&entries, control_path.as_deref(), own_paths)?;
    let passed_fds: Option<Vec<i32>> = passed.as_ref().map(|p| {
        p.iter()
            .filter_map(|e| match e {
                Endpoint::Passed(fd, _) => Some(*fd),
                _ => None,
            })
            .collect()
    });
    let endpoints = match (passed, args.fd) {
        (Some(p), _) => {
            let mut p = p.into_iter();
            entries
                .iter()
                .map(|_| p.next().unwrap_or(Endpoint::Fd(-1)))
                .collect()
        }
        (None, Some(fd)) => entries.iter().map(|_| Endpoint::Fd(fd)).collect(),
        (None, None) => entries
            .iter()
            .map(|e| Endpoint::Path(e.socket.clone()))
            .collect(),
    };
    Ok(Plan {
        entries,
        control_path,
        access,
        endpoints,
        passed_fds,
    })
}

/// Socket activation: every device gets one of the passed sockets, checked before anything is
/// created. `None` when the process was not activated.
fn passed_endpoints(
    args: &ServeArgs,
    activation: Activation,
    entries: &[DeviceEntry],
) -> Result<Option<Vec<Endpoint>>> {
    if !activation.is_active() {
        return Ok(None);
    }
    if args.fd.is_some() {
        bail!("--fd and socket activation (LISTEN_FDS) both give sockets: use one");
    }
    let fds = activation.take_fds()?;
    let assigned = activation::assign(fds, entries)?;
    Ok(Some(
        assigned
            .into_iter()
            .map(|i| Endpoint::Passed(i.listener.into_raw_fd(), i.name))
            .collect(),
    ))
}

/// Refuses a path no client can connect to (rather than announce it), creates the parent
/// directories and checks the trace files.
fn prepare_paths(entries: &[DeviceEntry], control: Option<&Path>, own_paths: bool) -> Result<()> {
    if own_paths {
        for e in entries {
            check_socket_path(&e.socket, "socket")?;
        }
    }
    if let Some(path) = control {
        check_socket_path(path, "control socket")?;
    }
    crate::dirs::create_parents(entries, own_paths)?;
    if let Some(path) = control {
        crate::dirs::create_parent(path, "control socket")?;
    }
    trace_setup::check(entries, control, own_paths)
}

/// Builds every device (and opens its trace); a device that a 6.14+ probe would refuse is not
/// served unless `--serve-unready`.
fn build_devices(
    args: &ServeArgs,
    entries: &[DeviceEntry],
    endpoints: Vec<Endpoint>,
    keep: &mut Vec<Memory>,
) -> Result<Vec<Built>> {
    let mut devices = Vec::with_capacity(entries.len());
    for (entry, endpoint) in entries.iter().zip(endpoints) {
        let device = crate::guest::host_view::build(entry, keep)
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
        let trace = trace_setup::open(entry)?;
        devices.push(Built {
            endpoint,
            device,
            trace,
        });
    }
    Ok(devices)
}

/// The control socket's listener, if there is one. It drives faults and reads memory: it stays
/// 0600 whatever the device sockets' mode.
fn bind_control(path: Option<&Path>, finisher: &Finisher) -> Result<Option<UnixListener>> {
    let Some(path) = path else {
        return Ok(None);
    };
    let (listener, bound_path) =
        listen(&Endpoint::Path(path.to_path_buf()), SocketAccess::default())
            .context("cannot create the control socket")?;
    exit_state(finisher).created.extend(bound_path);
    Ok(Some(listener))
}

/// Binds every device's socket, recording the files we create for the way out.
fn bind_devices(
    built: Vec<Built>,
    access: SocketAccess,
    finisher: &Finisher,
) -> Result<Vec<Bound>> {
    let mut bound = Vec::with_capacity(built.len());
    for b in built {
        let (listener, path) = listen(&b.endpoint, access)?;
        exit_state(finisher).created.extend(path);
        bound.push(Bound { built: b, listener });
    }
    Ok(bound)
}

/// Starts one server thread per device (in the entries' order); with `events` (a control
/// socket), also the control plane's view of each device.
fn spawn_servers(
    args: &ServeArgs,
    entries: &[DeviceEntry],
    bound: Vec<Bound>,
    events: Option<&Arc<EventBus>>,
    shutdown: &Shutdown,
    finisher: &Finisher,
) -> (Vec<Worker>, Vec<Managed>) {
    let server_config = ServerConfig {
        stall_timeout: args.stall_timeout,
        allow_uids: (!args.allow_uid.is_empty()).then(|| args.allow_uid.clone()),
        ..ServerConfig::default()
    };
    let mut managed = Vec::with_capacity(bound.len());
    let mut workers = Vec::with_capacity(bound.len());
    for (Bound { built, listener }, entry) in bound.into_iter().zip(entries) {
        let Built {
            endpoint,
            device,
            trace,
        } = built;
        let where_ = describe(&endpoint);
        log_serving(&device, &backing_name(entry), &where_);
        let live = device.live_faults();
        let mut server = Server::shared(Arc::new(Mutex::new(device)), server_config.clone());
        exit_state(finisher)
            .devices
            .push((server.shared_device(), server.controls().clone()));
        if let Some(events) = events {
            let m = Managed {
                id: entry.id.clone(),
                socket: entry.socket.clone(),
                device: server.shared_device(),
                live,
                controls: server.controls().clone(),
                stats: Arc::default(),
                events: events.clone(),
                backing: backing_name(entry),
                started: Instant::now(),
            };
            server = server.with_observer(m.observer(trace));
            managed.push(m);
        } else if let Some(observer) = trace {
            server = server.with_observer(observer);
        }
        let shutdown = shutdown.clone();
        workers.push(thread::spawn(move || -> Result<()> {
            server
                .serve(listener, &shutdown)
                .with_context(|| format!("server on {where_} failed"))
        }));
    }
    (workers, managed)
}

/// Logs what a device serves: its profile, memory, BARs and where; and each poisoned page.
fn log_serving(device: &NvGraceGpu, backing: &str, where_: &str) {
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
}

/// Starts the control plane's accept thread over the managed devices.
fn start_control(
    args: &ServeArgs,
    plan: &Plan,
    listener: UnixListener,
    managed: Vec<Managed>,
    events: Arc<EventBus>,
    shutdown: &Shutdown,
) -> JoinHandle<()> {
    let allow = (!args.allow_uid.is_empty()).then(|| args.allow_uid.clone());
    if let Some(path) = &plan.control_path {
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
}

/// Waits for every server thread; the first to end stops the others, so the process never
/// half-runs. The first failure, if any.
fn wait(workers: Vec<Worker>, shutdown: &Shutdown) -> Option<anyhow::Error> {
    let mut failure = None;
    for worker in workers {
        let outcome = worker.join();
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
    failure
}

fn backing_name(entry: &DeviceEntry) -> String {
    match &entry.config.backing {
        vgrace_device::Backing::Memfd => "memfd".to_string(),
        vgrace_device::Backing::Hugetlbfs => "hugetlbfs".to_string(),
        vgrace_device::Backing::File(p) => format!("file {}", p.display()),
    }
}
