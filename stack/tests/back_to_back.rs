//! Two stacks wired back to back in memory: one originates, the other terminates, as the server and the
//! client stacks do through their TUNs. Time is injected; nothing sleeps.

use std::net::SocketAddr;

use roamtun_stack::{FlowEvent, FlowId, Ingress, Instant, Stack, StackConfig};

struct Pair {
    a: Stack,
    b: Stack,
    now: Instant,
    new_flows_at_b: Vec<(FlowId, SocketAddr, SocketAddr)>,
}

impl Pair {
    fn new() -> Self {
        let now = Instant::from_millis(1_000);
        let cfg = StackConfig { tcp_rx_buffer: 64 * 1024, tcp_tx_buffer: 64 * 1024, ..Default::default() };
        Pair {
            a: Stack::new(StackConfig { random_seed: 1, ..cfg.clone() }, now),
            b: Stack::new(StackConfig { random_seed: 2, ..cfg }, now),
            now,
            new_flows_at_b: Vec::new(),
        }
    }

    /// Moves packets both ways until both stacks are quiet.
    fn pump(&mut self) {
        for _ in 0..10_000 {
            self.a.poll(self.now);
            self.b.poll(self.now);
            let mut moved = false;
            while let Some(p) = self.a.pop_transmit() {
                moved = true;
                if let Ingress::NewFlow { flow, src, dst } = self.b.handle_packet(p, self.now) {
                    self.new_flows_at_b.push((flow, src, dst));
                }
            }
            while let Some(p) = self.b.pop_transmit() {
                moved = true;
                self.a.handle_packet(p, self.now);
            }
            if !moved {
                return;
            }
        }
        panic!("stacks never went quiet");
    }

