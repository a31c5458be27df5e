//! The pinned kernel side: loading and pinning the program and its maps, attaching it to
//! interfaces, and typed handles on the pinned maps for the short-lived commands.

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
    COUNTER_SLOTS, Config, Counter, IFINDEX_LIMIT, LIST_ALLOW4_HOST, LIST_ALLOW4_NET,
    LIST_ALLOW6_HOST, LIST_ALLOW6_NET, LIST_BLOCK4_HOST, LIST_BLOCK4_NET, LIST_BLOCK6_HOST,
    LIST_BLOCK6_NET, LIST_MAP_NAMES, ListEntry, MAP_ALLOW4_HOST, MAP_ALLOW4_NET, MAP_ALLOW6_HOST,
    MAP_ALLOW6_NET, MAP_BLOCK4_HOST, MAP_BLOCK4_NET, MAP_BLOCK6_HOST, MAP_BLOCK6_NET, MAP_CONFIG,
    MAP_COUNTERS, MAP_EVENT_SEEN, MAP_EVENTS, MAP_GLOBALS, MAP_IFACE_SLOTS, MAP_MISC, MAP_PROGRAMS,
    MAP_SLOT_IFACES, MAP_SOURCES, MAP_SYN_ACTIVE, MAX_INTERFACES, PROGRAM_NAME, PROGRAM_SLOT_SYN,
    Reason, SYN_PROGRAM_NAME, SourceKey, SourceState, counter_index,
};
use thiserror::Error;

use crate::{PROGRAM_OBJECT, cidr::Cidr, config::Capacity, paths::Paths, state::ListKind};

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

/// Loads the program with its maps sized by `capacity`, pins it and every map, and writes the
/// initial configuration. Called by the first `attach`.
pub fn load(paths: &Paths, capacity: &Capacity) -> Result<(), KernelError> {
    let mut loader = EbpfLoader::new();
    loader.default_map_pin_directory(&paths.bpffs);
    for (name, size) in [
        (MAP_ALLOW4_HOST, capacity.allow_hosts),
        (MAP_ALLOW6_HOST, capacity.allow_hosts),
        (MAP_ALLOW4_NET, capacity.allow_nets),
        (MAP_ALLOW6_NET, capacity.allow_nets),
        (MAP_BLOCK4_HOST, capacity.block_hosts),
        (MAP_BLOCK6_HOST, capacity.block_hosts),
        (MAP_BLOCK4_NET, capacity.block_nets),
        (MAP_BLOCK6_NET, capacity.block_nets),
        (MAP_SOURCES, capacity.sources),
    ] {
        loader.map_max_entries(name, size);
    }
    let mut ebpf = loader
        .load(PROGRAM_OBJECT)
        .map_err(|source| KernelError::Load {
            hint: permission_hint(is_permission_denied(&source)),
            source: Box::new(source),
        })?;
    let program: &mut Xdp = ebpf
        .program_mut(PROGRAM_NAME)
        .and_then(|p| p.try_into().ok())
        .ok_or_else(|| KernelError::Pin {
            path: paths.program_pin(),
            detail: format!("program `{PROGRAM_NAME}` missing from the embedded object"),
        })?;
    program.load().map_err(|source| KernelError::Verify {
        hint: permission_hint(is_permission_denied(&source)),
        source: Box::new(source),
    })?;
    program
        .pin(paths.program_pin())
        .map_err(|e| KernelError::Pin {
            path: paths.program_pin(),
            detail: e.to_string(),
        })?;
    load_syn_challenge(&mut ebpf)
}

