//! Arbitrary bytes through the wire decoders: header, every command, capability chains, the
//! multi-write list and SET_IRQS with its data.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vfio_bindings::bindings::vfio::vfio_irq_set;
use vfu::wire::{self, Decode, Header, SparseAreas, WriteMulti, HEADER_SIZE};

fuzz_target!(|data: &[u8]| {
    if data.len() < HEADER_SIZE {
        let _ = Header::decode(data);
        return;
    }
    let Ok(header) = Header::decode(&data[..HEADER_SIZE]) else {
        return;
    };
    let payload = &data[HEADER_SIZE..];
    let _ = wire::decode_command(&header, payload, 1 << 20);
    let _ = SparseAreas::decode(payload);
    let _ = WriteMulti::decode(payload);
    let _ = <(vfio_irq_set, &[u8])>::decode(payload);
    if let Ok(v) = wire::Version::decode(payload) {
        let _ = v.caps();
    }
});
