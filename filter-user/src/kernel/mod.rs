//! The pinned kernel side: loading and pinning the program and its maps, attaching it to
//! interfaces, and typed handles on the pinned maps for the short-lived commands.
//!
//! `program`: loading, pinning, attaching and detaching; `maps`: the config record, counters,
//! per-source state, events and fill; `lists`: the allowlist and blocklist maps; `bitmap`: the
//! memory-mapped bitmaps that let the kernel skip lookups (`HOST_COVER`, `KNOWN`).

mod bitmap;
mod lists;
mod maps;
mod program;

use std::{fs, mem::size_of, net::IpAddr, path::PathBuf};

use aya::{
    EbpfLoader,
    maps::{
        Array, HashMap, IterableMap as _, LpmTrie, Map, MapData, MapError, PerCpuArray,
        PerCpuValues, RingBuf, lpm_trie::Key,
    },
    programs::{
        ProgramError, Xdp, XdpMode,
        links::{FdLink, PinnedLink},
    },
};
use aya_obj::programs::XdpAttachType;
use filter_common::{
    CONFIG_SLOTS, COUNTER_SLOTS, Config, Counter, CpuScratch, FLAG_TRACE, GlobalBucket,
    HOST_COVER_WORDS, IFINDEX_LIMIT, LIST_ALLOW4_HOST, LIST_ALLOW4_NET, LIST_ALLOW6_HOST,
    LIST_ALLOW6_NET, LIST_BLOCK4_HOST, LIST_BLOCK4_NET, LIST_BLOCK6_HOST, LIST_BLOCK6_NET,
    LIST_MAP_NAMES, ListEntry, MAP_ALLOW4_HOST, MAP_ALLOW4_NET, MAP_ALLOW6_HOST, MAP_ALLOW6_NET,
    MAP_BLOCK4_HOST, MAP_BLOCK4_NET, MAP_BLOCK6_HOST, MAP_BLOCK6_NET, MAP_BUILD, MAP_CONFIG,
    MAP_CONFIG_ACTIVE, MAP_COUNTERS, MAP_CPU_SCRATCH, MAP_EVENT_SEEN, MAP_EVENTS, MAP_GLOBALS,
    MAP_HOST_COVER, MAP_IFACE_SLOTS, MAP_KNOWN, MAP_KNOWN_ACTIVE, MAP_MISC, MAP_NET_COVER,
    MAP_PROGRAMS, MAP_SLOT_IFACES, MAP_SOURCES, MAP_SYN_ACTIVE, MAP_TRACE, MAX_INTERFACES,
    MISC_EVENTS_SUPPRESSED, NET_COVER_WORDS, PROGRAM_NAME, PROGRAM_SLOT_SYN, PROGRAM_SLOT_TRACE,
    PendingDrops, Reason, SYN_PROGRAM_NAME, SourceKey, SourceState, SpentNote, TRACE_PROGRAM_NAME,
    TraceConfig, counter_index, host_cover_base, host_cover_bit, known_entries, net_cover_base,
    net_cover_range,
};
use thiserror::Error;

use crate::{PROGRAM_OBJECT, cidr::Cidr, config::Capacity, paths::Paths, state::ListKind};

pub use bitmap::*;
pub use lists::*;
pub use maps::*;
pub use program::*;

#[derive(Debug, Error)]
pub enum KernelError {
    #[error("floodwall is not attached: run `floodwall attach IFACE` first")]
    NotLoaded,
    #[error("interface `{iface}` does not exist (see `ip link`)")]
    UnknownInterface { iface: String },
    #[error("floodwall counts at most {max} interfaces separately: detach one first")]
    TooManyInterfaces { max: u32 },
    #[error("floodwall is already attached to `{iface}`; run `floodwall detach {iface}` first")]
    AlreadyAttached { iface: String },
    #[error("floodwall is not attached to `{iface}` (see `floodwall status`)")]
    NotAttached { iface: String },
    #[error("cannot load the XDP program: {source}{hint}")]
    Load {
        #[source]
        source: Box<aya::EbpfError>,
        hint: &'static str,
    },
    #[error("the kernel refused the XDP program: {source}{hint}")]
    Verify {
        #[source]
        source: Box<ProgramError>,
        hint: &'static str,
    },
    #[error("cannot attach to `{iface}` in {mode} mode: {source}{hint}")]
    Attach {
        iface: String,
        mode: &'static str,
        #[source]
        source: Box<ProgramError>,
        hint: &'static str,
    },
    #[error("cannot pin `{path}`: {detail}")]
    Pin { path: PathBuf, detail: String },
    #[error("cannot detach from `{iface}`: {detail}")]
    Detach { iface: String, detail: String },
    #[error(
        "cannot open pinned map `{name}`: {source}; if floodwall was upgraded, detach and attach again"
    )]
    OpenMap {
        name: &'static str,
        #[source]
        source: MapError,
    },
    #[error(
        "the {} is full: {list} holds its capacity of {capacity} entries; raise `{}` in the \
         [capacity] section of the config file, then run `floodwall detach --all` and attach \
         again (capacities are fixed when the filter is loaded)",
        list_of_map(list),
        capacity_key(list)
    )]
    Full { list: &'static str, capacity: u32 },
    #[error("cannot update map `{name}`: {source}")]
    Update {
        name: &'static str,
        #[source]
        source: MapError,
    },
    #[error(
        "cannot map pinned map `{name}` into memory: {source}; if floodwall was upgraded, detach \
         and attach again"
    )]
    Mmap {
        name: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the loaded filter is not this floodwall's: it was loaded by {}, whose maps this one \
         cannot safely change; run `floodwall detach --all`, then `floodwall attach` to load \
         this one (lists and limits persist)",
        match found { Some(_) => "another build", None => "an older floodwall" }
    )]
    OtherBuild { found: Option<u64> },
    #[error("cannot read the pinned program `{path}`: {source}")]
    ProgramInfo {
        path: PathBuf,
        #[source]
        source: Box<ProgramError>,
    },
}

