//! Kernel VFIO for our client: a PCI device opened through its VFIO group (the no-IOMMU group
//! `/dev/vfio/noiommu-N` when the kernel runs with `vfio.enable_unsafe_noiommu_mode=1`, else
//! `/dev/vfio/N` with a type-1 container), so that `vgrace transcript` (and, on a real Grace
//! host, anyone) can put the same questions to the real `nvgrace-gpu-vfio-pci` that we put to
//! `vgrace serve`. Region accesses are `pread`/`pwrite` at the region's offset; everything else
//! is an ioctl on the container, group or device fd. This is the crate's only `unsafe`: the
//! ioctls, each on a struct from `vfio-bindings` whose size the kernel checks through `argsz`.

use std::fs::{File, OpenOptions};
use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;

use nix::errno::Errno;
use vfio_bindings::bindings::vfio::{
    vfio_device_info, vfio_group_status, vfio_irq_info, vfio_irq_set, vfio_region_info,
    VFIO_TYPE1v2_IOMMU, VFIO_BASE, VFIO_GROUP_FLAGS_VIABLE, VFIO_NOIOMMU_IOMMU,
    VFIO_REGION_INFO_CAP_SPARSE_MMAP, VFIO_TYPE,
};

/// `_IO(VFIO_TYPE, VFIO_BASE + n)`: every VFIO ioctl has no direction or size in its number
/// (the structs carry `argsz`), so the number is `type << 8 | nr` on every architecture.
const fn vfio_io(n: u32) -> libc::c_ulong {
    ((VFIO_TYPE as libc::c_ulong) << 8) | (VFIO_BASE + n) as libc::c_ulong
}
const GET_API_VERSION: libc::c_ulong = vfio_io(0);
const SET_IOMMU: libc::c_ulong = vfio_io(2);
const GROUP_GET_STATUS: libc::c_ulong = vfio_io(3);
const GROUP_SET_CONTAINER: libc::c_ulong = vfio_io(4);
const GROUP_GET_DEVICE_FD: libc::c_ulong = vfio_io(6);
const DEVICE_GET_INFO: libc::c_ulong = vfio_io(7);
const DEVICE_GET_REGION_INFO: libc::c_ulong = vfio_io(8);
const DEVICE_GET_IRQ_INFO: libc::c_ulong = vfio_io(9);
const DEVICE_SET_IRQS: libc::c_ulong = vfio_io(10);
const DEVICE_RESET: libc::c_ulong = vfio_io(11);
/// The API version every kernel since 3.6 reports.
const API_VERSION: i32 = 0;

/// Calls `ioctl(fd, request, arg)`; the result or errno.
///
/// # Safety
/// `arg` must be what `request` expects: a pointer to a live, writable buffer at least as long
/// as the size the kernel reads or writes for it (for VFIO, the `argsz` in the buffer), or an
/// integer argument.
unsafe fn ioctl(fd: RawFd, request: libc::c_ulong, arg: libc::c_ulong) -> Result<i32, Errno> {
    // SAFETY: the caller upholds the argument contract; `fd` is an open descriptor we own.
    let r = unsafe { libc::ioctl(fd, request as _, arg) };
    Errno::result(r)
}

/// A region as REGION_INFO describes it (the offset is where `pread` finds it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KRegion {
    /// VFIO_REGION_INFO_FLAG_*.
    pub flags: u32,
    /// Region size.
    pub size: u64,
    /// Offset of the region in the device fd.
    pub offset: u64,
    /// The sparse-mmap areas as (offset, size), when the region has the capability.
    pub sparse: Option<Vec<(u64, u64)>>,
}

/// An open VFIO device with its group and container.
#[derive(Debug)]
pub struct KernelDevice {
    bdf: String,
    _container: File,
    group: File,
    device: File,
}

