//! Benchmark workloads for vgrace. Every figure is a ratio against a baseline measured in the
//! same run, because the machines are shared and noisy; `scripts/bench.sh` drives the binary.
#![forbid(unsafe_code)]

pub mod control_load;
pub mod workloads;
