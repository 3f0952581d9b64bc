//! The SYN proxy in the sans-IO engine: cookies, the two handshakes, the
//! translation of a proxied connection's packets, and what the proxy
//! refuses. Virtual clock; the packets the proxy would send are read back
//! with the engine's own parser.

mod engine_support;

use conntrackd::engine::{Answers, OPENING_LIMIT_SECS, SYN_AGAIN_AFTER};
use conntrackd::synproxy::{Segment, TcpOptions, Timestamps};
use conntrackd::wire::{self, build, Framing, SeqNum, TcpFlags, TcpSegment};
use conntrackd::Reason;
use engine_support::*;
use std::net::{IpAddr, SocketAddr};

/// The proxied `web` rule, and `ssh` (port 22) without the proxy.
fn rules() -> String {
    let ssh = r#"
[[rule]]
name = "ssh"
action = "accept"
proto = "tcp"
dst_ports = [22]
"#;
    format!("{PROXIED_WEB}{ssh}")
}

fn harness() -> Harness {
    let t = Harness::from_toml(&rules());
    t.engine.set_cookie_keys([7; 32]);
    t
}

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// A new process (new keys) with the table of the state file `saved`
/// (written at Unix time 1,800,000,000), and how many entries it restored.
fn restarted(saved: &[u8]) -> (Harness, u64) {
    let t = Harness::from_toml(&rules());
    t.engine.set_cookie_keys([9; 32]);
    let r = t
        .engine
        .restore_state(saved, t.now(), 1_800_000_000)
        .expect("the state file");
    (t, r.restored)
}

/// Decides `bytes`, with the proxy's answers.
fn decide(t: &Harness, bytes: &[u8]) -> (Reason, Answers) {
    let mut answers = Answers::default();
    let d = t.engine.decide_with(bytes, &t.ctx, t.now(), &mut answers);
    (d.reason, answers)
}

/// A segment without data (with options) as bytes.
fn segment(s: Segment) -> Vec<u8> {
    let mut buf = [0u8; 128];
    let n = s.write(&mut buf).expect("fits");
    buf[..n].to_vec()
}

/// The TCP header of a packet the proxy would send (checksum verified).
fn parsed(s: &Segment) -> (IpAddr, IpAddr, TcpSegment) {
    let bytes = segment(*s);
    let p = wire::parse(&bytes, Framing::default()).expect("the proxy's packet parses");
    (p.src, p.dst, *p.tcp().expect("TCP"))
}

struct Proxied {
    c: SocketAddr,
    s: SocketAddr,
    client_isn: u32,
    server_isn: u32,
    cookie: u32,
}

fn client_syn(c: SocketAddr, s: SocketAddr, isn: u32, tsval: u32) -> Segment {
    Segment {
        src: c.ip(),
        dst: s.ip(),
        src_port: c.port(),
        dst_port: s.port(),
        seq: SeqNum(isn),
        ack: SeqNum(0),
        flags: TcpFlags(TcpFlags::SYN),
        window: 64240,
        options: TcpOptions {
            mss: Some(1460),
            window_scale: Some(7),
            sack_permitted: true,
            timestamps: Some(Timestamps {
                value: tsval,
                echo: 0,
            }),
        },
    }
}

