//! Protocol tests: the real server on a thread, a real unix socket, our client and raw bytes.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::os::fd::AsFd;
use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::Ordering;
use vfu::wire::{Decode, Encode};

use common::{memfd, Harness, RAM, RAM_MMAP, RAM_SIZE, REGS};
use nix::sys::eventfd::{EfdFlags, EventFd};
use test_support::msg::msg;
use vfio_bindings::bindings::vfio::{
    VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_IRQ_SET_DATA_EVENTFD, VFIO_IRQ_SET_DATA_NONE,
};
use vfu::client::Client;
use vfu::server::{bind_socket, ServerConfig};
use vfu::wire::{cmd, Header, RegionAccess, Version, FLAG_NO_REPLY, FLAG_TYPE_REPLY, HEADER_SIZE};
use vfu::{Errno, Error};

fn read_req(region: u32, offset: u64, count: u32) -> Vec<u8> {
    RegionAccess {
        offset,
        region,
        count,
    }
    .to_bytes()
    .to_vec()
}

fn write_req(region: u32, offset: u64, data: &[u8]) -> Vec<u8> {
    let mut v = RegionAccess {
        offset,
        region,
        count: data.len() as u32,
    }
    .to_bytes()
    .to_vec();
    v.extend_from_slice(data);
    v
}

fn errno_of(e: Error) -> Errno {
    e.remote_errno()
        .unwrap_or_else(|| panic!("expected an error reply, got {e:?}"))
}

fn version_payload(major: u16, minor: u16, json: &str) -> Vec<u8> {
    Version {
        major,
        minor,
        json: json.to_string(),
    }
    .encode()
}

