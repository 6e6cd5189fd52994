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
        if std::env::var_os("VGRACE_BENCH_PINGPONG").is_some() {
            let rate = workloads::pingpong(n, Placement::Pinned, RT_REQUEST, RT_REPLY)?;
            println!("{rate:.0} ping-pongs/s");
            return Ok(());
        }
        let rate = workloads::vgrace_roundtrip(n, Placement::Pinned)?;
        println!("{rate:.0} round trips/s");
        return Ok(());
    }
    let rounds = if o.quick { 3 } else { 7 };
    let rt_pinned = if o.quick { 20_000 } else { 100_000 };
    let rt_unpinned = if o.quick { 3_000 } else { 15_000 };
    let bulk = if o.quick { 200 } else { 1000 };
    let mut ratios: Vec<(&str, f64)> = Vec::new();
    println!(
        "{:<44} {:>16} {:>16} {:>8}",
        "workload (median)", "subject", "baseline", "ratio"
    );
    let row = |name: &str, s: f64, b: f64, unit: &str| {
        let r = if b > 0.0 { s / b } else { 0.0 };
        println!(
            "{name:<44} {:>12.0} {unit:<3} {:>12.0} {unit:<3} {r:>8.3}",
            s, b
        );
        r
    };

    // Tracing on vs off, same workload, same run: pinned, the trace writer shares the one CPU,
    // so every cycle it spends is counted.
    for p in [Placement::Pinned, Placement::Unpinned] {
        let (n, tag) = if p == Placement::Pinned {
            (rt_pinned, "pinned")
        } else {
            (rt_unpinned, "unpinned")
        };
        let (traced, plain) = interleave(
            rounds,
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
            ratios.push(("trace_roundtrip_vs_untraced", r));
        }
    }
    if o.only_trace {
        println!();
        for (name, v) in ratios {
            println!("ratio {name} {v:.3}");
        }
        return Ok(());
    }

    // Round trips: pinned (CPU cost) and unpinned (wake-up latency).
    for p in [Placement::Pinned, Placement::Unpinned] {
        let n = if p == Placement::Pinned {
            rt_pinned
        } else {
            rt_unpinned
        };
        let tag = if p == Placement::Pinned {
            "pinned"
        } else {
            "unpinned"
        };
        let (v, pp) = interleave(
            rounds,
            || workloads::vgrace_roundtrip(n, p),
            || workloads::pingpong(n, p, RT_REQUEST, RT_REPLY),
        )?;
        let r = row(&format!("4B REGION_READ vs ping-pong ({tag})"), v, pp, "/s");
        let (v2, rv) = interleave(
            rounds,
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
            rounds,
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
            ratios.push(("roundtrip_vs_pingpong", r));
            ratios.push(("roundtrip_vs_rustvmm", r2));
            ratios.push(("posted_write_vs_roundtrip", r3));
        }
    }
    let p = Placement::Pinned;
    let (b, s) = interleave(
        rounds,
        || workloads::vgrace_bulk(bulk, p),
        || {
            workloads::pingpong(bulk, p, RT_REQUEST, RT_REQUEST + (1 << 20))
                .map(|r| r * (1u64 << 20) as f64)
        },
    )?;
    ratios.push((
        "bulk_read_vs_socket",
        row(
            "1 MiB REGION_READ vs socket transfer (pinned)",
            b / 1e6,
            s / 1e6,
            "MB/s",
        ),
    ));
    place(Placement::Unpinned);
    let (m, a) = workloads::memcpy_pair(64 << 20, if o.quick { 10 } else { 40 })?;
    ratios.push((
        "mmap_vs_memcpy",
        row(
            "memcpy into region mmap vs anonymous (64 MiB)",
            m / 1e6,
            a / 1e6,
            "MB/s",
        ),
    ));

    // A control client at 1000 requests/s (status, stats, a BAR0 peek, a 4 KiB memory peek)
    // against the same served device with none: the device must not wait on the control plane.
    let control_iters = if o.quick { 60_000 } else { 200_000 };
    let mut answered = 0;
    let (loaded, quiet) = interleave(
        rounds,
        || {
            let (r, n) =
                vgrace_bench::control_load::roundtrip_with_control(&o.vgrace, control_iters, 1000)?;
            answered += n;
            Ok(r)
        },
        || {
            vgrace_bench::control_load::roundtrip_with_control(&o.vgrace, control_iters, 0)
                .map(|(r, _)| r)
        },
    )?;
    ratios.push((
        "roundtrip_under_control_load",
        row(
            "4B REGION_READ, 1000 control req/s vs none (pinned)",
            loaded,
            quiet,
            "/s",
        ),
    ));
    println!("(control requests answered meanwhile: {answered})");

    let per_device = if o.quick { 2_000 } else { 10_000 };
    let (eight, one) = interleave(
        rounds,
        || workloads::multi_device(8, per_device),
        || workloads::multi_device(1, per_device),
    )?;
    ratios.push((
        "multi_device_scaling",
        row(
            "4B REGION_READs: 8 devices at once vs 1 (aggregate)",
            eight,
            one,
            "/s",
        ),
    ));

    let mut t480 = Vec::new();
    let mut t1 = Vec::new();
    let (mut rss480, mut rss1) = (0, 0);
    for _ in 0..rounds {
        let (t, r) = workloads::startup(&o.vgrace, "480G")?;
        t480.push(t.as_secs_f64() * 1e3);
        rss480 = rss480.max(r);
        let (t, r) = workloads::startup(&o.vgrace, "1G")?;
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
    ratios.push(("startup_480g_vs_1g", m480 / m1));
    println!();
    for (name, v) in ratios {
        println!("ratio {name} {v:.3}");
    }
    println!("rss_480g_kib {rss480}");
    Ok(())
}
