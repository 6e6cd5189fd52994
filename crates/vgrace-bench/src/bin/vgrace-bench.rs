//! Runs the benchmark workloads, interleaving subjects and baselines, and prints a table plus
//! one `ratio NAME VALUE` line per goal.
#![forbid(unsafe_code)]

use std::path::PathBuf;

use vgrace_bench::workloads::{self, median, place, BenchError, Placement, RT_REPLY, RT_REQUEST};

struct Opts {
    quick: bool,
    /// Only run the trace comparison (`--only trace`).
    only_trace: bool,
    vgrace: PathBuf,
    /// Only run N pinned vgrace round trips (for a profiler).
    profile: Option<u64>,
}

fn parse() -> Result<Opts, BenchError> {
    let mut quick = false;
    let mut only_trace = false;
    let mut vgrace = PathBuf::from("target/release/vgrace");
    let mut profile = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--quick" => quick = true,
            "--only" => match args.next().as_deref() {
                Some("trace") => only_trace = true,
                _ => return Err("--only takes: trace".into()),
            },
            "--vgrace" => vgrace = PathBuf::from(args.next().ok_or("--vgrace needs a path")?),
            "--profile-roundtrip" => {
                profile = Some(
                    args.next()
                        .ok_or("--profile-roundtrip needs a count")?
                        .parse()?,
                )
            }
            other => {
                return Err(format!(
                    "unknown argument {other} (use --quick, --only trace, --vgrace PATH, --profile-roundtrip N)"
                )
                .into())
            }
        }
    }
    Ok(Opts {
        quick,
        only_trace,
        vgrace,
        profile,
    })
}

/// Runs `a` and `b` alternately `rounds` times; returns their medians.
fn interleave(
    rounds: usize,
    mut a: impl FnMut() -> Result<f64, BenchError>,
    mut b: impl FnMut() -> Result<f64, BenchError>,
) -> Result<(f64, f64), BenchError> {
    let (mut va, mut vb) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        va.push(a()?);
        vb.push(b()?);
    }
    Ok((median(&mut va), median(&mut vb)))
}

