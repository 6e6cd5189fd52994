//! The measured workloads and their baselines. Each returns a rate (operations or bytes per
//! second); the binary interleaves subject and baseline runs and reports median ratios.

use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use test_support::procfs::status_kib;
use test_support::{ServeChild, SharedMapping};
use vfu::client::Client;
use vfu::server::observe::Observer;
use vfu::server::{Server, ServerConfig};
use vfu::trace::{TraceLimits, TraceWriter};
use vfu::transport::UnixTransport;
use vgrace_device::{GpuConfig, NvGraceGpu, Profile};

/// Error type of the harness (benchmarks are not a library API; strings are enough).
pub type BenchError = Box<dyn std::error::Error + Send + Sync>;

/// Where threads run: both on CPU 0, or wherever the scheduler puts them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// Both threads pinned to CPU 0 (no cross-CPU wake-ups: CPU cost dominates).
    Pinned,
    /// Unpinned (cross-CPU wake-up latency dominates).
    Unpinned,
}

/// Applies the placement to the calling thread (threads inherit it from their creator, so
/// unpinned resets to every CPU).
pub fn place(p: Placement) {
    let mut set = nix::sched::CpuSet::new();
    // Every CPU the mask can name: the kernel keeps the online ones. (available_parallelism
    // would report the current, possibly pinned, mask.)
    let cpus = match p {
        Placement::Pinned => 1,
        Placement::Unpinned => nix::sched::CpuSet::count(),
    };
    for cpu in 0..cpus {
        let _ = set.set(cpu);
    }
    let _ = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set);
}

/// A small device for the socket workloads (gh100, 2 GiB usemem, sparse memfd).
pub fn bench_device() -> Result<NvGraceGpu, BenchError> {
    let cfg = GpuConfig::memfd(Profile::Gh100, 3 << 30);
    Ok(NvGraceGpu::new(&cfg)?)
}

/// Request and reply sizes of a 4-byte REGION_READ (header + fixed part [+ data]).
pub const RT_REQUEST: usize = 32;
/// Reply size of a 4-byte REGION_READ.
pub const RT_REPLY: usize = 36;

/// Plain AF_UNIX ping-pong with the REGION_READ message sizes: round trips per second.
pub fn pingpong(iters: u64, p: Placement, req: usize, reply: usize) -> Result<f64, BenchError> {
    let (mut a, mut b) = UnixStream::pair()?;
    let server = thread::spawn(move || -> std::io::Result<()> {
        place(p);
        let mut inb = vec![0u8; req];
        let out = vec![0u8; reply];
        loop {
            if b.read_exact(&mut inb).is_err() {
                return Ok(());
            }
            b.write_all(&out)?;
        }
    });
    place(p);
    let out = vec![1u8; req];
    let mut inb = vec![0u8; reply];
    let start = Instant::now();
    for _ in 0..iters {
        a.write_all(&out)?;
        a.read_exact(&mut inb)?;
    }
    let rate = iters as f64 / start.elapsed().as_secs_f64();
    drop(a);
    let _ = server.join();
    Ok(rate)
}

/// Runs `f` with a vgrace client connected to a vgrace server thread over a socketpair.
fn with_vgrace<T>(
    p: Placement,
    f: impl FnOnce(&mut Client) -> Result<T, BenchError>,
) -> Result<T, BenchError> {
    with_observed_vgrace(p, None, f)
}

/// [`with_vgrace`] with an observer on the server.
fn with_observed_vgrace<T>(
    p: Placement,
    observer: Option<Arc<dyn Observer>>,
    f: impl FnOnce(&mut Client) -> Result<T, BenchError>,
) -> Result<T, BenchError> {
    let (a, b) = UnixStream::pair()?;
    let device = bench_device()?;
    let server = thread::spawn(move || {
        place(p);
        let mut s = Server::new(device, ServerConfig::default());
        if let Some(o) = observer {
            s = s.with_observer(o);
        }
        let _ = s.serve_connection(UnixTransport::new(b));
    });
    place(p);
    let mut client = Client::from_stream(a)?;
    let out = f(&mut client);
    drop(client);
    let _ = server.join();
    out
}

/// `iters` 4-byte REGION_READs of the BAR0 link-status register, one after another: round
/// trips per second. Every round-trip workload measures this loop.
pub fn read_rate(c: &mut Client, iters: u64) -> Result<f64, BenchError> {
    let mut buf = [0u8; 4];
    let start = Instant::now();
    for _ in 0..iters {
        c.region_read_into(0, 0x1498, &mut buf)?;
    }
    Ok(iters as f64 / start.elapsed().as_secs_f64())
}