impl KernelDevice {
    /// Opens PCI device `bdf` (e.g. `0000:01:00.0`) through its VFIO group.
    pub fn open(bdf: &str) -> Result<Self, String> {
        let link = Path::new("/sys/bus/pci/devices")
            .join(bdf)
            .join("iommu_group");
        let group_id = std::fs::read_link(&link)
            .map_err(|e| format!("{}: {e} (is a VFIO driver bound?)", link.display()))?;
        let group_id = group_id
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| format!("{}: no group number", link.display()))?
            .to_string();
        let noiommu = Path::new("/dev/vfio").join(format!("noiommu-{group_id}"));
        let (group_path, iommu) = if noiommu.exists() {
            (noiommu, VFIO_NOIOMMU_IOMMU)
        } else {
            (Path::new("/dev/vfio").join(&group_id), VFIO_TYPE1v2_IOMMU)
        };
        let rw = |p: &Path| {
            OpenOptions::new()
                .read(true)
                .write(true)
                .open(p)
                .map_err(|e| format!("{}: {e}", p.display()))
        };
        let container = rw(Path::new("/dev/vfio/vfio"))?;
        // SAFETY: VFIO_GET_API_VERSION takes no argument.
        let version = unsafe { ioctl(container.as_raw_fd(), GET_API_VERSION, 0) }
            .map_err(|e| format!("VFIO_GET_API_VERSION: {e}"))?;
        if version != API_VERSION {
            return Err(format!(
                "VFIO API version {version}, expected {API_VERSION}"
            ));
        }
        let group = rw(&group_path)?;
        let mut status = vfio_group_status {
            argsz: std::mem::size_of::<vfio_group_status>() as u32,
            flags: 0,
        };
        // SAFETY: `status` is a live vfio_group_status whose argsz is its size.
        unsafe { ioctl(group.as_raw_fd(), GROUP_GET_STATUS, ptr(&mut status)) }
            .map_err(|e| format!("VFIO_GROUP_GET_STATUS: {e}"))?;
        if status.flags & VFIO_GROUP_FLAGS_VIABLE == 0 {
            return Err(format!(
                "group {group_id} is not viable (bind every device in it to a VFIO driver)"
            ));
        }
        let container_fd: RawFd = container.as_raw_fd();
        // SAFETY: VFIO_GROUP_SET_CONTAINER reads one int (the container fd) through the pointer.
        unsafe {
            ioctl(
                group.as_raw_fd(),
                GROUP_SET_CONTAINER,
                &container_fd as *const RawFd as libc::c_ulong,
            )
        }
        .map_err(|e| format!("VFIO_GROUP_SET_CONTAINER: {e}"))?;
        // SAFETY: VFIO_SET_IOMMU takes the IOMMU type as an integer argument.
        unsafe { ioctl(container.as_raw_fd(), SET_IOMMU, libc::c_ulong::from(iommu)) }
            .map_err(|e| format!("VFIO_SET_IOMMU({iommu}): {e}"))?;
        let group_fd = group.as_raw_fd();
        let device = open_device_fd(group_fd, bdf)?;
        Ok(Self {
            bdf: bdf.to_string(),
            _container: container,
            group,
            device,
        })
    }

    /// Closes the device fd and opens a new one (the kernel's close and open of the device).
    pub fn reopen(&mut self) -> Result<(), String> {
        // The old fd must be closed first: the kernel runs close_device only when the last
        // fd goes, and open_device for the first.
        let placeholder = File::open("/dev/null").map_err(|e| e.to_string())?;
        drop(std::mem::replace(&mut self.device, placeholder));
        self.device = open_device_fd(self.group.as_raw_fd(), &self.bdf)?;
        Ok(())
    }

    /// VFIO_DEVICE_GET_INFO: (flags, regions, irqs).
    pub fn device_info(&self) -> Result<(u32, u32, u32), Errno> {
        let mut info = vfio_device_info {
            argsz: std::mem::size_of::<vfio_device_info>() as u32,
            ..Default::default()
        };
        // SAFETY: `info` is a live vfio_device_info whose argsz is its size.
        unsafe { ioctl(self.device.as_raw_fd(), DEVICE_GET_INFO, ptr(&mut info)) }?;
        Ok((info.flags, info.num_regions, info.num_irqs))
    }

    /// VFIO_DEVICE_GET_REGION_INFO, capability chain included.
    pub fn region_info(&self, index: u32) -> Result<KRegion, Errno> {
        let base = std::mem::size_of::<vfio_region_info>();
        let mut argsz = base;
        for _ in 0..2 {
            // u64 words keep the capability structs (which hold u64s) aligned.
            let mut buf = vec![0u64; argsz.div_ceil(8)];
            let head = vfio_region_info {
                argsz: argsz as u32,
                index,
                ..Default::default()
            };
            write_struct(&mut buf, &head);
            // SAFETY: `buf` is a live buffer of at least `argsz` bytes, starting with a
            // vfio_region_info whose argsz says so; the kernel writes at most argsz bytes.
            unsafe {
                ioctl(
                    self.device.as_raw_fd(),
                    DEVICE_GET_REGION_INFO,
                    buf.as_mut_ptr() as libc::c_ulong,
                )
            }?;
            let bytes: Vec<u8> = buf.iter().flat_map(|w| w.to_ne_bytes()).collect();
            let info: vfio_region_info = read_struct(&bytes, 0).ok_or(Errno::EPROTO)?;
            if info.argsz as usize > argsz {
                argsz = info.argsz as usize;
                continue;
            }
            let sparse = if info.cap_offset != 0 {
                sparse_areas(&bytes, info.cap_offset as usize)
            } else {
                None
            };
            return Ok(KRegion {
                flags: info.flags,
                size: info.size,
                offset: info.offset,
                sparse,
            });
        }
        Err(Errno::EPROTO)
    }

    /// VFIO_DEVICE_GET_IRQ_INFO: (flags, count).
    pub fn irq_info(&self, index: u32) -> Result<(u32, u32), Errno> {
        let mut info = vfio_irq_info {
            argsz: std::mem::size_of::<vfio_irq_info>() as u32,
            index,
            ..Default::default()
        };
        // SAFETY: `info` is a live vfio_irq_info whose argsz is its size.
        unsafe { ioctl(self.device.as_raw_fd(), DEVICE_GET_IRQ_INFO, ptr(&mut info)) }?;
        Ok((info.flags, info.count))
    }

    /// VFIO_DEVICE_SET_IRQS with `data` after the header (bools, or eventfds as i32s).
    pub fn set_irqs(
        &self,
        flags: u32,
        index: u32,
        start: u32,
        count: u32,
        data: &[u8],
    ) -> Result<(), Errno> {
        let head = std::mem::size_of::<vfio_irq_set>();
        let argsz = head + data.len();
        let mut buf = vec![0u64; argsz.div_ceil(8)];
        let set = vfio_irq_set {
            argsz: argsz as u32,
            flags,
            index,
            start,
            count,
            ..Default::default()
        };
        write_struct(&mut buf, &set);
        let bytes: &mut [u8] = bytemuck_bytes(&mut buf);
        bytes
            .get_mut(head..argsz)
            .ok_or(Errno::EINVAL)?
            .copy_from_slice(data);
        // SAFETY: `buf` holds a vfio_irq_set followed by its data, `argsz` bytes in all.
        unsafe {
            ioctl(
                self.device.as_raw_fd(),
                DEVICE_SET_IRQS,
                buf.as_mut_ptr() as libc::c_ulong,
            )
        }?;
        Ok(())
    }

    /// VFIO_DEVICE_RESET.
    pub fn reset(&self) -> Result<(), Errno> {
        // SAFETY: VFIO_DEVICE_RESET takes no argument.
        unsafe { ioctl(self.device.as_raw_fd(), DEVICE_RESET, 0) }?;
        Ok(())
    }

    /// `pread` at `offset` of the device fd.
    pub fn read(&self, offset: u64, len: usize) -> Result<Vec<u8>, Errno> {
        let mut buf = vec![0u8; len];
        let off = i64::try_from(offset).map_err(|_| Errno::EOVERFLOW)?;
        let n = nix::sys::uio::pread(&self.device, &mut buf, off)?;
        buf.truncate(n);
        Ok(buf)
    }

    /// `pwrite` at `offset` of the device fd.
    pub fn write(&self, offset: u64, data: &[u8]) -> Result<usize, Errno> {
        let off = i64::try_from(offset).map_err(|_| Errno::EOVERFLOW)?;
        nix::sys::uio::pwrite(&self.device, data, off)
    }
}

