//! TCP through two engines back to back (tests/support/pair.rs): bytes both ways, graceful and
//! refused connections, flow control and backpressure, one stream never blocking another.

mod support;

use roamtun_proto::relay::engine::Role;
use roamtun_proto::time::Duration;
use roamtun_proto::wire::ResetCode;
use roamtun_stack::{FlowEvent, StackConfig};
use support::pair::*;
use support::*;

// 1.
#[test]
fn tcp_carries_a_mebibyte_each_way_and_half_closes_gracefully() {
    let mut n = Net::new();
    let (fc, fs) = n.client_connects(40000);
    const MIB: usize = 1024 * 1024;
    let up = pattern(MIB, 1);
    let down = pattern(MIB, 2);
    let half = MIB / 2;

    // Both directions at once: the client app sends all of its MiB, the server app the first half of its.
    let (mut up_sent, mut down_sent) = (0, 0);
    let (mut up_got, mut down_got) = (Vec::new(), Vec::new());
    n.drive("concurrent transfer", |n| {
        up_sent += n.client.app.send(fc, &up[up_sent..]);
        down_sent += n.server.app.send(fs, &down[down_sent..half]);
        n.server.read(fs, &mut up_got);
        n.client.read(fc, &mut down_got);
        up_sent == MIB && down_got.len() == half
    });
    // The client app is done sending: it closes its side first.
    n.client.app.close(fc);
    n.drive("server app reads to EOF", |n| {
        n.server.read(fs, &mut up_got);
        n.server.app.app_finished_sending(fs)
    });
    assert!(up_got == up, "client → server bytes differ ({} of {} bytes arrived)", up_got.len(), up.len());
    assert_eq!(n.client.closed(fc), None, "the client app's connection ended at its own FIN");

    // The server app goes on sending through the half-closed connection, then closes.
    n.drive("server app sends the second half", |n| {
        down_sent += n.server.app.send(fs, &down[down_sent..]);
        n.client.read(fc, &mut down_got);
        down_got.len() == MIB
    });
    assert!(down_got == down, "server → client bytes differ");
    n.server.app.close(fs);
    n.drive("both apps see a graceful close", |n| n.client.closed(fc).is_some() && n.server.closed(fs).is_some());
    assert_eq!(n.client.closed(fc), Some(false), "client app: {:?}", n.client.events);
    assert_eq!(n.server.closed(fs), Some(false), "server app: {:?}", n.server.events);
    n.step(Duration::from_millis(10));

    for (name, side) in [("client", &n.client), ("server", &n.server)] {
        let st = side.status();
        assert_eq!(st.tcp_flows, 0, "{name} engine still holds a stream");
        assert_eq!(st.counters.tcp_streams_opened, 1, "{name}");
        assert_eq!(st.counters.bytes_sent, MIB as u64, "{name} engine sent each payload byte once");
        assert_eq!(st.counters.bytes_received, MIB as u64, "{name} engine received each payload byte once");
        assert_eq!(st.counters.streams_violated + st.counters.frames_malformed, 0, "{name}");
        assert_eq!(st.queued_bytes, 0, "{name}");
    }
    // On the relay: OPEN, OPEN_OK, one FIN each way at the final offset, no RESET.
    assert_eq!(n.client.sent_frames, vec![Seen::Open(1), Seen::Fin(1, MIB as u64)]);
    assert_eq!(n.server.sent_frames, vec![Seen::OpenOk(1), Seen::Fin(1, MIB as u64)]);
}

/// A finished connection gives its flow back to the engine's stack: with room for one flow only, one
/// connection after the other still works, whichever app closes first.
#[test]
fn finished_connections_give_their_flows_back() {
    let one_flow = |role, seed| {
        let mut c = engine_config(role, seed);
        c.stack.max_flows = 1;
        c
    };
    let mut n = Net::with(one_flow(Role::Client, 11), one_flow(Role::Server, 22), app_config(33), app_config(44));
    for i in 0..4u16 {
        let (fc, fs) = n.client_connects(41000 + i);
        let bytes = pattern(10_000, u32::from(i));
        assert!(n.transfer((Which::Client, fc), (Which::Server, fs), &bytes) == bytes);
        assert!(n.transfer((Which::Server, fs), (Which::Client, fc), &bytes) == bytes);
        let (first, second) = if i % 2 == 0 { (Which::Client, Which::Server) } else { (Which::Server, Which::Client) };
        let flow = |w| if w == Which::Client { fc } else { fs };
        n.side(first).app.close(flow(first));
        n.drive("EOF", |n| n.side(second).app.app_finished_sending(flow(second)));
        n.side(second).app.close(flow(second));
        n.drive("both close", |n| n.client.closed(fc).is_some() && n.server.closed(fs).is_some());
        assert_eq!((n.client.closed(fc), n.server.closed(fs)), (Some(false), Some(false)), "connection {i}");
        n.step(Duration::from_millis(10));
        assert_eq!(n.client.status().tcp_flows, 0, "connection {i}");
        assert_eq!(n.server.status().tcp_flows, 0, "connection {i}");
    }
    assert_eq!(n.client.engine.tun_counters().flows_refused_limit, 0);
    assert_eq!(n.server.engine.tun_counters().flows_refused_limit, 0);
    assert_eq!(n.client.counters().tcp_streams_opened, 4);
}