#[test]
fn version_reply_keeps_major_lowers_minor_and_answers_caps() {
    let h = Harness::start();
    let mut c = h.raw();
    let v = c.negotiate(&Version { major: 0, minor: 9, json: r#"{"capabilities":{"max_data_xfer_size":4096,"migration":{"pgsize":4096,"max_bitmap_size":8}}}"#.into() }).unwrap();
    assert_eq!(v.major, 0);
    assert!(v.minor <= 9);
    assert_eq!(v.caps().unwrap().max_data_xfer_size, 4096);
}

#[test]
fn version_with_unknown_major_is_enotsup() {
    let h = Harness::start();
    let mut c = h.raw();
    let err = c
        .negotiate(&Version {
            major: 7,
            minor: 0,
            json: String::new(),
        })
        .unwrap_err();
    assert_eq!(errno_of(err), Errno::ENOTSUP);
}

#[test]
fn version_with_bad_json_is_einval() {
    let h = Harness::start();
    let mut c = h.raw();
    let err = c
        .negotiate(&Version {
            major: 0,
            minor: 1,
            json: "{not json".into(),
        })
        .unwrap_err();
    assert_eq!(errno_of(err), Errno::EINVAL);
}

#[test]
fn command_before_version_is_einval_and_version_still_works() {
    let h = Harness::start();
    let mut c = h.raw();
    let err = c.request(cmd::DEVICE_RESET, &[], &[]).unwrap_err();
    c.negotiate(&Version {
        major: 0,
        minor: 1,
        json: String::new(),
    })
    .unwrap();
    assert_eq!(errno_of(err), Errno::EINVAL);
    assert_eq!(c.device_info().unwrap().num_regions, 2);
}

#[test]
fn second_version_is_einval() {
    let h = Harness::start();
    let mut c = h.client();
    let err = c
        .request(cmd::VERSION, &[&version_payload(0, 1, "")], &[])
        .unwrap_err();
    assert_eq!(errno_of(err), Errno::EINVAL);
}

#[test]
fn device_info_reports_the_device() {
    let h = Harness::start();
    let info = h.client().device_info().unwrap();
    assert_eq!(
        (info.argsz, info.flags, info.num_regions, info.num_irqs),
        (16, 3, 2, 5)
    );
}

#[test]
fn region_info_carries_sparse_area_and_one_fd() {
    let h = Harness::start();
    let r = h.client().region_info(RAM).unwrap();
    assert_eq!(r.info.size, RAM_SIZE);
    assert_eq!(r.sparse_areas.len(), 1);
    assert_eq!(r.sparse_areas[0].size, RAM_MMAP);
    assert!(r.fd.is_some());
    assert_ne!(r.info.flags & 8, 0, "CAPS flag");
}

#[test]
fn region_info_with_small_argsz_asks_for_more_without_caps() {
    let h = Harness::start();
    let mut c = h.client();
    let req = vfio_bindings::bindings::vfio::vfio_region_info {
        argsz: 32,
        index: RAM,
        ..Default::default()
    };
    let r = c
        .request(cmd::DEVICE_GET_REGION_INFO, &[&req.encode()], &[])
        .unwrap();
    let info = vfio_bindings::bindings::vfio::vfio_region_info::decode(&r.payload).unwrap();
    assert_eq!(info.argsz, 32 + 32);
    assert_eq!(info.flags & 8, 0);
    assert_eq!(info.cap_offset, 0);
}

#[test]
fn region_without_mmap_has_no_fd() {
    let h = Harness::start();
    let r = h.client().region_info(REGS).unwrap();
    assert!(r.fd.is_none());
    assert!(r.sparse_areas.is_empty());
}

#[test]
fn region_index_out_of_range_is_einval() {
    let h = Harness::start();
    let mut c = h.client();
    assert_eq!(errno_of(c.region_info(9).unwrap_err()), Errno::EINVAL);
    assert_eq!(errno_of(c.region_read(9, 0, 4).unwrap_err()), Errno::EINVAL);
}

#[test]
fn region_write_then_read_round_trips() {
    let h = Harness::start();
    let mut c = h.client();
    assert_eq!(c.region_write(REGS, 16, &[1, 2, 3, 4]).unwrap(), 4);
    assert_eq!(c.region_read(REGS, 16, 4).unwrap(), vec![1, 2, 3, 4]);
}

#[test]
fn region_fd_mmap_is_coherent_with_region_access() {
    use vm_memory::{FileOffset, MmapRegion, VolatileMemory};
    let h = Harness::start();
    let mut c = h.client();
    let r = c.region_info(RAM).unwrap();
    let file = std::fs::File::from(r.fd.unwrap());
    let map = MmapRegion::<()>::build(
        Some(FileOffset::new(file, 0)),
        RAM_MMAP as usize,
        libc::PROT_READ | libc::PROT_WRITE,
        libc::MAP_SHARED,
    )
    .unwrap();
    c.region_write(RAM, 100, &[0xab; 8]).unwrap();
    let mut seen = [0u8; 8];
    map.get_slice(100, 8).unwrap().copy_to(&mut seen);
    map.get_slice(200, 1).unwrap().copy_from(&[0x5au8]);
    let back = c.region_read(RAM, 200, 1).unwrap();
    assert_eq!(seen, [0xab; 8]);
    assert_eq!(back, vec![0x5a]);
}

#[test]
fn region_read_count_over_max_xfer_is_e2big() {
    let h = Harness::start();
    let mut c = h.raw();
    c.negotiate(&Version {
        major: 0,
        minor: 1,
        json: r#"{"capabilities":{"max_data_xfer_size":1024}}"#.into(),
    })
    .unwrap();
    let err = c
        .request(cmd::REGION_READ, &[&read_req(RAM, 0, 2048)], &[])
        .unwrap_err();
    assert_eq!(errno_of(err), Errno::E2BIG);
}

#[test]
fn region_read_offset_that_wraps_is_einval() {
    let h = Harness::start();
    let mut c = h.client();
    let err = c
        .request(cmd::REGION_READ, &[&read_req(RAM, u64::MAX - 2, 8)], &[])
        .unwrap_err();
    assert_eq!(errno_of(err), Errno::EINVAL);
}

#[test]
fn region_write_with_short_data_is_einval() {
    let h = Harness::start();
    let mut c = h.client();
    let mut p = read_req(REGS, 0, 8);
    p.extend_from_slice(&[1, 2]);
    assert_eq!(
        errno_of(c.request(cmd::REGION_WRITE, &[&p], &[]).unwrap_err()),
        Errno::EINVAL
    );
}

#[test]
fn device_errors_reach_the_client_with_their_errno() {
    let h = Harness::start();
    let mut c = h.client();
    assert_eq!(
        errno_of(c.region_read(RAM, RAM_SIZE, 4).unwrap_err()),
        Errno::EINVAL
    );
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let h = Harness::start();
    let mut c = h.client();
    c.region_write(REGS, 0, &(0u8..64).collect::<Vec<_>>())
        .unwrap();
    let mut batch = Vec::new();
    for i in 0..64u16 {
        batch.extend(msg(
            1000 + i,
            cmd::REGION_READ,
            0,
            &read_req(REGS, u64::from(i), 1),
        ));
    }
    c.send_raw(&batch, &[]).unwrap();
    for i in 0..64u16 {
        let r = c.recv_raw().unwrap();
        assert_eq!(r.header.msg_id, 1000 + i);
        assert_eq!(r.payload[16], i as u8);
    }
}

#[test]
fn no_reply_write_is_applied_without_a_reply() {
    let h = Harness::start();
    let mut c = h.client();
    c.region_write_posted(REGS, 8, &[9, 9, 9, 9]).unwrap();
    // The next reply must be the read's: no reply was sent for the posted write.
    assert_eq!(c.region_read(REGS, 8, 4).unwrap(), vec![9, 9, 9, 9]);
}

#[test]
fn no_reply_command_that_fails_sends_nothing() {
    let h = Harness::start();
    let mut c = h.client();
    c.send_raw(
        &msg(77, cmd::REGION_WRITE, FLAG_NO_REPLY, &write_req(9, 0, &[1])),
        &[],
    )
    .unwrap();
    assert_eq!(c.device_info().unwrap().num_regions, 2);
}

#[test]
fn unknown_command_is_answered_after_its_payload_is_drained() {
    let h = Harness::start();
    let mut c = h.client();
    let mut bytes = msg(5, 14, 0, &[0xee; 100]);
    bytes.extend(msg(
        6,
        cmd::DEVICE_GET_INFO,
        0,
        &[16, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    ));
    c.send_raw(&bytes, &[]).unwrap();
    let first = c.recv_raw().unwrap();
    let second = c.recv_raw().unwrap();
    assert!(first.header.is_error());
    assert_eq!(first.header.error, Errno::ENOSYS as u32);
    assert_eq!(second.header.msg_id, 6);
    assert!(!second.header.is_error());
}

#[test]
fn reply_typed_message_from_client_is_einval() {
    let h = Harness::start();
    let mut c = h.client();
    c.send_raw(&msg(8, cmd::DEVICE_RESET, FLAG_TYPE_REPLY, &[]), &[])
        .unwrap();
    let r = c.recv_raw().unwrap();
    assert_eq!(r.header.error, Errno::EINVAL as u32);
}

#[test]
fn oversized_message_is_e2big_and_stream_stays_in_sync() {
    let h = Harness::start();
    let mut c = h.client();
    let big = vec![0u8; 2 << 20];
    let mut bytes = msg(3, cmd::REGION_WRITE, 0, &write_req(RAM, 0, &big));
    bytes.extend(msg(4, cmd::DEVICE_RESET, 0, &[]));
    let sender = std::thread::spawn({
        let stream = c.stream().try_clone().unwrap();
        move || {
            use std::io::Write;
            (&stream).write_all(&bytes).unwrap();
        }
    });
    let first = c.recv_raw().unwrap();
    let second = c.recv_raw().unwrap();
    sender.join().unwrap();
    assert_eq!(
        (first.header.msg_id, first.header.error),
        (3, Errno::E2BIG as u32)
    );
    assert_eq!((second.header.msg_id, second.header.is_error()), (4, false));
}

#[test]
fn msg_size_below_header_closes_the_connection_and_next_client_is_served() {
    let h = Harness::start();
    let mut c = h.client();
    let mut bad = msg(1, cmd::DEVICE_RESET, 0, &[]);
    bad[4..8].copy_from_slice(&4u32.to_ne_bytes());
    c.send_raw(&bad, &[]).unwrap();
    assert!(c.recv_raw().is_err());
    assert_eq!(h.client().device_info().unwrap().num_irqs, 5);
}

#[test]
fn dma_map_with_memfd_then_exact_unmap() {
    let h = Harness::start();
    let mut c = h.client();
    let fd = memfd(1 << 20);
    c.dma_map(3, 0, 0x1_0000_0000, 1 << 20, Some(fd.as_fd()))
        .unwrap();
    c.dma_unmap(0x1_0000_0000, 1 << 20).unwrap();
    assert_eq!(h.counters.dma_maps.load(Ordering::SeqCst), 1);
}

#[test]
fn dma_map_overlap_is_eexist() {
    let h = Harness::start();
    let mut c = h.client();
    c.dma_map(3, 0, 0x10000, 0x10000, None).unwrap();
    assert_eq!(
        errno_of(c.dma_map(3, 0, 0x18000, 0x10000, None).unwrap_err()),
        Errno::EEXIST
    );
}

#[test]
fn dma_unmap_that_is_not_exact_is_enoent() {
    let h = Harness::start();
    let mut c = h.client();
    c.dma_map(3, 0, 0x10000, 0x10000, None).unwrap();
    assert_eq!(
        errno_of(c.dma_unmap(0x10000, 0x8000).unwrap_err()),
        Errno::ENOENT
    );
}

#[test]
fn dma_map_that_wraps_is_eoverflow() {
    let h = Harness::start();
    let mut c = h.client();
    assert_eq!(
        errno_of(c.dma_map(3, 0, u64::MAX - 0xfff, 0x2000, None).unwrap_err()),
        Errno::EOVERFLOW
    );
}

#[test]
fn dma_map_with_a_pipe_fd_fails() {
    let h = Harness::start();
    let mut c = h.client();
    let (r, _w) = nix::unistd::pipe().unwrap();
    assert!(c.dma_map(3, 0, 0x10000, 0x1000, Some(r.as_fd())).is_err());
    assert_eq!(c.device_info().unwrap().num_regions, 2);
}

#[test]
fn dma_maps_beyond_the_limit_are_enospc() {
    let h = Harness::with_config(ServerConfig {
        max_dma_maps: 2,
        ..ServerConfig::default()
    });
    let mut c = h.client();
    c.dma_map(3, 0, 0x10000, 0x1000, None).unwrap();
    c.dma_map(3, 0, 0x20000, 0x1000, None).unwrap();
    assert_eq!(
        errno_of(c.dma_map(3, 0, 0x30000, 0x1000, None).unwrap_err()),
        Errno::ENOSPC
    );
}

#[test]
fn set_irqs_eventfd_is_signalled_when_the_device_triggers() {
    let h = Harness::start();
    let mut c = h.client();
    let efd = EventFd::from_flags(EfdFlags::EFD_NONBLOCK).unwrap();
    c.set_irqs(
        VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER,
        2,
        1,
        1,
        &[],
        &[efd.as_fd()],
    )
    .unwrap();
    assert!(h.irqs.lock().unwrap().trigger(2, 1).unwrap());
    assert_eq!(efd.read().unwrap(), 1);
}

#[test]
fn set_irqs_past_the_vector_count_is_einval() {
    let h = Harness::start();
    let mut c = h.client();
    let err = c
        .set_irqs(
            VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER,
            2,
            3,
            2,
            &[],
            &[],
        )
        .unwrap_err();
    assert_eq!(errno_of(err), Errno::EINVAL);
}

#[test]
fn set_irqs_with_wrapping_start_is_einval() {
    let h = Harness::start();
    let mut c = h.client();
    let err = c
        .set_irqs(
            VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER,
            2,
            u32::MAX,
            2,
            &[],
            &[],
        )
        .unwrap_err();
    assert_eq!(errno_of(err), Errno::EINVAL);
}

#[test]
fn set_irqs_with_fewer_fds_than_count_is_einval() {
    let h = Harness::start();
    let mut c = h.client();
    let efd = EventFd::new().unwrap();
    let err = c
        .set_irqs(
            VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER,
            2,
            0,
            2,
            &[],
            &[efd.as_fd()],
        )
        .unwrap_err();
    assert_eq!(errno_of(err), Errno::EINVAL);
}

#[test]
fn set_irqs_with_a_pipe_instead_of_an_eventfd_is_einval() {
    let h = Harness::start();
    let mut c = h.client();
    let (r, _w) = nix::unistd::pipe().unwrap();
    let err = c
        .set_irqs(
            VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER,
            2,
            0,
            1,
            &[],
            &[r.as_fd()],
        )
        .unwrap_err();
    assert_eq!(errno_of(err), Errno::EINVAL);
}

#[test]
fn set_irqs_index_out_of_range_is_einval() {
    let h = Harness::start();
    let mut c = h.client();
    let err = c
        .set_irqs(
            VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER,
            5,
            0,
            1,
            &[],
            &[],
        )
        .unwrap_err();
    assert_eq!(errno_of(err), Errno::EINVAL);
}

#[test]
fn fds_on_a_command_that_takes_none_are_refused() {
    let h = Harness::start();
    let mut c = h.client();
    let f = memfd(4096);
    let err = c.request(cmd::DEVICE_RESET, &[], &[f.as_fd()]).unwrap_err();
    assert_eq!(errno_of(err), Errno::EINVAL);
}

#[test]
fn reset_reaches_the_device() {
    let h = Harness::start();
    h.client().reset().unwrap();
    assert_eq!(h.counters.resets.load(Ordering::SeqCst), 1);
}

#[test]
fn unsupported_device_feature_is_enotty() {
    let h = Harness::start();
    let err = h
        .client()
        .device_feature(
            vfio_bindings::bindings::vfio::VFIO_DEVICE_FEATURE_PROBE | 1,
            &[],
        )
        .unwrap_err();
    assert_eq!(errno_of(err), Errno::ENOTTY);
}

#[test]
fn migration_data_without_migration_support_is_enotty() {
    let h = Harness::start();
    let mut c = h.client();
    assert_eq!(errno_of(c.mig_data_read(64).unwrap_err()), Errno::ENOTTY);
    assert_eq!(
        errno_of(c.mig_data_write(&[1, 2, 3]).unwrap_err()),
        Errno::ENOTTY
    );
}

#[test]
fn region_io_fds_is_enotty() {
    let h = Harness::start();
    let mut c = h.client();
    let mut p = Vec::new();
    for v in [16u32, 0, RAM, 0] {
        p.extend_from_slice(&v.to_ne_bytes());
    }
    assert_eq!(
        errno_of(
            c.request(cmd::DEVICE_GET_REGION_IO_FDS, &[&p], &[])
                .unwrap_err()
        ),
        Errno::ENOTTY
    );
}

#[test]
fn write_multi_needs_negotiation_then_applies_every_write() {
    let h = Harness::start();
    let mut plain = h.client();
    let mut p = 2u64.to_ne_bytes().to_vec();
    for (off, val) in [(0u64, 0x11u8), (8, 0x22)] {
        p.extend_from_slice(&off.to_ne_bytes());
        p.extend_from_slice(&REGS.to_ne_bytes());
        p.extend_from_slice(&1u32.to_ne_bytes());
        p.extend_from_slice(&[val, 0, 0, 0, 0, 0, 0, 0]);
    }
    let refused = plain
        .request(cmd::REGION_WRITE_MULTI, &[&p], &[])
        .unwrap_err();
    drop(plain);
    let mut c = h.raw();
    c.negotiate(&Version {
        major: 0,
        minor: 1,
        json: r#"{"capabilities":{"write_multiple":true}}"#.into(),
    })
    .unwrap();
    c.request(cmd::REGION_WRITE_MULTI, &[&p], &[]).unwrap();
    assert_eq!(errno_of(refused), Errno::EINVAL);
    assert_eq!(c.region_read(REGS, 0, 1).unwrap(), vec![0x11]);
    assert_eq!(c.region_read(REGS, 8, 1).unwrap(), vec![0x22]);
}

#[test]
fn reconnect_keeps_device_state() {
    let h = Harness::start();
    let mut first = h.client();
    first.region_write(RAM, 4000, b"kept").unwrap();
    drop(first);
    assert_eq!(
        h.client().region_read(RAM, 4000, 4).unwrap(),
        b"kept".to_vec()
    );
}

#[test]
fn disconnect_drops_eventfds_and_detaches() {
    let h = Harness::start();
    let mut c = h.client();
    let efd = EventFd::new().unwrap();
    c.set_irqs(
        VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER,
        0,
        0,
        1,
        &[],
        &[efd.as_fd()],
    )
    .unwrap();
    drop(c);
    // The next session starts only after the previous one was torn down.
    h.client().device_info().unwrap();
    assert!(h.counters.detached.load(Ordering::SeqCst) >= 1);
    assert!(!h.irqs.lock().unwrap().is_assigned(0, 0));
}

#[test]
fn socket_is_created_0600_even_with_a_lax_umask() {
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0));
    let h = Harness::start();
    nix::sys::stat::umask(old);
    let mode = std::fs::metadata(h.path()).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
}

#[test]
fn live_socket_is_not_clobbered() {
    let h = Harness::start();
    assert!(matches!(bind_socket(h.path()), Err(Error::SocketInUse(_))));
}

#[test]
fn stale_socket_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(bind_socket(&path).is_ok());
}