/// Both handshakes of a connection through the proxy, checked step by step.
fn open(t: &mut Harness, c: SocketAddr, s: SocketAddr) -> Proxied {
    let client_isn = 1_000_000;
    let held = t.engine.table().len();
    let (reason, a) = decide(t, &segment(client_syn(c, s, client_isn, 500)));
    assert_eq!(reason, Reason::SynCookieSent);
    assert_eq!(t.engine.table().len(), held, "a cookie keeps nothing");
    let synack = a.segments[0].expect("the cookie SYN+ACK");
    assert!(a.segments[1].is_none() && a.rewrite.is_none());
    let (src, dst, h) = parsed(&synack);
    assert_eq!(
        (src, dst),
        (s.ip(), c.ip()),
        "from the server to the client"
    );
    assert_eq!(h.flags.0, TcpFlags::SYN | TcpFlags::ACK);
    assert_eq!(h.ack, SeqNum(client_isn + 1));
    let cookie = h.seq.0;
    let ts = synack
        .options
        .timestamps
        .expect("a timestamp carries the options");
    assert_eq!(ts.echo, 500);

    // The client's ACK brings the cookie back: the connection is made, and
    // the server gets a SYN with the client's ISN and options.
    let ack = Segment {
        src: c.ip(),
        dst: s.ip(),
        src_port: c.port(),
        dst_port: s.port(),
        seq: SeqNum(client_isn + 1),
        ack: SeqNum(cookie.wrapping_add(1)),
        flags: TcpFlags(TcpFlags::ACK),
        window: 502,
        options: TcpOptions {
            timestamps: Some(Timestamps {
                value: 510,
                echo: ts.value,
            }),
            ..TcpOptions::default()
        },
    };
    let (reason, a) = decide(t, &segment(ack));
    assert_eq!(reason, Reason::SynproxyOpening);
    let syn = a.segments[0].expect("the SYN to the server");
    let (src, dst, h) = parsed(&syn);
    assert_eq!((src, dst), (c.ip(), s.ip()));
    assert_eq!(h.flags.0, TcpFlags::SYN);
    assert_eq!(h.seq, SeqNum(client_isn));
    assert_eq!(h.options.window_scale, Some(7), "the client's scale");
    // The client's MSS, rounded down to the cookie's table (IPv6's has 1440).
    let want = if c.is_ipv4() { 1460 } else { 1440 };
    assert_eq!(h.options.mss, Some(want));
    assert_eq!(t.engine.table().len(), held + 1);

    // The server's SYN+ACK: answered by the proxy, never forwarded.
    let server_isn = 0xffff_ff00; // wraps soon: the translation must too
    let syn_ack = Segment {
        src: s.ip(),
        dst: c.ip(),
        src_port: s.port(),
        dst_port: c.port(),
        seq: SeqNum(server_isn),
        ack: SeqNum(client_isn + 1),
        flags: TcpFlags(TcpFlags::SYN | TcpFlags::ACK),
        window: 65160,
        options: TcpOptions {
            mss: Some(1460),
            window_scale: Some(7),
            sack_permitted: true,
            timestamps: Some(Timestamps {
                value: 9_000,
                echo: 510,
            }),
        },
    };
    let (reason, a) = decide(t, &segment(syn_ack));
    assert_eq!(reason, Reason::SynproxyOpened);
    let (to_server, to_client) = (a.segments[0].unwrap(), a.segments[1].unwrap());
    let (src, dst, h) = parsed(&to_server);
    assert_eq!(
        (src, dst),
        (c.ip(), s.ip()),
        "the ACK completing the server's handshake"
    );
    assert_eq!(
        (h.flags.0, h.seq, h.ack),
        (
            TcpFlags::ACK,
            SeqNum(client_isn + 1),
            SeqNum(server_isn.wrapping_add(1))
        )
    );
    let (src, dst, h) = parsed(&to_client);
    assert_eq!(
        (src, dst),
        (s.ip(), c.ip()),
        "the window update to the client"
    );
    assert_eq!(
        (h.flags.0, h.seq, h.ack),
        (
            TcpFlags::ACK,
            SeqNum(cookie.wrapping_add(1)),
            SeqNum(client_isn + 1)
        )
    );
    assert!(h.window > 0, "the server's window opens the client's");
    let info = t.engine.connections();
    let this = info.iter().find(|i| i.originator == (c.ip(), c.port()));
    assert_eq!(
        this.expect("the connection").state.to_string(),
        "ESTABLISHED:ESTABLISHED"
    );
    Proxied {
        c,
        s,
        client_isn,
        server_isn,
        cookie,
    }
}

