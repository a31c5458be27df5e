//! The `bpf(2)` commands aya 0.14 does not wrap: walking keys without reading values, and
//! batched updates for large imports.

use std::os::fd::{AsFd, AsRawFd as _};

const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;

/// `union bpf_attr`, large enough for every command used here; unused bytes stay zero.
#[repr(C, align(8))]
struct Attr([u64; 16]);

fn bpf(cmd: libc::c_long, attr: &mut Attr) -> std::io::Result<()> {
    // SAFETY: `attr` is a zero-padded bpf_attr of the size we pass, valid for the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut Attr,
            std::mem::size_of::<Attr>(),
        )
    };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Writes the key after `key` (or the first key) into `next`; false at the end of the map.
pub fn map_next_key(fd: impl AsFd, key: Option<&[u8]>, next: &mut [u8]) -> bool {
    let mut attr = Attr([0; 16]);
    attr.0[0] = fd.as_fd().as_raw_fd() as u64;
    attr.0[1] = key.map_or(0, |k| k.as_ptr() as u64);
    attr.0[2] = next.as_mut_ptr() as u64;
    bpf(BPF_MAP_GET_NEXT_KEY, &mut attr).is_ok()
}

/// Inserts `count` keys and values (packed back to back) in one call.
pub fn map_update_batch(
    fd: impl AsFd,
    keys: &[u8],
    values: &[u8],
    count: u32,
) -> std::io::Result<()> {
    // The `batch` member: in_batch, out_batch, keys, values, count (u32), map_fd (u32),
    // elem_flags, flags.
    let mut attr = Attr([0; 16]);
    attr.0[2] = keys.as_ptr() as u64;
    attr.0[3] = values.as_ptr() as u64;
    attr.0[4] = u64::from(count) | ((fd.as_fd().as_raw_fd() as u64) << 32);
    bpf(BPF_MAP_UPDATE_BATCH, &mut attr)
}