// 2.
#[test]
fn server_app_reaches_a_client_app_at_the_virtual_ip() {
    let mut n = Net::new();
    let src = addr("100.64.0.1:5000");
    let dst = addr("100.64.0.2:7000");
    let fs = n.server.app.connect(src, dst).unwrap();
    n.pump();
    assert_eq!(n.client.new_flows.len(), 1, "the SYN did not reach the client side");
    let (fc, s, d) = n.client.new_flows[0];
    assert_eq!((s, d), (src, dst));
    assert!(!n.server.connected(fs), "connected before the client app accepted");
    n.client.app.accept(fc).unwrap();
    n.pump();
    assert!(n.server.connected(fs));
    assert_eq!(n.client.status().counters.tcp_streams_opened, 1);
    assert_eq!(n.client.status().tcp_flows, 1);

    let down = pattern(200_000, 3);
    let up = pattern(150_000, 4);
    assert!(n.transfer((Which::Server, fs), (Which::Client, fc), &down) == down);
    assert!(n.transfer((Which::Client, fc), (Which::Server, fs), &up) == up);

    // This time the server app closes first.
    n.server.app.close(fs);
    n.drive("client app sees EOF", |n| n.client.app.app_finished_sending(fc));
    n.client.app.close(fc);
    n.drive("both close", |n| n.client.closed(fc).is_some() && n.server.closed(fs).is_some());
    assert_eq!((n.client.closed(fc), n.server.closed(fs)), (Some(false), Some(false)));
    n.step(Duration::from_millis(10));
    assert_eq!(n.client.status().tcp_flows, 0);
    assert_eq!(n.server.status().tcp_flows, 0);
}

// 3.
#[test]
fn a_refused_connection_is_refused_not_accepted_then_reset() {
    let mut n = Net::new();
    let fc = n.client.app.connect(addr("100.64.0.2:40001"), addr("100.64.0.1:9")).unwrap();
    n.pump();
    assert_eq!(n.server.new_flows.len(), 1);
    // The client engine holds the app's SYN while the server side decides.
    assert!(n.client.events.is_empty(), "client app: {:?}", n.client.events);
    let (fs, _, _) = n.server.new_flows[0];
    n.server.app.refuse(fs, n.now.into()).unwrap();
    n.pump();
    assert_eq!(n.client.events, vec![FlowEvent::Closed { flow: fc, reset: true }]);
    assert_eq!(n.server.sent_frames, vec![Seen::Reset(1, ResetCode::Refused)], "the server engine's answer");
    assert!(!n.client.connected(fc));
    assert_eq!(n.client.status().tcp_flows, 0);
    assert_eq!(n.server.status().tcp_flows, 0);
    assert_eq!(n.client.status().counters.streams_violated, 0);
    // Nothing is left to happen later either.
    n.step(Duration::from_secs(5));
    assert_eq!(n.client.events.len(), 1);
}

