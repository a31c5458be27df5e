//! Reads address lists in the forms they are published and exported in: plain lists, FireHOL
//! netsets, Spamhaus DROP files and `ipset save` output, and applies one to a list. The form
//! is recognised line by line, so one file may mix them. An import is streamed: a million
//! lines cost the memory of a batch, not of the file.

use std::{
    fs::File,
    io::{BufRead, BufReader, Seek},
    net::IpAddr,
    time::Duration,
};

use filter_common::ListEntry;

use crate::{
    cidr::{Cidr, CidrError},
    kernel::ListMaps,
    lists::{self, ListError},
    paths::Paths,
    state::{ListKind, Origin, Record, unix_now, unix_now_ns},
    store::FeedWrite,
};

/// Lines read, written and put into the kernel per batch.
const BATCH: usize = 65_536;

/// How an import is applied.
pub struct ImportOptions<'a> {
    pub ttl: Option<Duration>,
    pub comment: Option<&'a str>,
    /// Allow blocking a prefix that holds one of this host's addresses.
    pub force: bool,
    /// Make the imported entries exactly this list: earlier imported entries missing from it
    /// are removed in the same change, and entries of other origins are left alone.
    pub replace: bool,
}

/// What an import did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ImportOutcome {
    /// Distinct entries in the list.
    pub entries: u64,
    pub new: u64,
    pub updated: u64,
    /// Earlier imported entries a `replace` removed.
    pub removed: u64,
    /// Entries a `replace` left to the other origin that holds them.
    pub kept_other_origin: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ImportFailure {
    #[error(transparent)]
    Parse(#[from] ImportError),
    #[error(transparent)]
    List(#[from] ListError),
}

impl From<crate::state::StateError> for ImportFailure {
    fn from(e: crate::state::StateError) -> Self {
        ImportFailure::List(e.into())
    }
}

impl From<crate::kernel::KernelError> for ImportFailure {
    fn from(e: crate::kernel::KernelError) -> Self {
        ImportFailure::List(e.into())
    }
}

/// Imports the list in `file` from its start (read twice: checked whole first, so bad input
/// changes nothing; then applied in batches) as one change: all of it or, on any failure, none.
/// `progress` is called with the lines applied so far out of the total it is first given.
pub fn import_file(
    paths: &Paths,
    kind: ListKind,
    file: &mut File,
    options: &ImportOptions<'_>,
    progress: &dyn Fn(u64, u64),
) -> Result<ImportOutcome, ImportFailure> {
    let rewind = |file: &mut File| {
        file.rewind().map_err(|e| ImportError::Read {
            line: 0,
            reason: e.to_string(),
        })
    };
    rewind(file)?;
    let own = lists::own_addresses();
    let mut total = 0;
    for cidr in ListReader::new(BufReader::new(&*file)) {
        let cidr = cidr?;
        if kind == ListKind::Block {
            lists::check_lockout_with(&[cidr], options.force, &own)?;
        }
        total += 1;
    }
    rewind(file)?;
    let (_lock, mut store) = lists::loaded_store(paths)?;
    let mut maps = ListMaps::open(paths, kind)?;
    lists::mark_pending(paths)?;
    let applied = apply(paths, &mut store, &mut maps, kind, file, options, &|done| {
        progress(done, total)
    });
    match applied {
        Ok(outcome) => {
            lists::clear_pending(paths);
            Ok(outcome)
        }
        Err(e) => {
            // The store's change was rolled back: the kernel goes back to what it holds.
            lists::recover(paths, &store)?;
            Err(e)
        }
    }
}

/// The change itself, inside the store's transaction (dropped, so rolled back, on error).
fn apply(
    paths: &Paths,
    store: &mut crate::store::Store,
    maps: &mut ListMaps,
    kind: ListKind,
    file: &mut File,
    options: &ImportOptions<'_>,
    progress: &dyn Fn(u64),
) -> Result<ImportOutcome, ImportFailure> {
    let own = lists::own_addresses();
    let now = unix_now();
    let (unow, mnow) = (unix_now_ns(), lists::mono_now_ns());
    // Rounded up to the next whole second: an entry never expires before its TTL.
    let expires_at = options.ttl.map(|ttl| {
        unow.saturating_add(ttl.as_nanos() as u64)
            .div_ceil(1_000_000_000)
    });
    let expired = store.expired(kind, now)?;
    let live_before = store.count_live(kind, now)?;
    let change = store.change()?;
    for record in &expired {
        maps.remove(&record.cidr)?;
        change.remove(kind, &record.cidr)?;
    }
    let mut outcome = ImportOutcome::default();
    let mut lines = ListReader::new(BufReader::new(&*file));
    let mut batch: Vec<Cidr> = Vec::with_capacity(BATCH);
    let mut kernel: Vec<(Cidr, ListEntry)> = Vec::with_capacity(BATCH);
    let mut done = 0;
    let mut writer = change.feed_writer(kind, options.replace, now)?;
    loop {
        batch.clear();
        for cidr in lines.by_ref().take(BATCH) {
            let cidr = cidr?;
            // Again, as on the first read: the file may have been rewritten in between.
            if kind == ListKind::Block {
                lists::check_lockout_with(&[cidr], options.force, &own)?;
            }
            batch.push(cidr);
        }
        if batch.is_empty() {
            break;
        }
        done += batch.len() as u64;
        // In key order, the store's B-tree is written page by page instead of at random.
        batch.sort_unstable();
        batch.dedup();
        kernel.clear();
        for cidr in &batch {
            let record = Record {
                cidr: *cidr,
                expires_at,
                comment: options.comment.map(str::to_owned),
                origin: Origin::Import,
                added_at: now,
            };
            match writer.write(&record)? {
                FeedWrite::Written => {
                    outcome.entries += 1;
                    kernel.push((*cidr, lists::kernel_entry(&record, unow, mnow)));
                }
                FeedWrite::KeptForeign => {
                    outcome.entries += 1;
                    outcome.kept_other_origin += 1;
                }
                FeedWrite::Repeat => {}
            }
        }
        maps.insert_all(&kernel)?;
        progress(done);
    }
    drop(writer);
    if options.replace {
        change.for_each_untouched(
            kind,
            Origin::Import,
            |record| -> Result<(), ImportFailure> { Ok(maps.remove(&record.cidr)?) },
        )?;
        outcome.removed = change.remove_untouched(kind, Origin::Import, now)?;
    }
    // Every entry that is live now and was not before is new; a replace's removals were live.
    outcome.new = (change.count_live(kind, now)? + outcome.removed).saturating_sub(live_before);
    outcome.updated = outcome
        .entries
        .saturating_sub(outcome.new + outcome.kept_other_origin);
    let limits = change.limits()?.unwrap_or_default();
    crate::limits::publish(paths, &limits, change.list_bits()?)?;
    change.commit()?;
    Ok(outcome)
}

/// The first line of a list that could not be read, numbered from 1, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImportError {
    // The reason is left to `source`, so that error reports printing the chain do not say it
    // twice.
    #[error("line {line}: `{content}`")]
    Line {
        line: usize,
        content: String,
        #[source]
        source: CidrError,
    },
    #[error(
        "line {line}: `{content}`: address ranges are not supported: convert the range to CIDR \
         networks and list those instead"
    )]
    Range { line: usize, content: String },
    #[error(
        "line {line}: `{content}`: this ipset `add` line has no entry: expected \
         `add SET ADDRESS[/PREFIX]`"
    )]
    MissingEntry { line: usize, content: String },
    #[error(
        "line {line}: `{content}`: `nomatch` entries are exceptions cut out of an ipset, and \
         importing one would block the very addresses the set leaves out: remove the line and \
         list the networks around the exception instead"
    )]
    Nomatch { line: usize, content: String },
    #[error("line {line} is not text (UTF-8): is this an address list?")]
    NotText { line: usize },
    #[error("reading line {line}: {reason}")]
    Read { line: usize, reason: String },
}

