//! `--checksums verify|auto|off` on a capture taken on a sending host with
//! checksum offload: that host's TCP and UDP packets (IPv4 and IPv6) carry
//! only the pseudo-header sum in their checksum field. Auto mode (the
//! default) judges them without it and counts them; a genuinely wrong
//! checksum is still `bad_checksum`; verify drops them; off and the old
//! `--no-checksums` verify nothing.

use crate::gen::{self, CaptureBuilder, Conv, Format, Link, ACK, FIN, PSH, SYN};
use crate::{conntrackd, path_str, root, text, tmp};
use conntrackd::replay::{replay_capture, Capture, ChecksumMode, Replayer, RowKind};
use conntrackd::wire::{build, Checksums};
use conntrackd::{rules_file, Engine};
use std::path::Path;

const RULES: &str = "tests/replay/rules.toml";

/// The capture, and what is known about its packets (1-based frame numbers).
struct Offloaded {
    cap: CaptureBuilder,
    /// Packets sent by the capturing host, checksum left to the NIC.
    offloaded: Vec<usize>,
    /// Packets whose checksum is wrong (neither correct nor the pseudo-header sum).
    corrupted: Vec<usize>,
}

/// A wrong checksum for `ip`, "random" but fixed: neither its correct
/// checksum nor its pseudo-header sum.
fn corrupt(mut ip: Vec<u8>, seed: u16) -> Vec<u8> {
    let (correct, partial) = (gen::l4_checksum(&ip), gen::pseudo_header_sum(&ip));
    let mut wrong = correct ^ seed.wrapping_mul(0x9e37).rotate_left(5);
    while wrong == correct || wrong == partial || wrong == 0 {
        wrong = wrong.wrapping_add(0x1111);
    }
    gen::set_l4_checksum(&mut ip, wrong);
    ip
}

/// From the sending host 10.0.0.2 (and fd00::2): a web fetch with its close
/// and a DNS query, each packet it sent with an offloaded checksum, the
/// replies with correct ones; in the fetch a duplicate ACK with a corrupted
/// checksum; then a SYN with a corrupted checksum and the SYN+ACK that
/// answers it. `offload: false` is the same capture with the sending host's
/// checksums finished, as its peer would have captured it.
fn capture(offload: bool) -> Offloaded {
    let mut cap = CaptureBuilder::new(Link::Ethernet, Format::Pcap { nanos: false });
    let (mut offloaded, mut corrupted) = (Vec::new(), Vec::new());
    let mut ms = 0;
    let mut push = |cap: &mut CaptureBuilder, ip: Vec<u8>, kind: u8| {
        ms += 10;
        let ip = match kind {
            b'o' => {
                offloaded.push(cap.len() + 1);
                if offload {
                    gen::offloaded(ip)
                } else {
                    ip
                }
            }
            b'x' => {
                corrupted.push(cap.len() + 1);
                corrupt(ip, ms as u16)
            }
            _ => ip,
        };
        cap.ip(ms, ip);
    };
    for (client, server, dns_c, dns_s, other) in [
        (
            "10.0.0.2:41000",
            "203.0.113.5:80",
            "10.0.0.2:53001",
            "198.51.100.53:53",
            "10.0.0.2:41001",
        ),
        (
            "[fd00::2]:41000",
            "[2001:db8:2::5]:443",
            "[fd00::2]:53001",
            "[2001:db8:2::53]:53",
            "[fd00::2]:41001",
        ),
    ] {
        let mut w = Conv::new(client, server, 0xffff_ff00, 0x1000_0000);
        push(&mut cap, w.c(SYN, b""), b'o');
        push(&mut cap, w.s(SYN | ACK, b""), b'-');
        push(&mut cap, w.c(ACK, b""), b'o');
        push(&mut cap, w.c(ACK | PSH, b"GET / HTTP/1.1\r\n\r\n"), b'o');
        push(&mut cap, w.s(ACK | PSH, &[0x17; 1000]), b'-');
        push(&mut cap, w.c(ACK, b""), b'o');
        let dup = w.raw(true, ACK, w.c_nxt, w.s_nxt, b"");
        push(&mut cap, dup, b'x');
        push(&mut cap, w.c(FIN | ACK, b""), b'o');
        push(&mut cap, w.s(FIN | ACK, b""), b'-');
        push(&mut cap, w.c(ACK, b""), b'o');
        let (c, s) = (dns_c.parse().unwrap(), dns_s.parse().unwrap());
        push(&mut cap, build::udp(c, s, b"query example.org"), b'o');
        push(&mut cap, build::udp(s, c, b"answer 203.0.113.5"), b'-');
        let mut x = Conv::new(other, server, 7777, 8888);
        push(&mut cap, x.c(SYN, b""), b'x');
        push(&mut cap, x.s(SYN | ACK, b""), b'-');
    }
    Offloaded {
        cap,
        offloaded,
        corrupted,
    }
}

