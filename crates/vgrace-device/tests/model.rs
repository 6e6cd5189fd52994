//! Property test: random region and BAR-register accesses against a small reference model of
//! the nvgrace rules. Any divergence fails with the shrunk sequence.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::HashMap;

use proptest::prelude::*;
use vfu::{Device, Errno};
use vgrace_device::{GpuConfig, NvGraceGpu, Profile};

/// 1.5 GiB + 3 pages + 123 bytes: usemem 512 MiB (BAR4 512 MiB, no tail),
/// resmem 1 GiB + 12411 bytes (BAR2 2 GiB, a tail).
const MEM: u64 = (3 << 29) + 4096 * 3 + 123;

#[derive(Debug, Clone)]
enum Op {
    Read {
        region: u32,
        offset: u64,
        len: usize,
    },
    Write {
        region: u32,
        offset: u64,
        data: Vec<u8>,
    },
    CfgRead {
        offset: u64,
        len: usize,
    },
    CfgWrite {
        offset: u64,
        data: Vec<u8>,
    },
    Reset,
}

struct Model {
    mem: HashMap<(u32, u64), u8>,
    bars: HashMap<u32, u64>,
    sizes: HashMap<u32, (u64, u64)>,
}

impl Model {
    fn read(&self, region: u32, offset: u64, len: usize) -> Result<Vec<u8>, Errno> {
        let (memlen, size) = self.sizes[&region];
        if offset >= size {
            return Err(Errno::EINVAL);
        }
        let n = (size - offset).min(len as u64);
        Ok((offset..offset + n)
            .map(|o| {
                if o < memlen {
                    *self.mem.get(&(region, o)).unwrap_or(&0)
                } else {
                    0xff
                }
            })
            .collect())
    }

    fn write(&mut self, region: u32, offset: u64, data: &[u8]) -> Result<usize, Errno> {
        let (memlen, size) = self.sizes[&region];
        if offset >= size {
            return Err(Errno::EINVAL);
        }
        let n = (size - offset).min(data.len() as u64);
        for (i, b) in data.iter().take(n as usize).enumerate() {
            let o = offset + i as u64;
            if o < memlen {
                self.mem.insert((region, o), *b);
            }
        }
        Ok(n as usize)
    }

    fn bar_byte(&self, o: u64) -> u8 {
        let region = if o < 0x20 { 2 } else { 4 };
        let base = if region == 2 { 0x18 } else { 0x20 };
        let size = self.sizes[&region].1;
        let v = (self.bars.get(&region).copied().unwrap_or(0) & !(size - 1)) | 0xc;
        v.to_le_bytes()[(o - base) as usize]
    }

    fn cfg_write(&mut self, offset: u64, data: &[u8]) {
        for (i, b) in data.iter().enumerate() {
            let o = offset + i as u64;
            let region = if o < 0x20 { 2 } else { 4 };
            let base = if region == 2 { 0x18 } else { 0x20 };
            let mut bytes = self.bars.get(&region).copied().unwrap_or(0).to_le_bytes();
            bytes[(o - base) as usize] = *b;
            self.bars.insert(region, u64::from_le_bytes(bytes));
        }
    }
}

fn offsets() -> impl Strategy<Value = (u32, u64)> {
    let resmem = MEM - (512 << 20);
    prop_oneof![
        (Just(2u32), 0u64..64),
        (Just(2u32), resmem - 40..resmem + 40),
        (Just(2u32), (2u64 << 30) - 40..(2u64 << 30) + 8),
        (Just(4u32), 0u64..64),
        (Just(4u32), (512u64 << 20) - 40..(512u64 << 20) + 8),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (offsets(), 1usize..64).prop_map(|((region, offset), len)| Op::Read { region, offset, len }),
        4 => (offsets(), proptest::collection::vec(any::<u8>(), 1..64)).prop_map(|((region, offset), data)| Op::Write { region, offset, data }),
        2 => (0x18u64..0x28).prop_flat_map(|o| (Just(o), 1..=(0x28 - o) as usize)).prop_map(|(offset, len)| Op::CfgRead { offset, len }),
        2 => (0x18u64..0x28).prop_flat_map(|o| (Just(o), proptest::collection::vec(any::<u8>(), 1..=(0x28 - o) as usize))).prop_map(|(offset, data)| Op::CfgWrite { offset, data }),
        1 => Just(Op::Reset),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]
    #[test]
    fn device_matches_reference_model(ops in proptest::collection::vec(op(), 1..40)) {
        let cfg = GpuConfig::memfd(Profile::Gh100, MEM);
        let mut dev = NvGraceGpu::new(&cfg).unwrap();
        // Memory decode on, as a guest sets it (6.19+ refuses memory after a reset without it).
        dev.region_write(7, 4, &[0x06, 0x00]).unwrap();
        let resmem = MEM - (512 << 20);
        let mut model = Model {
            mem: HashMap::new(),
            bars: HashMap::new(),
            sizes: HashMap::from([(2, (resmem, 2 << 30)), (4, (512 << 20, 512 << 20))]),
        };
        for op in ops {
            match op {
                Op::Read { region, offset, len } => {
                    let mut buf = vec![0u8; len];
                    let got = dev.region_read(region, offset, &mut buf).map(|n| buf[..n].to_vec());
                    prop_assert_eq!(got, model.read(region, offset, len));
                }
                Op::Write { region, offset, data } => {
                    prop_assert_eq!(dev.region_write(region, offset, &data), model.write(region, offset, &data));
                }
                Op::CfgRead { offset, len } => {
                    let mut buf = vec![0u8; len];
                    dev.region_read(7, offset, &mut buf).unwrap();
                    // One emulated BAR per read (`nvgrace_gpu_read_config_emu`): a read that
                    // spans both pairs shows the BAR4 pair as the core's, 0.
                    let end = offset + len as u64;
                    let both = offset < 0x20 && end > 0x20;
                    let want: Vec<u8> = (offset..end)
                        .map(|o| if both && o >= 0x20 { 0 } else { model.bar_byte(o) })
                        .collect();
                    prop_assert_eq!(buf, want);
                }
                Op::CfgWrite { offset, data } => {
                    dev.region_write(7, offset, &data).unwrap();
                    model.cfg_write(offset, &data);
                }
                Op::Reset => {
                    dev.reset().unwrap();
                    model.bars.clear();
                }
            }
        }
    }
}
