//! Criterion benches of the hot paths: wire decode, config access, region access.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]
#![forbid(unsafe_code)]

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use vfu::wire::{self, cmd, Header, RegionAccess};
use vfu::wire::{Decode, Encode};
use vfu::Device;

fn decode(c: &mut Criterion) {
    let payload = RegionAccess {
        offset: 0x1498,
        region: 0,
        count: 4,
    }
    .to_bytes();
    let hdr = Header {
        msg_id: 1,
        cmd: cmd::REGION_READ,
        msg_size: 32,
        flags: 0,
        error: 0,
    };
    let hbytes = hdr.encode();
    c.bench_function("decode header + REGION_READ", |b| {
        b.iter(|| {
            let h = Header::decode(black_box(&hbytes)).unwrap();
            wire::decode_command(&h, black_box(&payload), 1 << 20).unwrap();
        })
    });
}

fn device(c: &mut Criterion) {
    let mut dev = vgrace_bench::workloads::bench_device().unwrap();
    let mut buf4 = [0u8; 4];
    c.bench_function("config read 4B", |b| {
        b.iter(|| dev.region_read(7, black_box(0x20), &mut buf4).unwrap())
    });
    c.bench_function("BAR0 register read 4B", |b| {
        b.iter(|| dev.region_read(0, black_box(0x1498), &mut buf4).unwrap())
    });
    c.bench_function("BAR4 memory read 4B", |b| {
        b.iter(|| dev.region_read(4, black_box(0x1000), &mut buf4).unwrap())
    });
    c.bench_function("BAR4 memory write 4B", |b| {
        b.iter(|| {
            dev.region_write(4, black_box(0x1000), &[1, 2, 3, 4])
                .unwrap()
        })
    });
    let mut big = vec![0u8; 1 << 20];
    c.bench_function("BAR4 memory read 1MiB", |b| {
        b.iter(|| dev.region_read(4, black_box(0), &mut big).unwrap())
    });
}

criterion_group!(benches, decode, device);
criterion_main!(benches);