/// Decides a data packet and applies the rewrite; the packet as it goes on.
fn through(t: &Harness, bytes: Vec<u8>, want: Reason) -> TcpSegment {
    let (reason, a) = decide(t, &bytes);
    assert_eq!(reason, want);
    let mut out = bytes;
    let r = a.rewrite.expect("a proxied packet is rewritten");
    r.apply(&mut out).expect("rewritten");
    let p = wire::parse(&out, Framing::default()).expect("the rewritten packet parses (checksum)");
    *p.tcp().unwrap()
}

#[test]
fn a_connection_through_the_proxy_is_translated_both_ways_until_its_teardown() {
    for (c, s) in [
        (sa("198.18.0.2:40000"), sa("198.19.0.2:80")),
        (sa("[2001:db8:1::2]:40000"), sa("[2001:db8:2::2]:80")),
    ] {
        let mut t = harness();
        let x = open(&mut t, c, s);
        let delta = x.cookie.wrapping_sub(x.server_isn);
        // Client data: its ack is put in the server's space.
        let h = through(
            &t,
            build::tcp(c, s)
                .flags(ACK | PSH)
                .seq(x.client_isn + 1)
                .ack(x.cookie.wrapping_add(1))
                .window(502)
                .payload(&[1; 100])
                .build(),
            Reason::Tracked,
        );
        assert_eq!(h.ack, SeqNum(x.server_isn.wrapping_add(1)));
        assert_eq!(
            h.seq,
            SeqNum(x.client_isn + 1),
            "the client's own numbers pass"
        );
        // Server data, past the wrap of its sequence numbers: put in the
        // client's space.
        let h = through(
            &t,
            build::tcp(s, c)
                .flags(ACK | PSH)
                .seq(x.server_isn.wrapping_add(1))
                .ack(x.client_isn + 101)
                .window(509)
                .payload(&[2; 1000])
                .build(),
            Reason::Tracked,
        );
        assert_eq!(
            h.seq,
            SeqNum(x.server_isn.wrapping_add(1).wrapping_add(delta))
        );
        assert_eq!(h.seq, SeqNum(x.cookie.wrapping_add(1)));
        // The client acknowledges the server's data past its wrap.
        let h = through(
            &t,
            build::tcp(c, s)
                .flags(ACK)
                .seq(x.client_isn + 101)
                .ack(x.cookie.wrapping_add(1001))
                .window(502)
                .build(),
            Reason::Tracked,
        );
        assert_eq!(h.ack, SeqNum(x.server_isn.wrapping_add(1001)));
        // A client ack past what the server sent is still refused (the
        // tracker judges the server's space).
        let (reason, _) = decide(
            &t,
            &build::tcp(c, s)
                .flags(ACK)
                .seq(x.client_isn + 101)
                .ack(x.cookie.wrapping_add(900_000))
                .window(502)
                .build(),
        );
        assert_eq!(reason, Reason::AckAboveSent);
        // The teardown, server first.
        through(
            &t,
            build::tcp(s, c)
                .flags(FIN | ACK)
                .seq(x.server_isn.wrapping_add(1001))
                .ack(x.client_isn + 101)
                .window(509)
                .build(),
            Reason::Tracked,
        );
        through(
            &t,
            build::tcp(c, s)
                .flags(FIN | ACK)
                .seq(x.client_isn + 101)
                .ack(x.cookie.wrapping_add(1002))
                .window(502)
                .build(),
            Reason::Tracked,
        );
        through(
            &t,
            build::tcp(s, c)
                .flags(ACK)
                .seq(x.server_isn.wrapping_add(1002))
                .ack(x.client_isn + 102)
                .window(509)
                .build(),
            Reason::Tracked,
        );
        let info = t.engine.connections();
        assert!(
            info[0].state.to_string().contains("TIME_WAIT"),
            "{}",
            info[0].state
        );
        let _ = x.c;
        let _ = x.s;
    }
}

