//! The malformed-input catalogue: each case sends one hostile input to the real server (the
//! nvgrace device over a real socket), checks the stated outcome (an errno, or the connection
//! closed), then proves a new client is served and the device state is intact.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;
use vfu::wire::Encode;

use test_support::irq_flags::{ACTION_TRIGGER, DATA_BOOL, DATA_EVENTFD, DATA_NONE};
use test_support::{with_size, IrqSet};
use vfu::client::Client;
use vfu::device::{INTX_IRQ_INDEX, MSIX_IRQ_INDEX};
use vfu::server::ServerConfig;
use vfu::wire::{cmd, RegionAccess, Version, FLAG_TYPE_REPLY};
use vfu::Errno;
use vgrace_device::{GpuConfig, Profile};

const MEM: u64 = (3 << 29) + 4096;
const SENTINEL_OFF: u64 = 0x4000;
const SENTINEL: &[u8] = b"state-intact";

enum Expect {
    Errno(Errno),
    /// The server closes the connection (the stream cannot be trusted any more).
    Closed,
    /// An error reply, whatever the errno (e.g. mmap's own errno for an unmappable fd).
    AnyError,
}

/// The server under attack, with a sentinel in memory and a value in the BAR4 register.
struct Srv(common::Running);

impl Srv {
    fn start() -> Self {
        let config = ServerConfig {
            max_data_xfer_size: 1 << 20,
            max_dma_maps: 4,
            ..ServerConfig::default()
        };
        let s = Self(common::serve(
            &GpuConfig::memfd(Profile::Gh100, MEM),
            config,
        ));
        let mut c = s.client();
        c.region_write(4, SENTINEL_OFF, SENTINEL).unwrap();
        c.region_write(7, 0x20, &0x4000_0000u32.to_le_bytes())
            .unwrap();
        s
    }

    fn client(&self) -> Client {
        self.0.client()
    }

    fn path(&self) -> &std::path::Path {
        &self.0.path
    }

    /// A new client sees the sentinel memory, and a freshly opened function: the BAR4
    /// register written at start reads 0 again and memory decode is on.
    fn assert_intact(&self) {
        let mut c = self.client();
        assert_eq!(
            c.region_read(4, SENTINEL_OFF, SENTINEL.len() as u32)
                .unwrap(),
            SENTINEL.to_vec()
        );
        let bar = c.region_read(7, 0x20, 4).unwrap();
        assert_eq!(u32::from_le_bytes(bar.try_into().unwrap()), 0xc);
        let command = c.region_read(7, 0x04, 2).unwrap();
        assert_eq!(u16::from_le_bytes(command.try_into().unwrap()) & 0x2, 0x2);
    }
}

/// msg_id of every hostile message.
const MSG_ID: u16 = 0x77;

/// A whole message with msg_id [`MSG_ID`].
fn msg(command: u16, flags: u32, payload: &[u8]) -> Vec<u8> {
    test_support::msg(MSG_ID, command, flags, payload)
}

fn u32s(v: &[u32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_ne_bytes()).collect()
}

fn access(region: u32, offset: u64, count: u32) -> Vec<u8> {
    RegionAccess {
        offset,
        region,
        count,
    }
    .to_bytes()
    .to_vec()
}

fn dma_map(flags: u32, address: u64, size: u64) -> Vec<u8> {
    vfu::wire::DmaMap {
        argsz: 32,
        flags,
        offset: 0,
        address,
        size,
    }
    .encode()
}

fn memfd() -> OwnedFd {
    let f = tempfile::tempfile().unwrap();
    f.set_len(1 << 20).unwrap();
    f.into()
}

fn eventfd() -> OwnedFd {
    nix::sys::eventfd::EventFd::new().unwrap().into()
}

fn pipe_fd() -> OwnedFd {
    nix::unistd::pipe().unwrap().0
}

/// One hostile input and its stated outcome.
struct Case {
    /// Negotiate VERSION before sending `bytes`.
    negotiate: bool,
    /// The hostile bytes, sent in one message.
    bytes: Vec<u8>,
    /// Fds sent with them.
    fds: Vec<OwnedFd>,
    /// Shut down the client's writing side after sending.
    close_after: bool,
    /// What the server must answer.
    expect: Expect,
}

