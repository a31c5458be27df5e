//! The `bpf(2)` commands aya 0.14 does not wrap: walking keys without reading values, and
//! batched updates for large imports, and batched reads that walk a hash map by bucket.

use std::os::fd::{AsFd, AsRawFd as _};

const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
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

/// Reads up to `keys.len() / key_size` entries (keys and values packed back to back) after
/// the position `cursor` (`None`: from the start). Returns how many were read and the
/// position after them, or `None` as position once the map is done. A hash map is walked by
/// bucket, so, unlike `map_next_key`, an entry deleted meanwhile does not restart the walk and
/// every entry present throughout is read once.
pub fn map_lookup_batch(
    fd: impl AsFd,
    cursor: Option<u64>,
    keys: &mut [u8],
    values: &mut [u8],
    count: u32,
) -> std::io::Result<(u32, Option<u64>)> {
    let in_batch = cursor.unwrap_or(0);
    let mut out_batch = 0u64;
    let mut attr = Attr([0; 16]);
    attr.0[0] = cursor.map_or(0, |_| &in_batch as *const u64 as u64);
    attr.0[1] = &mut out_batch as *mut u64 as u64;
    attr.0[2] = keys.as_mut_ptr() as u64;
    attr.0[3] = values.as_mut_ptr() as u64;
    attr.0[4] = u64::from(count) | ((fd.as_fd().as_raw_fd() as u64) << 32);
    match bpf(BPF_MAP_LOOKUP_BATCH, &mut attr) {
        Ok(()) => Ok((attr.0[4] as u32, Some(out_batch))),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok((attr.0[4] as u32, None)),
        Err(e) => Err(e),
    }
}