fn write(dir: &Path, name: &str, cap: &CaptureBuilder) -> String {
    let p = dir.join(name);
    std::fs::write(&p, cap.bytes()).unwrap();
    path_str(&p).to_string()
}

fn replay(args: &[&str]) -> (String, String) {
    let mut full = vec!["replay", "--rules", RULES];
    full.extend_from_slice(args);
    let out = conntrackd(&full);
    assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
    (text(&out.stdout), text(&out.stderr))
}

/// Packet lines of a text output, by frame number (1-based).
fn rows(out: &str) -> Vec<&str> {
    out.lines()
        .take_while(|l| !l.starts_with("summary:"))
        .collect()
}

fn summary(out: &str) -> Vec<&str> {
    out.lines()
        .skip_while(|l| !l.starts_with("summary:"))
        .collect()
}

fn json_summary(path: &str, extra: &[&str]) -> serde_json::Value {
    let mut args = extra.to_vec();
    args.extend_from_slice(&["--format", "jsonl", path]);
    let (out, _) = replay(&args);
    let last = out.lines().last().unwrap();
    serde_json::from_str::<serde_json::Value>(last).unwrap()["summary"].clone()
}

const SUMMARY_LINE: &str = "  14 packets with offloaded checksums, not verified";

#[test]
fn the_capture_is_what_it_says() {
    let (on, off) = (capture(true), capture(false));
    assert_eq!(on.offloaded.len(), 14, "7 per family: 6 TCP, 1 UDP");
    assert_eq!(on.corrupted.len(), 4);
    assert_ne!(on.cap.bytes(), off.cap.bytes());
    // Only the offloaded packets differ, and only in their checksum.
    let dir = tmp();
    let (a, b) = (
        write(dir.path(), "on.pcap", &on.cap),
        write(dir.path(), "off.pcap", &off.cap),
    );
    let (a, _) = replay(&["--checksums", "off", &a]);
    let (b, _) = replay(&["--checksums", "off", &b]);
    assert_eq!(a, b);
}

