//! A whole message stream against a live server session over a socketpair: after a valid
//! VERSION, the fuzzer's bytes are sent as-is. The session must never panic or hang.
#![no_main]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::Mutex;

use libfuzzer_sys::fuzz_target;
use vfu::server::{Server, ServerConfig};
use vfu::transport::UnixTransport;
use vfu::wire::{cmd, Header, Version, HEADER_SIZE};
use vgrace_device::{GpuConfig, NvGraceGpu, Profile};

static SERVER: Mutex<Option<Server<NvGraceGpu>>> = Mutex::new(None);

fuzz_target!(|data: &[u8]| {
    let mut guard = match SERVER.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    };
    let server = guard.get_or_insert_with(|| {
        let cfg = GpuConfig::memfd(Profile::Gb200, 3 << 20);
        let dev = NvGraceGpu::new(&cfg).unwrap_or_else(|e| panic!("device: {e}"));
        Server::new(dev, ServerConfig { max_data_xfer_size: 64 << 10, ..ServerConfig::default() })
    });
    let Ok((mut client, server_end)) = UnixStream::pair() else { return };
    let version = Version { major: 0, minor: 2, json: String::new() }.encode();
    let h = Header { msg_id: 0, cmd: cmd::VERSION, msg_size: (HEADER_SIZE + version.len()) as u32, flags: 0, error: 0 };
    let mut input = h.encode().to_vec();
    input.extend_from_slice(&version);
    input.extend_from_slice(data);
    // Replies are drained on another thread so the session never blocks on a full socket.
    let Ok(mut reader) = client.try_clone() else { return };
    let drain = std::thread::spawn(move || {
        let mut sink = [0u8; 65536];
        while matches!(reader.read(&mut sink), Ok(n) if n > 0) {}
    });
    let writer = std::thread::spawn(move || {
        let _ = client.write_all(&input);
        let _ = client.shutdown(std::net::Shutdown::Write);
    });
    let _ = server.serve_connection(UnixTransport::new(server_end));
    let _ = writer.join();
    let _ = drain.join();
});