#[test]
fn spoofed_syns_get_cookies_and_leave_nothing_behind() {
    let t = harness();
    for i in 0..2_000u32 {
        let c = SocketAddr::from(([198, 18, (i >> 8) as u8, i as u8], 1024 + i as u16));
        let (reason, a) = decide(
            &t,
            &segment(client_syn(c, sa("198.19.0.2:80"), i * 7919, i)),
        );
        assert_eq!(reason, Reason::SynCookieSent);
        assert!(a.segments[0].is_some());
    }
    assert_eq!(t.engine.table().len(), 0);
    assert_eq!(t.engine.table().half_open(), 0);
    // A rule without the proxy is tracked as ever.
    let (reason, a) = decide(
        &t,
        &segment(client_syn(sa("198.18.9.9:999"), sa("198.19.0.2:22"), 5, 5)),
    );
    assert_eq!(reason, Reason::NewByRule);
    assert!(a.segments[0].is_none());
}

#[test]
fn forged_and_expired_cookies_are_refused_with_their_reasons() {
    let mut t = harness();
    let (c, s) = (sa("198.18.0.2:40001"), sa("198.19.0.2:80"));
    let (_, a) = decide(&t, &segment(client_syn(c, s, 77, 1)));
    let cookie = a.segments[0].unwrap().seq.0;
    let ack = |cookie: u32| {
        build::tcp(c, s)
            .flags(ACK)
            .seq(78)
            .ack(cookie.wrapping_add(1))
            .window(502)
            .build()
    };
    // Random cookies: refused (2^-24 chance each of a valid one).
    for forged in [cookie ^ 1, cookie.wrapping_add(1 << 24), 0xdead_beef, 0] {
        let (reason, a) = decide(&t, &ack(forged));
        assert_eq!(reason, Reason::SynCookieInvalid, "cookie {forged:#x}");
        assert!(a.segments[0].is_none());
    }
    // Another tuple's cookie: refused.
    let (reason, _) = decide(
        &t,
        &build::tcp(sa("198.18.0.3:40001"), s)
            .flags(ACK)
            .seq(78)
            .ack(cookie.wrapping_add(1))
            .build(),
    );
    assert_eq!(reason, Reason::SynCookieInvalid);
    // Too old.
    t.now_secs += 4 * 60;
    let (reason, _) = decide(&t, &ack(cookie));
    assert_eq!(reason, Reason::SynCookieExpired);
    assert_eq!(t.engine.table().len(), 0);
    // An ACK to a port without the proxy is no cookie's business.
    let (reason, _) = decide(
        &t,
        &build::tcp(c, sa("198.19.0.2:22"))
            .flags(ACK)
            .seq(1)
            .ack(1)
            .build(),
    );
    assert_eq!(reason, Reason::NoConnection);
}

