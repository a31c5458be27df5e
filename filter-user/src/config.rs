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

/// The whole file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FileConfig {
    pub limits: Limits,
    pub capacity: Capacity,
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
    }
}