    fn events(stack: &mut Stack) -> Vec<FlowEvent> {
        std::iter::from_fn(|| stack.pop_event()).collect()
    }
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

#[test]
fn originated_flow_is_held_until_accepted_then_carries_bytes_both_ways() {
    let mut p = Pair::new();
    let src = addr("100.64.0.1:40000");
    let dst = addr("100.64.0.2:8080");
    let fa = p.a.connect(src, dst).unwrap();
    p.pump();
    // The SYN reached b as a new flow for exactly these endpoints; no SYN-ACK until accept.
    assert_eq!(p.new_flows_at_b.len(), 1);
    let (fb, seen_src, seen_dst) = p.new_flows_at_b[0];
    assert_eq!((seen_src, seen_dst), (src, dst));
    assert!(Pair::events(&mut p.a).is_empty(), "connected before accept");

    p.b.accept(fb).unwrap();
    p.pump();
    assert_eq!(Pair::events(&mut p.a), vec![FlowEvent::Connected(fa)]);

    let data: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let mut sent = 0;
    let mut got = Vec::new();
    while got.len() < data.len() {
        sent += p.a.send(fa, &data[sent..]);
        p.pump();
        p.b.recv(fb, usize::MAX, |c| got.extend_from_slice(c));
        p.pump();
    }
    assert_eq!(got, data);

    // Half-close: a closes its side, b sees that the peer finished sending, b can still answer.
    p.a.close(fa);
    p.pump();
    assert!(p.b.app_finished_sending(fb));
    assert_eq!(p.b.send(fb, b"late reply"), 10);
    p.pump();
    let mut reply = Vec::new();
    p.a.recv(fa, usize::MAX, |c| reply.extend_from_slice(c));
    assert_eq!(reply, b"late reply");
    p.b.close(fb);
    p.pump();
    assert!(Pair::events(&mut p.a).contains(&FlowEvent::Closed { flow: fa, reset: false }));
    assert!(Pair::events(&mut p.b).contains(&FlowEvent::Closed { flow: fb, reset: false }));
}

#[test]
fn refused_flow_resets_the_originator() {
    let mut p = Pair::new();
    let fa = p.a.connect(addr("100.64.0.1:40001"), addr("100.64.0.2:9")).unwrap();
    p.pump();
    let (fb, _, _) = p.new_flows_at_b[0];
    p.b.refuse(fb, p.now).unwrap();
    p.pump();
    assert_eq!(Pair::events(&mut p.a), vec![FlowEvent::Closed { flow: fa, reset: true }]);
}

#[test]
fn retransmitted_syn_is_not_a_second_flow_and_flow_limit_resets() {
    let mut p = Pair::new();
    p.b = Stack::new(StackConfig { max_flows: 1, ..Default::default() }, p.now);
    p.a.connect(addr("100.64.0.1:40002"), addr("100.64.0.2:80")).unwrap();
    p.pump();
    // smoltcp retransmits the SYN after its RTO; time jumps instead of sleeping.
    p.now += roamtun_stack::Duration::from_secs(3);
    p.pump();
    assert_eq!(p.new_flows_at_b.len(), 1, "a retransmitted SYN made a second flow");
    let f2 = p.a.connect(addr("100.64.0.1:40003"), addr("100.64.0.2:80")).unwrap();
    p.pump();
    assert_eq!(p.new_flows_at_b.len(), 1);
    assert!(Pair::events(&mut p.a).contains(&FlowEvent::Closed { flow: f2, reset: true }));
}

#[test]
fn ipv6_flows_work_like_ipv4() {
    let mut p = Pair::new();
    let fa = p.a.connect(addr("[fd64::1]:40000"), addr("[fd64::2]:22")).unwrap();
    p.pump();
    let (fb, _, dst) = p.new_flows_at_b[0];
    assert_eq!(dst, addr("[fd64::2]:22"));
    p.b.accept(fb).unwrap();
    p.pump();
    assert_eq!(Pair::events(&mut p.a), vec![FlowEvent::Connected(fa)]);
}

#[test]
fn non_tcp_packets_are_left_to_the_caller() {
    let mut p = Pair::new();
    assert_eq!(p.a.handle_packet(vec![0x45, 0, 0], p.now), Ingress::NotTcp);
    assert_eq!(p.a.handle_packet(Vec::new(), p.now), Ingress::NotTcp);
}

#[test]
fn a_connect_nobody_answers_times_out() {
    let mut p = Pair::new();
    let fa = p.a.connect(addr("100.64.0.1:40004"), addr("198.18.9.9:80")).unwrap();
    // Nobody answers: drop whatever a sends, let time pass.
    for _ in 0..30 {
        p.a.poll(p.now);
        while p.a.pop_transmit().is_some() {}
        p.now += roamtun_stack::Duration::from_secs(1);
    }
    p.a.poll(p.now);
    assert_eq!(Pair::events(&mut p.a), vec![FlowEvent::Closed { flow: fa, reset: true }]);
}

#[test]
fn an_idle_connected_flow_does_not_time_out() {
    let mut p = Pair::new();
    let fa = p.a.connect(addr("100.64.0.1:40005"), addr("100.64.0.2:22")).unwrap();
    p.pump();
    let (fb, _, _) = p.new_flows_at_b[0];
    p.b.accept(fb).unwrap();
    p.pump();
    assert_eq!(Pair::events(&mut p.a), vec![FlowEvent::Connected(fa)]);
    p.now += roamtun_stack::Duration::from_secs(600);
    p.pump();
    assert!(Pair::events(&mut p.a).is_empty(), "an idle connection was closed");
    assert_eq!(p.a.send(fa, b"still here"), 10);
}

#[test]
fn a_held_flow_reset_by_its_app_never_takes_another_apps_syn() {
    let mut p = Pair::new();
    let dst = addr("100.64.0.2:443");
    let first = p.a.connect(addr("100.64.0.1:40006"), dst).unwrap();
    p.pump();
    let (held, _, _) = p.new_flows_at_b[0];
    // The first app gives up while its SYN is held: its kernel sends RST.
    p.a.abort(first, p.now).unwrap();
    p.pump();
    assert!(Pair::events(&mut p.b).contains(&FlowEvent::Closed { flow: held, reset: true }));
    // A second app connects to the same destination: it must get a flow of its own.
    let second_src = addr("100.64.0.1:40007");
    p.a.connect(second_src, dst).unwrap();
    p.pump();
    assert_eq!(p.new_flows_at_b.len(), 2, "the second SYN was swallowed by the first flow's socket");
    assert_eq!(p.new_flows_at_b[1].1, second_src);
}

#[test]
fn a_close_before_the_handshake_ends_sends_fin_once_it_has() {
    // The terminating side: the relay's FIN arrives with its OPEN_OK, so close() follows accept()
    // before the app acknowledged the SYN-ACK.
    let mut p = Pair::new();
    let fa = p.a.connect(addr("100.64.0.1:40010"), addr("100.64.0.2:8080")).unwrap();
    p.pump();
    let (fb, _, _) = p.new_flows_at_b[0];
    p.b.accept(fb).unwrap();
    assert_eq!(p.b.send(fb, b"bye"), 0, "nothing is sent before the handshake");
    p.b.close(fb);
    p.pump();
    assert_eq!(Pair::events(&mut p.a), vec![FlowEvent::Connected(fa)]);
    assert!(p.a.app_finished_sending(fa), "the FIN never reached the app");

    // The originating side: closed while its SYN waits for the app to accept.
    let fa = p.a.connect(addr("100.64.0.1:40011"), addr("100.64.0.2:8080")).unwrap();
    p.pump();
    p.a.close(fa);
    p.pump();
    let (fb, _, _) = p.new_flows_at_b[1];
    p.b.accept(fb).unwrap();
    p.pump();
    assert_eq!(Pair::events(&mut p.a), vec![FlowEvent::Connected(fa)]);
    assert!(p.b.app_finished_sending(fb), "the connect was dropped instead of half-closed");
    assert_eq!(p.b.send(fb, b"reply"), 5);
    p.pump();
    let mut reply = Vec::new();
    p.a.recv(fa, usize::MAX, |c| reply.extend_from_slice(c));
    assert_eq!(reply, b"reply");
}
