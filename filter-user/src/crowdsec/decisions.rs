//! What the LAPI's decision stream says, read strictly: a body that is not the documented
//! shape is refused whole, and a decision that cannot be enforced is skipped and counted.

use std::{net::IpAddr, time::Duration};

use serde::Deserialize;

use crate::cidr::Cidr;

/// One decision as the LAPI serves it (fields floodwall does not use are ignored).
#[derive(Clone, Debug, Deserialize)]
pub struct RawDecision {
    #[serde(default)]
    pub origin: Option<String>,
    #[serde(rename = "type")]
    pub kind: String,
    pub scope: String,
    pub value: String,
    pub duration: String,
    #[serde(default)]
    pub scenario: Option<String>,
}

/// `GET /v1/decisions/stream`: empty lists come as `null`.
#[derive(Debug, Default, Deserialize)]
pub struct StreamBody {
    #[serde(default)]
    pub new: Option<Vec<RawDecision>>,
    #[serde(default)]
    pub deleted: Option<Vec<RawDecision>>,
}

/// A decision floodwall can enforce: a blocklist entry for `cidr` of type `kind`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub cidr: Cidr,
    pub kind: String,
    /// Time left; zero or less for a deleted or expired decision.
    pub ttl: Option<Duration>,
    pub scenario: String,
}

/// Why a decision was not enforced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Skip {
    /// Its value is not an address or range, or its duration is unreadable.
    Invalid,
    /// A scope, type or origin the config does not enforce.
    Filtered,
}

/// What the config lets through, lower-cased once.
#[derive(Clone, Debug)]
pub struct Filter {
    scopes: Vec<String>,
    origins: Vec<String>,
    types: Vec<String>,
}

impl Filter {
    pub fn new(config: &super::config::CrowdsecConfig) -> Filter {
        let lower = |v: &[String]| v.iter().map(|s| s.to_ascii_lowercase()).collect();
        Filter {
            scopes: lower(&config.scopes),
            origins: lower(&config.origins),
            types: lower(&config.supported_decisions_types),
        }
    }

    pub fn decision(&self, raw: &RawDecision) -> Result<Decision, Skip> {
        let scope = raw.scope.to_ascii_lowercase();
        let kind = raw.kind.to_ascii_lowercase();
        let origin = raw.origin.as_deref().unwrap_or("").to_ascii_lowercase();
        if !self.scopes.contains(&scope)
            || !self.types.contains(&kind)
            || (!self.origins.is_empty() && !self.origins.contains(&origin))
        {
            return Err(Skip::Filtered);
        }
        let cidr = match scope.as_str() {
            "ip" => raw
                .value
                .trim()
                .parse::<IpAddr>()
                .map_err(|_| Skip::Invalid)
                .map(Cidr::host)?,
            "range" => range(&raw.value).ok_or(Skip::Invalid)?,
            _ => return Err(Skip::Filtered),
        };
        let ns = go_duration_ns(&raw.duration).ok_or(Skip::Invalid)?;
        let ttl = u64::try_from(ns).ok().map(Duration::from_nanos);
        Ok(Decision {
            cidr,
            kind,
            ttl,
            scenario: raw.scenario.clone().unwrap_or_default(),
        })
    }
}

/// A `Range` value. The LAPI stores what it was given, so host bits below the prefix are
/// cleared here (CrowdSec matches the whole network).
fn range(value: &str) -> Option<Cidr> {
    let (addr, len) = value.trim().split_once('/')?;
    let addr: IpAddr = addr.parse().ok()?;
    let len: u8 = len.parse().ok()?;
    Cidr::covering(addr, len).ok()
}