// 4.
#[test]
fn a_server_app_that_does_not_read_stops_the_client_app_without_unbounded_queues() {
    const BUF: usize = 64 * 1024;
    const WINDOW: u64 = 192 * 1024;
    const BUDGET: usize = 40 * 1024;
    let small = |role, seed| {
        let mut c = engine_config(role, seed);
        c.stream_window = WINDOW;
        c.session_out_budget = BUDGET;
        c.stack.tcp_rx_buffer = BUF;
        c.stack.tcp_tx_buffer = BUF;
        c
    };
    let apps = |seed| StackConfig { tcp_rx_buffer: BUF, tcp_tx_buffer: BUF, ..app_config(seed) };
    let mut n = Net::with(small(Role::Client, 11), small(Role::Server, 22), apps(33), apps(44));
    let (fc, fs) = n.client_connects(40002);
    // A slow link, so queues form in front of it and frames arrive cut anywhere.
    n.link_rate = Some(16 * 1024);

    let data = pattern(2 * 1024 * 1024, 5);
    let mut written = 0;
    // The client app writes whenever it can, between every two rounds (not once per pump: the engine
    // must hold back while the link is slower than the app), until it has been stuck for a while.
    let mut stalled_for = 0;
    for round in 0.. {
        assert!(round < 100_000, "the client app was never stopped");
        let w = n.client.app.send(fc, &data[written..]);
        written += w;
        let moved = n.round();
        n.now += Duration::from_millis(1);
        stalled_for = if w == 0 && !moved && n.client.app.send_capacity(fc) == 0 { stalled_for + 1 } else { 0 };
        if stalled_for == 50 {
            break;
        }
    }
    assert_eq!(n.client.app.send_capacity(fc), 0);
    assert!(written < data.len(), "the client app wrote everything: nothing pushed back");

    // What the server engine holds: bytes it received minus what waits in the server app's socket.
    let server_received = n.server.counters().bytes_received as usize;
    let in_server_app = n.server.app.recv_queue(fs);
    let in_server_engine = server_received - in_server_app;
    assert!(
        in_server_engine <= WINDOW as usize + BUF,
        "server engine holds {in_server_engine} bytes (window {WINDOW}, stack buffer {BUF})"
    );
    assert!(in_server_app <= BUF);
    for (name, side) in [("client", &n.client), ("server", &n.server)] {
        assert!(
            side.max_queued <= BUDGET + 64 * 1024,
            "{name} engine queued up to {} bytes towards the peer (budget {BUDGET})",
            side.max_queued
        );
    }
    // The slow link made a queue form in the client engine: the budget was what bounded it.
    assert!(n.client.max_queued > BUDGET / 2, "no queue formed ({} bytes)", n.client.max_queued);
    // Everything the app wrote sits in one of the bounded buffers on the way.
    let bound = BUF /* client app socket */ + BUF /* client engine stack */ + BUDGET + 64 * 1024 /* queue */
        + WINDOW as usize + BUF /* server engine */ + BUF /* server app socket */;
    assert!(written <= bound, "{written} bytes in flight, bound {bound}");
    assert_eq!(n.client.counters().streams_violated + n.server.counters().streams_violated, 0);

    // The server app starts reading: everything arrives, intact, and the client app can write again.
    let mut got = Vec::new();
    n.drive("everything arrives once the server app reads", |n| {
        written += n.client.app.send(fc, &data[written..]);
        n.server.read(fs, &mut got);
        got.len() == data.len()
    });
    assert!(got == data, "bytes differ after backpressure");
    for (name, side) in [("client", &n.client), ("server", &n.server)] {
        assert!(side.max_queued <= BUDGET + 64 * 1024, "{name} engine queued up to {} bytes", side.max_queued);
    }
}

/// A `stream_window` below the initial credit (16 KiB; the configuration refuses it, the engine raises
/// it) still carries a burst: a sender must not start with more credit than the receiver honours.
#[test]
fn the_smallest_configurable_stream_window_carries_a_burst() {
    let small = |role, seed| {
        let mut c = engine_config(role, seed);
        c.stream_window = 16 * 1024;
        c
    };
    let mut n = Net::with(small(Role::Client, 11), small(Role::Server, 22), app_config(33), app_config(44));
    let (fc, fs) = n.client_connects(40030);
    let burst = pattern(200_000, 11);
    let mut sent = 0;
    let mut got = Vec::new();
    n.drive("burst", |n| {
        sent += n.client.app.send(fc, &burst[sent..]);
        n.server.read(fs, &mut got);
        got.len() == burst.len() || n.client.closed(fc).is_some() || n.server.closed(fs).is_some()
    });
    assert_eq!(
        n.server.counters().streams_violated,
        0,
        "the server engine reset the stream; it sent {:?} after {} bytes",
        n.server.sent_frames,
        got.len()
    );
    assert_eq!((n.client.closed(fc), n.server.closed(fs)), (None, None));
    assert!(got == burst);
}

/// One slow reader never blocks the others: while a server app reads nothing on one connection (its
/// stream's credit runs out and its bytes wait in bounded buffers), another connection over the same
/// session carries 2 MiB at full speed.
#[test]
fn a_stalled_stream_does_not_block_the_others() {
    let mut n = Net::new();
    let (stuck_c, stuck_s) = n.client_connects(40030);
    let (busy_c, busy_s) = n.client_connects(40031);
    let stuck_data = pattern(4 * 1024 * 1024, 30);
    let mut stuck_written = 0;
    // The stuck connection's app writes until it is pushed back.
    n.drive("the unread connection fills up", |n| {
        let w = n.client.app.send(stuck_c, &stuck_data[stuck_written..]);
        stuck_written += w;
        w == 0 && n.client.app.send_capacity(stuck_c) == 0
    });
    assert!(stuck_written < stuck_data.len(), "nothing pushed back on the unread connection");

    // Meanwhile the other connection moves 2 MiB, intact, with the first one still unread.
    let busy_data = pattern(2 * 1024 * 1024, 31);
    let got = n.transfer((Which::Client, busy_c), (Which::Server, busy_s), &busy_data);
    assert!(got == busy_data, "the second connection's bytes differ");

    // And the stalled one resumes when its reader does.
    let mut got = Vec::new();
    n.drive("the stalled connection drains", |n| {
        stuck_written += n.client.app.send(stuck_c, &stuck_data[stuck_written..]);
        n.server.read(stuck_s, &mut got);
        got.len() == stuck_data.len()
    });
    assert!(got == stuck_data, "the stalled connection's bytes differ");
}