/// Loads the SYN challenge's program and puts it where the filter hands frames over to it.
/// The pinned `PROGRAMS` map keeps it alive.
fn load_syn_challenge(ebpf: &mut aya::Ebpf) -> Result<(), KernelError> {
    let missing = || KernelError::Pin {
        path: PathBuf::from(SYN_PROGRAM_NAME),
        detail: format!("program `{SYN_PROGRAM_NAME}` missing from the embedded object"),
    };
    let program: &mut Xdp = ebpf
        .program_mut(SYN_PROGRAM_NAME)
        .and_then(|p| p.try_into().ok())
        .ok_or_else(missing)?;
    program.load().map_err(|source| KernelError::Verify {
        hint: permission_hint(is_permission_denied(&source)),
        source: Box::new(source),
    })?;
    let fd = program
        .fd()
        .map_err(|source| KernelError::Verify {
            hint: "",
            source: Box::new(source),
        })?
        .try_clone()
        .map_err(|e| KernelError::Pin {
            path: PathBuf::from(SYN_PROGRAM_NAME),
            detail: e.to_string(),
        })?;
    let map = ebpf.map_mut(MAP_PROGRAMS).ok_or_else(missing)?;
    let mut programs =
        aya::maps::ProgramArray::try_from(map).map_err(|source| KernelError::OpenMap {
            name: MAP_PROGRAMS,
            source,
        })?;
    programs
        .set(PROGRAM_SLOT_SYN, &fd, 0)
        .map_err(|source| KernelError::Update {
            name: MAP_PROGRAMS,
            source,
        })
}

/// The kernel's id of the pinned program, as `bpftool prog` and `ip link` show it.
pub fn program_id(paths: &Paths) -> Result<u32, KernelError> {
    let path = paths.program_pin();
    aya::programs::ProgramInfo::from_pin(&path)
        .map(|info| info.id())
        .map_err(|source| KernelError::ProgramInfo {
            path,
            source: Box::new(source),
        })
}

/// Removes every pin: the program and maps go away with the last reference.
pub fn unload(paths: &Paths) -> Result<(), KernelError> {
    for name in STATE_MAP_NAMES.iter().chain(&LIST_MAP_NAMES) {
        remove_pin(paths.map_pin(name))?;
    }
    remove_pin(paths.program_pin())?;
    // Only empties the directory we own; ignore a directory that holds something else.
    let _ = fs::remove_dir(&paths.bpffs);
    Ok(())
}

fn remove_pin(path: PathBuf) -> Result<(), KernelError> {
    match fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(KernelError::Pin {
            path,
            detail: e.to_string(),
        }),
    }
}

/// Every map the program pins besides the list maps (`LIST_MAP_NAMES`).
const STATE_MAP_NAMES: [&str; 11] = [
    MAP_CONFIG,
    MAP_COUNTERS,
    MAP_IFACE_SLOTS,
    MAP_SLOT_IFACES,
    MAP_MISC,
    MAP_GLOBALS,
    MAP_SOURCES,
    MAP_EVENTS,
    MAP_EVENT_SEEN,
    MAP_SYN_ACTIVE,
    MAP_PROGRAMS,
];

/// Attaches the pinned program to `iface` and pins the link. Returns the mode it got.
pub fn attach(paths: &Paths, iface: &str, mode: AttachMode) -> Result<AttachMode, KernelError> {
    if ifindex(iface).is_none() {
        return Err(KernelError::UnknownInterface {
            iface: iface.to_owned(),
        });
    }
    if paths
        .links()
        .map_err(|e| KernelError::Pin {
            path: paths.bpffs.clone(),
            detail: e.to_string(),
        })?
        .iter()
        .any(|(i, _, _)| i == iface)
    {
        return Err(KernelError::AlreadyAttached {
            iface: iface.to_owned(),
        });
    }
    let mut program = Xdp::from_pin(paths.program_pin(), XdpAttachType::Interface)
        .map_err(|_| KernelError::NotLoaded)?;
    let index = ifindex(iface).ok_or_else(|| KernelError::UnknownInterface {
        iface: iface.to_owned(),
    })?;
    assign_slot(paths, index)?;
    let result = attach_link(paths, &mut program, iface, mode);
    if result.is_err() {
        release_slot(paths, index);
    }
    result
}

