//! What `roamtun status` shows, assembled from the core's records, the link manager and the facts
//! the engine task does not own. The rendering of each record is in `crate::control`.

use std::sync::atomic::Ordering::Relaxed;

use roamtun_proto::relay::engine::Role;

use super::client_side::ClientSide;
use super::shell::{unix_ms, Shell};
use crate::control::{LimitsStatus, PeerStatus, Status, SwitchRecord, SwitchTotals, UplinkStatus};

pub(super) fn status(shell: &Shell) -> Status {
    let core = &shell.core;
    let engine = core.engine();
    let live = engine.session_status();
    let source = &shell.source;
    let now = shell.clock.now();
    let unix_now = unix_ms();
    let mut peers = Vec::new();
    for known in &source.known_peers {
        let session = core.sessions().find(|s| s.peer.public_key == known.public_key);
        let mut p = PeerStatus {
            name: known.name.clone(),
            public_key: known.public_key.clone(),
            connected: false,
            virtual_ips: known.virtual_ips.clone(),
            lan_prefixes: known.lan_prefixes.clone(),
            local_address: None,
            uplink: None,
            remote_address: None,
            connected_secs: None,
            tcp_flows: 0,
            udp_flows: 0,
            queued_bytes: 0,
            counters: Default::default(),
            connects: 0,
            last_error: None,
            session: None,
            epoch: None,
            switching: false,
            rtt_ms: None,
            congestion_control: None,
            stale_frames_dropped: 0,
            switches: Vec::new(),
            switch_totals: SwitchTotals::default(),
            limits: None,
        };
        if let Some(s) = session {
            p.connected = s.path.is_some() && !s.switching;
            p.session = Some(s.id.0);
            p.epoch = Some(s.epoch);
            p.switching = s.switching;
            p.rtt_ms = s.rtt.map(|r| r.as_millis_f64());
            p.stale_frames_dropped = s.stale_frames;
            p.switches = s.switches.iter().map(|r| SwitchRecord::new(r, now, unix_now)).collect();
            p.switch_totals = SwitchTotals {
                planned: s.switch_totals.planned,
                unexpected: s.switch_totals.unexpected,
                planned_stall_ms: s.switch_totals.planned_stall.as_millis_f64(),
                unexpected_stall_ms: s.switch_totals.unexpected_stall.as_millis_f64(),
            };
            p.connected_secs = Some((now - s.since).secs());
            if let Some(info) = s.path {
                p.local_address = info.local;
                p.uplink = info.uplink.clone().or_else(|| info.local.and_then(|a| super::tun::interface_of(a.ip())));
                p.remote_address = info.remote;
                p.congestion_control = info.congestion_control.clone();
            }
            if let Some(l) = live.iter().find(|l| l.id == s.id) {
                p.tcp_flows = l.tcp_flows;
                p.udp_flows = l.udp_flows;
                p.queued_bytes = l.queued_bytes;
                let limits = l.limits;
                p.limits =
                    Some(LimitsStatus { tcp_flows: limits.streams, udp_flows: limits.udp_flows, paths: limits.paths });
                p.counters = (&l.counters).into();
            }
            p.counters.frames_malformed += s.control_malformed;
            p.counters.paths_refused_limit = s.paths_refused_limit;
            p.counters.paths_lost_not_reading = s.paths_lost_not_reading;
        }
        if source.role == Role::Client {
            p.connects = source.shared.connects.load(Relaxed);
            p.last_error = source.shared.last_error.lock().ok().and_then(|e| e.clone());
        }
        peers.push(p);
    }
    Status {
        role: match source.role {
            Role::Client => "client".into(),
            Role::Server => "server".into(),
        },
        version: env!("CARGO_PKG_VERSION").into(),
        uptime_secs: source.started.elapsed().as_secs(),
        tun: source.tun.clone(),
        virtual_ips: source.virtual_ips.clone(),
        tcp_flows: live.iter().map(|s| s.tcp_flows).sum(),
        udp_flows: live.iter().map(|s| s.udp_flows).sum(),
        bytes_sent: live.iter().map(|s| s.counters.bytes_sent).sum(),
        bytes_received: live.iter().map(|s| s.counters.bytes_received).sum(),
        peers,
        tun_counters: engine.tun_counters().into(),
        handshakes_refused: source.shared.handshakes_refused.load(Relaxed),
        connections_over_limit: source.shared.connections_over_limit.load(Relaxed),
        handshakes_pending: source.shared.handshakes_pending.load(Relaxed),
        handshakes_evicted: source.shared.handshakes_evicted.load(Relaxed),
        tls_key_updates: source.shared.key_updates.load(Relaxed),
        uplinks: shell.client.as_ref().map(|c| uplink_status(shell, c)).unwrap_or_default(),
        dns: source.dns.clone(),
        lan: source.lan.clone(),
    }
}

/// Client: each configured uplink (or, with none configured, the one the session uses).
fn uplink_status(shell: &Shell, client: &ClientSide) -> Vec<UplinkStatus> {
    let core = &shell.core;
    let links = &client.links;
    let view = core.link_view();
    let active = view.session.as_ref().and_then(|s| s.active.clone());
    let config = |name: &str| client.costs.iter().find(|u| u.name == name);
    let names: Vec<String> =
        if links.configured().is_empty() { active.iter().cloned().collect() } else { links.configured().to_vec() };
    names
        .into_iter()
        .map(|name| {
            let role = links.role(&name, &view);
            let score = links.score(&name);
            let kind =
                config(&name).and_then(|c| c.kind.clone()).unwrap_or_else(|| crate::config::uplink_kind(&name).into());
            let path = view.paths.get(&name);
            UplinkStatus {
                kind,
                addresses: client.uplinks.get(&name).map(|u| u.addresses.clone()).unwrap_or_default(),
                state: role.as_str().into(),
                rtt_ms: path.and_then(|p| p.rtt).map(|r| r.as_millis_f64()),
                jitter_ms: core.uplink_jitter(&name).map(|j| j.as_millis_f64()),
                loss: path.and_then(|p| p.loss),
                bandwidth_mbps: path.and_then(|p| p.bandwidth).map(|b| b * 8.0 / 1e6),
                used_bytes: links.used_bytes(&name),
                cap_bytes: config(&name).and_then(|c| c.cap_bytes()),
                period_start: client.volume_period(&name),
                score: score.as_ref().map(|(s, _)| *s),
                why: match (score, links.unreachable(&name)) {
                    (Some((_, why)), _) => why,
                    (None, Some(error)) if role == roamtun_proto::link::manager::UplinkRole::Unusable => {
                        format!("cannot reach the server: {error}")
                    }
                    (None, _) => String::new(),
                },
                metered: config(&name).is_some_and(|c| c.metered),
                cost_per_gib: config(&name).map_or(0.0, |c| c.cost_per_gib),
                pinned: links.pinned() == Some(name.as_str()),
                name,
            }
        })
        .collect()
}