#[test]
fn auto_tracks_flows_whose_checksums_are_the_pseudo_header_sum() {
    let o = capture(true);
    let dir = tmp();
    let path = write(dir.path(), "offloaded.pcap", &o.cap);
    let (auto, stderr) = replay(&[&path]);
    // Auto is the default.
    assert_eq!(replay(&["--checksums", "auto", &path]).0, auto);
    let lines = rows(&auto);
    for &i in &o.offloaded {
        let l = lines[i - 1];
        assert!(
            l.contains(" accept new_by_rule rule=lan-out ") || l.contains(" accept tracked "),
            "packet {i}: {l}"
        );
    }
    for (i, l) in lines.iter().enumerate() {
        let corrupted = o.corrupted.contains(&(i + 1));
        assert_eq!(l.contains(" drop bad_checksum "), corrupted, "{l}");
    }
    // The fetches end closed, the DNS exchanges replied, v4 and v6.
    let s = summary(&auto);
    for want in [
        "  TCP 10.0.0.2:41000 > 203.0.113.5:80  TIME_WAIT:CLOSED  in table  (packets 1-10, 9 seen)",
        "  UDP 10.0.0.2:53001 > 198.51.100.53:53  UDP_REPLIED  in table  (packets 11-12, 2 seen)",
        "  TCP [fd00::2]:41000 > [2001:db8:2::5]:443  TIME_WAIT:CLOSED  in table  (packets 15-24, 9 seen)",
        "  UDP [fd00::2]:53001 > [2001:db8:2::53]:53  UDP_REPLIED  in table  (packets 25-26, 2 seen)",
        "connections: 4 seen: 4 in the table at the end, 0 expired, 0 replaced, 0 removed",
        SUMMARY_LINE,
    ] {
        assert!(s.contains(&want), "{want}\n{auto}");
    }
    // Decided exactly as the same packets with finished checksums are.
    let clean = write(dir.path(), "clean.pcap", &capture(false).cap);
    let (verified, _) = replay(&["--checksums", "verify", &clean]);
    assert_eq!(lines, rows(&verified));
    let without: Vec<&str> = s.iter().copied().filter(|l| *l != SUMMARY_LINE).collect();
    assert_eq!(without, summary(&verified));
    // The JSON summary counts them too.
    assert_eq!(json_summary(&path, &[])["offloaded_checksums"], 14);
    assert!(json_summary(&clean, &[])["offloaded_checksums"].is_null());
    // The corrupted ones are named in the hint, with the way out.
    assert!(
        stderr.contains("hint: 4 packet(s) dropped for bad_checksum"),
        "{stderr}"
    );
    assert!(stderr.contains("--checksums off"), "{stderr}");
}

#[test]
fn auto_still_drops_a_corrupted_checksum() {
    let o = capture(true);
    let dir = tmp();
    let (out, _) = replay(&[&write(dir.path(), "offloaded.pcap", &o.cap)]);
    let lines = rows(&out);
    // The duplicate ACKs inside the tracked fetches: dropped, the connection unharmed.
    assert!(
        lines[6].ends_with("drop bad_checksum  NONE"),
        "{}",
        lines[6]
    );
    assert!(lines[7].contains("accept tracked"), "{}", lines[7]);
    assert!(
        lines[20].ends_with("drop bad_checksum  NONE"),
        "{}",
        lines[20]
    );
    // The SYNs: dropped, so their SYN+ACKs find no connection.
    for (syn, synack) in [(13, 14), (27, 28)] {
        assert!(lines[syn - 1].contains("[S] "), "{}", lines[syn - 1]);
        assert!(
            lines[syn - 1].ends_with("drop bad_checksum  NONE"),
            "{}",
            lines[syn - 1]
        );
        assert!(
            lines[synack - 1].contains(" drop no_connection "),
            "{}",
            lines[synack - 1]
        );
    }
    assert!(
        summary(&out).contains(&"  drop    bad_checksum                  4"),
        "{out}"
    );
}

#[test]
fn verify_drops_offloaded_checksums() {
    let o = capture(true);
    let dir = tmp();
    let path = write(dir.path(), "offloaded.pcap", &o.cap);
    let (out, stderr) = replay(&["--checksums", "verify", &path]);
    let lines = rows(&out);
    for &i in o.offloaded.iter().chain(&o.corrupted) {
        assert!(
            lines[i - 1].contains(" drop bad_checksum "),
            "{}",
            lines[i - 1]
        );
    }
    // Nothing is opened, so the replies have no connection.
    assert!(
        summary(&out)[0].ends_with(": 0 accepted, 28 dropped, 0 skipped"),
        "{out}"
    );
    assert!(out.contains("connections: 0 seen"), "{out}");
    assert!(!out.contains("offloaded checksums"), "{out}");
    assert!(json_summary(&path, &["--checksums", "verify"])["offloaded_checksums"].is_null());
    assert!(
        stderr.contains("hint: 18 packet(s) dropped for bad_checksum"),
        "{stderr}"
    );
    assert!(stderr.contains("--checksums auto"), "{stderr}");
}

