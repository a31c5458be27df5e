//! Reading and writing the pinned maps: the config record, counters, global buckets,
//! per-source state, drop events, and how full each map is.

use super::*;

/// Capacity and current size of one bounded map.
#[derive(Clone, Debug, serde::Serialize)]
pub struct MapFill {
    pub name: &'static str,
    pub entries: u64,
    pub capacity: u32,
}

/// The live configuration record.
pub fn read_config(paths: &Paths) -> Result<Config, KernelError> {
    let array: Array<MapData, Config> = open_as(paths, MAP_CONFIG)?;
    array
        .get(&active_config_slot(paths)?, 0)
        .map_err(|source| KernelError::OpenMap {
            name: MAP_CONFIG,
            source,
        })
}

fn active_config_slot(paths: &Paths) -> Result<u32, KernelError> {
    let active: Array<MapData, u32> = open_as(paths, MAP_CONFIG_ACTIVE)?;
    active
        .get(&0, 0)
        .map(|slot| slot % CONFIG_SLOTS)
        .map_err(|source| KernelError::OpenMap {
            name: MAP_CONFIG_ACTIVE,
            source,
        })
}

/// Publishes `config` so that every frame sees either the old record or this one, whole: it
/// is written into the slot frames are not reading, and then that slot is made live. Frames
/// that read the spare slot before the last switch may still run, so first this waits for an
/// RCU grace period (XDP programs run inside RCU read-side sections): after it, none does.
/// The caller holds the lock, so no other writer uses the spare slot meanwhile.
/// A record equal to the live one is not written again (most list changes leave it as it is),
/// which spares those changes the wait.
/// The trace flag (`FLAG_TRACE`) and `known_log2` are not the caller's: they are taken from
/// `TRACE` as it is now and from `KNOWN`'s size.
pub fn write_config(paths: &Paths, config: &Config) -> Result<(), KernelError> {
    publish_config(paths, config, trace_on(paths)?)
}

/// `write_config` with `FLAG_TRACE` as `trace` says.
fn publish_config(paths: &Paths, config: &Config, trace: bool) -> Result<(), KernelError> {
    let mut config = *config;
    config.known_log2 = known_log2(paths)?;
    config.flags &= !FLAG_TRACE;
    if trace {
        config.flags |= FLAG_TRACE;
    }
    let config = &config;
    let mut array: Array<MapData, Config> = open_as(paths, MAP_CONFIG)?;
    let mut active: Array<MapData, u32> = open_as(paths, MAP_CONFIG_ACTIVE)?;
    let live = active_config_slot(paths)?;
    if array.get(&live, 0).is_ok_and(|c| c == *config) {
        return Ok(());
    }
    let spare = (live + 1) % CONFIG_SLOTS;
    wait_for_frames_in_flight();
    array
        .set(spare, config, 0)
        .map_err(|source| KernelError::Update {
            name: MAP_CONFIG,
            source,
        })?;
    active
        .set(0, spare, 0)
        .map_err(|source| KernelError::Update {
            name: MAP_CONFIG_ACTIVE,
            source,
        })
}