#[test]
fn a_server_that_refuses_or_stays_silent_gets_the_client_reset() {
    let mut t = harness();
    let (c, s) = (sa("198.18.0.2:40002"), sa("198.19.0.2:80"));
    for refuse in [true, false] {
        let (_, a) = decide(&t, &segment(client_syn(c, s, 5_000, 1)));
        let synack = a.segments[0].unwrap();
        let ts = synack.options.timestamps.unwrap();
        let ack = Segment {
            src: c.ip(),
            dst: s.ip(),
            src_port: c.port(),
            dst_port: s.port(),
            seq: SeqNum(5_001),
            ack: synack.seq + 1,
            flags: TcpFlags(TcpFlags::ACK),
            window: 502,
            options: TcpOptions {
                timestamps: Some(Timestamps {
                    value: 2,
                    echo: ts.value,
                }),
                ..TcpOptions::default()
            },
        };
        let (reason, _) = decide(&t, &segment(ack));
        assert_eq!(reason, Reason::SynproxyOpening);
        let reset = if refuse {
            let (reason, a) = decide(
                &t,
                &build::tcp(s, c).flags(RST | ACK).seq(0).ack(5_001).build(),
            );
            assert_eq!(reason, Reason::SynproxyServerFailed);
            a
        } else {
            // The client's data at once: dropped, and the SYN is not sent
            // again so soon, however often the client sends.
            let data = build::tcp(c, s)
                .flags(ACK | PSH)
                .seq(5_001)
                .ack(synack.seq.0.wrapping_add(1))
                .payload(b"GET /")
                .build();
            for _ in 0..100 {
                let (reason, a) = decide(&t, &data);
                assert_eq!(reason, Reason::SynproxyWaiting);
                assert!(a.to_send().next().is_none(), "no SYN within a second");
            }
            // Its retransmission a second later: the SYN goes again, once.
            t.now_secs += SYN_AGAIN_AFTER.as_secs();
            let (reason, a) = decide(&t, &data);
            assert_eq!(reason, Reason::SynproxyWaiting);
            assert_eq!(parsed(&a.segments[0].unwrap()).2.flags.0, TcpFlags::SYN);
            let (_, a) = decide(&t, &data);
            assert!(a.to_send().next().is_none(), "once a second");
            t.now_secs += OPENING_LIMIT_SECS;
            let (reason, a) = decide(&t, &data);
            assert_eq!(reason, Reason::SynproxyServerFailed);
            a
        };
        let (src, dst, h) = parsed(&reset.segments[0].expect("a RST to the client"));
        assert_eq!((src, dst), (s.ip(), c.ip()));
        assert!(h.flags.rst());
        assert_eq!(h.seq, synack.seq + 1, "in the client's space");
        assert_eq!(t.engine.table().len(), 0, "the connection is gone");
        assert_eq!(t.engine.table().proxied.len(), 0, "and its proxy state");
    }
}

#[test]
fn without_keys_the_proxy_answers_nothing() {
    let t = Harness::from_toml(&rules());
    let (reason, a) = decide(
        &t,
        &segment(client_syn(sa("198.18.0.2:1"), sa("198.19.0.2:80"), 1, 1)),
    );
    assert_eq!(reason, Reason::NewByRule);
    assert_eq!(a, Answers::default());
}

#[test]
fn engine_wide_always_proxies_every_accepted_syn_and_adaptive_follows_the_half_open_count() {
    let always = format!(
        "{}\n[engine]\nsynproxy = \"always\"\n",
        rules().replace("synproxy = true\n", "")
    );
    let t = Harness::from_toml(&always);
    t.engine.set_cookie_keys([1; 32]);
    let (reason, _) = decide(
        &t,
        &segment(client_syn(sa("198.18.0.2:1"), sa("198.19.0.2:22"), 1, 1)),
    );
    assert_eq!(reason, Reason::SynCookieSent);
    // Refused by the policy: no cookie for it.
    let (reason, _) = decide(
        &t,
        &segment(client_syn(sa("198.18.0.2:1"), sa("198.19.0.2:23"), 1, 1)),
    );
    assert_eq!(reason, Reason::DropByDefault);

    // Adaptive, half-open limit 100: on above 25, off again below 12.5.
    let adaptive = format!(
        "{}\n[engine]\nmax_half_open = 100\nsynproxy = \"adaptive\"\n",
        rules().replace("synproxy = true\n", "")
    );
    let t = Harness::from_toml(&adaptive);
    t.engine.set_cookie_keys([2; 32]);
    let syn = |i: u32| {
        segment(client_syn(
            SocketAddr::from(([198, 18, 1, i as u8], 2000)),
            sa("198.19.0.2:22"),
            i,
            i,
        ))
    };
    let mut first_cookie = None;
    for i in 0..40 {
        let (reason, _) = decide(&t, &syn(i));
        if reason == Reason::SynCookieSent {
            first_cookie = Some(i);
            break;
        }
        assert_eq!(reason, Reason::NewByRule);
    }
    assert_eq!(first_cookie, Some(26), "on once more than 25 are half-open");
    assert!(t.engine.synproxy_adaptive_on());
}