fn attach_link(
    paths: &Paths,
    program: &mut Xdp,
    iface: &str,
    mode: AttachMode,
) -> Result<AttachMode, KernelError> {
    let tries: &[AttachMode] = match mode {
        AttachMode::Auto => &[AttachMode::Native, AttachMode::Skb],
        AttachMode::Native => &[AttachMode::Native],
        AttachMode::Skb => &[AttachMode::Skb],
    };
    let mut last_err = None;
    for &try_mode in tries {
        let xdp_mode = match try_mode {
            AttachMode::Skb => XdpMode::Skb,
            _ => XdpMode::Driver,
        };
        match program.attach(iface, xdp_mode) {
            Ok(link_id) => {
                let link = program
                    .take_link(link_id)
                    .map_err(|e| KernelError::Attach {
                        iface: iface.to_owned(),
                        mode: try_mode.name(),
                        hint: "",
                        source: Box::new(e),
                    })?;
                let link: FdLink = link.try_into().map_err(|e: aya::programs::links::LinkError| {
                    KernelError::Pin {
                        path: paths.link_pin(try_mode.name(), iface),
                        detail: format!("the kernel attached without a bpf_link ({e}); this kernel is too old for floodwall"),
                    }
                })?;
                let path = paths.link_pin(try_mode.name(), iface);
                link.pin(&path).map_err(|e| KernelError::Pin {
                    path,
                    detail: e.to_string(),
                })?;
                return Ok(try_mode);
            }
            Err(e) => last_err = Some((try_mode, e)),
        }
    }
    let (failed_mode, source) = last_err.ok_or(KernelError::NotLoaded)?;
    Err(KernelError::Attach {
        iface: iface.to_owned(),
        mode: failed_mode.name(),
        hint: permission_hint(is_permission_denied(&source)),
        source: Box::new(source),
    })
}

/// Unpins the link of `iface`; the kernel detaches when the last reference goes.
pub fn detach(paths: &Paths, iface: &str) -> Result<(), KernelError> {
    let links = paths.links().map_err(|e| KernelError::Detach {
        iface: iface.to_owned(),
        detail: e.to_string(),
    })?;
    let Some((_, _, path)) = links.into_iter().find(|(i, _, _)| i == iface) else {
        return Err(KernelError::NotAttached {
            iface: iface.to_owned(),
        });
    };
    let link = PinnedLink::from_pin(&path).map_err(|e| KernelError::Detach {
        iface: iface.to_owned(),
        detail: e.to_string(),
    })?;
    let link = link.unpin().map_err(|e| KernelError::Detach {
        iface: iface.to_owned(),
        detail: e.to_string(),
    })?;
    drop(link);
    if let Some(index) = ifindex(iface) {
        release_slot(paths, index);
    }
    Ok(())
}

/// Gives interface `index` a counter slot of its own, starting from zero. Interfaces beyond
/// `IFINDEX_LIMIT` share slot 0.
fn assign_slot(paths: &Paths, index: u32) -> Result<(), KernelError> {
    if index >= IFINDEX_LIMIT {
        return Ok(());
    }
    let update = |name, source| KernelError::Update { name, source };
    let mut slot_ifaces: Array<MapData, u32> = open_as(paths, MAP_SLOT_IFACES)?;
    let mut chosen = None;
    for slot in 1..COUNTER_SLOTS {
        let owner = slot_ifaces
            .get(&slot, 0)
            .map_err(|e| update(MAP_SLOT_IFACES, e))?;
        if owner == index {
            chosen = Some(slot);
            break;
        }
        // A slot whose interface is gone (deleted while attached) is free again.
        if chosen.is_none() && (owner == 0 || ifname(owner).is_none()) {
            chosen = Some(slot);
        }
    }
    let slot = chosen.ok_or(KernelError::TooManyInterfaces {
        max: MAX_INTERFACES,
    })?;
    let mut counters: PerCpuArray<MapData, Counter> = open_as(paths, MAP_COUNTERS)?;
    let cpus = aya::util::nr_cpus().map_err(|(_, e)| update(MAP_COUNTERS, MapError::IoError(e)))?;
    for reason in Reason::ALL {
        let zeros = PerCpuValues::try_from(vec![Counter::default(); cpus])
            .map_err(|e| update(MAP_COUNTERS, MapError::IoError(e)))?;
        counters
            .set(counter_index(slot, reason), zeros, 0)
            .map_err(|e| update(MAP_COUNTERS, e))?;
    }
    slot_ifaces
        .set(slot, index, 0)
        .map_err(|e| update(MAP_SLOT_IFACES, e))?;
    let mut iface_slots: Array<MapData, u32> = open_as(paths, MAP_IFACE_SLOTS)?;
    iface_slots
        .set(index, slot, 0)
        .map_err(|e| update(MAP_IFACE_SLOTS, e))
}

