//! Reads address lists in the forms they are published and exported in: plain lists, FireHOL
//! netsets, Spamhaus DROP files and `ipset save` output. The form is recognised line by line,
//! so one file may mix them.

use std::net::IpAddr;

use crate::cidr::{Cidr, CidrError};

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

/// Reads every network in `text`, in order of first appearance and without exact duplicates.
///
/// Each line is one of:
/// - blank, or only a comment: `#` (plain lists, FireHOL) or `;` (Spamhaus DROP) up to the end
///   of the line, which may also follow an entry;
/// - an address or CIDR network, as in plain lists, FireHOL netsets and Spamhaus DROP files;
/// - `create SET ...` from `ipset save`, which is skipped;
/// - `add SET ENTRY [OPTIONS]` from `ipset save`, whose entry is read and options ignored.
///
/// Anything else stops reading at the first bad line. An empty list is valid.
pub fn parse_list(text: &str) -> Result<Vec<Cidr>, ImportError> {
    // Lists saved by Windows editors may start with a byte-order mark.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut cidrs = Vec::new();
    // `lines` also splits at `\r\n`, so Windows line endings need nothing more.
    for (index, raw) in text.lines().enumerate() {
        let entry = parse_line(raw).map_err(|err| err.at(index + 1, raw))?;
        cidrs.extend(entry);
    }
    Ok(dedup_keeping_first(cidrs))
}

/// Drops every repeat of an earlier network. Sorting rather than a hash set: published lists
/// are mostly sorted already, which makes this several times faster at a million entries.
fn dedup_keeping_first(cidrs: Vec<Cidr>) -> Vec<Cidr> {
    let mut numbered: Vec<(Cidr, usize)> = cidrs
        .into_iter()
        .enumerate()
        .map(|(index, cidr)| (cidr, index))
        .collect();
    // Equal networks sort by position, so `dedup_by_key` keeps the first occurrence.
    numbered.sort_unstable();
    numbered.dedup_by_key(|(cidr, _)| *cidr);
    numbered.sort_unstable_by_key(|&(_, index)| index);
    numbered.into_iter().map(|(cidr, _)| cidr).collect()
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
    fn skips_a_byte_order_mark() {
        assert_eq!(parse("\u{feff}192.0.2.1\r\n"), cidrs(&["192.0.2.1"]));
    }

    #[test]
    fn drops_exact_duplicates_keeping_the_first_order() {
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
        assert_eq!(
            parse(text),
            cidrs(&["10.0.0.0/8", "192.0.2.1", "10.0.0.0/9", "2001:db8::/32"])
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