impl Case {
    /// Runs the case: optional VERSION first, then the hostile bytes with fds, then the check.
    fn run(self) {
        let Case {
            negotiate,
            bytes,
            fds,
            close_after,
            expect,
        } = self;
        let srv = Srv::start();
        let stream = UnixStream::connect(srv.path()).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut c = if negotiate {
            Client::from_stream(stream).unwrap()
        } else {
            Client::unnegotiated(stream)
        };
        let borrowed: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
        c.send_raw(&bytes, &borrowed).unwrap();
        if close_after {
            c.stream().shutdown(std::net::Shutdown::Write).unwrap();
        }
        let reply = c.recv_raw();
        match expect {
            Expect::Errno(e) => {
                let r = reply.unwrap();
                assert!(r.header.is_error(), "expected {e}, got a success reply");
                assert_eq!(r.header.error, e as u32, "expected {e}");
            }
            Expect::AnyError => assert!(reply.unwrap().header.is_error()),
            Expect::Closed => assert!(
                reply.is_err(),
                "expected the connection to close, got {:?}",
                reply.map(|r| r.header)
            ),
        }
        drop(c);
        srv.assert_intact();
    }
}

macro_rules! hostile {
    ($name:ident, $case:expr) => {
        #[test]
        fn $name() {
            $case.run();
        }
    };
}

fn version(major: u16, json: &str) -> Vec<u8> {
    msg(
        cmd::VERSION,
        0,
        &Version {
            major,
            minor: 0,
            json: json.into(),
        }
        .encode(),
    )
}