/// Gives the counter slot of interface `index` back; its frames count in slot 0 until then.
fn release_slot(paths: &Paths, index: u32) {
    if index >= IFINDEX_LIMIT {
        return;
    }
    // Best effort: a slot left behind is reclaimed once its interface is gone.
    if let Ok(mut iface_slots) = open_as::<Array<MapData, u32>>(paths, MAP_IFACE_SLOTS) {
        if let Ok(slot) = iface_slots.get(&index, 0)
            && slot != 0
            && let Ok(mut slot_ifaces) = open_as::<Array<MapData, u32>>(paths, MAP_SLOT_IFACES)
        {
            let _ = slot_ifaces.set(slot, 0, 0);
        }
        let _ = iface_slots.set(index, 0, 0);
    }
}

fn open(paths: &Paths, name: &'static str) -> Result<Map, KernelError> {
    if !paths.is_loaded() {
        return Err(KernelError::NotLoaded);
    }
    let data = MapData::from_pin(paths.map_pin(name))
        .map_err(|source| KernelError::OpenMap { name, source })?;
    Map::from_map_data(data).map_err(|source| KernelError::OpenMap { name, source })
}

fn open_as<T: TryFrom<Map, Error = MapError>>(
    paths: &Paths,
    name: &'static str,
) -> Result<T, KernelError> {
    T::try_from(open(paths, name)?).map_err(|source| KernelError::OpenMap { name, source })
}

/// Capacity and current size of one bounded map.
#[derive(Clone, Debug, serde::Serialize)]
pub struct MapFill {
    pub name: &'static str,
    pub entries: u64,
    pub capacity: u32,
}

/// The configuration record.
pub fn read_config(paths: &Paths) -> Result<Config, KernelError> {
    let array: Array<MapData, Config> = open_as(paths, MAP_CONFIG)?;
    array.get(&0, 0).map_err(|source| KernelError::OpenMap {
        name: MAP_CONFIG,
        source,
    })
}

pub fn write_config(paths: &Paths, config: &Config) -> Result<(), KernelError> {
    let mut array: Array<MapData, Config> = open_as(paths, MAP_CONFIG)?;
    array
        .set(0, config, 0)
        .map_err(|source| KernelError::Update {
            name: MAP_CONFIG,
            source,
        })
}

/// Whether `floodwall run` has switched an `auto` SYN challenge on.
pub fn syn_auto_active(paths: &Paths) -> Result<bool, KernelError> {
    let array: Array<MapData, u32> = open_as(paths, MAP_SYN_ACTIVE)?;
    array
        .get(&0, 0)
        .map(|v| v != 0)
        .map_err(|source| KernelError::OpenMap {
            name: MAP_SYN_ACTIVE,
            source,
        })
}

/// Switches an `auto` SYN challenge on or off (the service's decision).
pub fn set_syn_auto_active(paths: &Paths, active: bool) -> Result<(), KernelError> {
    let mut array: Array<MapData, u32> = open_as(paths, MAP_SYN_ACTIVE)?;
    array
        .set(0, u32::from(active), 0)
        .map_err(|source| KernelError::Update {
            name: MAP_SYN_ACTIVE,
            source,
        })
}

/// Resets the global buckets, so a new configuration starts from full bursts.
pub fn reset_globals(paths: &Paths) -> Result<(), KernelError> {
    let mut array: Array<MapData, u64> = open_as(paths, MAP_GLOBALS)?;
    for i in 0..array.len() {
        array.set(i, 0, 0).map_err(|source| KernelError::Update {
            name: MAP_GLOBALS,
            source,
        })?;
    }
    Ok(())
}