fn main() {
    if let Err(e) = run() {
        eprintln!("vgrace-bench: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), BenchError> {
    let o = parse()?;
    if let Some(n) = o.profile {
        return profile(n);
    }
    let mut b = Bench::new(&o);
    println!(
        "{:<44} {:>16} {:>16} {:>8}",
        "workload (median)", "subject", "baseline", "ratio"
    );
    b.trace_cost()?;
    if o.only_trace {
        b.print_ratios();
        return Ok(());
    }
    b.round_trips()?;
    b.bulk()?;
    b.control_load()?;
    b.multi_device()?;
    let rss480 = b.startup()?;
    b.print_ratios();
    println!("rss_480g_kib {rss480}");
    Ok(())
}

/// `--profile-roundtrip N`: only N pinned round trips (or ping-pongs), for a profiler.
fn profile(n: u64) -> Result<(), BenchError> {
    if std::env::var_os("VGRACE_BENCH_PINGPONG").is_some() {
        let rate = workloads::pingpong(n, Placement::Pinned, RT_REQUEST, RT_REPLY)?;
        println!("{rate:.0} ping-pongs/s");
        return Ok(());
    }
    let rate = workloads::vgrace_roundtrip(n, Placement::Pinned)?;
    println!("{rate:.0} round trips/s");
    Ok(())
}

/// Prints one table row; returns the ratio subject / baseline.
fn row(name: &str, s: f64, b: f64, unit: &str) -> f64 {
    let r = if b > 0.0 { s / b } else { 0.0 };
    println!(
        "{name:<44} {:>12.0} {unit:<3} {:>12.0} {unit:<3} {r:>8.3}",
        s, b
    );
    r
}

/// The run's settings and the ratios gathered so far.
struct Bench<'a> {
    o: &'a Opts,
    rounds: usize,
    ratios: Vec<(&'static str, f64)>,
}

impl<'a> Bench<'a> {
    fn new(o: &'a Opts) -> Self {
        Self {
            o,
            rounds: if o.quick { 3 } else { 7 },
            ratios: Vec::new(),
        }
    }

    /// Round trips per placement: pinned (CPU cost) and unpinned (wake-up latency), and its tag.
    fn round_trip_count(&self, p: Placement) -> (u64, &'static str) {
        match (p, self.o.quick) {
            (Placement::Pinned, true) => (20_000, "pinned"),
            (Placement::Pinned, false) => (100_000, "pinned"),
            (_, true) => (3_000, "unpinned"),
            (_, false) => (15_000, "unpinned"),
        }
    }

    /// Tracing on vs off, same workload, same run: pinned, the trace writer shares the one
    /// CPU, so every cycle it spends is counted.
    fn trace_cost(&mut self) -> Result<(), BenchError> {
        for p in [Placement::Pinned, Placement::Unpinned] {
            let (n, tag) = self.round_trip_count(p);
            let (traced, plain) = interleave(
                self.rounds,
                || workloads::vgrace_roundtrip_traced(n, p),
                || workloads::vgrace_roundtrip(n, p),
            )?;
            let r = row(
                &format!("4B REGION_READ traced vs untraced ({tag})"),
                traced,
                plain,
                "/s",
            );
            if p == Placement::Pinned {
                self.ratios.push(("trace_roundtrip_vs_untraced", r));
            }
        }
        Ok(())
    }

    /// Round trips against a socket ping-pong and rust-vmm's client, and posted writes.
    fn round_trips(&mut self) -> Result<(), BenchError> {
        for p in [Placement::Pinned, Placement::Unpinned] {
            let (n, tag) = self.round_trip_count(p);
            let (v, pp) = interleave(
                self.rounds,
                || workloads::vgrace_roundtrip(n, p),
                || workloads::pingpong(n, p, RT_REQUEST, RT_REPLY),
            )?;
            let r = row(&format!("4B REGION_READ vs ping-pong ({tag})"), v, pp, "/s");
            let (v2, rv) = interleave(
                self.rounds,
                || workloads::vgrace_roundtrip(n, p),
                || workloads::rustvmm_roundtrip(n, p),
            )?;
            let r2 = row(
                &format!("4B REGION_READ vgrace vs rust-vmm ({tag})"),
                v2,
                rv,
                "/s",
            );
            let (posted, rt) = interleave(
                self.rounds,
                || workloads::vgrace_posted(n, p),
                || workloads::vgrace_roundtrip(n, p),
            )?;
            let r3 = row(
                &format!("posted 4B writes vs round trips ({tag})"),
                posted,
                rt,
                "/s",
            );
            if p == Placement::Pinned {
                self.ratios.push(("roundtrip_vs_pingpong", r));
                self.ratios.push(("roundtrip_vs_rustvmm", r2));
                self.ratios.push(("posted_write_vs_roundtrip", r3));
            }
        }
        Ok(())
    }

    /// 1 MiB reads against a socket transfer, and memcpy into a region's mapping.
    fn bulk(&mut self) -> Result<(), BenchError> {
        let bulk = if self.o.quick { 200 } else { 1000 };
        let p = Placement::Pinned;
        let (b, s) = interleave(
            self.rounds,
            || workloads::vgrace_bulk(bulk, p),
            || {
                workloads::pingpong(bulk, p, RT_REQUEST, RT_REQUEST + (1 << 20))
                    .map(|r| r * (1u64 << 20) as f64)
            },
        )?;
        self.ratios.push((
            "bulk_read_vs_socket",
            row(
                "1 MiB REGION_READ vs socket transfer (pinned)",
                b / 1e6,
                s / 1e6,
                "MB/s",
            ),
        ));
        place(Placement::Unpinned);
        let (m, a) = workloads::memcpy_pair(64 << 20, if self.o.quick { 10 } else { 40 })?;
        self.ratios.push((
            "mmap_vs_memcpy",
            row(
                "memcpy into region mmap vs anonymous (64 MiB)",
                m / 1e6,
                a / 1e6,
                "MB/s",
            ),
        ));
        Ok(())
    }

    /// A control client at 1000 requests/s (status, stats, a BAR0 peek, a 4 KiB memory peek)
    /// against the same served device with none: the device must not wait on the control plane.
    fn control_load(&mut self) -> Result<(), BenchError> {
        let vgrace = &self.o.vgrace;
        let control_iters = if self.o.quick { 60_000 } else { 200_000 };
        let mut answered = 0;
        let (loaded, quiet) = interleave(
            self.rounds,
            || {
                let (r, n) = vgrace_bench::control_load::roundtrip_with_control(
                    vgrace,
                    control_iters,
                    1000,
                )?;
                answered += n;
                Ok(r)
            },
            || {
                vgrace_bench::control_load::roundtrip_with_control(vgrace, control_iters, 0)
                    .map(|(r, _)| r)
            },
        )?;
        self.ratios.push((
            "roundtrip_under_control_load",
            row(
                "4B REGION_READ, 1000 control req/s vs none (pinned)",
                loaded,
                quiet,
                "/s",
            ),
        ));
        println!("(control requests answered meanwhile: {answered})");
        Ok(())
    }

    /// Eight devices served at once against one.
    fn multi_device(&mut self) -> Result<(), BenchError> {
        let per_device = if self.o.quick { 2_000 } else { 10_000 };
        let (eight, one) = interleave(
            self.rounds,
            || workloads::multi_device(8, per_device),
            || workloads::multi_device(1, per_device),
        )?;
        self.ratios.push((
            "multi_device_scaling",
            row(
                "4B REGION_READs: 8 devices at once vs 1 (aggregate)",
                eight,
                one,
                "/s",
            ),
        ));
        Ok(())
    }

    /// Start-up time and peak RSS, 480 GiB against 1 GiB; the 480 GiB peak RSS.
    fn startup(&mut self) -> Result<u64, BenchError> {
        let mut t480 = Vec::new();
        let mut t1 = Vec::new();
        let (mut rss480, mut rss1) = (0, 0);
        for _ in 0..self.rounds {
            let (t, r) = workloads::startup(&self.o.vgrace, "480G")?;
            t480.push(t.as_secs_f64() * 1e3);
            rss480 = rss480.max(r);
            let (t, r) = workloads::startup(&self.o.vgrace, "1G")?;
            t1.push(t.as_secs_f64() * 1e3);
            rss1 = rss1.max(r);
        }
        let (m480, m1) = (median(&mut t480), median(&mut t1));
        println!(
            "{:<44} {:>12.2} ms  {:>12.2} ms  {:>8.3}",
            "start to VERSION reply: 480 GiB vs 1 GiB",
            m480,
            m1,
            m480 / m1
        );
        println!(
            "{:<44} {:>12} KiB {:>12} KiB",
            "peak RSS (VmHWM): 480 GiB vs 1 GiB", rss480, rss1
        );
        self.ratios.push(("startup_480g_vs_1g", m480 / m1));
        Ok(rss480)
    }

    /// The `ratio NAME VALUE` lines, after a blank line.
    fn print_ratios(&self) {
        println!();
        for (name, v) in &self.ratios {
            println!("ratio {name} {v:.3}");
        }
    }
}
