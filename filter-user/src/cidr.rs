//! IPv4 and IPv6 networks in CIDR notation: the entries of floodwall's allow and block lists.
//! The network arithmetic and parsing are `ipnet`'s; this type adds what the lists need on top:
//! host bits are an error (not silently masked), errors that say what to write, and a single
//! host shown as a bare address.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;

/// An IPv4 or IPv6 network: an address and a prefix length, with no host bits set below the
/// prefix. A single address is a network whose prefix covers the whole address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cidr(IpNet);

/// Why a text or an address and prefix length is not a [`Cidr`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    #[error(
        "`{input}` is not an IP address or CIDR: expected an address or CIDR such as \
         192.0.2.0/24 or 2001:db8::/32"
    )]
    Invalid { input: String },
    #[error("`{input}` has a prefix length longer than {max}: use a prefix length from 0 to {max}")]
    PrefixTooLong { input: String, max: u8 },
    #[error("`{input}` has host bits set below the prefix: did you mean `{network}`?")]
    HostBitsSet { input: String, network: Cidr },
}

impl Cidr {
    /// The network `addr/prefix_len`; `addr` must have no bits set below the prefix.
    pub fn new(addr: IpAddr, prefix_len: u8) -> Result<Self, CidrError> {
        Self::checked(addr, prefix_len, || format!("{addr}/{prefix_len}"))
    }

    /// The single address `addr` (/32 or /128).
    pub fn host(addr: IpAddr) -> Self {
        Self(IpNet::from(addr))
    }

    /// The network of length `prefix_len` that holds `addr`, bits below the prefix cleared:
    /// for feeds that name a range by any address in it, where a typo is not the risk.
    pub fn covering(addr: IpAddr, prefix_len: u8) -> Result<Self, CidrError> {
        IpNet::new(addr, prefix_len)
            .map(|net| Self(net.trunc()))
            .map_err(|_| CidrError::PrefixTooLong {
                input: format!("{addr}/{prefix_len}"),
                max: max_prefix_len(addr),
            })
    }

    /// `input` names the rejected value in errors; it is a closure so that parsing a valid
    /// entry allocates nothing, which matters for lists of millions of lines.
    fn checked(
        addr: IpAddr,
        prefix_len: u8,
        input: impl FnOnce() -> String,
    ) -> Result<Self, CidrError> {
        let Ok(net) = IpNet::new(addr, prefix_len) else {
            return Err(CidrError::PrefixTooLong {
                input: input(),
                max: max_prefix_len(addr),
            });
        };
        let network = Self(net.trunc());
        // Silently masking would turn a typo such as `10.0.0.1/8` into a much wider block
        // than the user meant, so the user has to write the network out.
        if network.addr() != addr {
            return Err(CidrError::HostBitsSet {
                input: input(),
                network,
            });
        }
        Ok(network)
    }

    /// The network address, with every bit below the prefix clear.
    pub fn addr(&self) -> IpAddr {
        self.0.network()
    }

    pub fn prefix_len(&self) -> u8 {
        self.0.prefix_len()
    }

    /// Whether this network is a single address (`/32` for IPv4, `/128` for IPv6).
    pub fn is_host(&self) -> bool {
        self.0.prefix_len() == self.0.max_prefix_len()
    }

    pub fn is_v4(&self) -> bool {
        matches!(self.0, IpNet::V4(_))
    }

    /// Whether `ip` is inside this network. An IPv4-mapped IPv6 address (`::ffff:1.2.3.4`) is
    /// never inside an IPv4 network: the filter sees it in IPv6 frames and looks it up as IPv6.
    pub fn contains(&self, ip: &IpAddr) -> bool {
        self.0.contains(ip)
    }

    /// Whether every address of `other` is inside this network.
    pub fn contains_cidr(&self, other: &Cidr) -> bool {
        self.0.contains(&other.0)
    }

    /// Whether this network and `other` share at least one address. Two CIDR networks are
    /// either disjoint or one contains the other, so containment either way is enough.
    pub fn overlaps(&self, other: &Cidr) -> bool {
        self.contains_cidr(other) || other.contains_cidr(self)
    }

    /// The network address's bytes, in network order, if this is an IPv4 network.
    pub fn octets_v4(&self) -> Option<[u8; 4]> {
        match self.0 {
            IpNet::V4(net) => Some(net.network().octets()),
            IpNet::V6(_) => None,
        }
    }