/// Verdict counters summed over CPUs, by interface index and reason; index 0 stands for the
/// interfaces without a slot of their own.
pub fn read_counters(paths: &Paths) -> Result<Vec<(u32, Reason, Counter)>, KernelError> {
    CounterReader::open(paths)?.read()
}

/// The counter maps held open, for callers that read them often.
pub struct CounterReader {
    counters: PerCpuArray<MapData, Counter>,
    slot_ifaces: Array<MapData, u32>,
}

impl CounterReader {
    pub fn open(paths: &Paths) -> Result<CounterReader, KernelError> {
        Ok(CounterReader {
            counters: open_as(paths, MAP_COUNTERS)?,
            slot_ifaces: open_as(paths, MAP_SLOT_IFACES)?,
        })
    }

    pub fn read(&self) -> Result<Vec<(u32, Reason, Counter)>, KernelError> {
        let err = |name, source| KernelError::OpenMap { name, source };
        let mut out = Vec::new();
        for slot in 0..COUNTER_SLOTS {
            let index = match slot {
                0 => 0,
                _ => self
                    .slot_ifaces
                    .get(&slot, 0)
                    .map_err(|e| err(MAP_SLOT_IFACES, e))?,
            };
            if slot != 0 && index == 0 {
                continue;
            }
            for reason in Reason::ALL {
                let values = self
                    .counters
                    .get(&counter_index(slot, reason), 0)
                    .map_err(|e| err(MAP_COUNTERS, e))?;
                let mut sum = Counter::default();
                for v in values.iter() {
                    sum.packets += v.packets;
                    sum.bytes += v.bytes;
                }
                if slot != 0 || sum.packets != 0 {
                    out.push((index, reason, sum));
                }
            }
        }
        Ok(out)
    }
}

/// Data-path health counters summed over CPUs, by `MISC_*` slot.
pub fn read_misc(paths: &Paths) -> Result<Vec<u64>, KernelError> {
    let map: PerCpuArray<MapData, u64> = open_as(paths, MAP_MISC)?;
    let mut out = Vec::new();
    for item in map.iter() {
        let values = item.map_err(|source| KernelError::OpenMap {
            name: MAP_MISC,
            source,
        })?;
        out.push(values.iter().sum());
    }
    Ok(out)
}

/// The per-source state map, for single lookups.
pub fn open_sources(
    paths: &Paths,
) -> Result<HashMap<MapData, SourceKey, SourceState>, KernelError> {
    open_as(paths, MAP_SOURCES)
}

/// The arrival times of the global buckets (`GLOBAL_*` slots).
pub fn read_globals(paths: &Paths) -> Result<Vec<u64>, KernelError> {
    let array: Array<MapData, u64> = open_as(paths, MAP_GLOBALS)?;
    (0..array.len())
        .map(|i| {
            array.get(&i, 0).map_err(|source| KernelError::OpenMap {
                name: MAP_GLOBALS,
                source,
            })
        })
        .collect()
}

/// The ring buffer of sampled drop events.
pub fn open_events(paths: &Paths) -> Result<RingBuf<MapData>, KernelError> {
    open_as(paths, MAP_EVENTS)
}

/// Every tracked source and its state.
pub fn read_sources(paths: &Paths) -> Result<Vec<(SourceKey, SourceState)>, KernelError> {
    let map: HashMap<MapData, SourceKey, SourceState> = open_as(paths, MAP_SOURCES)?;
    let mut out = Vec::new();
    for item in map.iter() {
        match item {
            Ok(kv) => out.push(kv),
            // An LRU entry evicted while iterating: skip it.
            Err(MapError::KeyNotFound) => continue,
            Err(source) => {
                return Err(KernelError::OpenMap {
                    name: MAP_SOURCES,
                    source,
                });
            }
        }
    }
    Ok(out)
}

