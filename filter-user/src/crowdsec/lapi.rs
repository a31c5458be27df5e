//! The HTTP side of the CrowdSec Local API: the bouncer's decision stream (API key) and, for
//! pushing floodwall's own bans, a watcher's login and alerts (machine credentials).

use std::time::{Duration, Instant};

use reqwest::{StatusCode, Url};
use serde_json::json;
use thiserror::Error;

use super::{config::CrowdsecConfig, decisions::StreamBody};
use crate::logging::rfc3339;

#[derive(Debug, Error)]
pub enum LapiError {
    #[error(
        "the CrowdSec LAPI at {url} refused the bouncer key (403 access forbidden): check \
         [crowdsec] api_key against `cscli bouncers list` (one key per host)"
    )]
    Forbidden { url: String },
    #[error("cannot reach the CrowdSec LAPI at {url}: {detail}")]
    Unreachable { url: String, detail: String },
    #[error("the CrowdSec LAPI at {url} answered {status}: {body}")]
    Status {
        url: String,
        status: StatusCode,
        body: String,
    },
    #[error(
        "the CrowdSec LAPI at {url} sent a malformed decision stream ({detail}); nothing from \
         it was applied"
    )]
    Malformed { url: String, detail: String },
    #[error(
        "the CrowdSec LAPI refused the login of machine `{machine}` ({status}): check \
         [crowdsec] machine_id and password against `cscli machines list`"
    )]
    Login { machine: String, status: StatusCode },
    #[error("[crowdsec] {0}")]
    Setup(String),
}

impl LapiError {
    /// Stable names for the pull-result metric.
    pub fn kind(&self) -> &'static str {
        match self {
            LapiError::Forbidden { .. } | LapiError::Login { .. } => "forbidden",
            LapiError::Unreachable { .. } => "unreachable",
            LapiError::Status { .. } => "error",
            LapiError::Malformed { .. } => "malformed",
            LapiError::Setup(_) => "setup",
        }
    }
}

/// One ban to push as an alert.
#[derive(Clone, Debug)]
pub struct Alert {
    pub cidr: crate::cidr::Cidr,
    pub ttl_secs: u64,
    pub scenario: &'static str,
    pub message: String,
    /// Unix seconds when the source was first seen over its limit, and when it was banned.
    pub start_at: u64,
    pub stop_at: u64,
}

/// A watcher token is valid about an hour; floodwall logs in again well before that.
const TOKEN_LIFE: Duration = Duration::from_secs(45 * 60);

pub struct Lapi {
    client: reqwest::Client,
    base: Url,
    key: String,
    scopes: String,
    origins: String,
    machine: Option<(String, String)>,
    token: Option<(String, Instant)>,
}

impl Lapi {
    pub fn new(config: &CrowdsecConfig) -> Result<Lapi, LapiError> {
        let mut url = config.lapi_url.trim().to_owned();
        if !url.ends_with('/') {
            url.push('/');
        }
        let base = Url::parse(&url).map_err(|e| LapiError::Setup(format!("lapi_url: {e}")))?;
        let key = config.key().map_err(LapiError::Setup)?;
        let timeout = Duration::from_secs(config.timeout_secs);
        let mut builder = reqwest::Client::builder()
            .user_agent(concat!("floodwall/", env!("CARGO_PKG_VERSION")))
            .timeout(timeout)
            .connect_timeout(timeout)
            // One pull every few seconds gains nothing from a kept connection, and a fresh one
            // never finds a LAPI restart on a dead socket.
            .pool_max_idle_per_host(0)
            .danger_accept_invalid_certs(config.insecure_skip_verify);
        let read = |path: &std::path::Path, what: &str| {
            std::fs::read(path).map_err(|e| {
                LapiError::Setup(format!("cannot read {what} `{}`: {e}", path.display()))
            })
        };
        if let Some(path) = &config.ca_cert_path {
            let cert = reqwest::Certificate::from_pem(&read(path, "ca_cert_path")?)
                .map_err(|e| LapiError::Setup(format!("ca_cert_path `{}`: {e}", path.display())))?;
            builder = builder.add_root_certificate(cert);
        }
        if let (Some(cert), Some(key)) = (&config.cert_path, &config.key_path) {
            let mut pem = read(cert, "cert_path")?;
            pem.extend_from_slice(b"\n");
            pem.extend_from_slice(&read(key, "key_path")?);
            let identity = reqwest::Identity::from_pem(&pem)
                .map_err(|e| LapiError::Setup(format!("cert_path/key_path: {e}")))?;
            builder = builder.identity(identity);
        }
        let client = builder
            .build()
            .map_err(|e| LapiError::Setup(format!("HTTP client: {e}")))?;
        Ok(Lapi {
            client,
            base,
            key,
            scopes: config.scopes.join(","),
            origins: config.origins.join(","),
            machine: config.machine_id.clone().zip(config.password.clone()),
            token: None,
        })
    }

    pub fn url(&self) -> &str {
        self.base.as_str()
    }