/// Go's `time.Duration` text (`"59m58.709531391s"`, `"-13.936579ms"`, `"1h0m0s"`, `"0s"`,
/// units `h m s ms us µs μs ns`) in nanoseconds.
pub fn go_duration_ns(text: &str) -> Option<i128> {
    let (negative, mut rest) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    if rest == "0" {
        return Some(0);
    }
    if rest.is_empty() {
        return None;
    }
    let mut total: i128 = 0;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (number, tail) = rest.split_at(number_len);
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let scale: i128 = match unit {
            "h" => 3_600_000_000_000,
            "m" => 60_000_000_000,
            "s" => 1_000_000_000,
            "ms" => 1_000_000,
            "us" | "\u{b5}s" | "\u{3bc}s" => 1_000,
            "ns" => 1,
            _ => return None,
        };
        let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
        if whole.is_empty() && fraction.is_empty() {
            return None;
        }
        let whole: i128 = if whole.is_empty() {
            0
        } else {
            whole.parse().ok()?
        };
        let mut part = whole.checked_mul(scale)?;
        if !fraction.is_empty() {
            if !fraction.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            // Digits beyond nanosecond precision add nothing.
            let digits = &fraction[..fraction.len().min(18)];
            let value: i128 = digits.parse().ok()?;
            part += value * scale / 10i128.pow(digits.len() as u32);
        }
        total = total.checked_add(part)?;
        rest = tail;
    }
    Some(if negative { -total } else { total })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        assert_eq!(go_duration_ns("0s"), Some(0));
        assert_eq!(go_duration_ns("0"), Some(0));
        assert_eq!(go_duration_ns("1h0m0s"), Some(3_600_000_000_000));
        assert_eq!(
            go_duration_ns("59m58.709531391s"),
            Some(59 * 60_000_000_000 + 58_709_531_391)
        );
        assert_eq!(go_duration_ns("-13.936579ms"), Some(-13_936_579));
        assert_eq!(go_duration_ns("1.5\u{b5}s"), Some(1_500));
        assert_eq!(go_duration_ns("2\u{3bc}s"), Some(2_000));
        assert_eq!(go_duration_ns("7us"), Some(7_000));
        assert_eq!(go_duration_ns("999ns"), Some(999));
        assert_eq!(go_duration_ns("168h"), Some(168 * 3_600_000_000_000));
        for bad in ["", "-", "10", "5d", "1.2.3s", "s", "1h-5m", "abc"] {
            assert_eq!(go_duration_ns(bad), None, "{bad}");
        }
    }

    fn raw(scope: &str, value: &str, kind: &str, duration: &str) -> RawDecision {
        RawDecision {
            origin: Some(String::from("cscli")),
            kind: kind.to_owned(),
            scope: scope.to_owned(),
            value: value.to_owned(),
            duration: duration.to_owned(),
            scenario: Some(String::from("ssh-bf")),
        }
    }

    #[test]
    fn decisions_are_read_and_filtered() {
        let config: super::super::config::CrowdsecConfig =
            toml::from_str("lapi_url = \"http://h/\"\napi_key = \"k\"\n").expect("valid");
        let filter = Filter::new(&config);
        let d = filter
            .decision(&raw("Ip", "198.51.100.7", "ban", "9m59.5s"))
            .expect("enforced");
        assert_eq!(d.cidr.to_string(), "198.51.100.7");
        assert_eq!(d.ttl, Some(Duration::from_millis(599_500)));
        assert_eq!(d.scenario, "ssh-bf");
        let d = filter
            .decision(&raw("Range", "2001:db8::5/64", "ban", "1h"))
            .expect("enforced");
        assert_eq!(d.cidr.to_string(), "2001:db8::/64");
        let d = filter
            .decision(&raw("Ip", "198.51.100.7", "ban", "-3ms"))
            .expect("a deletion");
        assert_eq!(d.ttl, None);
        assert_eq!(
            filter.decision(&raw("Ip", "198.51.100.777", "ban", "1h")),
            Err(Skip::Invalid)
        );
        assert_eq!(
            filter.decision(&raw("Range", "10.0.0.0/33", "ban", "1h")),
            Err(Skip::Invalid)
        );
        assert_eq!(
            filter.decision(&raw("Ip", "10.0.0.1", "ban", "forever")),
            Err(Skip::Invalid)
        );
        assert_eq!(
            filter.decision(&raw("Ip", "10.0.0.1", "captcha", "1h")),
            Err(Skip::Filtered)
        );
        assert_eq!(
            filter.decision(&raw("Country", "FR", "ban", "1h")),
            Err(Skip::Filtered)
        );
    }

    #[test]
    fn null_lists_are_empty() {
        let body: StreamBody =
            serde_json::from_str(r#"{"deleted":null,"new":null}"#).expect("valid");
        assert!(body.new.is_none() && body.deleted.is_none());
        assert!(serde_json::from_str::<StreamBody>(r#"{"new":[{"value":1}]}"#).is_err());
    }
}