    /// The network address's bytes, in network order, if this is an IPv6 network.
    pub fn octets_v6(&self) -> Option<[u8; 16]> {
        match self.0 {
            IpNet::V4(_) => None,
            IpNet::V6(net) => Some(net.network().octets()),
        }
    }
}

fn max_prefix_len(addr: IpAddr) -> u8 {
    match addr {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}

impl FromStr for Cidr {
    type Err = CidrError;

    /// Reads `ADDRESS` (a single host) or `ADDRESS/PREFIX_LEN`, ignoring surrounding whitespace.
    fn from_str(input: &str) -> Result<Self, Self::Err> {
        // Whitespace around the entry is what copying from a terminal or a file adds; whitespace
        // inside it (`1.2.3.4/ 8`) is a malformed entry.
        let input = input.trim();
        let invalid = || CidrError::Invalid {
            input: input.to_owned(),
        };
        let Some((addr_text, prefix_text)) = input.split_once('/') else {
            return input.parse().map(Self::host).map_err(|_| invalid());
        };
        match input.parse::<IpNet>() {
            Ok(net) => Self::checked(net.addr(), net.prefix_len(), || input.to_owned()),
            // Only to name the fault: an address with a prefix too long for it.
            Err(_) => match addr_text.parse::<IpAddr>() {
                Ok(addr)
                    if !prefix_text.is_empty()
                        && prefix_text.bytes().all(|b| b.is_ascii_digit()) =>
                {
                    Err(CidrError::PrefixTooLong {
                        input: input.to_owned(),
                        max: max_prefix_len(addr),
                    })
                }
                _ => Err(invalid()),
            },
        }
    }
}

impl fmt::Display for Cidr {
    /// Prints a single host as a bare address (`192.0.2.1`) and any wider network as
    /// `192.0.2.0/24`, so that both forms read back to the same `Cidr`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_host() {
            write!(f, "{}", self.addr())
        } else {
            write!(f, "{}", self.0)
        }
    }
}

// As a string, so that configuration and JSON output show networks the way users write them.
impl serde::Serialize for Cidr {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn cidr(text: &str) -> Cidr {
        text.parse()
            .unwrap_or_else(|err| panic!("`{text}` should parse: {err}"))
    }

    fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(a, b, c, d))
    }

    fn ip(text: &str) -> IpAddr {
        text.parse()
            .unwrap_or_else(|err| panic!("`{text}` should parse: {err}"))
    }

    #[test]
    fn parses_an_ipv4_host() {
        let host = cidr("192.0.2.1");
        assert_eq!(host.addr(), v4(192, 0, 2, 1));
        assert_eq!(host.prefix_len(), 32);
        assert!(host.is_host());
        assert!(host.is_v4());
        assert_eq!(host.to_string(), "192.0.2.1");
    }

    #[test]
    fn parses_an_ipv4_network() {
        let net = cidr("10.0.0.0/8");
        assert_eq!(net.addr(), v4(10, 0, 0, 0));
        assert_eq!(net.prefix_len(), 8);
        assert!(!net.is_host());
        assert_eq!(net.to_string(), "10.0.0.0/8");
    }

    #[test]
    fn a_full_length_prefix_is_the_same_host_as_a_bare_address() {
        assert_eq!(cidr("192.0.2.1/32"), cidr("192.0.2.1"));
        assert_eq!(cidr("192.0.2.1/32").to_string(), "192.0.2.1");
        assert_eq!(cidr("2001:db8::1/128"), cidr("2001:db8::1"));
        assert_eq!(cidr("2001:db8::1/128").to_string(), "2001:db8::1");
    }

    #[test]
    fn parses_ipv6_hosts_and_networks() {
        let host = cidr("2001:db8::1");
        assert_eq!(host.prefix_len(), 128);
        assert!(host.is_host());
        assert!(!host.is_v4());
        assert_eq!(host.to_string(), "2001:db8::1");

        let net = cidr("2001:db8::/32");
        assert_eq!(net.prefix_len(), 32);
        assert!(!net.is_host());
        assert_eq!(net.to_string(), "2001:db8::/32");
    }

    #[test]
    fn keeps_ipv4_mapped_ipv6_addresses_as_ipv6() {
        let mapped = cidr("::ffff:192.0.2.1");
        assert!(!mapped.is_v4());
        assert!(mapped.is_host());
        assert_eq!(mapped.octets_v4(), None);
        assert_eq!(mapped.to_string(), "::ffff:192.0.2.1");
        assert!(!cidr("192.0.2.0/24").contains(&mapped.addr()));
        assert!(cidr("::ffff:192.0.2.0/120").contains(&mapped.addr()));
    }

    #[test]
    fn allows_a_zero_prefix() {
        let all_v4 = cidr("0.0.0.0/0");
        assert_eq!(all_v4.prefix_len(), 0);
        assert_eq!(all_v4.to_string(), "0.0.0.0/0");
        assert!(all_v4.contains(&v4(255, 255, 255, 255)));
        assert!(all_v4.contains(&v4(0, 0, 0, 0)));
        assert!(!all_v4.contains(&ip("::1")));

        let all_v6 = cidr("::/0");
        assert_eq!(all_v6.to_string(), "::/0");
        assert!(all_v6.contains(&ip("2001:db8::1")));
        assert!(!all_v6.contains(&v4(192, 0, 2, 1)));
    }

    #[test]
    fn trims_surrounding_whitespace() {
        assert_eq!(cidr("  10.0.0.0/8\t"), cidr("10.0.0.0/8"));
        assert_eq!(cidr("\r\n2001:db8::1 "), cidr("2001:db8::1"));
    }

    #[test]
    fn rejects_malformed_text() {
        for input in [
            "",
            "   ",
            "garbage",
            "300.1.1.1",
            "1.2.3",
            "010.0.0.1",
            "/24",
            "1.2.3.4/",
            "1.2.3.4/-1",
            "1.2.3.4/+8",
            "1.2.3.4/ 8",
            "1.2.3.4 /8",
            "1.2.3.4/8a",
            "1.2.3.0/24/8",
            "1.2.3.4 5.6.7.8",
            "fe80::1%eth0",
            "2001:db8:::1",
        ] {
            assert_eq!(
                input.parse::<Cidr>(),
                Err(CidrError::Invalid {
                    input: input.trim().to_owned()
                }),
                "{input:?}"
            );
        }
    }

    #[test]
    fn rejects_prefixes_longer_than_the_address() {
        for (input, max) in [
            ("10.0.0.0/33", 32),
            ("10.0.0.0/255", 32),
            ("10.0.0.0/99999999999", 32),
            ("2001:db8::/129", 128),
        ] {
            assert_eq!(
                input.parse::<Cidr>(),
                Err(CidrError::PrefixTooLong {
                    input: input.to_owned(),
                    max
                }),
                "{input}"
            );
        }
    }

    #[test]
    fn rejects_host_bits_below_the_prefix_and_names_the_network() {
        assert_eq!(
            "10.0.0.1/8".parse::<Cidr>(),
            Err(CidrError::HostBitsSet {
                input: "10.0.0.1/8".to_owned(),
                network: cidr("10.0.0.0/8"),
            })
        );
        assert_eq!(
            "2001:db8::1/32".parse::<Cidr>(),
            Err(CidrError::HostBitsSet {
                input: "2001:db8::1/32".to_owned(),
                network: cidr("2001:db8::/32"),
            })
        );
        assert!(matches!(
            "1.2.3.4/0".parse::<Cidr>(),
            Err(CidrError::HostBitsSet { network, .. }) if network == cidr("0.0.0.0/0")
        ));
    }

    #[test]
    fn error_messages_name_the_input_and_say_what_to_write() {
        let message = |input: &str| match input.parse::<Cidr>() {
            Ok(cidr) => panic!("`{input}` parsed as {cidr}"),
            Err(err) => err.to_string(),
        };
        assert_eq!(
            message("10.0.0.1/8"),
            "`10.0.0.1/8` has host bits set below the prefix: did you mean `10.0.0.0/8`?"
        );
        assert_eq!(
            message("10.0.0.0/33"),
            "`10.0.0.0/33` has a prefix length longer than 32: use a prefix length from 0 to 32"
        );
        assert_eq!(
            message("1.2.3.4/"),
            "`1.2.3.4/` is not an IP address or CIDR: expected an address or CIDR such as \
             192.0.2.0/24 or 2001:db8::/32"
        );
    }

    #[test]
    fn new_checks_like_parsing() {
        assert_eq!(Cidr::new(v4(10, 0, 0, 0), 8), Ok(cidr("10.0.0.0/8")));
        assert_eq!(Cidr::new(v4(10, 0, 0, 1), 32), Ok(cidr("10.0.0.1")));
        assert_eq!(
            Cidr::new(v4(10, 0, 0, 0), 33),
            Err(CidrError::PrefixTooLong {
                input: "10.0.0.0/33".to_owned(),
                max: 32
            })
        );
        assert_eq!(
            Cidr::new(v4(10, 0, 0, 1), 8),
            Err(CidrError::HostBitsSet {
                input: "10.0.0.1/8".to_owned(),
                network: cidr("10.0.0.0/8"),
            })
        );
        assert_eq!(Cidr::new(ip("2001:db8::"), 32), Ok(cidr("2001:db8::/32")));
    }

    #[test]
    fn contains_addresses_of_its_own_family_inside_the_prefix() {
        let net = cidr("192.0.2.0/24");
        assert!(net.contains(&v4(192, 0, 2, 0)));
        assert!(net.contains(&v4(192, 0, 2, 255)));
        assert!(!net.contains(&v4(192, 0, 3, 0)));
        assert!(!net.contains(&v4(192, 0, 1, 255)));
        assert!(!net.contains(&ip("::c000:200")));

        let host = cidr("192.0.2.7");
        assert!(host.contains(&v4(192, 0, 2, 7)));
        assert!(!host.contains(&v4(192, 0, 2, 8)));

        let net6 = cidr("2001:db8::/32");
        assert!(net6.contains(&ip("2001:db8:ffff::1")));
        assert!(!net6.contains(&ip("2001:db9::")));
        assert!(!net6.contains(&v4(32, 1, 13, 184)));
    }

    #[test]
    fn contains_cidr_and_overlaps() {
        let wide = cidr("10.0.0.0/8");
        let narrow = cidr("10.1.0.0/16");
        let host = cidr("10.1.2.3");
        let elsewhere = cidr("192.0.2.0/24");

        assert!(wide.contains_cidr(&narrow));
        assert!(wide.contains_cidr(&host));
        assert!(wide.contains_cidr(&wide));
        assert!(!narrow.contains_cidr(&wide));
        assert!(!wide.contains_cidr(&elsewhere));

        assert!(wide.overlaps(&narrow));
        assert!(narrow.overlaps(&wide));
        assert!(host.overlaps(&narrow));
        assert!(!wide.overlaps(&elsewhere));
        assert!(!elsewhere.overlaps(&wide));

        assert!(cidr("0.0.0.0/0").contains_cidr(&wide));
        assert!(!cidr("0.0.0.0/0").overlaps(&cidr("2001:db8::/32")));
        assert!(cidr("::/0").overlaps(&cidr("2001:db8::1")));
        assert!(!cidr("::/0").overlaps(&wide));
    }

    #[test]
    fn octets_are_in_network_order_for_the_matching_family() {
        assert_eq!(cidr("192.0.2.0/24").octets_v4(), Some([192, 0, 2, 0]));
        assert_eq!(cidr("192.0.2.0/24").octets_v6(), None);
        let mut expected = [0u8; 16];
        expected[..4].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
        expected[15] = 1;
        assert_eq!(cidr("2001:db8::1").octets_v6(), Some(expected));
        assert_eq!(cidr("2001:db8::1").octets_v4(), None);
    }

    #[test]
    fn display_reads_back_to_the_same_cidr() {
        for text in [
            "0.0.0.0/0",
            "10.0.0.0/8",
            "192.0.2.1",
            "192.0.2.0/31",
            "::/0",
            "::1",
            "2001:db8::/32",
            "2001:db8::1",
            "::ffff:192.0.2.0/120",
        ] {
            assert_eq!(cidr(text).to_string(), text);
            assert_eq!(cidr(&cidr(text).to_string()), cidr(text));
        }
    }

    #[test]
    fn serializes_as_its_display_string() {
        let list = vec![cidr("10.0.0.0/8"), cidr("192.0.2.1"), cidr("2001:db8::/32")];
        let json = serde_json::to_string(&list).expect("a list of CIDRs serializes");
        assert_eq!(json, r#"["10.0.0.0/8","192.0.2.1","2001:db8::/32"]"#);
        let back: Vec<Cidr> = serde_json::from_str(&json).expect("the JSON reads back");
        assert_eq!(back, list);
    }

    #[test]
    fn deserializing_reports_parse_errors() {
        let err = serde_json::from_str::<Cidr>(r#""10.0.0.1/8""#)
            .expect_err("host bits are rejected when deserializing too");
        assert!(
            err.to_string().contains("did you mean `10.0.0.0/8`?"),
            "{err}"
        );
        assert!(serde_json::from_str::<Cidr>("8").is_err());
    }
}