    fn endpoint(&self, path: &str) -> Result<Url, LapiError> {
        self.base
            .join(path)
            .map_err(|e| LapiError::Setup(format!("lapi_url: {e}")))
    }

    fn unreachable(&self, e: &reqwest::Error) -> LapiError {
        // reqwest's Display hides the cause (connection refused, timeout): show the chain.
        let mut detail = e.to_string();
        let mut source = std::error::Error::source(e);
        while let Some(s) = source {
            detail = format!("{detail}: {s}");
            source = s.source();
        }
        LapiError::Unreachable {
            url: self.base.to_string(),
            detail,
        }
    }

    /// One pull: every active decision with `startup`, else what changed since the last.
    pub async fn stream(&self, startup: bool) -> Result<StreamBody, LapiError> {
        let mut url = self.endpoint("v1/decisions/stream")?;
        {
            let mut query = url.query_pairs_mut();
            query.append_pair("startup", if startup { "true" } else { "false" });
            query.append_pair("scopes", &self.scopes);
            if !self.origins.is_empty() {
                query.append_pair("origins", &self.origins);
            }
        }
        let response = self
            .client
            .get(url)
            .header("X-Api-Key", &self.key)
            .send()
            .await
            .map_err(|e| self.unreachable(&e))?;
        let status = response.status();
        if status == StatusCode::FORBIDDEN {
            return Err(LapiError::Forbidden {
                url: self.base.to_string(),
            });
        }
        let body = response.bytes().await.map_err(|e| self.unreachable(&e))?;
        if !status.is_success() {
            return Err(LapiError::Status {
                url: self.base.to_string(),
                status,
                body: String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned(),
            });
        }
        serde_json::from_slice(&body).map_err(|e| LapiError::Malformed {
            url: self.base.to_string(),
            detail: e.to_string(),
        })
    }

    async fn login(&mut self) -> Result<String, LapiError> {
        let Some((machine, password)) = self.machine.clone() else {
            return Err(LapiError::Setup(String::from(
                "pushing bans needs machine_id and password",
            )));
        };
        let response = self
            .client
            .post(self.endpoint("v1/watchers/login")?)
            .json(&json!({ "machine_id": machine, "password": password, "scenarios": [] }))
            .send()
            .await
            .map_err(|e| self.unreachable(&e))?;
        let status = response.status();
        if !status.is_success() {
            return Err(LapiError::Login { machine, status });
        }
        let body: serde_json::Value = response.json().await.map_err(|e| LapiError::Malformed {
            url: self.base.to_string(),
            detail: format!("login answer: {e}"),
        })?;
        let token = body["token"]
            .as_str()
            .ok_or_else(|| LapiError::Malformed {
                url: self.base.to_string(),
                detail: String::from("login answer without a token"),
            })?
            .to_owned();
        self.token = Some((token.clone(), Instant::now()));
        Ok(token)
    }

    /// Sends `alerts`, each with its ban decision, so every bouncer of the fleet enforces it.
    pub async fn push(&mut self, alerts: &[Alert]) -> Result<(), LapiError> {
        let body: Vec<serde_json::Value> = alerts.iter().map(alert_json).collect();
        for attempt in 0..2 {
            let token = match &self.token {
                Some((token, at)) if at.elapsed() < TOKEN_LIFE && attempt == 0 => token.clone(),
                _ => self.login().await?,
            };
            let response = self
                .client
                .post(self.endpoint("v1/alerts")?)
                .bearer_auth(token)
                .json(&body)
                .send()
                .await
                .map_err(|e| self.unreachable(&e))?;
            let status = response.status();
            if status == StatusCode::UNAUTHORIZED && attempt == 0 {
                // The token expired early (the LAPI restarted): log in once more.
                self.token = None;
                continue;
            }
            if !status.is_success() {
                let text = response.text().await.unwrap_or_default();
                return Err(LapiError::Status {
                    url: self.base.to_string(),
                    status,
                    body: text.chars().take(200).collect(),
                });
            }
            return Ok(());
        }
        Err(LapiError::Login {
            machine: self.machine.clone().map(|m| m.0).unwrap_or_default(),
            status: StatusCode::UNAUTHORIZED,
        })
    }
}

fn alert_json(alert: &Alert) -> serde_json::Value {
    let value = alert.cidr.to_string();
    let (scope, source) = if alert.cidr.is_host() {
        ("Ip", json!({ "scope": "Ip", "value": value, "ip": value }))
    } else {
        (
            "Range",
            json!({ "scope": "Range", "value": value, "range": value }),
        )
    };
    json!({
        "scenario": alert.scenario,
        "scenario_hash": "",
        "scenario_version": "",
        "message": alert.message,
        "events_count": 1,
        "start_at": rfc3339(alert.start_at),
        "stop_at": rfc3339(alert.stop_at),
        "capacity": 0,
        "leakspeed": "0",
        "simulated": false,
        "events": [],
        "remediation": true,
        "source": source,
        "decisions": [{
            "origin": "floodwall",
            "type": "ban",
            "scope": scope,
            "value": value,
            "duration": format!("{}s", alert.ttl_secs),
            "scenario": alert.scenario,
        }],
    })
}
