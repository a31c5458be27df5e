//! Prometheus metrics for `floodwall run`: read from the kernel at each scrape, so they agree
//! with `floodwall stats`; encoded by prometheus-client, served by hyper as a task of the
//! service's tokio runtime.

use std::{
    borrow::Cow,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use filter_common::{HOST_COVER_LOG2, HOST_COVER_WORDS, LIST_MAP_NAMES, host_cover_base};
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
    pub bans: AtomicU64,
    pub escalations: AtomicU64,
    /// Times `floodwall run` switched an `auto` SYN challenge on or off.
    pub syn_switches: AtomicU64,
    /// Times the service read the whole state file (changes it did not make itself).
    pub state_reads: AtomicU64,
    /// Whether a `[crowdsec]` section is in force: its metrics are shown only then.
    pub crowdsec_on: AtomicBool,
    pub crowdsec: Arc<crate::crowdsec::CrowdsecCounters>,
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
                &crate::logging::DROP_LINES.logged,
            ),
            (
                "floodwall_log_lines_suppressed",
                "Drop log lines not written because of the lines-per-second cap",
                &crate::logging::DROP_LINES.suppressed,
            ),
            ("floodwall_auto_bans", "Automatic bans", &service.bans),
            (
                "floodwall_ban_escalations",
                "Automatic bans longer than a first offence's",
                &service.escalations,
            ),
            (
                "floodwall_state_reads",
                "Times the service read the whole state file: changes it did not make itself, \
                 or entries due to expire",
                &service.state_reads,
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
        if service.crowdsec_on.load(Ordering::Relaxed) {
            crowdsec(&mut encoder, &service.crowdsec)?;
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
        // How much of each lookup-skipping bitmap is set: the share of random addresses that
        // still cost the kernel a hash lookup.
        if let (Ok(known), Ok(hosts)) = (
            kernel::Known::open(&self.paths),
            kernel::host_cover(&self.paths),
        ) {
            let list =
                |allow: bool| hosts.count(host_cover_base(allow, true), 2 * HOST_COVER_WORDS);
            let rows = [
                ("known", known.fill().unwrap_or(0), known.bits()),
                ("allow_hosts", list(true), 2u64 << HOST_COVER_LOG2),
                ("block_hosts", list(false), 2u64 << HOST_COVER_LOG2),
            ];
            let set: Vec<_> = rows
                .iter()
                .map(|(b, n, _)| (labels(&[("bitmap", (*b).to_owned())]), *n as i64))
                .collect();
            let size: Vec<_> = rows
                .iter()
                .map(|(b, _, n)| (labels(&[("bitmap", (*b).to_owned())]), *n as i64))
                .collect();
            gauges(
                &mut encoder,
                "floodwall_bitmap_bits_set",
                "Set bits of each bitmap that lets the kernel skip a lookup (known sources, \
                 list hosts)",
                &set,
            )?;
            gauges(
                &mut encoder,
                "floodwall_bitmap_bits",
                "Bits of each bitmap that lets the kernel skip a lookup",
                &size,
            )?;
        }
        Ok(())
    }
}

/// An unlabelled gauge.
fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: i64,
) -> Result<(), std::fmt::Error> {
    let metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    ConstGauge::new(value).encode(metric)
}

/// An unlabelled counter.
fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    let metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    ConstCounter::new(value).encode(metric)
}

fn crowdsec(
    encoder: &mut DescriptorEncoder,
    c: &crate::crowdsec::CrowdsecCounters,
) -> Result<(), std::fmt::Error> {
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
    gauge(
        encoder,
        "floodwall_crowdsec_decisions",
        "CrowdSec decisions (addresses and ranges) enforced now",
        load(&c.decisions) as i64,
    )?;
    gauge(
        encoder,
        "floodwall_crowdsec_connected",
        "1 while the last pull from the CrowdSec LAPI succeeded",
        i64::from(c.connected.load(Ordering::Relaxed)),
    )?;
    let last = load(&c.last_good_pull);
    if last > 0 {
        let ago = crate::state::unix_now().saturating_sub(last);
        gauge(
            encoder,
            "floodwall_crowdsec_seconds_since_last_pull",
            "Seconds since the last pull from the CrowdSec LAPI that was applied",
            ago as i64,
        )?;
    }
    let result = |r: &'static str| labels(&[("result", r.to_owned())]);
    counters(
        encoder,
        "floodwall_crowdsec_pulls",
        "Pulls from the CrowdSec LAPI by result",
        &[
            (result("ok"), load(&c.pulls_ok)),
            (result("unreachable"), load(&c.pulls_unreachable)),
            (result("forbidden"), load(&c.pulls_forbidden)),
            (result("malformed"), load(&c.pulls_malformed)),
            (result("error"), load(&c.pulls_error)),
        ],
    )?;
    let why = |r: &'static str| labels(&[("why", r.to_owned())]);
    counters(
        encoder,
        "floodwall_crowdsec_decisions_skipped",
        "CrowdSec decisions not enforced, by why",
        &[
            (why("invalid"), load(&c.skipped_invalid)),
            (why("filtered"), load(&c.skipped_filtered)),
            (why("lockout"), load(&c.refused)),
        ],
    )?;
    counter(
        encoder,
        "floodwall_crowdsec_apply_failures",
        "CrowdSec changes refused whole (maps full): retried by a full pull",
        load(&c.apply_failures),
    )?;
    counter(
        encoder,
        "floodwall_crowdsec_alerts_pushed",
        "Automatic bans pushed to the CrowdSec LAPI as alerts",
        load(&c.alerts_pushed),
    )?;
    counter(
        encoder,
        "floodwall_crowdsec_alerts_failed",
        "Automatic bans the CrowdSec LAPI did not take",
        load(&c.alerts_failed),
    )?;
    Ok(())
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

/// Serves `/metrics` from `listener` for as long as the runtime runs it.
pub async fn serve(listener: tokio::net::TcpListener, paths: Paths, service: Arc<ServiceCounters>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // Out of descriptors, say: wait rather than spin.
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let paths = paths.clone();
        let service = Arc::clone(&service);
        tokio::spawn(async move {
            let handler = hyper::service::service_fn(move |request| {
                let paths = paths.clone();
                let service = Arc::clone(&service);
                async move { Ok::<_, std::convert::Infallible>(respond(&request, &paths, &service)) }
            });
            // A client that went away is not the service's problem.
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), handler)
                .await;
        });
    }
}

fn respond(
    request: &hyper::Request<hyper::body::Incoming>,
    paths: &Paths,
    service: &Arc<ServiceCounters>,
) -> hyper::Response<http_body_util::Full<hyper::body::Bytes>> {
    let reply = |status: u16, content_type: &str, body: String| {
        let mut response = hyper::Response::new(http_body_util::Full::from(body));
        *response.status_mut() =
            hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::OK);
        if let Ok(value) = hyper::header::HeaderValue::from_str(content_type) {
            response
                .headers_mut()
                .insert(hyper::header::CONTENT_TYPE, value);
        }
        response
    };
    if request.uri().path() != "/metrics" {
        return reply(404, "text/plain", String::from("floodwall: see /metrics\n"));
    }
    match render(paths, service) {
        Ok(text) => reply(
            200,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            text,
        ),
        Err(_) => reply(500, "text/plain", String::from("encoding failed\n")),
    }
}
