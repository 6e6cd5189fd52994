//! Random config-space, BAR0 and memory-region accesses against a small gh100: no panic, and
//! reads never return more than asked.
#![no_main]

use std::sync::Mutex;

use libfuzzer_sys::fuzz_target;
use vfu::Device;
use vgrace_device::{GpuConfig, NvGraceGpu, Profile};

static DEVICE: Mutex<Option<NvGraceGpu>> = Mutex::new(None);

fuzz_target!(|data: &[u8]| {
    let mut guard = match DEVICE.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    };
    let dev = guard.get_or_insert_with(|| {
        let cfg = GpuConfig::memfd(Profile::Gh100, (3 << 29) + 12345);
        NvGraceGpu::new(&cfg).unwrap_or_else(|e| panic!("device: {e}"))
    });
    for op in data.chunks(12) {
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