impl std::os::fd::AsFd for KernelDevice {
    /// The device fd (regions are mapped through it, at their offsets).
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.device.as_fd()
    }
}

/// VFIO_GROUP_GET_DEVICE_FD for `bdf`.
fn open_device_fd(group: RawFd, bdf: &str) -> Result<File, String> {
    let name = std::ffi::CString::new(bdf).map_err(|_| format!("bad device name {bdf:?}"))?;
    // SAFETY: the ioctl reads a NUL-terminated string through the pointer, which lives across
    // the call.
    let fd = unsafe { ioctl(group, GROUP_GET_DEVICE_FD, name.as_ptr() as libc::c_ulong) }
        .map_err(|e| format!("VFIO_GROUP_GET_DEVICE_FD({bdf}): {e}"))?;
    use std::os::fd::FromRawFd;
    // SAFETY: the kernel just returned this fd to us; nothing else owns it.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// A pointer argument for a struct the ioctl fills.
fn ptr<T>(v: &mut T) -> libc::c_ulong {
    v as *mut T as libc::c_ulong
}

/// The bytes of a u64 buffer.
fn bytemuck_bytes(buf: &mut [u64]) -> &mut [u8] {
    let len = std::mem::size_of_val(buf);
    // SAFETY: any u64 buffer is also a valid, initialized u8 buffer of 8x the length, with the
    // same lifetime and exclusivity as the borrow it came from.
    unsafe { std::slice::from_raw_parts_mut(buf.as_mut_ptr().cast::<u8>(), len) }
}

/// Copies `v`'s bytes to the start of `buf`.
fn write_struct<T>(buf: &mut [u64], v: &T) {
    let size = std::mem::size_of::<T>();
    // SAFETY: `T` is a repr(C) VFIO struct of integers without padding, viewed as bytes for the
    // duration of the copy.
    let src = unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), size) };
    bytemuck_bytes(buf)[..size].copy_from_slice(src);
}

