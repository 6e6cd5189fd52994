//! Arbitrary bytes through the wire decoder: header, every command, capability chains.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vfu::wire::{self, Header, HEADER_SIZE};

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
    if let Ok(info) = wire::decode_region_info(payload) {
        let _ = wire::decode_sparse_areas(payload, &info);
    }
    if let Ok(v) = wire::Version::decode(payload) {
        let _ = v.caps();
    }
});