/// Why a line was rejected, before the line number and content are attached.
enum LineError {
    Cidr(CidrError),
    Range,
    MissingEntry,
    Nomatch,
}

impl LineError {
    fn at(self, line: usize, raw: &str) -> ImportError {
        let content = raw.trim().to_owned();
        match self {
            Self::Cidr(source) => ImportError::Line {
                line,
                content,
                source,
            },
            Self::Range => ImportError::Range { line, content },
            Self::MissingEntry => ImportError::MissingEntry { line, content },
            Self::Nomatch => ImportError::Nomatch { line, content },
        }
    }
}

/// Reads the networks of a list line by line, in order, duplicates included (the store drops
/// them), holding one line at a time.
///
/// Each line is one of:
/// - blank, or only a comment: `#` (plain lists, FireHOL) or `;` (Spamhaus DROP) up to the end
///   of the line, which may also follow an entry;
/// - an address or CIDR network, as in plain lists, FireHOL netsets and Spamhaus DROP files;
/// - `create SET ...` from `ipset save`, which is skipped;
/// - `add SET ENTRY [OPTIONS]` from `ipset save`, whose entry is read and options ignored.
///
/// Anything else is an error naming the line; reading stops there. An empty list is valid.
pub struct ListReader<R> {
    input: R,
    line: usize,
    buf: Vec<u8>,
    done: bool,
}

