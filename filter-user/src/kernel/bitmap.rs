//! The bitmaps that let the kernel skip a lookup (`HOST_COVER`, `KNOWN`): array maps of u64
//! words the controller maps into memory, so that it sets and clears bits with the same atomic
//! operations the kernel uses, without a system call per word and without losing a bit the
//! kernel sets at the same moment.

use std::{
    os::fd::{AsFd as _, AsRawFd as _},
    sync::atomic::{AtomicU64, Ordering},
};

use filter_common::{
    FAMILY_V4, FAMILY_V6, MAP_HOST_COVER, MAP_KNOWN, MAP_KNOWN_ACTIVE, SourceKey, known_bit,
    known_words,
};

use aya::maps::MapFd;

use super::*;

/// One memory-mapped array of u64 words.
pub struct Bitmap {
    name: &'static str,
    ptr: *mut AtomicU64,
    words: usize,
    len: usize,
}

// SAFETY: the mapping is shared memory accessed only through atomics.
unsafe impl Send for Bitmap {}
// SAFETY: as above.
unsafe impl Sync for Bitmap {}

impl Bitmap {
    pub fn open(paths: &Paths, name: &'static str) -> Result<Bitmap, KernelError> {
        let array: Array<MapData, u64> = open_as(paths, name)?;
        let fd = array.map().fd().as_fd().as_raw_fd();
        let words = array.len() as usize;
        // SAFETY: plain sysconf.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        let len = (words * 8).div_ceil(page) * page;
        // SAFETY: maps the map's value area (the kernel checks the map allows it); the
        // mapping stays valid after the map's fd closes, until `munmap` in `drop`.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(KernelError::Mmap {
                name,
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(Bitmap {
            name,
            ptr: ptr.cast(),
            words,
            len,
        })
    }

    fn word(&self, index: u32) -> &AtomicU64 {
        let index = index as usize;
        assert!(
            index < self.words,
            "{}: word {index} out of range",
            self.name
        );
        // SAFETY: in range of the mapping, which lives as long as `self`; 8-aligned (page).
        unsafe { &*self.ptr.add(index) }
    }

    /// Sets bit `bit` of the bitmap that starts at word `base`.
    pub fn set(&self, base: u32, bit: u32) {
        self.word(base + bit / 64)
            .fetch_or(1 << (bit % 64), Ordering::SeqCst);
    }

    pub fn is_set(&self, base: u32, bit: u32) -> bool {
        self.word(base + bit / 64).load(Ordering::SeqCst) & (1 << (bit % 64)) != 0
    }

    /// Clears the `words` words at `base`.
    pub fn clear(&self, base: u32, words: u32) {
        for i in base..base + words {
            self.word(i).store(0, Ordering::SeqCst);
        }
    }

    /// Replaces the `bits.len()` words at `base`.
    pub fn store_all(&self, base: u32, bits: &[u64]) {
        for (i, b) in bits.iter().enumerate() {
            self.word(base + i as u32).store(*b, Ordering::SeqCst);
        }
    }

    /// Set bits among the `words` words at `base`.
    pub fn count(&self, base: u32, words: u32) -> u64 {
        (base..base + words)
            .map(|i| u64::from(self.word(i).load(Ordering::Relaxed).count_ones()))
            .sum()
    }
}

impl Drop for Bitmap {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `open`, not used after this.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// The key of an unmasked address, as the kernel's parser writes it.
pub fn source_key(addr: IpAddr) -> SourceKey {
    let mut key = SourceKey {
        family: if addr.is_ipv4() { FAMILY_V4 } else { FAMILY_V6 },
        addr: [0; 16],
    };
    match addr {
        IpAddr::V4(a) => key.addr[..4].copy_from_slice(&a.octets()),
        IpAddr::V6(a) => key.addr = a.octets(),
    }
    key
}

/// Opens the hosts' bitmap (`MAP_HOST_COVER`).
pub fn host_cover(paths: &Paths) -> Result<Bitmap, KernelError> {
    Bitmap::open(paths, MAP_HOST_COVER)
}

/// How full the `KNOWN` bitmap's generations were around a rebuild.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KnownRebuild {
    /// Set bits of the generation the kernel read before.
    pub before: u64,
    /// Set bits of the rebuilt generation, which the kernel reads now.
    pub after: u64,
    /// Sources found in `SOURCES`.
    pub sources: u64,
}

/// The `KNOWN` bitmap and which generation the kernel reads.
/// A `KNOWN` generation's size as the map was created, as a power of two in bits
/// (`Config::known_log2`).
pub fn known_log2(paths: &Paths) -> Result<u32, KernelError> {
    let array: Array<MapData, u64> = open_as(paths, MAP_KNOWN)?;
    Ok(generation_log2(array.len()))
}

