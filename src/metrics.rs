//! The Prometheus endpoint (`metrics_listen`, off by default): `GET /metrics` answers in the
//! OpenMetrics text format, rendered from the same snapshot `roamtun status` shows, so the two never
//! disagree. Each scrape asks the engine task for that snapshot; nothing is counted twice.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request as HttpRequest, Response as HttpResponse, StatusCode};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::control::{ControlRequest, Request, Response, Status};

/// Scrapes served at once; more wait for the listen backlog. A scrape is one status snapshot.
const CONCURRENT_SCRAPES: usize = 4;
/// A scraper that sends no request head within this long is dropped.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
#[error("cannot listen for metrics on {addr}")]
pub struct MetricsError {
    addr: SocketAddr,
    #[source]
    source: std::io::Error,
}

/// Binds `addr` and serves scrapes until the task is aborted; each asks the engine task through
/// `requests` (the control socket's queue).
pub async fn serve(
    addr: SocketAddr,
    requests: mpsc::Sender<ControlRequest>,
) -> Result<tokio::task::JoinHandle<()>, MetricsError> {
    let listener = TcpListener::bind(addr).await.map_err(|source| MetricsError { addr, source })?;
    tracing::info!(%addr, "metrics on http://{addr}/metrics");
    let slots = Arc::new(Semaphore::new(CONCURRENT_SCRAPES));
    Ok(tokio::spawn(async move {
        loop {
            let Ok(permit) = slots.clone().acquire_owned().await else { return };
            let (tcp, _) = match listener.accept().await {
                Ok(conn) => conn,
                Err(err) => {
                    tracing::debug!(%err, "metrics: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let requests = requests.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| answer(req, requests.clone()));
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), service);
                let _ = conn.await;
                drop(permit);
            });
        }
    }))
}

