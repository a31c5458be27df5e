//! The TOML configuration file. Every key is documented in the README; an unknown key is an
//! error that names it.

use std::path::{Path, PathBuf};

use filter_common::{DEFAULT_HOST_ENTRIES, DEFAULT_NET_ENTRIES, DEFAULT_SOURCES};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::limits::{Limits, LimitsError};

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read config file `{path}`: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file `{path}` is invalid: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config file `{path}`: {source}")]
    Limits {
        path: PathBuf,
        #[source]
        source: LimitsError,
    },
    #[error("config file `{path}`: capacity `{name}` must be between 1 and {max}")]
    Capacity {
        path: PathBuf,
        name: &'static str,
        max: u32,
    },
}

/// Map capacities, fixed when the program is loaded (by the first `attach`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Capacity {
    /// Exact addresses (/32, /128) on the blocklist, per address family.
    pub block_hosts: u32,
    /// Prefixes on the blocklist, per address family.
    pub block_nets: u32,
    /// Exact addresses on the allowlist, per address family.
    pub allow_hosts: u32,
    /// Prefixes on the allowlist, per address family.
    pub allow_nets: u32,
    /// Sources with per-source limiter state (least recently used are evicted).
    pub sources: u32,
}

impl Default for Capacity {
    fn default() -> Self {
        Capacity {
            block_hosts: DEFAULT_HOST_ENTRIES,
            block_nets: DEFAULT_NET_ENTRIES,
            allow_hosts: 1 << 16,
            allow_nets: 1 << 16,
            sources: DEFAULT_SOURCES,
        }
    }
}

/// `floodwall run`: logging, automatic bans, alerts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServiceConfig {
    /// Hard cap on drop log lines per second, whatever the flood.
    pub log_lines_per_sec: u32,
    /// Address of the Prometheus endpoint (`--metrics` overrides it).
    pub metrics: String,
    /// Seconds without shedding before an `auto` SYN challenge goes off again.
    pub syn_auto_quiet_secs: u64,
    pub bans: BanConfig,
    pub alerts: AlertConfig,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        ServiceConfig {
            log_lines_per_sec: 20,
            metrics: String::from("127.0.0.1:9477"),
            syn_auto_quiet_secs: 30,
            bans: BanConfig::default(),
            alerts: AlertConfig::default(),
        }
    }
}

/// Automatic bans of sources that stay over their limit, growing for repeat offenders
/// (like fail2ban's `bantime.increment`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BanConfig {
    pub enabled: bool,
    /// A source over its limit for this many seconds without a break is banned.
    pub after_secs: u64,
    /// The first ban's length.
    pub base_secs: u64,
    /// Each further offence multiplies the ban by this.
    pub factor: u64,
    /// Bans never grow beyond this.
    pub max_secs: u64,
    /// An offender with no ban for this long starts again from `base_secs`.
    pub forget_after_secs: u64,
    /// Sources watched or remembered at once; the oldest are dropped beyond it.
    pub max_tracked: usize,
}

impl Default for BanConfig {
    fn default() -> Self {
        BanConfig {
            enabled: true,
            after_secs: 10,
            base_secs: 60,
            factor: 2,
            max_secs: 86_400,
            forget_after_secs: 86_400,
            max_tracked: 100_000,
        }
    }
}

/// Thresholds logged at warn when crossed and again when cleared. 0 switches one off.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AlertConfig {
    /// Dropped packets per second over every interface.
    pub drop_pps: u64,
    /// Fill of any bounded map, in percent.
    pub map_fill_percent: u64,
}

impl Default for AlertConfig {
    fn default() -> Self {
        AlertConfig {
            drop_pps: 100_000,
            map_fill_percent: 90,
        }
    }
}

/// The whole file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FileConfig {
    pub limits: Limits,
    pub capacity: Capacity,
    pub service: ServiceConfig,
    /// Absent: no CrowdSec.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub crowdsec: Option<crate::crowdsec::config::CrowdsecConfig>,
}

/// Capacities beyond this are a typo, not a plan (each entry costs kernel memory).
const MAX_CAPACITY: u32 = 1 << 26;

