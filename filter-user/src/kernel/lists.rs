//! The four maps of each list (exact hosts and prefixes, IPv4 and IPv6).

use super::*;

/// A list's cover bits built up in memory from the entries it keeps, for
/// [`ListMaps::replace_cover`]: host bits per family (`MAP_HOST_COVER`) and /16 bits per
/// family (`MAP_NET_COVER`).
pub struct CoverBits {
    hosts: [Vec<u64>; 2],
    nets: [Vec<u64>; 2],
}

impl Default for CoverBits {
    fn default() -> Self {
        let hosts = || vec![0; HOST_COVER_WORDS as usize];
        let nets = || vec![0; NET_COVER_WORDS as usize];
        CoverBits {
            hosts: [hosts(), hosts()],
            nets: [nets(), nets()],
        }
    }
}

impl CoverBits {
    pub fn add(&mut self, cidr: &Cidr) {
        let family = usize::from(!cidr.is_v4());
        if cidr.is_host() {
            let bit = host_cover_bit(&source_key(cidr.addr())) as usize;
            self.hosts[family][bit / 64] |= 1 << (bit % 64);
            return;
        }
        let (first, last) = net_cover_range(top16(cidr), u32::from(cidr.prefix_len()));
        for bit in first..=last {
            let bit = usize::from(bit);
            self.nets[family][bit / 64] |= 1 << (bit % 64);
        }
    }
}

/// A prefix's first 16 bits.
fn top16(cidr: &Cidr) -> u16 {
    match cidr.addr() {
        IpAddr::V4(a) => u16::from_be_bytes([a.octets()[0], a.octets()[1]]),
        IpAddr::V6(a) => a.segments()[0],
    }
}