#[test]
fn a_restart_keeps_a_proxied_connection_and_its_translation() {
    let (c, s) = (sa("198.18.0.2:40003"), sa("198.19.0.2:80"));
    let mut t = harness();
    let x = open(&mut t, c, s);
    let saved = t.engine.save_state(t.now(), true, 1_800_000_000);
    let (t2, restored) = restarted(&saved);
    assert_eq!(restored, 1);
    let h = through(
        &t2,
        build::tcp(s, c)
            .flags(ACK | PSH)
            .seq(x.server_isn.wrapping_add(1))
            .ack(x.client_isn + 1)
            .window(509)
            .payload(&[3; 10])
            .build(),
        Reason::Tracked,
    );
    assert_eq!(h.seq, SeqNum(x.cookie.wrapping_add(1)), "still translated");
    let h = through(
        &t2,
        build::tcp(c, s)
            .flags(ACK)
            .seq(x.client_isn + 1)
            .ack(x.cookie.wrapping_add(11))
            .window(502)
            .build(),
        Reason::Tracked,
    );
    assert_eq!(h.ack, SeqNum(x.server_isn.wrapping_add(11)));
}

#[test]
fn a_client_that_offers_no_scale_does_not_make_the_proxy_forget_the_servers() {
    let mut t = harness();
    let s = sa("198.19.0.2:80");
    // Learns the server's scale (7) from a client that offered one.
    open(&mut t, sa("198.18.0.2:41000"), s);
    // A client without timestamps: no scale offered to it, nor to the
    // server, which answers without one.
    let c = sa("198.18.0.2:41001");
    let (_, a) = decide(&t, &build::tcp(c, s).flags(SYN).seq(10).mss(1460).build());
    let cookie = a.segments[0].unwrap().seq.0;
    let (reason, _) = decide(
        &t,
        &build::tcp(c, s)
            .flags(ACK)
            .seq(11)
            .ack(cookie.wrapping_add(1))
            .build(),
    );
    assert_eq!(reason, Reason::SynproxyOpening);
    let (reason, _) = decide(
        &t,
        &build::tcp(s, c)
            .flags(SYN | ACK)
            .seq(500)
            .ack(11)
            .mss(1460)
            .build(),
    );
    assert_eq!(reason, Reason::SynproxyOpened);
    // The next client that offers a scale is told the server's, still.
    let (_, a) = decide(&t, &segment(client_syn(sa("198.18.0.2:41002"), s, 20, 3)));
    assert_eq!(a.segments[0].unwrap().options.window_scale, Some(7));
}

#[test]
fn per_source_limits_count_proxied_connections_and_a_blind_rst_is_refused() {
    let rules = rules().replace("synproxy = true\n", "synproxy = true\nmax_src_conn = 1\n");
    let mut t = Harness::from_toml(&rules);
    t.engine.set_cookie_keys([5; 32]);
    let s = sa("198.19.0.2:80");
    let c = sa("198.18.0.2:42000");
    let x = open(&mut t, c, s);
    // The client's next packet makes it assured, charged to its source.
    through(
        &t,
        build::tcp(c, s)
            .flags(ACK)
            .seq(x.client_isn + 1)
            .ack(x.cookie.wrapping_add(1))
            .window(502)
            .build(),
        Reason::Tracked,
    );
    // The source holds its one connection: the next cookie ACK is refused.
    let c2 = sa("198.18.0.2:42001");
    let (_, a) = decide(&t, &segment(client_syn(c2, s, 7, 1)));
    let synack = a.segments[0].unwrap();
    let ack = Segment {
        src: c2.ip(),
        dst: s.ip(),
        src_port: c2.port(),
        dst_port: s.port(),
        seq: SeqNum(8),
        ack: synack.seq + 1,
        flags: TcpFlags(TcpFlags::ACK),
        window: 502,
        options: TcpOptions {
            timestamps: Some(Timestamps {
                value: 2,
                echo: synack.options.timestamps.unwrap().value,
            }),
            ..TcpOptions::default()
        },
    };
    let (reason, a) = decide(&t, &segment(ack));
    assert_eq!(reason, Reason::SourceConnLimit);
    assert!(a.segments[0].is_none(), "no SYN to the server");

    // Another source: opening; a RST from the server that acknowledges
    // nothing of the proxy's SYN is dropped, the opening goes on.
    let c3 = sa("198.18.0.3:42002");
    let (_, a) = decide(&t, &segment(client_syn(c3, s, 100, 1)));
    let synack = a.segments[0].unwrap();
    let ack = Segment {
        src: c3.ip(),
        src_port: c3.port(),
        seq: SeqNum(101),
        ack: synack.seq + 1,
        ..ack
    };
    assert_eq!(decide(&t, &segment(ack)).0, Reason::SynproxyOpening);
    let (reason, a) = decide(
        &t,
        &build::tcp(s, c3).flags(RST | ACK).seq(0).ack(999).build(),
    );
    assert_eq!(reason, Reason::RstOutOfWindow);
    assert!(a.segments[0].is_none(), "no RST to the client");
    assert_eq!(t.engine.table().len(), 2);
}

