//! Whole message sequences against a live server session over the in-memory transport: after a
//! valid VERSION, the fuzzer's bytes are the client's stream. The session must end (no hang)
//! without panicking, whatever they are.
#![no_main]

use std::sync::Mutex;

use libfuzzer_sys::fuzz_target;
use vfu::server::{Server, ServerConfig};
use vfu::transport::{MemTransport, Transport};
use vfu::wire::{cmd, Encode, Header, Version, HEADER_SIZE};
use vgrace_device::{GpuConfig, NvGraceGpu, Profile};

static SERVER: Mutex<Option<Server<NvGraceGpu>>> = Mutex::new(None);

fuzz_target!(|data: &[u8]| {
    let mut guard = match SERVER.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    };
    let server = guard.get_or_insert_with(|| {
        let dev = NvGraceGpu::new(&GpuConfig::memfd(Profile::Gb200, 3 << 20))
            .unwrap_or_else(|e| panic!("device: {e}"));
        Server::new(
            dev,
            ServerConfig {
                max_data_xfer_size: 64 << 10,
                ..ServerConfig::default()
            },
        )
    });
    let (client, server_end) = MemTransport::mem_pair();
    let version = Version {
        major: 0,
        minor: 2,
        json: String::new(),
    }
    .encode();
    let h = Header {
        msg_id: 0,
        cmd: cmd::VERSION,
        msg_size: (HEADER_SIZE + version.len()) as u32,
        flags: 0,
        error: 0,
    };
    if client.send(&h, &[&version], &[]).is_err() {
        return;
    }
    // The fuzz input as raw stream bytes, in two chunks to exercise reassembly.
    let (a, b) = data.split_at(data.len() / 2);
    let _ = client.write_raw(a);
    let _ = client.write_raw(b);
    client.close_write();
    // Replies pile up in memory: the session cannot block on a full socket.
    let _ = server.serve_connection(server_end);
});