/// A keystroke on one connection does not wait behind the bytes another connection's bulk transfer
/// has queued in the engine (relay::outqueue's urgent lane), only behind what is already on the
/// link; and both byte streams arrive whole and in order.
#[test]
fn a_keystroke_passes_a_bulk_transfer_queued_in_the_engine() {
    // A window large enough that the engine's queue, not the credit, is what grows.
    let wide = |role, seed| {
        let mut c = engine_config(role, seed);
        c.stream_window = 4 * 1024 * 1024;
        c
    };
    let mut n = Net::with(wide(Role::Client, 11), wide(Role::Server, 22), app_config(33), app_config(44));
    let (bulk_c, bulk_s) = n.client_connects(40010);
    let (keys_c, keys_s) = n.client_connects(40011);
    n.link_rate = Some(16 * 1024);
    let data = pattern(8 * 1024 * 1024, 9);
    let (mut written, mut got) = (0, Vec::new());
    // The bulk app writes until a queue has formed in the client engine behind the slow link.
    for round in 0.. {
        assert!(round < 10_000, "no queue formed in the engine");
        written += n.client.app.send(bulk_c, &data[written..]);
        n.round();
        n.server.read(bulk_s, &mut got);
        n.now += Duration::from_millis(1);
        if n.client.status().queued_bytes >= 512 * 1024 {
            break;
        }
    }
    let queued = n.client.status().queued_bytes;
    let on_link = n.c2s.len();
    let bulk_before = got.len();
    assert_eq!(n.client.app.send(keys_c, b"ls\n"), 3);
    let mut typed = Vec::new();
    for round in 0.. {
        assert!(round < 10_000, "the keystroke never arrived");
        written += n.client.app.send(bulk_c, &data[written..]);
        n.round();
        n.server.read(bulk_s, &mut got);
        n.server.read(keys_s, &mut typed);
        n.now += Duration::from_millis(1);
        if !typed.is_empty() {
            break;
        }
    }
    assert_eq!(typed, b"ls\n");
    // Behind what was on the link, plus a few rounds of it (16 KiB each) while the keystroke crosses
    // the engines' stacks: not behind the engine's queue (without the urgent lane, 1 MiB here).
    let waited_for = got.len() - bulk_before;
    assert!(
        waited_for <= on_link + 128 * 1024,
        "the keystroke arrived after {waited_for} more bulk bytes; the link held {on_link} when it was \
         typed, the engine another {queued}"
    );
    n.drive("the bulk transfer completes", |n| {
        written += n.client.app.send(bulk_c, &data[written..]);
        n.server.read(bulk_s, &mut got);
        got.len() == data.len()
    });
    assert!(got == data, "the bulk stream's bytes differ");
    assert_eq!(n.client.counters().streams_violated + n.server.counters().streams_violated, 0);
}

#[test]
fn a_new_connection_gets_its_turn_beside_busy_ones() {
    let mut n = Net::new();
    let busy: Vec<_> = (0..20).map(|i| n.client_connects(43000 + i)).collect();
    let (fc, fs) = n.client_connects(44000);
    // A slow link: the session's queue is full and every byte of room it frees is contended.
    n.link_rate = Some(16 * 1024);
    let chunk = vec![7u8; 64 * 1024];
    let mut sink = Vec::new();
    let keep_busy = |n: &mut Net, sink: &mut Vec<u8>| {
        for (c, s) in &busy {
            n.client.app.send(*c, &chunk);
            n.server.read(*s, sink);
        }
        sink.clear();
        n.round();
    };
    for _ in 0..200 {
        keep_busy(&mut n, &mut sink);
    }
    assert!(n.client.status().queued_bytes > 0, "the busy flows do not fill the session's queue");
    // The new connection's request, opened last, so its stream comes after every busy one.
    let request = pattern(4096, 3);
    assert_eq!(n.client.app.send(fc, &request), request.len());
    let mut got = Vec::new();
    let mut rounds = 0;
    while got.len() < request.len() {
        keep_busy(&mut n, &mut sink);
        n.server.read(fs, &mut got);
        rounds += 1;
        assert!(rounds < 2_000, "the new connection's 4 KiB waited {rounds} rounds behind 20 busy flows");
    }
    assert_eq!(got, request);
}
