//! Random config-space, BAR0 and memory-region accesses, with resets, against small devices of
//! every shape the upstream versions give (gh100 under 7.2 with its reset rule, gb200 under 6.9
//! split the Hopper way, gb200 under 7.2 with its real BAR1, a link-down core device, a
//! Blackwell-Next with a CXL DVSEC and a poisoned page): no
//! panic, and reads never return more than asked.
#![no_main]

use std::sync::Mutex;

use libfuzzer_sys::fuzz_target;
use std::time::Duration;
use vfu::Device;

use vgrace_device::{Cxl, GpuConfig, LinuxVersion, NvGraceGpu, Poison, Profile};

static DEVICES: Mutex<Vec<NvGraceGpu>> = Mutex::new(Vec::new());

fn devices() -> Vec<NvGraceGpu> {
    let small = |profile, size, linux| GpuConfig {
        linux,
        bar1_size: 1 << 20,
        ..GpuConfig::memfd(profile, size)
    };
    [
        small(Profile::Gh100, (3 << 29) + 12345, LinuxVersion::V7_2),
        small(Profile::Gb200, (3 << 29) + 12345, LinuxVersion::V6_9),
        small(Profile::Gb200, (3 << 29) + 12345, LinuxVersion::V7_2),
        small(Profile::Gb200, 0, LinuxVersion::V6_19),
        GpuConfig {
            cxl: Some(Cxl {
                valid_delay: Duration::ZERO,
                active_delay: Duration::ZERO,
                timeout_code: 0,
            }),
            poison: vec![Poison {
                region: 4,
                offset: 0x1000,
            }],
            ..small(Profile::Gb200, (3 << 29) + 12345, LinuxVersion::V7_2)
        },
    ]
    .iter()
    .map(|cfg| NvGraceGpu::new(cfg).unwrap_or_else(|e| panic!("device: {e}")))
    .collect()
}

fuzz_target!(|data: &[u8]| {
    let mut guard = match DEVICES.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    };
    if guard.is_empty() {
        *guard = devices();
    }
    let Some(first) = data.first() else {
        return;
    };
    let count = guard.len();
    let Some(dev) = guard.get_mut(usize::from(*first) % count) else {
        return;
    };
    for op in data[1..].chunks(12) {
        if op.len() < 12 {
            break;
        }
        let region = u32::from(op[0] % 10);
        let write = op[1] & 1 == 1;
        let len = usize::from(op[2] % 16);
        let mut off_bytes = [0u8; 8];
        off_bytes.copy_from_slice(&op[4..12]);
        // Bias offsets towards the interesting edges: small, near BAR ends, anywhere.
        let raw = u64::from_le_bytes(off_bytes);
        let offset = match op[3] % 3 {
            0 => raw % 0x1100,
            1 => (1u64 << 30).wrapping_sub(raw % 64),
            _ => raw,
        };
        let mut buf = vec![0xa5u8; len];
        if write {
            if let Ok(n) = dev.region_write(region, offset, &buf) {
                assert!(n <= len);
            }
        } else if let Ok(n) = dev.region_read(region, offset, &mut buf) {
            assert!(n <= len);
        }
        if op[1] == 0xff {
            let _ = dev.reset();
        }
    }
});