#[test]
fn off_and_no_checksums_accept_them() {
    let o = capture(true);
    let dir = tmp();
    let path = write(dir.path(), "offloaded.pcap", &o.cap);
    let (off, stderr) = replay(&["--checksums", "off", &path]);
    assert_eq!(
        replay(&["--no-checksums", &path]),
        (off.clone(), stderr.clone())
    );
    assert!(!stderr.contains("hint"), "{stderr}");
    let lines = rows(&off);
    for &i in &o.offloaded {
        assert!(lines[i - 1].contains(" accept "), "{}", lines[i - 1]);
    }
    // Nothing is verified: the corrupted packets pass as well.
    assert!(!off.contains("bad_checksum"), "{off}");
    assert!(lines[12].contains("accept new_by_rule"), "{}", lines[12]);
    // And nothing is counted as offloaded: no checksum was looked at.
    assert!(!off.contains("offloaded checksums"), "{off}");
    assert!(json_summary(&path, &["--no-checksums"])["offloaded_checksums"].is_null());
}

#[test]
fn no_checksums_and_checksums_cannot_be_combined() {
    let out = conntrackd(&[
        "replay",
        "--rules",
        RULES,
        "--no-checksums",
        "--checksums",
        "verify",
        "tests/captures/example.pcap",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("cannot be used with"),
        "{}",
        text(&out.stderr)
    );
    let help = text(&conntrackd(&["replay", "--help"]).stdout);
    assert!(help.contains("--checksums <MODE>"), "{help}");
    assert!(help.contains("[default: auto]"), "{help}");
    for want in [
        "- verify:",
        "- auto:",
        "- off:",
        "Deprecated: the same as --checksums off",
    ] {
        assert!(help.contains(want), "{want}: {help}");
    }
}

fn engine() -> Engine {
    let config = rules_file::load(&root().join(RULES)).unwrap();
    Engine::new(config.engine, config.policy)
}

#[test]
fn library_replay_takes_a_checksum_mode() {
    let o = capture(true);
    let dir = tmp();
    let path = dir.path().join("offloaded.pcap");
    std::fs::write(&path, o.cap.bytes()).unwrap();
    let drops = |checksums: ChecksumMode| -> Vec<usize> {
        replay_capture(&engine(), &path, checksums)
            .unwrap()
            .iter()
            .enumerate()
            .filter(|(_, r)| match &r.kind {
                RowKind::Packet { decision, .. } => {
                    decision.reason == conntrackd::Reason::BadChecksum
                }
                RowKind::Skipped(_) => false,
            })
            .map(|(i, _)| i + 1)
            .collect()
    };
    assert_eq!(drops(ChecksumMode::Auto), o.corrupted);
    assert_eq!(drops(ChecksumMode::Off), Vec::<usize>::new());
    let mut strict: Vec<usize> = o.offloaded.iter().chain(&o.corrupted).copied().collect();
    strict.sort();
    assert_eq!(drops(ChecksumMode::Verify), strict);
    // `Checksums` still works: Verify is verify, NotComputed is off.
    assert_eq!(ChecksumMode::from(Checksums::Verify), ChecksumMode::Verify);
    assert_eq!(
        ChecksumMode::from(Checksums::NotComputed),
        ChecksumMode::Off
    );
    assert_eq!(
        replay_capture(&engine(), &path, Checksums::Verify)
            .unwrap()
            .len(),
        28
    );
    // The summary counts the offloaded ones in auto mode only.
    for (mode, n) in [
        (ChecksumMode::Auto, 14),
        (ChecksumMode::Verify, 0),
        (ChecksumMode::Off, 0),
    ] {
        let e = engine();
        let mut r = Replayer::new(&e, mode);
        let mut c = Capture::open(&path).unwrap();
        while let Some(frame) = c.next_frame() {
            r.frame(&frame.unwrap());
        }
        assert_eq!(r.finish().offloaded_checksums, n, "{mode:?}");
    }
}