/// Fill level of every bounded map that grows at run time.
pub fn map_fill(paths: &Paths) -> Result<Vec<MapFill>, KernelError> {
    let mut out = Vec::new();
    for name in LIST_MAP_NAMES
        .into_iter()
        .chain([MAP_SOURCES, MAP_EVENT_SEEN])
    {
        let data = MapData::from_pin(paths.map_pin(name))
            .map_err(|source| KernelError::OpenMap { name, source })?;
        let capacity = data
            .info()
            .map_err(|source| KernelError::OpenMap { name, source })?
            .max_entries();
        let map =
            Map::from_map_data(data).map_err(|source| KernelError::OpenMap { name, source })?;
        let entries = count_keys(&map);
        out.push(MapFill {
            name,
            entries,
            capacity,
        });
    }
    Ok(out)
}

fn count_keys(map: &Map) -> u64 {
    let data = match map {
        Map::HashMap(d) | Map::LpmTrie(d) | Map::LruHashMap(d) => d,
        _ => return 0,
    };
    let mut n = 0;
    let mut key: Option<Vec<u8>> = None;
    let key_size = data.info().map_or(0, |i| i.key_size()) as usize;
    let fd = data.fd();
    loop {
        let mut next = vec![0u8; key_size];
        if !crate::sys::map_next_key(fd, key.as_deref(), &mut next) {
            return n;
        }
        n += 1;
        key = Some(next);
    }
}

/// The four maps of one list.
pub struct ListMaps {
    kind: ListKind,
    host4: HashMap<MapData, [u8; 4], ListEntry>,
    net4: LpmTrie<MapData, [u8; 4], ListEntry>,
    host6: HashMap<MapData, [u8; 16], ListEntry>,
    net6: LpmTrie<MapData, [u8; 16], ListEntry>,
}

impl ListMaps {
    pub fn open(paths: &Paths, kind: ListKind) -> Result<ListMaps, KernelError> {
        let [h4, n4, h6, n6] = names(kind);
        Ok(ListMaps {
            kind,
            host4: open_as(paths, h4)?,
            net4: open_as(paths, n4)?,
            host6: open_as(paths, h6)?,
            net6: open_as(paths, n6)?,
        })
    }

    pub fn insert(&mut self, cidr: &Cidr, entry: &ListEntry) -> Result<(), KernelError> {
        let [h4, n4, h6, n6] = names(self.kind);
        let entry = ListEntry {
            prefix_len: u32::from(cidr.prefix_len()),
            ..*entry
        };
        let (name, result) = match (cidr.addr(), cidr.is_host()) {
            (IpAddr::V4(a), true) => (h4, self.host4.insert(a.octets(), entry, 0)),
            (IpAddr::V4(a), false) => (
                n4,
                self.net4.insert(
                    &Key::new(u32::from(cidr.prefix_len()), a.octets()),
                    entry,
                    0,
                ),
            ),
            (IpAddr::V6(a), true) => (h6, self.host6.insert(a.octets(), entry, 0)),
            (IpAddr::V6(a), false) => (
                n6,
                self.net6.insert(
                    &Key::new(u32::from(cidr.prefix_len()), a.octets()),
                    entry,
                    0,
                ),
            ),
        };
        result.map_err(|source| full_or_update(name, source, self.capacity(name)))
    }