impl<R: BufRead> ListReader<R> {
    pub fn new(input: R) -> Self {
        ListReader {
            input,
            line: 0,
            buf: Vec::new(),
            done: false,
        }
    }

    /// Reads the next line into `buf`; `false` at the end.
    fn read_line(&mut self) -> Result<bool, ImportError> {
        self.buf.clear();
        let read = self
            .input
            .read_until(b'\n', &mut self.buf)
            .map_err(|e| ImportError::Read {
                line: self.line + 1,
                reason: e.to_string(),
            })?;
        if read > 0 {
            self.line += 1;
        }
        Ok(read > 0)
    }
}

/// The text of a line as read, without its line ending (`\n` or Windows' `\r\n`) or, on the
/// first line, the byte-order mark that Windows editors may write.
fn line_text(buf: &[u8], line: usize) -> Result<&str, ImportError> {
    let text = std::str::from_utf8(buf).map_err(|_| ImportError::NotText { line })?;
    let text = if line == 1 {
        text.strip_prefix('\u{feff}').unwrap_or(text)
    } else {
        text
    };
    Ok(text.trim_end_matches(['\n', '\r']))
}

impl<R: BufRead> Iterator for ListReader<R> {
    type Item = Result<Cidr, ImportError>;

    fn next(&mut self) -> Option<Self::Item> {
        while !self.done {
            let parsed = match self.read_line() {
                Ok(true) => line_text(&self.buf, self.line)
                    .and_then(|raw| parse_line(raw).map_err(|e| e.at(self.line, raw))),
                Ok(false) => break,
                Err(e) => Err(e),
            };
            match parsed {
                Ok(Some(cidr)) => return Some(Ok(cidr)),
                Ok(None) => {}
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            }
        }
        None
    }
}

/// The network on one line, or `None` for a line with nothing to import.
fn parse_line(raw: &str) -> Result<Option<Cidr>, LineError> {
    let data = match raw.find(['#', ';']) {
        Some(comment) => &raw[..comment],
        None => raw,
    };
    let data = data.trim();
    if data.is_empty() {
        return Ok(None);
    }
    let mut tokens = data.split_ascii_whitespace();
    let entry = match tokens.next() {
        Some("create") => return Ok(None),
        // Skip the set name: the entry is the third token.
        Some("add") => {
            let entry = tokens.nth(1).ok_or(LineError::MissingEntry)?;
            if tokens.any(|option| option == "nomatch") {
                return Err(LineError::Nomatch);
            }
            entry
        }
        // The whole line, so that a second token makes it malformed.
        _ => data,
    };
    if is_range(entry) {
        return Err(LineError::Range);
    }
    entry.parse().map(Some).map_err(LineError::Cidr)
}