/// Returns once every XDP program run that started before the call has finished:
/// `membarrier(MEMBARRIER_CMD_GLOBAL)` is `synchronize_rcu()`. A kernel that refuses it
/// (`nohz_full`) gets a pause far longer than any program run instead.
fn wait_for_frames_in_flight() {
    const MEMBARRIER_CMD_GLOBAL: libc::c_long = 1;
    // SAFETY: membarrier takes no pointers.
    let rc = unsafe { libc::syscall(libc::SYS_membarrier, MEMBARRIER_CMD_GLOBAL, 0, 0) };
    if rc != 0 {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
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

/// Resets the global buckets, so a new configuration starts from full bursts, and the CPUs'
/// notes of them as spent (`SpentNote`), which would outlast the reset. Only while no frame
/// arrives: a CPU's scratch is read and written back whole.
pub fn reset_globals(paths: &Paths) -> Result<(), KernelError> {
    let mut array: Array<MapData, GlobalBucket> = open_as(paths, MAP_GLOBALS)?;
    for i in 0..array.len() {
        let fresh = GlobalBucket::default();
        array
            .set(i, fresh, 0)
            .map_err(|source| KernelError::Update {
                name: MAP_GLOBALS,
                source,
            })?;
    }
    let Some(mut scratch) = open_scratch(paths)? else {
        return Ok(());
    };
    let values = scratch.get(&0, 0).map_err(|source| KernelError::OpenMap {
        name: MAP_CPU_SCRATCH,
        source,
    })?;
    let cleared: Vec<CpuScratch> = values
        .iter()
        .map(|s| CpuScratch {
            events_spent: SpentNote::default(),
            admission_spent: SpentNote::default(),
            newcomer_spent: SpentNote::default(),
            ..*s
        })
        .collect();
    let cleared = PerCpuValues::try_from(cleared).map_err(|e| KernelError::Update {
        name: MAP_CPU_SCRATCH,
        source: MapError::IoError(e),
    })?;
    scratch
        .set(0, cleared, 0)
        .map_err(|source| KernelError::Update {
            name: MAP_CPU_SCRATCH,
            source,
        })
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

/// Data-path health counters summed over CPUs, by `MISC_*` slot, with the suppressed drop
/// events each CPU counts in its `CpuScratch`.
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
    if let Some(scratch) = open_scratch(paths)? {
        let values = scratch.get(&0, 0).map_err(|source| KernelError::OpenMap {
            name: MAP_CPU_SCRATCH,
            source,
        })?;
        if let Some(slot) = out.get_mut(MISC_EVENTS_SUPPRESSED as usize) {
            *slot += values.iter().map(|s| s.events_suppressed).sum::<u64>();
        }
    }
    Ok(out)
}

/// The per-CPU array that holds each CPU's over-limit drops (`CpuScratch::pending`). `None`
/// for a filter loaded by a floodwall from before `CPU_SCRATCH`: drops such a filter holds
/// are not read until it is detached and attached again.
fn open_scratch(paths: &Paths) -> Result<Option<PerCpuArray<MapData, CpuScratch>>, KernelError> {
    if !paths.map_pin(MAP_CPU_SCRATCH).exists() {
        return Ok(None);
    }
    open_as(paths, MAP_CPU_SCRATCH).map(Some)
}

/// What the CPUs hold now: each CPU one source's drops.
fn held_drops(
    pending: Option<&PerCpuArray<MapData, CpuScratch>>,
) -> Result<Vec<PendingDrops>, KernelError> {
    let Some(array) = pending else {
        return Ok(Vec::new());
    };
    let values = array.get(&0, 0).map_err(|source| KernelError::OpenMap {
        name: MAP_CPU_SCRATCH,
        source,
    })?;
    Ok(values
        .iter()
        .map(|s| s.pending)
        .filter(|p| p.count != 0)
        .collect())
}

fn held_for(held: &[PendingDrops], key: &SourceKey) -> u64 {
    held.iter().filter(|p| p.key == *key).map(|p| p.count).sum()
}

/// Per-source state as `top`, bans and `explain` see it: the kernel's record, its drop count
/// with what the CPUs still hold.
pub struct SourceReader {
    map: HashMap<MapData, SourceKey, SourceState>,
    pending: Option<PerCpuArray<MapData, CpuScratch>>,
}

impl SourceReader {
    pub fn open(paths: &Paths) -> Result<SourceReader, KernelError> {
        Ok(SourceReader {
            map: open_as(paths, MAP_SOURCES)?,
            pending: open_scratch(paths)?,
        })
    }

    /// `key`'s state, or `None` if the kernel tracks no such source.
    pub fn get(&self, key: &SourceKey) -> Result<Option<SourceState>, KernelError> {
        let mut state = match self.map.get(key, 0) {
            Ok(state) => state,
            Err(MapError::KeyNotFound) => return Ok(None),
            Err(source) => {
                return Err(KernelError::OpenMap {
                    name: MAP_SOURCES,
                    source,
                });
            }
        };
        state.dropped += held_for(&held_drops(self.pending.as_ref())?, key);
        Ok(Some(state))
    }
}

/// The per-source state map, for single lookups.
pub fn open_sources(
    paths: &Paths,
) -> Result<HashMap<MapData, SourceKey, SourceState>, KernelError> {
    open_as(paths, MAP_SOURCES)
}

/// The arrival times of the global buckets (`GLOBAL_*` slots).
pub fn read_globals(paths: &Paths) -> Result<Vec<u64>, KernelError> {
    let array: Array<MapData, GlobalBucket> = open_as(paths, MAP_GLOBALS)?;
    (0..array.len())
        .map(|i| {
            array
                .get(&i, 0)
                .map(|g| g.tat)
                .map_err(|source| KernelError::OpenMap {
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
    let held = held_drops(open_scratch(paths)?.as_ref())?;
    let mut out = Vec::new();
    for item in map.iter() {
        match item {
            Ok((key, mut state)) => {
                state.dropped += held_for(&held, &key);
                out.push((key, state));
            }
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

pub(super) fn count_keys(map: &Map) -> u64 {
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

/// Switches `floodwall trace` on (with what it matches) or off (`None`).
/// Writes `TRACE`, keeping the live config's `FLAG_TRACE` set whenever `TRACE` is on: a switch
/// on republishes the config with the flag first, a switch off clears the flag after `TRACE`
/// (frames that see the flag with `TRACE` off read `TRACE` and go on). A switch writes the
/// config, so its caller holds the lock; renewing a trace that is on writes `TRACE` alone.
pub fn set_trace(paths: &Paths, trace: Option<&TraceConfig>) -> Result<(), KernelError> {
    let trace = trace.copied().unwrap_or_default();
    let on = trace.on != 0;
    if on {
        let live = read_config(paths)?;
        if !live.trace_on() {
            publish_config(paths, &live, true)?;
        }
    }
    let mut array: Array<MapData, TraceConfig> = open_as(paths, MAP_TRACE)?;
    array
        .set(0, trace, 0)
        .map_err(|source| KernelError::Update {
            name: MAP_TRACE,
            source,
        })?;
    if !on {
        let live = read_config(paths)?;
        if live.trace_on() {
            publish_config(paths, &live, false)?;
        }
    }
    Ok(())
}

/// Whether a trace is on in the kernel (`TRACE`'s `on`).
fn trace_on(paths: &Paths) -> Result<bool, KernelError> {
    let array: Array<MapData, TraceConfig> = open_as(paths, MAP_TRACE)?;
    array
        .get(&0, 0)
        .map(|t| t.on != 0)
        .map_err(|source| KernelError::OpenMap {
            name: MAP_TRACE,
            source,
        })
}