#[test]
fn a_regular_file_at_the_socket_path_is_not_removed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("file");
    std::fs::write(&path, b"data").unwrap();
    assert!(bind_socket(&path).is_err());
    assert_eq!(std::fs::read(&path).unwrap(), b"data");
}

#[test]
fn a_symlink_at_the_socket_path_is_refused_and_its_target_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("victim");
    std::fs::write(&target, b"data").unwrap();
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o644)).unwrap();
    let path = dir.path().join("gpu.sock");
    std::os::unix::fs::symlink(&target, &path).unwrap();
    let err = bind_socket(&path).unwrap_err();
    assert!(
        format!("{:?}", err).contains("exists and is not a socket"),
        "{err:?}"
    );
    let mode = std::fs::metadata(&target).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o644);
    assert_eq!(std::fs::read(&target).unwrap(), b"data");
    assert!(std::fs::symlink_metadata(&path).unwrap().is_symlink());
}

#[test]
fn bound_path_removes_only_our_own_socket() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gpu.sock");
    let (listener, bound) = bind_socket(&path).unwrap();
    assert!(
        dir.path().read_dir().unwrap().count() == 1,
        "private dir left behind"
    );
    assert!(bound.remove().unwrap());
    assert!(!path.exists());
    assert!(!bound.remove().unwrap(), "a missing path is not an error");
    drop(listener);

    let (_listener, bound) = bind_socket(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    std::fs::write(&path, b"someone else's").unwrap();
    assert!(!bound.remove().unwrap());
    assert_eq!(std::fs::read(&path).unwrap(), b"someone else's");

    std::fs::remove_file(&path).unwrap();
    let _newer = std::os::unix::net::UnixListener::bind(&path).unwrap();
    assert!(!bound.remove().unwrap());
    assert!(std::os::unix::net::UnixStream::connect(&path).is_ok());
}