/// Whether `entry` looks like an ipset range (`192.0.2.4-192.0.2.9`, `192.0.2.4-9`): a `-`
/// after an address. No address or CIDR contains a `-`, so this only picks the clearer error.
fn is_range(entry: &str) -> bool {
    entry
        .split_once('-')
        .is_some_and(|(first, _)| first.parse::<IpAddr>().is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidrs(texts: &[&str]) -> Vec<Cidr> {
        texts
            .iter()
            .map(|text| {
                text.parse()
                    .unwrap_or_else(|err| panic!("`{text}` should parse: {err}"))
            })
            .collect()
    }

    fn parse_list(text: &str) -> Result<Vec<Cidr>, ImportError> {
        ListReader::new(text.as_bytes()).collect()
    }

    fn parse(text: &str) -> Vec<Cidr> {
        parse_list(text).unwrap_or_else(|err| panic!("the list should parse: {err:?}"))
    }

    fn parse_err(text: &str) -> ImportError {
        match parse_list(text) {
            Ok(list) => panic!("the list should be rejected, but parsed as {list:?}"),
            Err(err) => err,
        }
    }

    #[test]
    fn reads_plain_lists_with_comments_and_blank_lines() {
        let text = "\
# my blocklist
192.0.2.1

10.0.0.0/8   # a trailing comment
\t2001:db8::/32\t
   # an indented comment
2001:db8:1::1
";
        assert_eq!(
            parse(text),
            cidrs(&["192.0.2.1", "10.0.0.0/8", "2001:db8::/32", "2001:db8:1::1"])
        );
    }

    #[test]
    fn reads_firehol_netsets() {
        let text = "\
#
# firehol_level1
#
# ipv4 hash:net ipset
#
# Maintainer      : FireHOL
# Maintainer URL  : http://iplists.firehol.org/
#
# This File Date  : Mon Jan 01 00:00:00 UTC 2024
#
0.0.0.0/8
1.10.16.0/20
1.19.0.0/16
5.188.10.179
";
        assert_eq!(
            parse(text),
            cidrs(&["0.0.0.0/8", "1.10.16.0/20", "1.19.0.0/16", "5.188.10.179"])
        );
    }

    #[test]
    fn reads_spamhaus_drop_files() {
        let text = "\
; Spamhaus DROP List 2024/01/01 - (c) 2024 The Spamhaus Project SLU
; https://www.spamhaus.org/drop/drop.txt
; Last-Modified: Mon, 01 Jan 2024 00:00:00 GMT
; Expires: Mon, 01 Jan 2024 01:00:00 GMT
1.10.16.0/20 ; SBL256894
1.19.0.0/16 ; SBL434604
2001:db8::/32 ; SBL999999
";
        assert_eq!(
            parse(text),
            cidrs(&["1.10.16.0/20", "1.19.0.0/16", "2001:db8::/32"])
        );
    }

    #[test]
    fn reads_ipset_save_output() {
        let text = "\
create blocklist hash:net family inet hashsize 1024 maxelem 65536
add blocklist 192.0.2.0/24
add blocklist 198.51.100.7 timeout 300
add blocklist 203.0.113.0/25 comment \"abuse # report; 42\"
create blocklist6 hash:net family inet6 hashsize 1024 maxelem 65536
add blocklist6 2001:db8::/32 packets 10 bytes 800
";
        assert_eq!(
            parse(text),
            cidrs(&[
                "192.0.2.0/24",
                "198.51.100.7",
                "203.0.113.0/25",
                "2001:db8::/32"
            ])
        );
    }

    #[test]
    fn reads_a_mix_of_formats() {
        let text = "\
; Spamhaus DROP List
# FireHOL header
create blocklist hash:net family inet hashsize 1024 maxelem 65536
1.10.16.0/20 ; SBL256894
add blocklist 192.0.2.0/24
10.0.0.0/8 # private
2001:db8::1
";
        assert_eq!(
            parse(text),
            cidrs(&["1.10.16.0/20", "192.0.2.0/24", "10.0.0.0/8", "2001:db8::1"])
        );
    }

    #[test]
    fn an_empty_list_is_valid() {
        assert_eq!(parse(""), Vec::new());
        assert_eq!(parse("\n\n   \n"), Vec::new());
        assert_eq!(parse("# only\n; comments\r\n"), Vec::new());
        assert_eq!(parse("create blocklist hash:net family inet\n"), Vec::new());
    }

    #[test]
    fn reads_windows_line_endings() {
        let text = "# header\r\n192.0.2.1\r\n\r\n10.0.0.0/8 ; note\r\nadd set 2001:db8::/32\r\n";
        assert_eq!(
            parse(text),
            cidrs(&["192.0.2.1", "10.0.0.0/8", "2001:db8::/32"])
        );
        assert_eq!(
            parse_err("192.0.2.1\r\n\r\n10.0.0.1/8\r\n"),
            ImportError::Line {
                line: 3,
                content: "10.0.0.1/8".to_owned(),
                source: CidrError::HostBitsSet {
                    input: "10.0.0.1/8".to_owned(),
                    network: cidrs(&["10.0.0.0/8"])[0],
                },
            }
        );
    }

    #[test]
    fn names_a_line_that_is_not_text() {
        let read: Result<Vec<Cidr>, _> = ListReader::new(&b"192.0.2.1\n\xff\xfe\n"[..]).collect();
        assert_eq!(read, Err(ImportError::NotText { line: 2 }));
    }

    #[test]
    fn skips_a_byte_order_mark() {
        assert_eq!(parse("\u{feff}192.0.2.1\r\n"), cidrs(&["192.0.2.1"]));
    }

    #[test]
    fn yields_every_entry_in_order_duplicates_included() {
        let text = "\
10.0.0.0/8
192.0.2.1
10.0.0.0/8
add set 192.0.2.1
192.0.2.1/32
10.0.0.0/9
2001:db8::/32
2001:db8:0::/32
";
        // The store drops the repeats (`ListImport`), so the reader holds nothing back.
        assert_eq!(
            parse(text),
            cidrs(&[
                "10.0.0.0/8",
                "192.0.2.1",
                "10.0.0.0/8",
                "192.0.2.1",
                "192.0.2.1",
                "10.0.0.0/9",
                "2001:db8::/32",
                "2001:db8::/32",
            ])
        );
    }

    #[test]
    fn reports_the_first_malformed_line_by_number() {
        let text = "\
# header
192.0.2.1

10.0.0.0/33 # too long
garbage
";
        assert_eq!(
            parse_err(text),
            ImportError::Line {
                line: 4,
                content: "10.0.0.0/33 # too long".to_owned(),
                source: CidrError::PrefixTooLong {
                    input: "10.0.0.0/33".to_owned(),
                    max: 32,
                },
            }
        );
    }

    #[test]
    fn rejects_anything_that_is_not_a_known_form() {
        for (text, line, input) in [
            ("192.0.2.1\n1.2.3.4 5.6.7.8\n", 2, "1.2.3.4 5.6.7.8"),
            ("192.0.2.1\n// comment\n", 2, "// comment"),
            ("192.0.2.1\n300.1.1.1\n", 2, "300.1.1.1"),
            ("del set 192.0.2.1\n", 1, "del set 192.0.2.1"),
            ("add set 192.0.2.0/24,tcp:80\n", 1, "192.0.2.0/24,tcp:80"),
            ("add set not-an-address\n", 1, "not-an-address"),
        ] {
            assert!(
                matches!(
                    parse_list(text),
                    Err(ImportError::Line {
                        line: got_line,
                        source: CidrError::Invalid { input: got_input },
                        ..
                    }) if got_line == line && got_input == input
                ),
                "{text:?}: {:?}",
                parse_list(text)
            );
        }
    }

    #[test]
    fn rejects_ranges_naming_the_line() {
        assert_eq!(
            parse_err(
                "create set hash:ip family inet\nadd set 192.0.2.0/24\nadd set 192.0.2.4-192.0.2.9\n"
            ),
            ImportError::Range {
                line: 3,
                content: "add set 192.0.2.4-192.0.2.9".to_owned(),
            }
        );
        assert_eq!(
            parse_err("192.0.2.4-192.0.2.9 # plain\n"),
            ImportError::Range {
                line: 1,
                content: "192.0.2.4-192.0.2.9 # plain".to_owned(),
            }
        );
        assert_eq!(
            parse_err("\n\nadd set 192.0.2.4-9\n"),
            ImportError::Range {
                line: 3,
                content: "add set 192.0.2.4-9".to_owned(),
            }
        );
    }

    #[test]
    fn rejects_ipset_add_lines_without_an_entry() {
        for text in ["add\n", "add set\n", "add set # comment\n"] {
            assert_eq!(
                parse_err(text),
                ImportError::MissingEntry {
                    line: 1,
                    content: text.trim().to_owned(),
                },
                "{text:?}"
            );
        }
    }

    #[test]
    fn rejects_ipset_nomatch_exceptions() {
        assert_eq!(
            parse_err("add set 10.0.0.0/8\nadd set 10.1.0.0/16 nomatch\n"),
            ImportError::Nomatch {
                line: 2,
                content: "add set 10.1.0.0/16 nomatch".to_owned(),
            }
        );
    }

    #[test]
    fn error_messages_name_the_line_and_chain_the_reason() {
        let err = parse_err("192.0.2.1\n10.0.0.1/33\n");
        assert_eq!(err.to_string(), "line 2: `10.0.0.1/33`");
        let reason = std::error::Error::source(&err)
            .map(ToString::to_string)
            .unwrap_or_default();
        assert_eq!(
            reason,
            "`10.0.0.1/33` has a prefix length longer than 32: use a prefix length from 0 to 32"
        );

        let err = parse_err("add set 192.0.2.4-192.0.2.9\n");
        assert!(
            err.to_string()
                .starts_with("line 1: `add set 192.0.2.4-192.0.2.9`: address ranges"),
            "{err}"
        );
    }

    #[test]
    fn reads_a_million_lines() {
        const COUNT: u32 = 1_000_000;
        let mut text = String::with_capacity(COUNT as usize * 16);
        for i in 0..COUNT {
            let [_, b, c, d] = i.to_be_bytes();
            text.push_str(&format!("10.{b}.{c}.{d}\n"));
        }
        assert_eq!(parse(&text).len(), COUNT as usize);
    }
}
