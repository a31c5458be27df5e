//! Loading the XDP programs, pinning them with their maps, and attaching them to interfaces.

use super::*;

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
        (MAP_KNOWN, known_entries(capacity.sources)),
    ] {
        loader.map_max_entries(name, size);
    }
    let mut ebpf = loader
        .load(PROGRAM_OBJECT)
        .map_err(|source| KernelError::Load {
            hint: permission_hint(is_permission_denied(&source)),
            source: Box::new(source),
        })?;
    // The maps are pinned now, the program (what makes the filter loaded) not yet: a load
    // killed at any point leaves no filter that this build would refuse.
    let mut build: Array<MapData, u64> = open_pin(paths, MAP_BUILD)?;
    build
        .set(0, build_id(), 0)
        .map_err(|source| KernelError::Update {
            name: MAP_BUILD,
            source,
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
    load_tail_program(&mut ebpf, SYN_PROGRAM_NAME, PROGRAM_SLOT_SYN)?;
    load_tail_program(&mut ebpf, TRACE_PROGRAM_NAME, PROGRAM_SLOT_TRACE)
}

/// Loads a program the filter hands frames over to (the SYN challenge, the trace) and puts
/// it in its `PROGRAMS` slot. The pinned `PROGRAMS` map keeps it alive.
pub(super) fn load_tail_program(
    ebpf: &mut aya::Ebpf,
    name: &'static str,
    slot: u32,
) -> Result<(), KernelError> {
    let missing = || KernelError::Pin {
        path: PathBuf::from(name),
        detail: format!("program `{name}` missing from the embedded object"),
    };
    let program: &mut Xdp = ebpf
        .program_mut(name)
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
            path: PathBuf::from(name),
            detail: e.to_string(),
        })?;
    let map = ebpf.map_mut(MAP_PROGRAMS).ok_or_else(missing)?;
    let mut programs =
        aya::maps::ProgramArray::try_from(map).map_err(|source| KernelError::OpenMap {
            name: MAP_PROGRAMS,
            source,
        })?;
    programs
        .set(slot, &fd, 0)
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

pub(super) fn remove_pin(path: PathBuf) -> Result<(), KernelError> {
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
const STATE_MAP_NAMES: [&str; 19] = [
    MAP_BUILD,
    MAP_CONFIG,
    MAP_CONFIG_ACTIVE,
    MAP_COUNTERS,
    MAP_IFACE_SLOTS,
    MAP_SLOT_IFACES,
    MAP_MISC,
    MAP_GLOBALS,
    MAP_SOURCES,
    MAP_EVENTS,
    MAP_EVENT_SEEN,
    MAP_CPU_SCRATCH,
    MAP_NET_COVER,
    MAP_HOST_COVER,
    MAP_KNOWN,
    MAP_KNOWN_ACTIVE,
    MAP_SYN_ACTIVE,
    MAP_PROGRAMS,
    MAP_TRACE,
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

pub(super) fn attach_link(
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
pub(super) fn assign_slot(paths: &Paths, index: u32) -> Result<(), KernelError> {
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
pub(super) fn release_slot(paths: &Paths, index: u32) {
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