async fn answer(
    req: HttpRequest<hyper::body::Incoming>,
    requests: mpsc::Sender<ControlRequest>,
) -> Result<HttpResponse<Full<Bytes>>, Infallible> {
    let reply = |code: StatusCode, kind: &'static str, body: String| {
        let mut response = HttpResponse::new(Full::new(Bytes::from(body)));
        *response.status_mut() = code;
        response.headers_mut().insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static(kind));
        Ok(response)
    };
    if req.method() != hyper::Method::GET || req.uri().path() != "/metrics" {
        return reply(StatusCode::NOT_FOUND, "text/plain", "roamtun serves GET /metrics only\n".into());
    }
    let (tx, rx) = oneshot::channel();
    if requests.send(ControlRequest { request: Request::Status, reply: tx }).await.is_err() {
        return reply(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "the daemon is stopping\n".into());
    }
    match rx.await {
        Ok(Response::Status(status)) => {
            reply(StatusCode::OK, "application/openmetrics-text; version=1.0.0; charset=utf-8", render(&status))
        }
        _ => reply(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "no status from the engine task\n".into()),
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PeerLabel {
    peer: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SwitchLabel {
    peer: String,
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UplinkLabel {
    uplink: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UplinkStateLabel {
    uplink: String,
    state: String,
}

/// The snapshot in the OpenMetrics text format. Counters are the status's counters since start
/// (or, per peer, since its session began); gauges are the present.
pub fn render(status: &Status) -> String {
    let mut registry = Registry::with_prefix("roamtun");
    let gauge = |registry: &mut Registry, name: &str, help: &str, value: i64| {
        let g = Gauge::<i64>::default();
        g.set(value);
        registry.register(name, help, g);
    };
    let counter = |registry: &mut Registry, name: &str, help: &str, value: u64| {
        let c = Counter::<u64>::default();
        c.inc_by(value);
        registry.register(name, help, c);
    };
    let sessions = status.peers.iter().filter(|p| p.session.is_some()).count();
    gauge(&mut registry, "sessions", "Sessions (a peer with a session, switching or not)", sessions as i64);
    gauge(&mut registry, "tcp_flows", "TCP connections relayed now", status.tcp_flows as i64);
    gauge(&mut registry, "udp_flows", "UDP flows relayed now", status.udp_flows as i64);
    gauge(&mut registry, "uptime_seconds", "Seconds since the daemon started", status.uptime_secs as i64);
    counter(&mut registry, "handshakes_refused", "Connections that did not become a path", status.handshakes_refused);
    counter(
        &mut registry,
        "connections_over_limit",
        "Connections closed at accept: their source had max_pending_handshakes_per_source",
        status.connections_over_limit,
    );
    counter(
        &mut registry,
        "handshakes_evicted",
        "Connections in their handshake closed for a newer one",
        status.handshakes_evicted,
    );
    gauge(&mut registry, "handshakes_pending", "Connections in their handshake now", status.handshakes_pending as i64);
    counter(&mut registry, "tls_key_updates", "TLS key updates sent on this daemon's paths", status.tls_key_updates);

    let per_peer =
        |registry: &mut Registry, name: &str, help: &str, value: &dyn Fn(&crate::control::PeerStatus) -> u64| {
            let family = Family::<PeerLabel, Counter<u64>>::default();
            for p in status.peers.iter().filter(|p| p.session.is_some()) {
                family.get_or_create(&PeerLabel { peer: p.name.clone() }).inc_by(value(p));
            }
            registry.register(name, help, family);
        };
    per_peer(&mut registry, "peer_bytes_sent", "Stream and datagram bytes sent to the peer", &|p| {
        p.counters.bytes_sent
    });
    per_peer(&mut registry, "peer_bytes_received", "Stream and datagram bytes received from the peer", &|p| {
        p.counters.bytes_received
    });
    per_peer(&mut registry, "peer_bytes_resent", "Bytes resent after a lost path", &|p| p.counters.bytes_resent);
    per_peer(&mut registry, "peer_streams_opened", "TCP streams the peer opened", &|p| p.counters.tcp_streams_opened);
    per_peer(&mut registry, "peer_datagrams_dropped", "Datagrams dropped (queue full or while switching)", &|p| {
        p.counters.datagrams_dropped + p.counters.datagrams_dropped_switching
    });
    per_peer(&mut registry, "peer_refused", "Streams and datagrams refused (destination policy or limits)", &|p| {
        let c = &p.counters;
        c.streams_forbidden + c.datagrams_forbidden + c.streams_refused_limit + c.datagrams_refused_limit
    });
    let queued = Family::<PeerLabel, Gauge<i64>>::default();
    let rtt = Family::<PeerLabel, Gauge<f64, AtomicU64>>::default();
    let switches = Family::<SwitchLabel, Counter<u64>>::default();
    let stall = Family::<SwitchLabel, Counter<f64, AtomicU64>>::default();
    for p in status.peers.iter().filter(|p| p.session.is_some()) {
        let peer = PeerLabel { peer: p.name.clone() };
        queued.get_or_create(&peer).set(p.queued_bytes as i64);
        if let Some(ms) = p.rtt_ms {
            rtt.get_or_create(&peer).set(ms / 1000.0);
        }
        let t = &p.switch_totals;
        for (kind, count, stall_ms) in
            [("planned", t.planned, t.planned_stall_ms), ("unexpected", t.unexpected, t.unexpected_stall_ms)]
        {
            let label = SwitchLabel { peer: p.name.clone(), kind: kind.into() };
            switches.get_or_create(&label).inc_by(count);
            stall.get_or_create(&label).inc_by(stall_ms / 1000.0);
        }
    }
    registry.register("peer_queued_bytes", "Bytes queued towards the peer now", queued);
    registry.register("peer_rtt_seconds", "Smoothed round trip of the peer's current path", rtt);
    registry.register("switches", "Uplink switches of the peer's session, by kind", switches);
    registry.register(
        "switch_stall_seconds",
        "The apps' stall in the peer's switches, summed by kind (divide by switches_total for the mean)",
        stall,
    );

    // The client's uplinks.
    let state = Family::<UplinkStateLabel, Gauge<i64>>::default();
    let used = Family::<UplinkLabel, Counter<u64>>::default();
    let uplink_rtt = Family::<UplinkLabel, Gauge<f64, AtomicU64>>::default();
    let score = Family::<UplinkLabel, Gauge<f64, AtomicU64>>::default();
    for u in &status.uplinks {
        let label = UplinkLabel { uplink: u.name.clone() };
        state.get_or_create(&UplinkStateLabel { uplink: u.name.clone(), state: u.state.clone() }).set(1);
        used.get_or_create(&label).inc_by(u.used_bytes);
        if let Some(ms) = u.rtt_ms {
            uplink_rtt.get_or_create(&label).set(ms / 1000.0);
        }
        if let Some(s) = u.score {
            score.get_or_create(&label).set(s);
        }
    }
    registry.register(
        "uplink_state",
        "1 for the uplink's state now (active, standby, up, unusable, down, absent)",
        state,
    );
    registry.register("uplink_bytes", "Bytes the relay moved over the uplink, both ways", used);
    registry.register("uplink_rtt_seconds", "Round trip of the path on the uplink", uplink_rtt);
    registry.register("uplink_score", "The decision task's score of the uplink", score);

    let mut text = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut text, &registry);
    text
}