/// The four maps of one list.
pub struct ListMaps {
    kind: ListKind,
    host4: HashMap<MapData, [u8; 4], ListEntry>,
    net4: LpmTrie<MapData, [u8; 4], ListEntry>,
    host6: HashMap<MapData, [u8; 16], ListEntry>,
    net6: LpmTrie<MapData, [u8; 16], ListEntry>,
    /// The /16s the list's prefixes may cover (`MAP_NET_COVER`).
    cover: Array<MapData, u64>,
    /// The hosts the list may hold (`MAP_HOST_COVER`).
    hosts: Bitmap,
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
            cover: open_as(paths, MAP_NET_COVER)?,
            hosts: host_cover(paths)?,
        })
    }

    /// Sets the bit of `addr` (an exact host), so the kernel looks it up. Done before the host
    /// is inserted, as in [`Self::cover`].
    fn cover_host(&self, addr: IpAddr) {
        let key = source_key(addr);
        let base = host_cover_base(self.kind == ListKind::Allow, addr.is_ipv4());
        self.hosts.set(base, host_cover_bit(&key));
    }

    /// Drops the cover bits of entries the list no longer holds: its bits become `bits`'
    /// exactly. Only with the lock held, once the maps hold every entry `bits` was built from
    /// and no other. A frame meanwhile reads each word old or new, and both have the bits of
    /// every entry in the maps.
    pub fn replace_cover(&mut self, bits: &CoverBits) -> Result<(), KernelError> {
        let allow = self.kind == ListKind::Allow;
        for (family, v4) in [(0, true), (1, false)] {
            self.hosts
                .store_all(host_cover_base(allow, v4), &bits.hosts[family]);
            let base = net_cover_base(allow, v4);
            for (i, word) in bits.nets[family].iter().enumerate() {
                let index = base + i as u32;
                if self.net_word(index)? != *word {
                    self.set_net_word(index, *word)?;
                }
            }
        }
        Ok(())
    }

    fn net_word(&self, index: u32) -> Result<u64, KernelError> {
        self.cover
            .get(&index, 0)
            .map_err(|source| KernelError::OpenMap {
                name: MAP_NET_COVER,
                source,
            })
    }

    fn set_net_word(&mut self, index: u32, word: u64) -> Result<(), KernelError> {
        self.cover
            .set(index, word, 0)
            .map_err(|source| KernelError::Update {
                name: MAP_NET_COVER,
                source,
            })
    }

    /// Sets the cover bits of the /16s `cidr` (a prefix) reaches, so the kernel looks it up
    /// for addresses there. Done before the prefix is inserted: a prefix in the trie whose
    /// bits were clear could be skipped.
    fn cover(&mut self, cidr: &Cidr) -> Result<(), KernelError> {
        let (first, last) = net_cover_range(top16(cidr), u32::from(cidr.prefix_len()));
        let base = net_cover_base(self.kind == ListKind::Allow, cidr.is_v4());
        for word in u32::from(first) / 64..=u32::from(last) / 64 {
            let lo = (u32::from(first).max(word * 64)) % 64;
            let hi = (u32::from(last).min(word * 64 + 63)) % 64;
            let bits = (u64::MAX >> (63 - (hi - lo))) << lo;
            let index = base + word;
            let old = self.net_word(index)?;
            if old & bits != bits {
                self.set_net_word(index, old | bits)?;
            }
        }
        Ok(())
    }

    pub fn insert(&mut self, cidr: &Cidr, entry: &ListEntry) -> Result<(), KernelError> {
        let [h4, n4, h6, n6] = names(self.kind);
        let entry = ListEntry {
            prefix_len: u32::from(cidr.prefix_len()),
            ..*entry
        };
        if cidr.is_host() {
            self.cover_host(cidr.addr());
        } else {
            self.cover(cidr)?;
        }
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

    /// Calls `f` with every entry in the four maps, as CIDRs, without holding them all.
    pub fn for_each_cidr<E: From<KernelError>>(
        &self,
        mut f: impl FnMut(Cidr) -> Result<(), E>,
    ) -> Result<(), E> {
        let [h4, n4, h6, n6] = names(self.kind);
        let err = |name, source| KernelError::OpenMap { name, source };
        let mut each = |addr: IpAddr, len: u32| match Cidr::new(addr, len as u8) {
            Ok(cidr) => f(cidr),
            Err(_) => Ok(()),
        };
        for key in self.host4.keys() {
            each(IpAddr::from(key.map_err(|e| err(h4, e))?), 32)?;
        }
        for key in self.net4.keys() {
            let key = key.map_err(|e| err(n4, e))?;
            each(IpAddr::from(key.data()), key.prefix_len())?;
        }
        for key in self.host6.keys() {
            each(IpAddr::from(key.map_err(|e| err(h6, e))?), 128)?;
        }
        for key in self.net6.keys() {
            let key = key.map_err(|e| err(n6, e))?;
            each(IpAddr::from(key.data()), key.prefix_len())?;
        }
        Ok(())
    }

    /// Inserts every entry: exact hosts in batches (one `bpf(2)` call per many thousand),
    /// prefixes one by one (prefix tries have no batch update). Stops at the first error.
    pub fn insert_all(&mut self, items: &[(Cidr, ListEntry)]) -> Result<(), KernelError> {
        const BATCH: usize = 65_536;
        let [h4, _, h6, _] = names(self.kind);
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
                    self.cover_host(cidr.addr());
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
            }
        }
        for (cidr, entry) in items.iter().filter(|(c, _)| !c.is_host()) {
            self.insert(cidr, entry)?;
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

pub(super) fn names(kind: ListKind) -> [&'static str; 4] {
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
pub(super) fn list_of_map(map: &str) -> &'static str {
    if map.starts_with("ALLOW") {
        ListKind::Allow.name()
    } else {
        ListKind::Block.name()
    }
}

/// The `[capacity]` key that sizes a list map (`BLOCK4_HOST`: `block_hosts`).
pub(super) fn capacity_key(map: &str) -> &'static str {
    match (map.starts_with("ALLOW"), map.ends_with("_HOST")) {
        (true, true) => "allow_hosts",
        (true, false) => "allow_nets",
        (false, true) => "block_hosts",
        (false, false) => "block_nets",
    }
}

pub(super) fn full_or_update(name: &'static str, source: MapError, capacity: u32) -> KernelError {
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