/// 4-byte BAR0 REGION_READs through vgrace: round trips per second.
pub fn vgrace_roundtrip(iters: u64, p: Placement) -> Result<f64, BenchError> {
    with_vgrace(p, |c| read_rate(c, iters))
}

/// [`vgrace_roundtrip`] against a server writing a protocol trace (to a file in a temp dir):
/// round trips per second. The trace writer thread is started with the same placement, so
/// pinned it shares the one CPU with client and server (its cost is all counted), and the time
/// to flush the last batch after the loop is not.
pub fn vgrace_roundtrip_traced(iters: u64, p: Placement) -> Result<f64, BenchError> {
    let dir = tempfile::tempdir()?;
    place(p);
    let trace = TraceWriter::open(
        &dir.path().join("bench.trace"),
        "vgrace-bench",
        TraceLimits::default(),
    )?;
    let rate = with_observed_vgrace(p, Some(trace.clone()), |c| read_rate(c, iters))?;
    // Dropped lines would make tracing look cheaper than it is: say so.
    if trace.dropped_total() > 0 {
        eprintln!(
            "trace benchmark: {} lines dropped (writer behind)",
            trace.dropped_total()
        );
    }
    Ok(rate)
}

/// `devices` devices in one process, each served on its own thread to its own client thread
/// doing `iters` 4-byte BAR0 REGION_READs at the same time: aggregate round trips per second.
/// Unpinned: the point is how well the devices share the machine's cores.
pub fn multi_device(devices: usize, iters: u64) -> Result<f64, BenchError> {
    place(Placement::Unpinned);
    let start_line = std::sync::Arc::new(std::sync::Barrier::new(devices + 1));
    let mut clients = Vec::with_capacity(devices);
    let mut servers = Vec::with_capacity(devices);
    for _ in 0..devices {
        let (a, b) = UnixStream::pair()?;
        let device = bench_device()?;
        servers.push(thread::spawn(move || {
            let mut s = Server::new(device, ServerConfig::default());
            let _ = s.serve_connection(UnixTransport::new(b));
        }));
        let go = start_line.clone();
        clients.push(thread::spawn(move || -> Result<(), String> {
            let mut c = Client::from_stream(a).map_err(|e| e.to_string())?;
            let mut buf = [0u8; 4];
            go.wait();
            for _ in 0..iters {
                c.region_read_into(0, 0x1498, &mut buf)
                    .map_err(|e| e.to_string())?;
            }
            Ok(())
        }));
    }
    start_line.wait();
    let start = Instant::now();
    for c in clients {
        c.join().map_err(|_| "a client thread panicked")??;
    }
    let rate = (devices as u64 * iters) as f64 / start.elapsed().as_secs_f64();
    for s in servers {
        let _ = s.join();
    }
    Ok(rate)
}

/// No_reply 4-byte BAR0 writes, closed by one round trip: writes per second.
pub fn vgrace_posted(iters: u64, p: Placement) -> Result<f64, BenchError> {
    with_vgrace(p, |c| {
        let start = Instant::now();
        for i in 0..iters {
            c.region_write_posted(0, 0x1000 + (i % 64) * 4, &(i as u32).to_le_bytes())?;
        }
        let mut buf = [0u8; 4];
        c.region_read_into(0, 0x1000, &mut buf)?;
        Ok(iters as f64 / start.elapsed().as_secs_f64())
    })
}

/// 1 MiB REGION_READs of BAR4 memory: bytes per second.
pub fn vgrace_bulk(iters: u64, p: Placement) -> Result<f64, BenchError> {
    with_vgrace(p, |c| {
        // One MiB of memory, touched once so the loop measures transfers, not page faults.
        let mut buf = vec![0u8; 1 << 20];
        c.region_write(4, 0, &vec![0x5a; 1 << 20])?;
        c.region_read_into(4, 0, &mut buf)?;
        let start = Instant::now();
        for _ in 0..iters {
            c.region_read_into(4, 0, &mut buf)?;
        }
        Ok((iters << 20) as f64 / start.elapsed().as_secs_f64())
    })
}

/// A trivial backend for the crates.io `vfio_user` server: BAR0 of 16 MiB reading zeros.
struct TrivialBackend;