/// The attribute changes (chmod, chown) inotify reports for entries of `dir` while `f` runs.
fn attribute_changes_in(dir: &std::path::Path, f: impl FnOnce()) -> Vec<String> {
    use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
    let ino = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC).unwrap();
    ino.add_watch(dir, AddWatchFlags::IN_ATTRIB).unwrap();
    f();
    match ino.read_events() {
        Ok(events) => events
            .into_iter()
            .map(|e| {
                e.name
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default()
            })
            .collect(),
        Err(nix::errno::Errno::EAGAIN) => Vec::new(),
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn bind_socket_never_changes_the_mode_of_what_is_at_the_path() {
    // A chmod by path after bind would follow whatever was swapped in meanwhile (a symlink to
    // someone's file). The socket must be complete (0600) when it appears at the path, so
    // nothing at the path ever sees an attribute change.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gpu.sock");
    let mut bound = None;
    let changed = attribute_changes_in(dir.path(), || bound = Some(bind_socket(&path).unwrap()));
    assert!(
        !changed.iter().any(|n| n == "gpu.sock"),
        "attributes of the socket path changed after it appeared: {changed:?}"
    );
    let mode = std::fs::symlink_metadata(&path)
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    assert!(std::os::unix::net::UnixStream::connect(&path).is_ok());
    drop(bound);
}

#[test]
fn refused_uid_is_disconnected() {
    let h = Harness::with_config(ServerConfig {
        allow_uids: Some(vec![nix::unistd::getuid().as_raw() + 1]),
        ..ServerConfig::default()
    });
    let stream = std::os::unix::net::UnixStream::connect(h.path()).unwrap();
    assert!(Client::from_stream(stream).is_err());
}

#[test]
fn allowed_uid_is_served() {
    let h = Harness::with_config(ServerConfig {
        allow_uids: Some(vec![nix::unistd::getuid().as_raw()]),
        ..ServerConfig::default()
    });
    assert_eq!(h.client().device_info().unwrap().num_regions, 2);
}

#[test]
fn shutdown_ends_a_live_session() {
    let h = Harness::start();
    let mut c = h.client();
    h.shutdown.trigger();
    assert!(c.recv_raw().is_err());
}

#[test]
fn server_session_runs_over_the_in_memory_transport() {
    use vfu::transport::{MemTransport, Transport};
    let (client, server_end) = MemTransport::mem_pair();
    let session = std::thread::spawn(move || {
        let mut server =
            vfu::server::Server::new(common::TestDevice::new(), ServerConfig::default());
        server.serve_connection(server_end).unwrap()
    });
    let mut client = client;
    let version = Version {
        major: 0,
        minor: 2,
        json: String::new(),
    }
    .encode();
    client
        .send(
            &Header {
                msg_id: 1,
                cmd: cmd::VERSION,
                msg_size: (HEADER_SIZE + version.len()) as u32,
                flags: 0,
                error: 0,
            },
            &[&version],
            &[],
        )
        .unwrap();
    let read = read_req(REGS, 0, 4);
    client
        .send(
            &Header {
                msg_id: 2,
                cmd: cmd::REGION_READ,
                msg_size: (HEADER_SIZE + read.len()) as u32,
                flags: 0,
                error: 0,
            },
            &[&read],
            &[],
        )
        .unwrap();
    client.close_write();
    let v = client.recv(1 << 20).unwrap();
    let r = client.recv(1 << 20).unwrap();
    assert_eq!((v.header.msg_id, v.header.is_error()), (1, false));
    assert_eq!(client.payload(&r).len(), 16 + 4);
    assert_eq!(session.join().unwrap(), vfu::server::SessionEnd::Closed);
}

#[test]
fn device_reads_guest_memory_through_the_dma_handle() {
    use std::os::unix::fs::FileExt;
    let h = Harness::start();
    let mut c = h.client();
    let guest = tempfile::tempfile().unwrap();
    guest.set_len(1 << 20).unwrap();
    guest.write_all_at(b"guestmem", 0x3000).unwrap();
    c.dma_map(3, 0, 0x8000_0000, 1 << 20, Some(guest.as_fd()))
        .unwrap();
    c.region_write(REGS, common::DMA_DOORBELL, &0x8000_3000u64.to_le_bytes())
        .unwrap();
    assert_eq!(
        c.region_read(REGS, common::DMA_DATA, 8).unwrap(),
        b"guestmem".to_vec()
    );
}

#[test]
fn device_dma_outside_the_mapped_regions_fails_with_efault() {
    let h = Harness::start();
    let mut c = h.client();
    c.dma_map(3, 0, 0x8000_0000, 0x1000, Some(memfd(0x1000).as_fd()))
        .unwrap();
    let err = c
        .region_write(REGS, common::DMA_DOORBELL, &0x8000_0ffcu64.to_le_bytes())
        .unwrap_err();
    assert_eq!(errno_of(err), Errno::EFAULT);
}

#[test]
fn irq_info_reports_each_index() {
    let h = Harness::start();
    let mut c = h.client();
    assert_eq!(c.irq_info(2).unwrap().count, 4);
    assert_eq!(c.irq_info(1).unwrap().count, 0);
    assert_eq!(errno_of(c.irq_info(5).unwrap_err()), Errno::EINVAL);
}

fn twin_client(h: &Harness) -> Client {
    Client::with_twin_socket(std::os::unix::net::UnixStream::connect(h.path()).unwrap()).unwrap()
}

#[test]
fn twin_socket_is_set_up_only_when_offered() {
    let h = Harness::start();
    assert_eq!(h.client().caps().twin_socket, None);
    assert_eq!(twin_client(&h).caps().twin_socket, Some(0));
}

#[test]
fn dma_read_of_memory_without_fd_goes_over_the_twin_socket() {
    let h = Harness::start();
    let mut c = twin_client(&h);
    c.dma_map_local(3, 0x9000_0000, 0x1000).unwrap();
    c.local_dma(0x9000_0000).unwrap()[0x40..0x48].copy_from_slice(b"dmaread!");
    c.region_write(REGS, common::DMA_DOORBELL, &0x9000_0040u64.to_le_bytes())
        .unwrap();
    assert_eq!(
        c.region_read(REGS, common::DMA_DATA, 8).unwrap(),
        b"dmaread!".to_vec()
    );
}

#[test]
fn dma_write_to_memory_without_fd_goes_over_the_twin_socket() {
    let h = Harness::start();
    let mut c = twin_client(&h);
    c.dma_map_local(3, 0x9000_0000, 0x1000).unwrap();
    c.region_write(REGS, common::DMA_DATA, b"written!").unwrap();
    c.region_write(
        REGS,
        common::DMA_WRITE_DOORBELL,
        &0x9000_0ff8u64.to_le_bytes(),
    )
    .unwrap();
    assert_eq!(&c.local_dma(0x9000_0000).unwrap()[0xff8..], b"written!");
}

#[test]
fn dma_past_a_local_region_is_refused_by_the_client() {
    let h = Harness::start();
    let mut c = twin_client(&h);
    c.dma_map_local(3, 0x9000_0000, 0x1000).unwrap();
    let err = c
        .region_write(REGS, common::DMA_DOORBELL, &0x9000_0ffcu64.to_le_bytes())
        .unwrap_err();
    assert_eq!(errno_of(err), Errno::EFAULT);
}

#[test]
fn dma_without_fd_and_without_twin_socket_is_enotsup() {
    let h = Harness::start();
    let mut c = h.client();
    c.dma_map(3, 0, 0x9000_0000, 0x1000, None).unwrap();
    let err = c
        .region_write(REGS, common::DMA_DOORBELL, &0x9000_0000u64.to_le_bytes())
        .unwrap_err();
    assert_eq!(errno_of(err), Errno::ENOTSUP);
}

/// A client that offers a twin socket and then never answers the server's DMA_READ on it gets
/// EIO within about [`vfu::dma::CHANNEL_TIMEOUT`] (the device lock is not held longer), and at
/// once on the next access: the channel is out of step and is not used again.
#[test]
fn dma_over_a_twin_socket_the_client_never_answers_is_eio_within_the_bound() {
    let h = Harness::start();
    let stream = std::os::unix::net::UnixStream::connect(h.path()).unwrap();
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let mut c = Client::unnegotiated(stream);
    let json = r#"{"capabilities":{"max_msg_fds":16,"twin_socket":{"supported":true}}}"#;
    c.send_raw(&msg(1, cmd::VERSION, 0, &version_payload(0, 2, json)), &[])
        .unwrap();
    let reply = c.recv_raw().unwrap();
    assert!(!reply.header.is_error());
    let _twin_never_read = reply.fds.into_iter().next().expect("a twin socket");
    let map = vfu::wire::DmaMap {
        argsz: 32,
        flags: 3,
        offset: 0,
        address: 0x9000_0000,
        size: 0x1000,
    };
    c.send_raw(&msg(2, cmd::DMA_MAP, 0, &map.encode()), &[])
        .unwrap();
    assert!(!c.recv_raw().unwrap().header.is_error());
    for (id, bound) in [(3u16, 5u64), (4, 1)] {
        let started = std::time::Instant::now();
        let doorbell = write_req(REGS, common::DMA_DOORBELL, &0x9000_0040u64.to_le_bytes());
        c.send_raw(&msg(id, cmd::REGION_WRITE, 0, &doorbell), &[])
            .unwrap();
        let r = c.recv_raw().unwrap();
        assert_eq!(r.header.error, Errno::EIO as u32, "request {id}");
        assert!(
            started.elapsed() < std::time::Duration::from_secs(bound),
            "request {id} took {:?}",
            started.elapsed()
        );
    }
}