// Framing.
hostile!(
    short_header_then_close,
    Case {
        negotiate: true,
        bytes: vec![1, 0, 4, 0, 16, 0, 0, 0],
        fds: vec![],
        close_after: true,
        expect: Expect::Closed,
    }
);
hostile!(
    msg_size_zero_closes,
    Case {
        negotiate: true,
        bytes: with_size(msg(cmd::DEVICE_RESET, 0, &[]), 0),
        fds: vec![],
        close_after: false,
        expect: Expect::Closed,
    }
);
hostile!(
    msg_size_below_header_closes,
    Case {
        negotiate: true,
        bytes: with_size(msg(cmd::DEVICE_RESET, 0, &[]), 15),
        fds: vec![],
        close_after: false,
        expect: Expect::Closed,
    }
);
hostile!(
    msg_size_4gib_then_close,
    Case {
        negotiate: true,
        bytes: with_size(msg(cmd::REGION_WRITE, 0, &access(4, 0, 4)), u32::MAX),
        fds: vec![],
        close_after: true,
        expect: Expect::Closed,
    }
);
hostile!(
    oversized_region_write_is_e2big,
    Case {
        negotiate: true,
        bytes: msg(
            cmd::REGION_WRITE,
            0,
            &[access(4, 0, 2 << 20), vec![0; 2 << 20]].concat()
        ),
        fds: vec![],
        close_after: false,
        expect: Expect::Errno(Errno::E2BIG),
    }
);
hostile!(
    msg_size_longer_than_sent_then_close,
    Case {
        negotiate: true,
        bytes: with_size(msg(cmd::DEVICE_RESET, 0, &[]), 64),
        fds: vec![],
        close_after: true,
        expect: Expect::Closed,
    }
);
hostile!(
    truncated_region_read_payload,
    Case {
        negotiate: true,
        bytes: msg(cmd::REGION_READ, 0, &access(4, 0, 4)[..8]),
        fds: vec![],
        close_after: false,
        expect: Expect::Errno(Errno::EINVAL),
    }
);
hostile!(
    region_read_with_trailing_bytes,
    Case {
        negotiate: true,
        bytes: msg(cmd::REGION_READ, 0, &[access(4, 0, 4), vec![0; 4]].concat()),
        fds: vec![],
        close_after: false,
        expect: Expect::Errno(Errno::EINVAL),
    }
);
hostile!(
    random_bytes_are_not_a_message,
    Case {
        negotiate: true,
        bytes: (0..4096u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect(),
        fds: vec![],
        close_after: true,
        expect: Expect::Closed,
    }
);
hostile!(
    too_many_fds_closes,
    Case {
        negotiate: true,
        bytes: msg(cmd::DEVICE_RESET, 0, &[]),
        fds: (0..40).map(|_| eventfd()).collect(),
        close_after: false,
        expect: Expect::Closed,
    }
);

// VERSION.
hostile!(
    command_before_version_is_einval,
    Case {
        negotiate: false,
        bytes: msg(cmd::DEVICE_RESET, 0, &[]),
        fds: vec![],
        close_after: false,
        expect: Expect::Errno(Errno::EINVAL),
    }
);
hostile!(
    version_unknown_major_is_enotsup,
    Case {
        negotiate: false,
        bytes: version(9, ""),
        fds: vec![],
        close_after: false,
        expect: Expect::Errno(Errno::ENOTSUP),
    }
);
hostile!(
    version_bad_json_is_einval,
    Case {
        negotiate: false,
        bytes: version(0, "{\"capabilities\":"),
        fds: vec![],
        close_after: false,
        expect: Expect::Errno(Errno::EINVAL),
    }
);
hostile!(
    version_json_wrong_types_is_einval,
    Case {
        negotiate: false,
        bytes: version(0, r#"{"capabilities":{"max_msg_fds":"many"}}"#),
        fds: vec![],
        close_after: false,
        expect: Expect::Errno(Errno::EINVAL),
    }
);
hostile!(
    version_xfer_size_over_u32_is_einval,
    Case {
        negotiate: false,
        bytes: version(0, r#"{"capabilities":{"max_data_xfer_size":99999999999}}"#),
        fds: vec![],
        close_after: false,
        expect: Expect::Errno(Errno::EINVAL),
    }
);
hostile!(
    version_without_nul_is_einval,
    Case {
        negotiate: false,
        bytes: msg(cmd::VERSION, 0, b"\0\0\0\0{}"),
        fds: vec![],
        close_after: false,
        expect: Expect::Errno(Errno::EINVAL),
    }
);
hostile!(
    version_truncated_is_einval,
    Case {
        negotiate: false,
        bytes: msg(cmd::VERSION, 0, &[0, 0]),
        fds: vec![],
        close_after: false,
        expect: Expect::Errno(Errno::EINVAL),
    }
);
/// VERSION JSON `{"x":[[[...]]]}` nested `depth` deep: valid JSON past any sane depth.
fn nested_json(depth: usize) -> String {
    format!("{{\"x\":{}{}}}", "[".repeat(depth), "]".repeat(depth))
}
hostile!(
    version_json_nested_10000_deep_is_einval,
    Case {
        negotiate: false,
        bytes: version(0, &nested_json(10_000)),
        fds: vec![],
        close_after: false,
        expect: Expect::Errno(Errno::EINVAL),
    }
);
hostile!(
    version_json_nested_400000_deep_is_einval,
    Case {
        negotiate: false,
        bytes: version(0, &nested_json(400_000)),
        fds: vec![],
        close_after: false,
        expect: Expect::Errno(Errno::EINVAL),
    }
);
hostile!(
    version_json_not_an_object_is_einval,
    Case {
        negotiate: false,
        bytes: version(0, "[]"),
        fds: vec![],
        close_after: false,
        expect: Expect::Errno(Errno::EINVAL),
    }
);
hostile!(
    second_version_is_einval,
    Case {
        negotiate: true,
        bytes: version(0, ""),
        fds: vec![],
        close_after: false,
        expect: Expect::Errno(Errno::EINVAL),
    }
);

// Message types and commands.
hostile!(
    reply_typed_message_is_einval,
    Case {
        negotiate: true,
        bytes: msg(cmd::DEVICE_RESET, FLAG_TYPE_REPLY, &[]),
        fds: vec![],
        close_after: false,
        expect: Expect::Errno(Errno::EINVAL),
    }
);
hostile!(
    unknown_command_is_enosys,
    Case {
        negotiate: true,
        bytes: msg(99, 0, &[1, 2, 3]),
        fds: vec![],
        close_after: false,
        expect: Expect::Errno(Errno::ENOSYS),
    }
);
hostile!(
    retired_command_14_is_enosys,
    Case {
        negotiate: true,
        bytes: msg(14, 0, &[0; 24]),
        fds: vec![],
        close_after: false,
        expect: Expect::Errno(Errno::ENOSYS),
    }
);
hostile!(
    server_to_client_dma_read_is_enosys,
    Case {
        negotiate: true,
        bytes: msg(cmd::DMA_READ, 0, &[0; 16]),
        fds: vec![],
        close_after: false,
        expect: Expect::Errno(Errno::ENOSYS),
    }
);

// Region accesses.
hostile!(
    region_read_count_over_max_is_e2big,
    Case {
        negotiate: true,
        bytes: msg(cmd::REGION_READ, 0, &access(4, 0, (1 << 20) + 1)),
        fds: vec![],
        close_after: false,
        expect: Expect::Errno(Errno::E2BIG),
    }
);
hostile!(
    region_read_offset_that_wraps_is_einval,
    Case {
        negotiate: true,
        bytes: msg(cmd::REGION_READ, 0, &access(4, u64::MAX - 1, 4)),
        fds: vec![],
        close_after: false,
        expect: Expect::Errno(Errno::EINVAL),
    }
);
hostile!(
    region_index_9_is_einval,
    Case {
        negotiate: true,
        bytes: msg(cmd::REGION_READ, 0, &access(9, 0, 4)),
        fds: vec![],
        close_after: false,
        expect: Expect::Errno(Errno::EINVAL),
    }
);
hostile!(
    region_index_max_is_einval,
    Case {
        negotiate: true,
        bytes: msg(cmd::REGION_READ, 0, &access(u32::MAX, 0, 4)),
        fds: vec![],
        close_after: false,
        expect: Expect::Errno(Errno::EINVAL),
    }
);
hostile!(
    bar4_offset_at_bar_end_is_einval,
    Case {
        negotiate: true,
        bytes: msg(cmd::REGION_READ, 0, &access(4, 512 << 20, 4)),
        fds: vec![],
        close_after: false,
        expect: Expect::Errno(Errno::EINVAL),
    }
);
hostile!(
    region_write_short_data_is_einval,
    Case {
        negotiate: true,
        bytes: msg(
            cmd::REGION_WRITE,
            0,
            &[access(4, 0, 8), vec![0; 4]].concat()
        ),
        fds: vec![],
        close_after: false,
        expect: Expect::Errno(Errno::EINVAL),
    }
);
hostile!(
    region_write_long_data_is_einval,
    Case {
        negotiate: true,
        bytes: msg(
            cmd::REGION_WRITE,
            0,
            &[access(4, 0, 4), vec![0; 8]].concat()
        ),
        fds: vec![],
        close_after: false,
        expect: Expect::Errno(Errno::EINVAL),
    }
);
hostile!(
    bar0_read_at_its_end_is_einval,
    Case {
        negotiate: true,
        bytes: msg(cmd::REGION_READ, 0, &access(0, 16 << 20, 3)),
        fds: vec![],
        close_after: false,
        expect: Expect::Errno(Errno::EINVAL),
    }
);
hostile!(
    config_read_past_4096_is_efault,
    Case {
        negotiate: true,
        bytes: msg(cmd::REGION_READ, 0, &access(7, 4096, 4)),
        fds: vec![],
        close_after: false,
        expect: Expect::Errno(Errno::EFAULT),
    }
);
hostile!(
    region_info_argsz_too_small_is_einval,
    Case {
        negotiate: true,
        bytes: msg(
            cmd::DEVICE_GET_REGION_INFO,
            0,
            &[u32s(&[8, 0, 4, 0]), vec![0; 16]].concat()
        ),
        fds: vec![],
        close_after: false,
        expect: Expect::Errno(Errno::EINVAL),
    }
);
hostile!(
    region_info_index_100_is_einval,
    Case {
        negotiate: true,
        bytes: msg(
            cmd::DEVICE_GET_REGION_INFO,
            0,
            &[u32s(&[32, 0, 100, 0]), vec![0; 16]].concat()
        ),
        fds: vec![],
        close_after: false,
        expect: Expect::Errno(Errno::EINVAL),
    }
);
hostile!(
    irq_info_index_9_is_einval,
    Case {
        negotiate: true,
        bytes: msg(cmd::DEVICE_GET_IRQ_INFO, 0, &u32s(&[16, 0, 9, 0])),
        fds: vec![],
        close_after: false,
        expect: Expect::Errno(Errno::EINVAL),
    }
);
hostile!(
    device_info_argsz_4_is_einval,
    Case {
        negotiate: true,
        bytes: msg(cmd::DEVICE_GET_INFO, 0, &u32s(&[4, 0, 0, 0])),
        fds: vec![],
        close_after: false,
        expect: Expect::Errno(Errno::EINVAL),
    }
);
hostile!(
    region_io_fds_is_enotty,
    Case {
        negotiate: true,
        bytes: msg(cmd::DEVICE_GET_REGION_IO_FDS, 0, &u32s(&[16, 0, 4, 0])),
        fds: vec![],
        close_after: false,
        expect: Expect::Errno(Errno::ENOTTY),
    }
);
hostile!(
    fds_on_region_read_are_einval,
    Case {
        negotiate: true,
        bytes: msg(cmd::REGION_READ, 0, &access(4, 0, 4)),
        fds: vec![memfd()],
        close_after: false,
        expect: Expect::Errno(Errno::EINVAL),
    }
);
hostile!(
    write_multi_without_negotiation_is_einval,
    Case {
        negotiate: true,
        bytes: msg(
            cmd::REGION_WRITE_MULTI,
            0,
            &[1u64.to_ne_bytes().to_vec(), access(4, 0, 4), vec![0; 8]].concat()
        ),
        fds: vec![],
        close_after: false,
        expect: Expect::Errno(Errno::EINVAL),
    }
);
hostile!(
    write_multi_huge_count_is_einval,
    Case {
        negotiate: true,
        bytes: msg(cmd::REGION_WRITE_MULTI, 0, &u64::MAX.to_ne_bytes()),
        fds: vec![],
        close_after: false,
        expect: Expect::Errno(Errno::EINVAL),
    }
);

// DMA.
hostile!(
    dma_map_wrapping_is_eoverflow,
    Case {
        negotiate: true,
        bytes: msg(cmd::DMA_MAP, 0, &dma_map(3, u64::MAX - 0xfff, 0x2000)),
        fds: vec![],
        close_after: false,
        expect: Expect::Errno(Errno::EOVERFLOW),
    }
);
hostile!(
    dma_map_size_zero_is_einval,
    Case {
        negotiate: true,
        bytes: msg(cmd::DMA_MAP, 0, &dma_map(3, 0x1000, 0)),
        fds: vec![],
        close_after: false,
        expect: Expect::Errno(Errno::EINVAL),
    }
);
hostile!(
    dma_map_bad_flags_is_einval,
    Case {
        negotiate: true,
        bytes: msg(cmd::DMA_MAP, 0, &dma_map(0x80, 0x1000, 0x1000)),
        fds: vec![],
        close_after: false,
        expect: Expect::Errno(Errno::EINVAL),
    }
);
hostile!(
    dma_map_two_fds_is_einval,
    Case {
        negotiate: true,
        bytes: msg(cmd::DMA_MAP, 0, &dma_map(3, 0x1000, 0x1000)),
        fds: vec![memfd(), memfd()],
        close_after: false,
        expect: Expect::Errno(Errno::EINVAL),
    }
);
hostile!(
    dma_map_pipe_fd_is_refused,
    Case {
        negotiate: true,
        bytes: msg(cmd::DMA_MAP, 0, &dma_map(3, 0x1000, 0x1000)),
        fds: vec![pipe_fd()],
        close_after: false,
        expect: Expect::AnyError,
    }
);
hostile!(
    dma_unmap_of_unmapped_region_is_enoent,
    Case {
        negotiate: true,
        bytes: msg(
            cmd::DMA_UNMAP,
            0,
            &vfu::wire::DmaUnmap {
                argsz: 24,
                flags: 0,
                address: 0x1000,
                size: 0x1000
            }
            .encode()
        ),
        fds: vec![],
        close_after: false,
        expect: Expect::Errno(Errno::ENOENT),
    }
);
hostile!(
    dma_map_truncated_is_einval,
    Case {
        negotiate: true,
        bytes: msg(cmd::DMA_MAP, 0, &dma_map(3, 0x1000, 0x1000)[..20]),
        fds: vec![],
        close_after: false,
        expect: Expect::Errno(Errno::EINVAL),
    }
);

// Interrupts.
hostile!(
    set_irqs_past_vectors_is_einval,
    Case {
        negotiate: true,
        bytes: IrqSet {
            flags: DATA_NONE | ACTION_TRIGGER,
            index: MSIX_IRQ_INDEX,
            start: 7,
            count: 2,
            data: &[]
        }
        .msg(MSG_ID),
        fds: vec![],
        close_after: false,
        expect: Expect::Errno(Errno::EINVAL),
    }
);
hostile!(
    set_irqs_start_wraps_is_einval,
    Case {
        negotiate: true,
        bytes: IrqSet {
            flags: DATA_NONE | ACTION_TRIGGER,
            index: MSIX_IRQ_INDEX,
            start: u32::MAX,
            count: 2,
            data: &[]
        }
        .msg(MSG_ID),
        fds: vec![],
        close_after: false,
        expect: Expect::Errno(Errno::EINVAL),
    }
);
hostile!(
    set_irqs_two_data_flags_is_einval,
    Case {
        negotiate: true,
        bytes: IrqSet {
            flags: DATA_NONE | DATA_BOOL | ACTION_TRIGGER,
            index: MSIX_IRQ_INDEX,
            start: 0,
            count: 1,
            data: &[1]
        }
        .msg(MSG_ID),
        fds: vec![],
        close_after: false,
        expect: Expect::Errno(Errno::EINVAL),
    }
);
hostile!(
    set_irqs_no_action_is_enotty,
    Case {
        negotiate: true,
        bytes: IrqSet {
            flags: DATA_NONE,
            index: MSIX_IRQ_INDEX,
            start: 0,
            count: 1,
            data: &[]
        }
        .msg(MSG_ID),
        fds: vec![],
        close_after: false,
        expect: Expect::Errno(Errno::ENOTTY),
    }
);
hostile!(
    set_irqs_index_9_is_einval,
    Case {
        negotiate: true,
        bytes: IrqSet {
            flags: DATA_NONE | ACTION_TRIGGER,
            index: 9,
            start: 0,
            count: 1,
            data: &[]
        }
        .msg(MSG_ID),
        fds: vec![],
        close_after: false,
        expect: Expect::Errno(Errno::EINVAL),
    }
);
hostile!(
    set_irqs_bool_short_data_is_einval,
    Case {
        negotiate: true,
        bytes: IrqSet {
            flags: DATA_BOOL | ACTION_TRIGGER,
            index: MSIX_IRQ_INDEX,
            start: 0,
            count: 4,
            data: &[1]
        }
        .msg(MSG_ID),
        fds: vec![],
        close_after: false,
        expect: Expect::Errno(Errno::EINVAL),
    }
);
hostile!(
    set_irqs_fd_count_mismatch_is_einval,
    Case {
        negotiate: true,
        bytes: IrqSet {
            flags: DATA_EVENTFD | ACTION_TRIGGER,
            index: MSIX_IRQ_INDEX,
            start: 0,
            count: 2,
            data: &[]
        }
        .msg(MSG_ID),
        fds: vec![eventfd()],
        close_after: false,
        expect: Expect::Errno(Errno::EINVAL),
    }
);
hostile!(
    set_irqs_pipe_instead_of_eventfd_is_einval,
    Case {
        negotiate: true,
        bytes: IrqSet {
            flags: DATA_EVENTFD | ACTION_TRIGGER,
            index: MSIX_IRQ_INDEX,
            start: 0,
            count: 1,
            data: &[]
        }
        .msg(MSG_ID),
        fds: vec![pipe_fd()],
        close_after: false,
        expect: Expect::Errno(Errno::EINVAL),
    }
);
hostile!(
    set_irqs_memfd_instead_of_eventfd_is_einval,
    Case {
        negotiate: true,
        bytes: IrqSet {
            flags: DATA_EVENTFD | ACTION_TRIGGER,
            index: INTX_IRQ_INDEX,
            start: 0,
            count: 1,
            data: &[]
        }
        .msg(MSG_ID),
        fds: vec![memfd()],
        close_after: false,
        expect: Expect::Errno(Errno::EINVAL),
    }
);

// Features and migration.
hostile!(
    feature_without_operation_is_einval,
    Case {
        negotiate: true,
        bytes: msg(cmd::DEVICE_FEATURE, 0, &u32s(&[8, 1])),
        fds: vec![],
        close_after: false,
        expect: Expect::Errno(Errno::EINVAL),
    }
);
hostile!(
    feature_migration_is_enotty,
    Case {
        negotiate: true,
        bytes: msg(cmd::DEVICE_FEATURE, 0, &u32s(&[8, 1 | (1 << 16)])),
        fds: vec![],
        close_after: false,
        expect: Expect::Errno(Errno::ENOTTY),
    }
);
hostile!(
    mig_data_read_is_enotty,
    Case {
        negotiate: true,
        bytes: msg(cmd::MIG_DATA_READ, 0, &u32s(&[8, 64])),
        fds: vec![],
        close_after: false,
        expect: Expect::Errno(Errno::ENOTTY),
    }
);
hostile!(
    mig_data_write_size_mismatch_is_einval,
    Case {
        negotiate: true,
        bytes: msg(
            cmd::MIG_DATA_WRITE,
            0,
            &[u32s(&[16, 64]), vec![0; 8]].concat()
        ),
        fds: vec![],
        close_after: false,
        expect: Expect::Errno(Errno::EINVAL),
    }
);

/// The kernel checks an offset against the region before any arithmetic: at or past the end is
/// EINVAL whatever the count, also when offset + count wraps past 2^64, on every region index
/// but config space and for reads and writes alike (before: EOVERFLOW from the decoder).
/// Config space answers EFAULT instead (`vfio_pci_config_rw_single`).
#[test]
fn offset_past_any_region_is_einval_whatever_the_count() {
    let srv = Srv::start();
    let mut c = srv.client();
    for region in (0..9u32).filter(|r| *r != 7) {
        // The VGA region does not exist (EINVAL for its info too): size 0.
        let size = c.region_info(region).map_or(0, |r| r.info.size);
        for offset in [size, size + 1, u64::MAX - 1, u64::MAX] {
            for count in [1u32, 4, 4096] {
                let read = c.region_read(region, offset, count).unwrap_err();
                assert_eq!(
                    read.remote_errno(),
                    Some(Errno::EINVAL),
                    "read region {region} offset {offset:#x} count {count}"
                );
                let write = c
                    .region_write(region, offset, &vec![0u8; count as usize])
                    .unwrap_err();
                assert_eq!(
                    write.remote_errno(),
                    Some(Errno::EINVAL),
                    "write region {region} offset {offset:#x} count {count}"
                );
            }
        }
    }
    drop(c);
    srv.assert_intact();
}

#[test]
fn dma_map_overlap_is_eexist() {
    let srv = Srv::start();
    let mut c = srv.client();
    c.dma_map(3, 0, 0x10000, 0x10000, Some(memfd().as_fd()))
        .unwrap();
    let err = c.dma_map(3, 0, 0x1f000, 0x2000, None).unwrap_err();
    assert_eq!(err.remote_errno(), Some(Errno::EEXIST));
    drop(c);
    srv.assert_intact();
}

#[test]
fn dma_maps_past_the_limit_are_enospc() {
    let srv = Srv::start();
    let mut c = srv.client();
    for i in 0..4u64 {
        c.dma_map(3, 0, i << 20, 0x1000, None).unwrap();
    }
    assert_eq!(
        c.dma_map(3, 0, 5 << 20, 0x1000, None)
            .unwrap_err()
            .remote_errno(),
        Some(Errno::ENOSPC)
    );
    drop(c);
    srv.assert_intact();
}

#[test]
fn byte_at_a_time_messages_still_work() {
    let srv = Srv::start();
    let mut c = srv.client();
    let bytes = msg(cmd::REGION_READ, 0, &access(4, SENTINEL_OFF, 4));
    let mut s = c.stream().try_clone().unwrap();
    for b in &bytes {
        s.write_all(&[*b]).unwrap();
    }
    let r = c.recv_raw().unwrap();
    assert_eq!(&r.payload[16..], &SENTINEL[..4]);
}