impl vfio_user::ServerBackend for TrivialBackend {
    fn region_read(
        &mut self,
        _region: u32,
        _offset: u64,
        data: &mut [u8],
    ) -> Result<(), std::io::Error> {
        data.fill(0);
        Ok(())
    }
    fn region_write(
        &mut self,
        _region: u32,
        _offset: u64,
        _data: &[u8],
    ) -> Result<(), std::io::Error> {
        Ok(())
    }
    fn dma_map(
        &mut self,
        _: vfio_user::DmaMapFlags,
        _: u64,
        _: u64,
        _: u64,
        _: Option<std::fs::File>,
    ) -> Result<(), std::io::Error> {
        Ok(())
    }
    fn dma_unmap(
        &mut self,
        _: vfio_user::DmaUnmapFlags,
        _: u64,
        _: u64,
    ) -> Result<(), std::io::Error> {
        Ok(())
    }
    fn reset(&mut self) -> Result<(), std::io::Error> {
        Ok(())
    }
    fn set_irqs(
        &mut self,
        _: u32,
        _: u32,
        _: u32,
        _: u32,
        _: Vec<std::fs::File>,
    ) -> Result<(), std::io::Error> {
        Ok(())
    }
}

/// The same 4-byte BAR0 REGION_READ workload against the crates.io `vfio_user` server.
pub fn rustvmm_roundtrip(iters: u64, p: Placement) -> Result<f64, BenchError> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("rustvmm.sock");
    let bar0 = vfio_user::ServerRegion {
        region_info: vfio_bindings::bindings::vfio::vfio_region_info {
            argsz: 32,
            flags: 3,
            index: 0,
            cap_offset: 0,
            size: 16 << 20,
            offset: 0,
        },
        sparse_areas: Vec::new(),
        mmap_fd: None,
    };
    let server = vfio_user::Server::new(&path, true, Vec::new(), vec![bar0])
        .map_err(|e| format!("rust-vmm server: {e}"))?;
    let handle = thread::spawn(move || {
        place(p);
        let _ = server.run(&mut TrivialBackend);
    });
    place(p);
    let mut client = Client::connect(&path)?;
    let rate = read_rate(&mut client, iters)?;
    drop(client);
    let _ = handle.join();
    Ok(rate)
}

/// memcpy into the client's mapping of the BAR4 fd vs into an anonymous buffer: bytes per
/// second of each, for `size` bytes copied `iters` times.
pub fn memcpy_pair(size: usize, iters: u64) -> Result<(f64, f64), BenchError> {
    let device = bench_device()?;
    let info = vfu::Device::region_info(&device, 4).map_err(|e| format!("region info: {e}"))?;
    let fd = info.fd.ok_or("no region fd")?;
    if size == 0 {
        return Err("size 0".into());
    }
    let mapping = SharedMapping::new(fd.as_fd(), 0, size)?;
    // A volatile slice's byte copy is one memcpy for anything longer than a word.
    let mapped = mapping.whole();
    let src = vec![0x5au8; size];
    let mut anon = vec![0u8; size];
    mapped.copy_from(&src);
    anon.copy_from_slice(&src);
    let time = |copy: &mut dyn FnMut()| {
        let start = Instant::now();
        for _ in 0..iters {
            copy();
        }
        (size as u64 * iters) as f64 / start.elapsed().as_secs_f64()
    };
    let mut m = Vec::new();
    let mut a = Vec::new();
    for _ in 0..5 {
        m.push(time(&mut || mapped.copy_from(std::hint::black_box(&src))));
        a.push(time(&mut || {
            anon.copy_from_slice(std::hint::black_box(&src));
            std::hint::black_box(&mut anon);
        }));
    }
    Ok((median(&mut m), median(&mut a)))
}

/// Starts `vgrace serve` for `mem_size`, times until a VERSION reply, reads peak RSS (KiB).
pub fn startup(vgrace: &Path, mem_size: &str) -> Result<(Duration, u64), BenchError> {
    let dir = tempfile::tempdir()?;
    let sock = dir.path().join("s.sock");
    let mut cmd = Command::new(vgrace);
    cmd.args(["serve", "--socket"])
        .arg(&sock)
        .args(["--profile", "gb200", "--mem-size", mem_size])
        .env("RUST_LOG", "warn");
    let start = Instant::now();
    // Killed and reaped when dropped, also on the error paths.
    let child = ServeChild::spawn(cmd)?;
    let deadline = start + Duration::from_secs(30);
    let elapsed = loop {
        if let Ok(mut c) = Client::connect(&sock) {
            let t = start.elapsed();
            c.device_info()?;
            break t;
        }
        if Instant::now() > deadline {
            return Err("vgrace did not answer within 30 s".into());
        }
        thread::sleep(Duration::from_micros(200));
    };
    let hwm = status_kib(child.process(), "VmHWM")?.unwrap_or(0);
    drop(child);
    Ok((elapsed, hwm))
}

/// Median of a slice (sorts it).
pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}
