//! Figures of a process from `/proc`: open fds, mappings, memory, CPU time.

/// The process a figure is read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Process {
    /// The calling process (`/proc/self`).
    This,
    /// Another process, e.g. a [`crate::ServeChild`].
    Pid(u32),
}

impl Process {
    fn file(self, name: &str) -> String {
        match self {
            Process::This => format!("/proc/self/{name}"),
            Process::Pid(pid) => format!("/proc/{pid}/{name}"),
        }
    }
}

/// Number of open fds.
pub fn fd_count(p: Process) -> usize {
    std::fs::read_dir(p.file("fd")).unwrap().count()
}

/// Number of mappings (lines of `maps`).
pub fn map_count(p: Process) -> usize {
    std::fs::read_to_string(p.file("maps"))
        .unwrap()
        .lines()
        .count()
}

/// A `kB` field of `status` (`VmRSS`, `VmHWM`, ...); `None` if the field is missing.
pub fn status_kib(p: Process, field: &str) -> std::io::Result<Option<u64>> {
    let status = std::fs::read_to_string(p.file("status"))?;
    Ok(status
        .lines()
        .find(|l| l.split(':').next() == Some(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok()))
}

/// Resident set size of this process in KiB.
pub fn rss_kib() -> u64 {
    status_kib(Process::This, "VmRSS").unwrap().unwrap()
}

/// User + system CPU time of the whole process, in clock ticks.
pub fn cpu_ticks(p: Process) -> u64 {
    let stat = std::fs::read_to_string(p.file("stat")).unwrap();
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}
