//! Prometheus metrics for `floodwall run`: read from the kernel at each scrape, so they agree
//! with `floodwall stats`; encoded by prometheus-client, served by tiny_http on loopback.

use std::{
    borrow::Cow,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use filter_common::LIST_MAP_NAMES;
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric as _, text::encode},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
    registry::Registry,
};

use crate::{kernel, paths::Paths, state::ListKind, stats::Stats};

/// What the service itself counts.
#[derive(Debug, Default)]
pub struct ServiceCounters {
    pub events: AtomicU64,
    pub log_lines: AtomicU64,
    pub log_lines_suppressed: AtomicU64,
    pub bans: AtomicU64,
    pub escalations: AtomicU64,
    /// Times `floodwall run` switched an `auto` SYN challenge on or off.
    pub syn_switches: AtomicU64,
}

#[derive(Debug)]
struct FloodwallCollector {
    paths: Paths,
    service: Arc<ServiceCounters>,
}

type Labels = Vec<(Cow<'static, str>, Cow<'static, str>)>;

fn labels(pairs: &[(&'static str, String)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (Cow::Borrowed(*k), Cow::Owned(v.clone())))
        .collect()
}

fn counters(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: &[(Labels, u64)],
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (l, v) in rows {
        ConstCounter::new(*v).encode(metric.encode_family(l)?)?;
    }
    Ok(())
}

fn gauges(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: &[(Labels, i64)],
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (l, v) in rows {
        ConstGauge::new(*v).encode(metric.encode_family(l)?)?;
    }
    Ok(())
}

impl Collector for FloodwallCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        gauges(
            &mut encoder,
            "floodwall_build_info",
            "floodwall version",
            &[(
                labels(&[("version", env!("CARGO_PKG_VERSION").to_owned())]),
                1,
            )],
        )?;
        let service = &self.service;
        for (name, help, value) in [
            (
                "floodwall_events",
                "Sampled drop events received from the data path",
                &service.events,
            ),
            (
                "floodwall_log_lines",
                "Drop log lines written",
                &service.log_lines,
            ),
            (
                "floodwall_log_lines_suppressed",
                "Drop log lines not written because of the lines-per-second cap",
                &service.log_lines_suppressed,
            ),
            ("floodwall_auto_bans", "Automatic bans", &service.bans),
            (
                "floodwall_ban_escalations",
                "Automatic bans longer than a first offence's",
                &service.escalations,
            ),
            (
                "floodwall_syn_challenge_switches",
                "Times the service switched an auto SYN challenge on or off",
                &service.syn_switches,
            ),
        ] {
            let metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            ConstCounter::new(value.load(Ordering::Relaxed)).encode(metric)?;
        }
        let Ok(stats) = Stats::read(&self.paths) else {
            // Not attached (any more): only the service's own metrics.
            return Ok(());
        };
        let mut packets = Vec::new();
        let mut bytes = Vec::new();
        for iface in &stats.interfaces {
            for (reason, count) in &iface.reasons {
                let l = labels(&[
                    ("reason", (*reason).to_owned()),
                    ("iface", iface.iface.clone()),
                ]);
                packets.push((l.clone(), count.packets));
                bytes.push((l, count.bytes));
            }
        }
        counters(
            &mut encoder,
            "floodwall_packets",
            "Packets by verdict reason and interface",
            &packets,
        )?;
        counters(
            &mut encoder,
            "floodwall_bytes",
            "Bytes by verdict reason and interface",
            &bytes,
        )?;
        let health: Vec<_> = stats
            .health
            .iter()
            .map(|(k, v)| (labels(&[("event", (*k).to_owned())]), *v))
            .collect();
        counters(
            &mut encoder,
            "floodwall_datapath",
            "Data-path health events",
            &health,
        )?;
        if let Ok(fill) = kernel::map_fill(&self.paths) {
            // From the kernel's maps, not the state file: that holds every entry and would
            // make each scrape's memory and time grow with the lists. Each entry is one map
            // element; an expired one counts until the service sweeps it (within a second).
            let rows: Vec<_> = [ListKind::Allow, ListKind::Block]
                .iter()
                .map(|k| {
                    let prefix = match k {
                        ListKind::Allow => "ALLOW",
                        ListKind::Block => "BLOCK",
                    };
                    let n: u64 = fill
                        .iter()
                        .filter(|m| LIST_MAP_NAMES.contains(&m.name) && m.name.starts_with(prefix))
                        .map(|m| m.entries)
                        .sum();
                    (labels(&[("list", k.name().to_owned())]), n as i64)
                })
                .collect();
            gauges(
                &mut encoder,
                "floodwall_list_entries",
                "Entries per list",
                &rows,
            )?;
            let entries: Vec<_> = fill
                .iter()
                .map(|m| (labels(&[("map", m.name.to_owned())]), m.entries as i64))
                .collect();
            let capacity: Vec<_> = fill
                .iter()
                .map(|m| (labels(&[("map", m.name.to_owned())]), i64::from(m.capacity)))
                .collect();
            gauges(
                &mut encoder,
                "floodwall_map_entries",
                "Entries in each bounded map",
                &entries,
            )?;
            gauges(
                &mut encoder,
                "floodwall_map_capacity",
                "Capacity of each bounded map",
                &capacity,
            )?;
        }
        Ok(())
    }
}

/// The metrics text for `paths` (what the endpoint serves).
pub fn render(paths: &Paths, service: &Arc<ServiceCounters>) -> Result<String, std::fmt::Error> {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(FloodwallCollector {
        paths: paths.clone(),
        service: Arc::clone(service),
    }));
    let mut text = String::new();
    encode(&mut text, &registry)?;
    Ok(text)
}

/// Serves `/metrics` on `addr` until `stop` is set.
pub fn serve(
    addr: SocketAddr,
    paths: Paths,
    service: Arc<ServiceCounters>,
    stop: Arc<AtomicBool>,
) -> std::io::Result<JoinHandle<()>> {
    let server = tiny_http::Server::http(addr).map_err(std::io::Error::other)?;
    let content_type = tiny_http::Header::from_bytes(
        &b"Content-Type"[..],
        &b"application/openmetrics-text; version=1.0.0; charset=utf-8"[..],
    )
    .map_err(|()| std::io::Error::other("bad header"))?;
    Ok(std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            let Ok(Some(request)) = server.recv_timeout(Duration::from_millis(200)) else {
                continue;
            };
            let response = if request.url() == "/metrics" {
                match render(&paths, &service) {
                    Ok(text) => {
                        tiny_http::Response::from_string(text).with_header(content_type.clone())
                    }
                    Err(_) => {
                        tiny_http::Response::from_string("encoding failed\n").with_status_code(500)
                    }
                }
            } else {
                tiny_http::Response::from_string("floodwall: see /metrics\n").with_status_code(404)
            };
            // A client that went away is not the service's problem.
            let _ = request.respond(response);
        }
    }))
}
