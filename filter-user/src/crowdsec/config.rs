//! The `[crowdsec]` section of the config file: where the Local API is, how floodwall proves
//! who it is, and which decisions it enforces.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Scopes that XDP can enforce: an address or a range of them.
pub const SCOPES: &[&str] = &["ip", "range"];

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CrowdsecConfig {
    /// The LAPI's base URL, such as `http://127.0.0.1:8080/`.
    pub lapi_url: String,
    /// This host's bouncer key (`cscli bouncers add floodwall-$(hostname)`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key: Option<String>,
    /// Or a file holding it (so the config file need not be secret).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_file: Option<PathBuf>,
    #[serde(default = "default_update_frequency")]
    pub update_frequency_secs: u64,
    /// A full pull (`startup=true`) this often re-asserts TTLs and repairs lost deltas.
    #[serde(default = "default_resync")]
    pub resync_secs: u64,
    /// Every request to the LAPI gives up after this long.
    #[serde(default = "default_timeout")]
    pub timeout_secs: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_cert_path: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_path: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_path: Option<PathBuf>,
    #[serde(default)]
    pub insecure_skip_verify: bool,
    #[serde(default = "default_scopes")]
    pub scopes: Vec<String>,
    /// Only decisions of these origins (`cscli`, `crowdsec`, `CAPI`, `lists`...); empty: all.
    #[serde(default)]
    pub origins: Vec<String>,
    #[serde(default = "default_types")]
    pub supported_decisions_types: Vec<String>,
    /// Machine credentials (`cscli machines add`) for pushing floodwall's own bans.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
}

fn default_update_frequency() -> u64 {
    10
}

fn default_resync() -> u64 {
    3600
}

fn default_timeout() -> u64 {
    10
}

fn default_scopes() -> Vec<String> {
    SCOPES.iter().map(|s| (*s).to_owned()).collect()
}

fn default_types() -> Vec<String> {
    vec![String::from("ban")]
}

impl CrowdsecConfig {
    /// What is wrong with the section, if anything, in words for the operator.
    pub fn problem(&self) -> Option<String> {
        let url = self.lapi_url.trim();
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Some(format!(
                "[crowdsec] lapi_url = `{url}` must be an http:// or https:// URL such as \
                 http://127.0.0.1:8080/"
            ));
        }
        if reqwest::Url::parse(url).is_err() {
            return Some(format!("[crowdsec] lapi_url = `{url}` is not a valid URL"));
        }
        match (&self.api_key, &self.api_key_file) {
            (None, None) => {
                return Some(String::from(
                    "[crowdsec] needs api_key or api_key_file (make one with \
                     `cscli bouncers add floodwall-$(hostname)`)",
                ));
            }
            (Some(_), Some(_)) => {
                return Some(String::from(
                    "[crowdsec] has both api_key and api_key_file: keep one",
                ));
            }
            (Some(key), None) if key.trim().is_empty() => {
                return Some(String::from("[crowdsec] api_key is empty"));
            }
            _ => {}
        }
        if self.update_frequency_secs == 0 {
            return Some(String::from(
                "[crowdsec] update_frequency_secs must be at least 1",
            ));
        }
        if self.timeout_secs == 0 {
            return Some(String::from("[crowdsec] timeout_secs must be at least 1"));
        }
        if self.resync_secs < self.update_frequency_secs {
            return Some(String::from(
                "[crowdsec] resync_secs must be at least update_frequency_secs",
            ));
        }
        if self.cert_path.is_some() != self.key_path.is_some() {
            return Some(String::from(
                "[crowdsec] cert_path and key_path go together (a client certificate and its key)",
            ));
        }
        if self.machine_id.is_some() != self.password.is_some() {
            return Some(String::from(
                "[crowdsec] machine_id and password go together (from `cscli machines add`)",
            ));
        }
        if self.scopes.is_empty() {
            return Some(String::from(
                "[crowdsec] scopes is empty: nothing would be enforced",
            ));
        }
        if let Some(scope) = self
            .scopes
            .iter()
            .find(|s| !SCOPES.contains(&s.to_ascii_lowercase().as_str()))
        {
            return Some(format!(
                "[crowdsec] scope `{scope}` cannot be enforced by address: use ip and/or range"
            ));
        }
        if self.supported_decisions_types.is_empty() {
            return Some(String::from(
                "[crowdsec] supported_decisions_types is empty: nothing would be enforced",
            ));
        }
        None
    }

    /// The bouncer key, read from `api_key_file` when that is how it is given.
    pub fn key(&self) -> Result<String, String> {
        if let Some(key) = &self.api_key {
            return Ok(key.trim().to_owned());
        }
        let path = self.api_key_file.as_deref().unwrap_or(Path::new(""));
        let key = std::fs::read_to_string(path).map_err(|e| {
            format!(
                "cannot read [crowdsec] api_key_file `{}`: {e}",
                path.display()
            )
        })?;
        let key = key.trim();
        if key.is_empty() {
            return Err(format!(
                "[crowdsec] api_key_file `{}` is empty",
                path.display()
            ));
        }
        Ok(key.to_owned())
    }

    /// Whether floodwall pushes its own bans to the LAPI.
    pub fn pushes(&self) -> bool {
        self.machine_id.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> CrowdsecConfig {
        toml::from_str(text).expect("valid toml")
    }

    #[test]
    fn defaults_are_the_bouncers_defaults() {
        let c = parse("lapi_url = \"http://127.0.0.1:8080/\"\napi_key = \"k\"\n");
        assert_eq!(c.problem(), None);
        assert_eq!(c.update_frequency_secs, 10);
        assert_eq!(c.scopes, ["ip", "range"]);
        assert_eq!(c.supported_decisions_types, ["ban"]);
        assert!(!c.pushes());
    }

    #[test]
    fn bad_sections_are_named() {
        for (text, needle) in [
            (
                "lapi_url = \"127.0.0.1:8080\"\napi_key = \"k\"\n",
                "http://",
            ),
            ("lapi_url = \"http://127.0.0.1:8080/\"\n", "api_key"),
            (
                "lapi_url = \"http://h/\"\napi_key = \"k\"\napi_key_file = \"/k\"\n",
                "both",
            ),
            (
                "lapi_url = \"http://h/\"\napi_key = \"k\"\nupdate_frequency_secs = 0\n",
                "at least 1",
            ),
            (
                "lapi_url = \"http://h/\"\napi_key = \"k\"\ncert_path = \"/c\"\n",
                "key_path",
            ),
            (
                "lapi_url = \"http://h/\"\napi_key = \"k\"\nmachine_id = \"m\"\n",
                "password",
            ),
            (
                "lapi_url = \"http://h/\"\napi_key = \"k\"\nscopes = [\"country\"]\n",
                "country",
            ),
        ] {
            let problem = parse(text).problem().unwrap_or_default();
            assert!(problem.contains(needle), "{text}: {problem}");
        }
        assert!(toml::from_str::<CrowdsecConfig>("lapi_url = \"http://h/\"\nkey = 1\n").is_err());
    }
}