const PERMISSION_HINT: &str =
    "; loading XDP programs needs root or CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON";

fn permission_hint(denied: bool) -> &'static str {
    if denied { PERMISSION_HINT } else { "" }
}

fn is_permission_denied(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && matches!(io.raw_os_error(), Some(libc::EPERM) | Some(libc::EACCES))
        {
            return true;
        }
        source = e.source();
    }
    false
}

/// How the program was attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AttachMode {
    /// Native (driver) mode, falling back to generic (skb) mode where the driver lacks XDP.
    Auto,
    /// Driver mode: fastest; fails if the driver has no XDP support.
    Native,
    /// Generic mode: works everywhere, after the kernel has built an skb.
    Skb,
}

impl AttachMode {
    pub const fn name(self) -> &'static str {
        match self {
            AttachMode::Auto => "auto",
            AttachMode::Native => "native",
            AttachMode::Skb => "skb",
        }
    }
}

pub fn ifindex(iface: &str) -> Option<u32> {
    let name = std::ffi::CString::new(iface).ok()?;
    // SAFETY: a NUL-terminated name.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    (index != 0).then_some(index)
}

/// The largest frame `iface` delivers: its MTU plus an Ethernet header and two VLAN tags.
pub fn max_frame_of(iface: &str) -> Option<u64> {
    let mtu: u64 = fs::read_to_string(format!("/sys/class/net/{iface}/mtu"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(mtu + 14 + 8)
}

/// The largest frame any attached interface delivers; a 1500-byte MTU's when none is
/// attached (yet) or none tells.
pub fn max_frame(paths: &Paths) -> u64 {
    paths
        .links()
        .unwrap_or_default()
        .iter()
        .filter_map(|(iface, _, _)| max_frame_of(iface))
        .max()
        .unwrap_or(DEFAULT_MAX_FRAME)
}

/// A 1500-byte MTU, an Ethernet header and two VLAN tags.
pub const DEFAULT_MAX_FRAME: u64 = 1500 + 14 + 8;

pub fn ifname(index: u32) -> Option<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: `buf` has IF_NAMESIZE bytes, as the call requires.
    let ptr = unsafe { libc::if_indextoname(index, buf.as_mut_ptr()) };
    if ptr.is_null() {
        return None;
    }
    // SAFETY: on success the buffer holds a NUL-terminated name.
    let name = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) };
    Some(name.to_string_lossy().into_owned())
}

pub(super) fn open(paths: &Paths, name: &'static str) -> Result<Map, KernelError> {
    if !paths.is_loaded() {
        return Err(KernelError::NotLoaded);
    }
    check_build(paths)?;
    open_map(paths, name)
}

fn open_map(paths: &Paths, name: &'static str) -> Result<Map, KernelError> {
    let data = MapData::from_pin(paths.map_pin(name))
        .map_err(|source| KernelError::OpenMap { name, source })?;
    Map::from_map_data(data).map_err(|source| KernelError::OpenMap { name, source })
}

/// A pinned map of the loaded filter, opened without [`check_build`] (for the load itself).
pub(super) fn open_pin<T: TryFrom<Map, Error = MapError>>(
    paths: &Paths,
    name: &'static str,
) -> Result<T, KernelError> {
    T::try_from(open_map(paths, name)?).map_err(|source| KernelError::OpenMap { name, source })
}

/// This build's id: a hash (FNV-1a) of the program object it embeds and loads.
pub fn build_id() -> u64 {
    static ID: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *ID.get_or_init(|| {
        PROGRAM_OBJECT
            .iter()
            .fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
                (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3)
            })
    })
}

/// Refuses a filter that another build loaded (see `filter_common::MAP_BUILD`). Read on every
/// map opened: another floodwall may have reloaded the filter since this process last looked.
pub fn check_build(paths: &Paths) -> Result<(), KernelError> {
    let found = open_pin::<Array<MapData, u64>>(paths, MAP_BUILD)
        .ok()
        .and_then(|build| build.get(&0, 0).ok());
    if found == Some(build_id()) {
        Ok(())
    } else {
        Err(KernelError::OtherBuild { found })
    }
}

pub(super) fn open_as<T: TryFrom<Map, Error = MapError>>(
    paths: &Paths,
    name: &'static str,
) -> Result<T, KernelError> {
    T::try_from(open(paths, name)?).map_err(|source| KernelError::OpenMap { name, source })
}