/// Reads a plain-old-data struct at `at` of `bytes`, if it fits.
fn read_struct<T: Copy + Default>(bytes: &[u8], at: usize) -> Option<T> {
    let size = std::mem::size_of::<T>();
    let src = bytes.get(at..at.checked_add(size)?)?;
    let mut out = T::default();
    // SAFETY: `out` is a live T of `size` bytes; every bit pattern is valid for the VFIO
    // integer structs this is used with.
    let dst = unsafe { std::slice::from_raw_parts_mut((&mut out as *mut T).cast::<u8>(), size) };
    dst.copy_from_slice(src);
    Some(out)
}

/// The sparse-mmap areas in the capability chain starting at `at`, if there is such a
/// capability.
fn sparse_areas(bytes: &[u8], mut at: usize) -> Option<Vec<(u64, u64)>> {
    let u16_at = |o: usize| Some(u16::from_ne_bytes(bytes.get(o..o + 2)?.try_into().ok()?));
    let u32_at = |o: usize| Some(u32::from_ne_bytes(bytes.get(o..o + 4)?.try_into().ok()?));
    let u64_at = |o: usize| Some(u64::from_ne_bytes(bytes.get(o..o + 8)?.try_into().ok()?));
    for _ in 0..16 {
        let id = u16_at(at)?;
        let next = u32_at(at + 4)? as usize;
        if u32::from(id) == VFIO_REGION_INFO_CAP_SPARSE_MMAP {
            let n = u32_at(at + 8)? as usize;
            let mut areas = Vec::with_capacity(n.min(64));
            for i in 0..n.min(64) {
                let a = at + 16 + i * 16;
                areas.push((u64_at(a)?, u64_at(a + 8)?));
            }
            return Some(areas);
        }
        if next == 0 || next <= at {
            return None;
        }
        at = next;
    }
    None
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// The numbers of <linux/vfio.h>: VFIO_GET_API_VERSION is 0x3b64, VFIO_DEVICE_RESET 0x3b6f.
    #[test]
    fn ioctl_numbers_are_the_kernels() {
        assert_eq!(GET_API_VERSION, 0x3b64);
        assert_eq!(GROUP_GET_DEVICE_FD, 0x3b6a);
        assert_eq!(DEVICE_RESET, 0x3b6f);
    }

    /// A chain whose second capability is the sparse-mmap one yields its areas; a chain that
    /// loops or runs off the buffer yields none instead of hanging or panicking.
    #[test]
    fn sparse_areas_are_found_in_the_chain_and_bad_chains_end() {
        let mut b = vec![0u8; 96];
        // Cap at 32: id 3 (another), next 48.
        b[32..34].copy_from_slice(&3u16.to_ne_bytes());
        b[36..40].copy_from_slice(&48u32.to_ne_bytes());
        // Cap at 48: sparse mmap, one area {0x0, 0x4000}.
        b[48..50].copy_from_slice(&1u16.to_ne_bytes());
        b[56..60].copy_from_slice(&1u32.to_ne_bytes());
        b[64..72].copy_from_slice(&0u64.to_ne_bytes());
        b[72..80].copy_from_slice(&0x4000u64.to_ne_bytes());
        assert_eq!(sparse_areas(&b, 32), Some(vec![(0, 0x4000)]));
        // A loop back to itself.
        b[36..40].copy_from_slice(&32u32.to_ne_bytes());
        assert_eq!(sparse_areas(&b, 32), None);
        assert_eq!(sparse_areas(&b, 200), None);
    }

    /// A device that is not bound to a VFIO driver is a clear error, not a panic.
    #[test]
    fn a_device_without_a_vfio_group_is_a_clear_error() {
        let err = KernelDevice::open("0000:ff:1f.7").unwrap_err();
        assert!(err.contains("iommu_group"), "{err}");
    }
}