impl FileConfig {
    pub fn parse(path: &Path, text: &str) -> Result<FileConfig, ConfigError> {
        let config: FileConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string().trim_end().replace('\n', " "),
        })?;
        config
            .limits
            .validate()
            .map_err(|source| ConfigError::Limits {
                path: path.to_owned(),
                source,
            })?;
        let c = &config.capacity;
        for (name, value) in [
            ("block_hosts", c.block_hosts),
            ("block_nets", c.block_nets),
            ("allow_hosts", c.allow_hosts),
            ("allow_nets", c.allow_nets),
            ("sources", c.sources),
        ] {
            if value == 0 || value > MAX_CAPACITY {
                return Err(ConfigError::Capacity {
                    path: path.to_owned(),
                    name,
                    max: MAX_CAPACITY,
                });
            }
        }
        let bans = &config.service.bans;
        if bans.factor == 0 || bans.base_secs == 0 || bans.max_secs < bans.base_secs {
            return Err(ConfigError::Parse {
                path: path.to_owned(),
                message: String::from(
                    "[service.bans] needs factor >= 1, base_secs >= 1 and max_secs >= base_secs",
                ),
            });
        }
        if config
            .service
            .metrics
            .parse::<std::net::SocketAddr>()
            .is_err()
        {
            return Err(ConfigError::Parse {
                path: path.to_owned(),
                message: format!(
                    "[service] metrics = `{}` is not an address such as 127.0.0.1:9477",
                    config.service.metrics
                ),
            });
        }
        if let Some(problem) = config.crowdsec.as_ref().and_then(|c| c.problem()) {
            return Err(ConfigError::Parse {
                path: path.to_owned(),
                message: problem,
            });
        }
        Ok(config)
    }

    /// Reads `path`; a missing file is the defaults unless `required` (given explicitly).
    pub fn load(path: &Path, required: bool) -> Result<FileConfig, ConfigError> {
        match std::fs::read_to_string(path) {
            Ok(text) => FileConfig::parse(path, &text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {
                Ok(FileConfig::default())
            }
            Err(source) => Err(ConfigError::Read {
                path: path.to_owned(),
                source,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<FileConfig, ConfigError> {
        FileConfig::parse(Path::new("test.toml"), text)
    }

    #[test]
    fn empty_file_is_the_defaults() {
        assert_eq!(parse("").ok(), Some(FileConfig::default()));
    }

    #[test]
    fn full_file() {
        let c = parse(
            "[limits]\npps = 100\nburst = 20\nbps = 1000000\nprefix6 = 56\ndry_run = true\n\
             malformed = \"pass\"\n[capacity]\nsources = 4096\n",
        )
        .expect("valid");
        assert_eq!(c.limits.pps, 100);
        assert_eq!(c.limits.prefix6, 56);
        assert!(c.limits.dry_run);
        assert_eq!(c.capacity.sources, 4096);
    }

    #[test]
    fn the_contrib_example_parses_with_its_crowdsec_section_uncommented() {
        let text = include_str!("../../contrib/floodwall.toml");
        assert!(parse(text).expect("as shipped").crowdsec.is_none());
        let (before, section) = text
            .split_once("# [crowdsec]")
            .expect("a commented section");
        let uncommented: String = section
            .lines()
            .map(|l| {
                l.strip_prefix("# ")
                    .filter(|rest| rest.contains(" = "))
                    .unwrap_or(l)
            })
            .collect::<Vec<_>>()
            .join("\n");
        let uncommented = format!("{before}[crowdsec]{uncommented}");
        let crowdsec = parse(&uncommented)
            .expect("uncommented")
            .crowdsec
            .expect("a [crowdsec] section");
        assert!(crowdsec.pushes());
        assert_eq!(crowdsec.update_frequency_secs, 10);
    }

    #[test]
    fn unknown_keys_are_named() {
        let err = parse("[limits]\npsp = 1\n").expect_err("unknown key");
        assert!(err.to_string().contains("psp"), "{err}");
        let err = parse("colour = 1\n").expect_err("unknown key");
        assert!(err.to_string().contains("colour"), "{err}");
    }

    #[test]
    fn bad_values_are_rejected() {
        assert!(parse("[limits]\nprefix4 = 40\n").is_err());
        assert!(parse("[capacity]\nsources = 0\n").is_err());
        assert!(parse("[limits]\npps = -1\n").is_err());
        assert!(parse("[limits]\nmalformed = \"maybe\"\n").is_err());
        assert!(parse("[service.bans]\nfactor = 0\n").is_err());
        assert!(parse("[service]\nmetrics = \"nowhere\"\n").is_err());
        let err = parse("[service.bans]\nafter = 3\n").expect_err("unknown key");
        assert!(err.to_string().contains("after"), "{err}");
    }
}