/// The size of each of the two generations in `entries` words.
fn generation_log2(entries: u32) -> u32 {
    (entries / 2).trailing_zeros() + 6
}

pub struct Known {
    active: Array<MapData, u32>,
    bits: Bitmap,
    /// A generation's size, `2^log2` bits, from the map's own length.
    log2: u32,
    words: u32,
}

impl Known {
    pub fn open(paths: &Paths) -> Result<Known, KernelError> {
        let bits = Bitmap::open(paths, MAP_KNOWN)?;
        let log2 = generation_log2(u32::try_from(bits.words).unwrap_or(0));
        Ok(Known {
            active: open_as(paths, MAP_KNOWN_ACTIVE)?,
            log2,
            words: known_words(log2),
            bits,
        })
    }

    /// A generation's size as a power of two in bits (`Config::known_log2`).
    pub fn log2(&self) -> u32 {
        self.log2
    }

    /// Bits in a generation.
    pub fn bits(&self) -> u64 {
        1u64 << self.log2
    }

    /// The generation the kernel reads.
    fn active(&self) -> Result<u32, KernelError> {
        self.active
            .get(&0, 0)
            .map(|g| g & 1)
            .map_err(|source| KernelError::OpenMap {
                name: MAP_KNOWN_ACTIVE,
                source,
            })
    }

    /// Set bits of the generation the kernel reads.
    pub fn fill(&self) -> Result<u64, KernelError> {
        Ok(self.bits.count(self.active()? * self.words, self.words))
    }

    /// Whether the kernel looks `key` up in `SOURCES` (its bit in the active generation).
    pub fn contains(&self, key: &SourceKey) -> Result<bool, KernelError> {
        Ok(self
            .bits
            .is_set(self.active()? * self.words, known_bit(key, self.log2)))
    }

    /// Rebuilds the idle generation from `SOURCES` and makes it the active one, so bits of
    /// sources that left the map (evicted) stop costing the kernel a lookup. No source with
    /// state is ever missed: the idle generation is cleared first, then every key in
    /// `SOURCES` has its bit set again. A source the kernel admits after its word was cleared
    /// has its bit set by the kernel itself (it sets both generations); one admitted before
    /// had its state inserted before its bit was set, so it is in the map when the scan
    /// starts. Set and clear are atomic, on both sides. One process at a time
    /// (`floodwall run`).
    pub fn rebuild(&mut self, paths: &Paths) -> Result<KnownRebuild, KernelError> {
        let active = self.active()?;
        let idle = 1 - active;
        let (words, log2) = (self.words, self.log2);
        let before = self.bits.count(active * words, words);
        self.bits.clear(idle * words, words);
        let map: HashMap<MapData, SourceKey, SourceState> = open_as(paths, MAP_SOURCES)?;
        let mut sources = 0;
        let bits = &self.bits;
        for_each_source_key(map.map().fd(), |key| {
            bits.set(idle * words, known_bit(key, log2));
            sources += 1;
        })?;
        self.active
            .set(0, idle, 0)
            .map_err(|source| KernelError::Update {
                name: MAP_KNOWN_ACTIVE,
                source,
            })?;
        Ok(KnownRebuild {
            before,
            after: self.bits.count(idle * words, words),
            sources,
        })
    }
}

/// Calls `f` with every key in `SOURCES`, read in batches by bucket (see
/// `sys::map_lookup_batch`): a walk by `get_next_key` starts over whenever the key it stands
/// on is evicted, which under a flood could repeat without end.
fn for_each_source_key(fd: &MapFd, mut f: impl FnMut(&SourceKey)) -> Result<(), KernelError> {
    const KEY: usize = size_of::<SourceKey>();
    const VALUE: usize = size_of::<SourceState>();
    let mut batch = 4096usize;
    let mut cursor = None;
    loop {
        let mut keys = vec![0u8; batch * KEY];
        let mut values = vec![0u8; batch * VALUE];
        let (n, next) =
            match crate::sys::map_lookup_batch(fd, cursor, &mut keys, &mut values, batch as u32) {
                Ok(read) => read,
                // One bucket holds more entries than the batch: read it with a bigger one.
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) && batch < 1 << 20 => {
                    batch *= 4;
                    continue;
                }
                Err(io_error) => {
                    return Err(KernelError::OpenMap {
                        name: MAP_SOURCES,
                        source: MapError::SyscallError(aya::sys::SyscallError {
                            call: "BPF_MAP_LOOKUP_BATCH",
                            io_error,
                        }),
                    });
                }
            };
        for chunk in keys[..n as usize * KEY].chunks_exact(KEY) {
            let mut key = SourceKey {
                family: u32::from_ne_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]),
                addr: [0; 16],
            };
            key.addr.copy_from_slice(&chunk[4..]);
            f(&key);
        }
        match next {
            Some(next) => cursor = Some(next),
            None => return Ok(()),
        }
    }
}