    /// The entry that decides `addr` as the kernel finds it at monotonic time `now_ns`: the
    /// exact host first, then the longest live prefix (an expired prefix gives way to a
    /// shorter one). `lists` is the config's `LIST_*` bits: a map the kernel skips is skipped.
    pub fn lookup(
        &self,
        lists: u32,
        addr: IpAddr,
        now_ns: u64,
    ) -> Result<Option<(Cidr, ListEntry)>, KernelError> {
        let [h4, n4, h6, n6] = names(self.kind);
        let [b4h, b4n, b6h, b6n] = list_bits(self.kind);
        let found = |r: Result<ListEntry, MapError>, name| match r {
            Ok(e) => Ok(Some(e)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(source) => Err(KernelError::OpenMap { name, source }),
        };
        let (host_bit, net_bit) = match addr {
            IpAddr::V4(_) => (b4h, b4n),
            IpAddr::V6(_) => (b6h, b6n),
        };
        if lists & host_bit != 0 {
            let entry = match addr {
                IpAddr::V4(a) => found(self.host4.get(&a.octets(), 0), h4)?,
                IpAddr::V6(a) => found(self.host6.get(&a.octets(), 0), h6)?,
            };
            if let Some(entry) = entry.filter(|e| e.active(now_ns)) {
                return Ok(Some((Cidr::host(addr), entry)));
            }
        }
        if lists & net_bit == 0 {
            return Ok(None);
        }
        let mut prefix_len: u32 = if addr.is_ipv4() { 32 } else { 128 };
        loop {
            let entry = match addr {
                IpAddr::V4(a) => found(self.net4.get(&Key::new(prefix_len, a.octets()), 0), n4)?,
                IpAddr::V6(a) => found(self.net6.get(&Key::new(prefix_len, a.octets()), 0), n6)?,
            };
            let Some(entry) = entry else {
                return Ok(None);
            };
            let own = entry.prefix_len.min(prefix_len);
            if entry.active(now_ns) {
                return Ok(Cidr::covering(addr, own as u8).ok().map(|c| (c, entry)));
            }
            if own == 0 {
                return Ok(None);
            }
            prefix_len = own - 1;
        }
    }

    /// Every entry in the four maps, as CIDRs.
    pub fn entries(&self) -> Result<Vec<Cidr>, KernelError> {
        let [h4, n4, h6, n6] = names(self.kind);
        let err = |name, source| KernelError::OpenMap { name, source };
        let cidr = |addr: IpAddr, len: u32| Cidr::new(addr, len as u8).ok();
        let mut out = Vec::new();
        for key in self.host4.keys() {
            out.extend(cidr(IpAddr::from(key.map_err(|e| err(h4, e))?), 32));
        }
        for key in self.net4.keys() {
            let key = key.map_err(|e| err(n4, e))?;
            out.extend(cidr(IpAddr::from(key.data()), key.prefix_len()));
        }
        for key in self.host6.keys() {
            out.extend(cidr(IpAddr::from(key.map_err(|e| err(h6, e))?), 128));
        }
        for key in self.net6.keys() {
            let key = key.map_err(|e| err(n6, e))?;
            out.extend(cidr(IpAddr::from(key.data()), key.prefix_len()));
        }
        Ok(out)
    }

    /// Inserts every entry: exact hosts in batches (one `bpf(2)` call per many thousand),
    /// prefixes one by one (prefix tries have no batch update). Stops at the first error.
    pub fn insert_all(
        &mut self,
        items: &[(Cidr, ListEntry)],
        progress: &dyn Fn(usize),
    ) -> Result<(), KernelError> {
        const BATCH: usize = 65_536;
        let [h4, _, h6, _] = names(self.kind);
        let mut done = 0;
        let with_len = |c: &Cidr, e: &ListEntry| ListEntry {
            prefix_len: u32::from(c.prefix_len()),
            ..*e
        };
        for v4 in [true, false] {
            let hosts: Vec<&(Cidr, ListEntry)> = items
                .iter()
                .filter(|(c, _)| c.is_host() && c.is_v4() == v4)
                .collect();
            for chunk in hosts.chunks(BATCH) {
                let mut keys = Vec::with_capacity(chunk.len() * 16);
                let mut values = Vec::with_capacity(chunk.len() * size_of::<ListEntry>());
                for (cidr, entry) in chunk {
                    match cidr.addr() {
                        IpAddr::V4(a) => keys.extend_from_slice(&a.octets()),
                        IpAddr::V6(a) => keys.extend_from_slice(&a.octets()),
                    }
                    let entry = with_len(cidr, entry);
                    values.extend_from_slice(&entry.expires_ns.to_ne_bytes());
                    values.extend_from_slice(&entry.prefix_len.to_ne_bytes());
                    values.extend_from_slice(&entry._pad.to_ne_bytes());
                }
                let (name, fd) = if v4 {
                    (h4, self.host4.map().fd())
                } else {
                    (h6, self.host6.map().fd())
                };
                if let Err(io_error) =
                    crate::sys::map_update_batch(fd, &keys, &values, chunk.len() as u32)
                {
                    let source = MapError::SyscallError(aya::sys::SyscallError {
                        call: "BPF_MAP_UPDATE_BATCH",
                        io_error,
                    });
                    return Err(full_or_update(name, source, self.capacity(name)));
                }
                done += chunk.len();
                progress(done);
            }
        }
        for (cidr, entry) in items.iter().filter(|(c, _)| !c.is_host()) {
            self.insert(cidr, entry)?;
            done += 1;
            if done % BATCH == 0 {
                progress(done);
            }
        }
        Ok(())
    }

    pub fn remove(&mut self, cidr: &Cidr) -> Result<(), KernelError> {
        let [h4, n4, h6, n6] = names(self.kind);
        let (name, result) = match (cidr.addr(), cidr.is_host()) {
            (IpAddr::V4(a), true) => (h4, self.host4.remove(&a.octets())),
            (IpAddr::V4(a), false) => (
                n4,
                self.net4
                    .remove(&Key::new(u32::from(cidr.prefix_len()), a.octets())),
            ),
            (IpAddr::V6(a), true) => (h6, self.host6.remove(&a.octets())),
            (IpAddr::V6(a), false) => (
                n6,
                self.net6
                    .remove(&Key::new(u32::from(cidr.prefix_len()), a.octets())),
            ),
        };
        match result {
            Ok(()) | Err(MapError::KeyNotFound) | Err(MapError::ElementNotFound) => Ok(()),
            Err(source) => Err(KernelError::Update { name, source }),
        }
    }

    fn capacity(&self, name: &str) -> u32 {
        let [h4, n4, h6, _] = names(self.kind);
        let info = if name == h4 {
            self.host4.map().info()
        } else if name == n4 {
            self.net4.map().info()
        } else if name == h6 {
            self.host6.map().info()
        } else {
            self.net6.map().info()
        };
        info.map_or(0, |i| i.max_entries())
    }
}

/// The config's `LIST_*` bits of a list's maps, in the order of [`names`].
pub const fn list_bits(kind: ListKind) -> [u32; 4] {
    match kind {
        ListKind::Allow => [
            LIST_ALLOW4_HOST,
            LIST_ALLOW4_NET,
            LIST_ALLOW6_HOST,
            LIST_ALLOW6_NET,
        ],
        ListKind::Block => [
            LIST_BLOCK4_HOST,
            LIST_BLOCK4_NET,
            LIST_BLOCK6_HOST,
            LIST_BLOCK6_NET,
        ],
    }
}

fn names(kind: ListKind) -> [&'static str; 4] {
    match kind {
        ListKind::Allow => [
            MAP_ALLOW4_HOST,
            MAP_ALLOW4_NET,
            MAP_ALLOW6_HOST,
            MAP_ALLOW6_NET,
        ],
        ListKind::Block => [
            MAP_BLOCK4_HOST,
            MAP_BLOCK4_NET,
            MAP_BLOCK6_HOST,
            MAP_BLOCK6_NET,
        ],
    }
}

/// The list a list map belongs to (`BLOCK4_HOST`: blocklist).
fn list_of_map(map: &str) -> &'static str {
    if map.starts_with("ALLOW") {
        ListKind::Allow.name()
    } else {
        ListKind::Block.name()
    }
}

/// The `[capacity]` key that sizes a list map (`BLOCK4_HOST`: `block_hosts`).
fn capacity_key(map: &str) -> &'static str {
    match (map.starts_with("ALLOW"), map.ends_with("_HOST")) {
        (true, true) => "allow_hosts",
        (true, false) => "allow_nets",
        (false, true) => "block_hosts",
        (false, false) => "block_nets",
    }
}

fn full_or_update(name: &'static str, source: MapError, capacity: u32) -> KernelError {
    let full = matches!(&source, MapError::SyscallError(e)
        if matches!(e.io_error.raw_os_error(), Some(libc::E2BIG) | Some(libc::ENOSPC) | Some(libc::ENOMEM)));
    if full {
        KernelError::Full {
            list: name,
            capacity,
        }
    } else {
        KernelError::Update { name, source }
    }
}