#[test]
fn in_hand_off_mode_a_proxied_connection_goes_to_the_kernel_with_its_translation() {
    let (c0, c, s) = (
        sa("198.18.0.2:40010"),
        sa("198.18.0.2:40011"),
        sa("198.19.0.2:80"),
    );
    let mut t = harness();
    // The first connection teaches the proxy the server's window scale: the
    // second one's client is told it, so its windows need no rescaling.
    open(&mut t, c0, s);
    let x = open(&mut t, c, s);
    let client_data = build::tcp(c, s)
        .flags(ACK | PSH)
        .seq(x.client_isn + 1)
        .ack(x.cookie.wrapping_add(1))
        .window(502)
        .payload(&[1; 100])
        .build();
    let server_data = |seq_off: u32| {
        build::tcp(s, c)
            .flags(ACK | PSH)
            .seq(x.server_isn.wrapping_add(1 + seq_off))
            .ack(x.client_isn + 66_101)
            .window(509)
            .payload(&[2; 10])
            .build()
    };
    let decide_in = |t: &Harness, ctx: &conntrackd::engine::Context<'static>, bytes: &[u8]| {
        let mut answers = Answers::default();
        let d = t.engine.decide_with(bytes, ctx, t.now(), &mut answers);
        (d, answers)
    };
    let handing = |kernel_translates| conntrackd::engine::Context {
        hand_off: Some(600),
        kernel_translates,
        ..t.ctx
    };

    // Without a kernel that can translate (no ctnetlink, or timestamps in
    // use and no SYN proxy hooks), a proxied connection stays here.
    for cannot in [None, Some(false)] {
        let (d, a) = decide_in(&t, &handing(cannot), &client_data);
        assert_eq!(d.reason, Reason::Tracked);
        assert!(!d.handed_off, "{cannot:?}");
        assert!(a.rewrite.is_some());
    }
    // With one, once it has carried enough to be worth the kernel's work:
    // not after 100 bytes...
    let (d, _) = decide_in(&t, &handing(Some(true)), &client_data);
    assert!(!d.handed_off, "a short connection stays here");
    // ... but after 64 KiB; the packet that hands it off is still rewritten
    // here (the caller gives the kernel its entry before the verdict)...
    let bulk = |seq: u32| {
        build::tcp(c, s)
            .flags(ACK)
            .seq(seq)
            .ack(x.cookie.wrapping_add(1))
            .window(502)
            .payload(&[7; 33_000])
            .build()
    };
    let (d, _) = decide_in(&t, &handing(Some(true)), &bulk(x.client_isn + 101));
    assert_eq!(d.reason, Reason::Tracked);
    assert!(!d.handed_off, "33 KB carried");
    let (d, a) = decide_in(&t, &handing(Some(true)), &bulk(x.client_isn + 33_101));
    assert!(d.handed_off);
    let r = a.rewrite.expect("the handing packet is rewritten here");
    let t_handed = a.hand_over.expect("the kernel is to get the translation");
    assert_eq!(t_handed, r.translation);
    let mut out = server_data(0);
    let to_client = conntrackd::engine::Rewrite {
        translation: t_handed,
        to_client: true,
    };
    to_client.apply(&mut out).unwrap();
    let p = wire::parse(&out, Framing::default()).unwrap();
    assert_eq!(
        p.tcp().unwrap().seq,
        SeqNum(x.cookie.wrapping_add(1)),
        "what the kernel is given translates as conntrackd does"
    );
    // Once: later packets still come with their rewrite (for those the
    // kernel's new entry does not translate: the caller tells them apart),
    // and a plain one marks the verdict again without a second hand-over.
    let (d, a) = decide_in(&t, &handing(Some(true)), &server_data(0));
    assert_eq!(d.reason, Reason::Tracked);
    assert!(a.rewrite.is_some() && a.hand_over.is_none());
    let (d, a) = decide_in(&t, &handing(Some(true)), &bulk(x.client_isn + 66_101));
    assert!(d.handed_off && a.hand_over.is_none());

    // A restart keeps that the kernel has it (its entry outlives the
    // daemon): no second hand-over.
    let saved = t.engine.save_state(t.now(), true, 1_800_000_000);
    let (t2, _) = restarted(&saved);
    let (d, a) = decide_in(&t2, &handing(Some(true)), &bulk(x.client_isn + 99_101));
    assert_eq!(d.reason, Reason::Tracked);
    assert!(a.rewrite.is_some() && a.hand_over.is_none());

    // Its teardown (queued: FIN) has the kernel's new entry, which
    // translates it, and so does everything after it (the hand-off mark is
    // cleared then, and the last ACKs are queued too).
    let fin = build::tcp(s, c)
        .flags(FIN | ACK)
        .seq(x.server_isn.wrapping_add(11))
        .ack(x.client_isn + 99_101)
        .window(509)
        .build();
    let (d, a) = decide_in(&t2, &t2.ctx, &fin);
    assert_eq!(d.reason, Reason::Tracked);
    assert!(a.left_to_kernel && a.rewrite.is_none(), "{a:?}");
    let last_ack = build::tcp(c, s)
        .flags(ACK)
        .seq(x.client_isn + 99_101)
        .ack(x.cookie.wrapping_add(12))
        .window(502)
        .build();
    let (d, a) = decide_in(&t2, &t2.ctx, &last_ack);
    assert_eq!(d.reason, Reason::Tracked);
    assert!(a.left_to_kernel && a.rewrite.is_none(), "{a:?}");

    // The server's RST: left to the kernel, whose entry first gets the
    // ISN that keeps the offset (the kernel's SYN proxy hook sets it anew
    // from it on a server's RST).
    let rst = build::tcp(s, c)
        .flags(RST)
        .seq(x.server_isn.wrapping_add(11))
        .window(0)
        .build();
    let (t3, _) = restarted(&saved);
    let (d, a) = decide_in(&t3, &t3.ctx, &rst);
    assert_eq!(d.reason, Reason::Tracked);
    assert!(a.left_to_kernel && a.rewrite.is_none());
    let (_, isn) = a.kernel_reset.expect("the ISN for the kernel's entry");
    assert_eq!(
        isn.wrapping_add(1),
        x.cookie.wrapping_add(11),
        "the RST leaves with the client's view of its sequence number"
    );

    // The kernel refused the entry: conntrackd translates it, and does not
    // offer it to the kernel again.
    assert!(t.engine.translate_here(&client_data, Framing::default()));
    assert!(!t.engine.translate_here(&client_data, Framing::default()));
    let (d, a) = decide_in(&t, &handing(Some(true)), &bulk(x.client_isn + 99_101));
    assert!(!d.handed_off && a.hand_over.is_none());
    assert!(a.rewrite.is_some(), "translated here");
}
