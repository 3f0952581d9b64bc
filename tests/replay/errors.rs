//! Errors (missing file, unsupported link type, truncated and corrupt
//! captures) and the options: --quiet, --write-accepted/--write-dropped,
//! --checksums and --no-checksums, several captures; and the library entry points.

use crate::gen::{at_ms, CaptureBuilder, Conv, Format, Link, ACK, SYN};
use crate::{conntrackd, path_str, root, text, tmp};
use conntrackd::replay::{replay_capture, replay_packets, RowKind};
use conntrackd::wire::Checksums;
use conntrackd::{rules_file, Engine, Timestamp, Verdict};
use pcap_file::pcap::PcapReader;
use pcap_file::pcapng::blocks::interface_description::InterfaceDescriptionOption;
use pcap_file::pcapng::{Block, PcapNgReader};
use pcap_file::{DataLink, TsResolution};
use std::path::Path;

const RULES: &str = "tests/replay/rules.toml";

fn golden_lines(name: &str) -> Vec<String> {
    std::fs::read_to_string(root().join(format!("tests/golden/{name}.txt")))
        .unwrap()
        .lines()
        .map(String::from)
        .collect()
}

/// Packet lines of a text output (before the summary).
fn packet_lines(out: &str) -> Vec<&str> {
    out.lines()
        .take_while(|l| !l.starts_with("summary:"))
        .collect()
}

fn replay(args: &[&str]) -> (bool, String, String) {
    let mut full = vec!["replay", "--rules", RULES];
    full.extend_from_slice(args);
    let out = conntrackd(&full);
    (out.status.success(), text(&out.stdout), text(&out.stderr))
}

#[test]
fn missing_capture_is_an_error() {
    let (ok, stdout, stderr) = replay(&["tests/captures/no-such-file.pcap"]);
    assert!(!ok);
    assert!(
        stderr.contains("error: cannot open tests/captures/no-such-file.pcap: No such file"),
        "{stderr}"
    );
    // The summary of nothing is still printed, and says the replay stopped.
    assert!(stdout.contains("summary: 0 packets"), "{stdout}");
    assert!(stdout.contains("replay stopped early"), "{stdout}");
}

#[test]
fn missing_rules_is_an_error() {
    let out = conntrackd(&[
        "replay",
        "--rules",
        "tests/replay/no-such-rules.toml",
        "tests/captures/example.pcap",
    ]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("no-such-rules.toml"));
    assert!(out.stdout.is_empty());
}

#[test]
fn unsupported_link_type_is_named() {
    let dir = tmp();
    // 802.11 in a pcap header.
    let mut cap = CaptureBuilder::new(Link::Other(105), Format::Pcap { nanos: false });
    cap.frame(at_ms(0), vec![0; 40]);
    let pcap = dir.path().join("wifi.pcap");
    std::fs::write(&pcap, cap.bytes()).unwrap();
    let (ok, _, stderr) = replay(&[path_str(&pcap)]);
    assert!(!ok);
    assert!(
        stderr.contains("unsupported link type 105 (IEEE802_11)"),
        "{stderr}"
    );
    // The same in a pcapng interface, and a number pcap-file does not know.
    let mut cap = CaptureBuilder::new(Link::Other(4000), Format::PcapNg { tsresol: None });
    cap.frame(at_ms(0), vec![0; 40]);
    let pcapng = dir.path().join("odd.pcapng");
    std::fs::write(&pcapng, cap.bytes()).unwrap();
    let (ok, _, stderr) = replay(&[path_str(&pcapng)]);
    assert!(!ok);
    assert!(stderr.contains("unsupported link type 4000:"), "{stderr}");
}

#[test]
fn not_a_capture() {
    let dir = tmp();
    let p = dir.path().join("notes.pcap");
    std::fs::write(&p, "these are not packets\n").unwrap();
    let (ok, _, stderr) = replay(&[path_str(&p)]);
    assert!(!ok);
    assert!(
        stderr.contains("not a pcap or pcapng file (unknown magic number 0x74686573)"),
        "{stderr}"
    );
    let empty = dir.path().join("empty.pcap");
    std::fs::write(&empty, "").unwrap();
    let (ok, _, stderr) = replay(&[path_str(&empty)]);
    assert!(!ok);
    assert!(stderr.contains("only 0 bytes long"), "{stderr}");
}

#[test]
fn truncated_capture_reports_the_packets_before_it() {
    let dir = tmp();
    let full = std::fs::read(root().join("tests/captures/example.pcap")).unwrap();
    let expected = golden_lines("example");
    // Cut inside the last packet's data, then inside its record header.
    for cut in [10, full.len() - expected_last_record_start(&full) - 8] {
        let p = dir.path().join("cut.pcap");
        std::fs::write(&p, &full[..full.len() - cut]).unwrap();
        let out = conntrackd(&["replay", "--rules", "rules/default.toml", path_str(&p)]);
        assert!(!out.status.success());
        let stdout = text(&out.stdout);
        let stderr = text(&out.stderr);
        // Every packet but the last, exactly as in the complete replay.
        assert_eq!(packet_lines(&stdout), expected[..16].to_vec());
        assert!(stdout.contains("summary: 16 packets"), "{stdout}");
        assert!(
            stderr.contains(
                "cut.pcap: truncated capture: the file ends in the middle of a packet record (after frame 16)"
            ),
            "{stderr}"
        );
    }
    // The file header itself cut short.
    let p = dir.path().join("head.pcap");
    std::fs::write(&p, &full[..20]).unwrap();
    let (ok, _, stderr) = replay(&[path_str(&p)]);
    assert!(!ok);
    assert!(
        stderr.contains("the file ends in the middle of the pcap file header (after frame 0)"),
        "{stderr}"
    );
}

/// Offset of the last record of a little-endian pcap file.
fn expected_last_record_start(pcap: &[u8]) -> usize {
    let mut at = 24;
    let mut last = at;
    while at + 16 <= pcap.len() {
        last = at;
        let incl = u32::from_le_bytes(pcap[at + 8..at + 12].try_into().unwrap()) as usize;
        at += 16 + incl;
    }
    last
}

#[test]
fn truncated_capture_in_jsonl_ends_with_an_incomplete_summary() {
    let dir = tmp();
    let full = std::fs::read(root().join("tests/captures/udp_icmp.pcapng")).unwrap();
    let p = dir.path().join("cut.pcapng");
    std::fs::write(&p, &full[..full.len() - 7]).unwrap();
    let (ok, stdout, stderr) = replay(&["--format", "jsonl", path_str(&p)]);
    assert!(!ok);
    let lines: Vec<&str> = stdout.lines().collect();
    let golden = std::fs::read_to_string(root().join("tests/golden/udp_icmp.jsonl")).unwrap();
    let golden: Vec<&str> = golden.lines().collect();
    let n = golden.len() - 2; // the last packet and the summary
    assert_eq!(lines[..n], golden[..n]);
    let summary: serde_json::Value = serde_json::from_str(lines[n]).unwrap();
    assert_eq!(summary["summary"]["complete"], false);
    assert_eq!(summary["summary"]["packets"], n as u64);
    let error = summary["summary"]["error"].as_str().unwrap();
    assert!(error.contains("truncated capture"), "{error}");
    assert!(stderr.contains("truncated capture"), "{stderr}");
}

#[test]
fn corrupt_capture_is_an_error_after_the_good_packets() {
    let dir = tmp();
    let mut bytes = std::fs::read(root().join("tests/captures/tcp_client_close.pcap")).unwrap();
    // Record 3's captured length becomes larger than its original length.
    let mut at = 24;
    for _ in 0..2 {
        let incl = u32::from_le_bytes(bytes[at + 8..at + 12].try_into().unwrap()) as usize;
        at += 16 + incl;
    }
    bytes[at + 12..at + 16].copy_from_slice(&10u32.to_le_bytes());
    let p = dir.path().join("bad.pcap");
    std::fs::write(&p, &bytes).unwrap();
    let (ok, stdout, stderr) = replay(&[path_str(&p)]);
    assert!(!ok);
    assert_eq!(
        packet_lines(&stdout),
        golden_lines("tcp_client_close")[..2].to_vec()
    );
    assert!(
        stderr.contains("bad.pcap: corrupt capture after frame 2: record 3 has 54 captured bytes of a 10-byte packet"),
        "{stderr}"
    );

    // A pcapng block whose trailing length disagrees with its leading one.
    let mut bytes = std::fs::read(root().join("tests/captures/bad_handshake.pcapng")).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    let p = dir.path().join("bad.pcapng");
    std::fs::write(&p, &bytes).unwrap();
    let (ok, stdout, stderr) = replay(&[path_str(&p)]);
    assert!(!ok);
    assert_eq!(packet_lines(&stdout).len(), 5);
    assert!(
        stderr.contains("corrupt capture after frame 5: in a block: Invalid field value"),
        "{stderr}"
    );
}

#[test]
fn quiet_prints_only_the_summary() {
    let (ok, stdout, _) = replay(&["--quiet", "tests/captures/time_wait_reopen.pcap"]);
    assert!(ok);
    let golden = golden_lines("time_wait_reopen");
    let start = golden
        .iter()
        .position(|l| l.starts_with("summary:"))
        .unwrap();
    assert_eq!(stdout.lines().collect::<Vec<_>>(), golden[start..].to_vec());

    let (ok, stdout, _) = replay(&[
        "-q",
        "--format",
        "jsonl",
        "tests/captures/time_wait_reopen.pcap",
    ]);
    assert!(ok);
    let golden =
        std::fs::read_to_string(root().join("tests/golden/time_wait_reopen.jsonl")).unwrap();
    assert_eq!(stdout, golden.lines().last().unwrap().to_string() + "\n");
}

struct Read {
    datalinks: Vec<DataLink>,
    /// (timestamp ns, original length, data)
    packets: Vec<(u128, u32, Vec<u8>)>,
}

fn read_capture(path: &Path) -> Read {
    let bytes = std::fs::read(path).unwrap();
    let mut packets = Vec::new();
    let mut datalinks = Vec::new();
    if bytes[..4] == [0x0a, 0x0d, 0x0d, 0x0a] {
        let mut units = Vec::new();
        let mut r = PcapNgReader::new(&bytes[..]).unwrap();
        while let Some(block) = r.next_block() {
            match block.unwrap() {
                Block::InterfaceDescription(idb) => {
                    datalinks.push(idb.linktype);
                    units.push(match idb.options.first() {
                        Some(InterfaceDescriptionOption::IfTsResol(r)) => 10u128.pow(9 - *r as u32),
                        _ => 1000,
                    });
                }
                Block::EnhancedPacket(epb) => packets.push((
                    epb.timestamp.as_nanos() * units[epb.interface_id as usize],
                    epb.original_len,
                    epb.data.to_vec(),
                )),
                _ => {}
            }
        }
    } else {
        // Raw records: pcap-file's checked ones refuse orig_len > snaplen.
        let mut r = PcapReader::new(&bytes[..]).unwrap();
        let header = r.header();
        datalinks.push(header.datalink);
        let unit = match header.ts_resolution {
            TsResolution::MicroSecond => 1000,
            TsResolution::NanoSecond => 1,
        };
        while let Some(p) = r.next_raw_packet() {
            let p = p.unwrap();
            let ns = p.ts_sec as u128 * 1_000_000_000 + p.ts_frac as u128 * unit;
            packets.push((ns, p.orig_len, p.data.to_vec()));
        }
    }
    Read { datalinks, packets }
}

#[test]
fn write_accepted_and_dropped() {
    let dir = tmp();
    let acc = dir.path().join("accepted.pcap");
    let drop = dir.path().join("dropped.pcap");
    let out = conntrackd(&[
        "replay",
        "--rules",
        "rules/default.toml",
        "--quiet",
        "--write-accepted",
        path_str(&acc),
        "--write-dropped",
        path_str(&drop),
        "tests/captures/example.pcap",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let input = read_capture(&root().join("tests/captures/example.pcap"));
    let (a, d) = (read_capture(&acc), read_capture(&drop));
    assert_eq!(a.datalinks, vec![DataLink::ETHERNET]);
    assert_eq!(d.datalinks, vec![DataLink::ETHERNET]);
    // Frames 2-14 were accepted, 15-17 dropped; the ARP frame is in neither.
    assert_eq!(a.packets, input.packets[1..14].to_vec());
    assert_eq!(d.packets, input.packets[14..].to_vec());
}

#[test]
fn write_accepted_of_an_all_accepted_capture_is_the_capture() {
    let dir = tmp();
    for name in [
        "tcp_client_close.pcap",
        "simultaneous_open.pcap",
        "snaplen.pcap",
    ] {
        let acc = dir.path().join(name);
        let drop = dir.path().join(format!("dropped-{name}"));
        let input = format!("tests/captures/{name}");
        let (ok, _, stderr) = replay(&[
            "-q",
            "--write-accepted",
            path_str(&acc),
            "--write-dropped",
            path_str(&drop),
            &input,
        ]);
        assert!(ok, "{stderr}");
        let written = std::fs::read(&acc).unwrap();
        if name == "snaplen.pcap" {
            // One packet of it is dropped.
            let r = read_capture(&acc);
            assert_eq!(r.packets.len(), 6);
            assert!(r.packets.iter().all(|p| p.2.len() <= 64));
            assert_eq!(read_capture(&drop).packets.len(), 1);
        } else {
            assert_eq!(
                written,
                std::fs::read(root().join(&input)).unwrap(),
                "{name}"
            );
            // No drops: a valid, empty capture of the same link type.
            let r = read_capture(&drop);
            assert!(r.packets.is_empty());
            assert_eq!(r.datalinks, read_capture(&root().join(&input)).datalinks);
        }
    }
}

#[test]
fn several_captures_go_through_one_engine() {
    let (ok, stdout, stderr) = replay(&[
        "tests/captures/tcp_client_close.pcap",
        "tests/captures/simultaneous_open.pcap",
    ]);
    assert!(ok, "{stderr}");
    assert!(stdout.starts_with("== tests/captures/tcp_client_close.pcap ==\n"));
    assert!(stdout.contains("\n== tests/captures/simultaneous_open.pcap ==\n"));
    // Indices continue; the second file's lines carry its own decisions.
    assert!(stdout.contains("\n   15  "), "{stdout}");
    assert!(stdout.contains("summary: 20 packets"), "{stdout}");
    assert!(stdout.contains("connections: 2 seen"), "{stdout}");

    // Two link types: a pcap output cannot hold both, a pcapng one can.
    let dir = tmp();
    let pcap = dir.path().join("both.pcap");
    let (ok, _, stderr) = replay(&[
        "-q",
        "--write-accepted",
        path_str(&pcap),
        "tests/captures/tcp_client_close.pcap",
        "tests/captures/simultaneous_open.pcap",
    ]);
    assert!(!ok);
    assert!(
        stderr.contains("cannot hold frames of link types 1 (ETHERNET) and 101 (RAW) in one pcap file; name the output .pcapng"),
        "{stderr}"
    );
    let pcapng = dir.path().join("both.pcapng");
    let (ok, _, stderr) = replay(&[
        "-q",
        "--write-accepted",
        path_str(&pcapng),
        "tests/captures/tcp_client_close.pcap",
        "tests/captures/simultaneous_open.pcap",
    ]);
    assert!(ok, "{stderr}");
    let r = read_capture(&pcapng);
    // Ethernet with microseconds, raw IP with nanoseconds.
    assert_eq!(r.datalinks, vec![DataLink::ETHERNET, DataLink::RAW]);
    assert_eq!(r.packets.len(), 20);
    let mut inputs = read_capture(&root().join("tests/captures/tcp_client_close.pcap")).packets;
    inputs.extend(read_capture(&root().join("tests/captures/simultaneous_open.pcap")).packets);
    assert!(
        r.packets == inputs,
        "the frames and their timestamps are kept"
    );
    // And replaying the written pcapng gives the same decisions.
    let (ok, again, _) = replay(&[path_str(&pcapng)]);
    assert!(ok);
    let (_, orig, _) = replay(&[
        "tests/captures/tcp_client_close.pcap",
        "tests/captures/simultaneous_open.pcap",
    ]);
    let strip = |s: &str| -> Vec<String> {
        s.lines()
            .filter(|l| !l.starts_with("=="))
            .map(String::from)
            .collect()
    };
    assert_eq!(strip(&again), strip(&orig));
}

#[test]
fn bad_checksums_give_a_hint_and_checksums_off_skips_them() {
    let (ok, stdout, stderr) = replay(&["tests/captures/malformed.pcap"]);
    assert!(ok);
    assert!(stdout.contains("drop bad_checksum"));
    assert!(
        stderr.contains("hint: 1 packet(s) dropped for bad_checksum"),
        "{stderr}"
    );
    // Its checksum is not the pseudo-header sum: auto mode says so, and names the way out.
    assert!(stderr.contains("not the pseudo-header sum"), "{stderr}");
    assert!(stderr.contains("--checksums off"), "{stderr}");
    assert!(!stdout.contains("offloaded checksums"), "{stdout}");
    let (ok, strict, stderr) = replay(&["--checksums", "verify", "tests/captures/malformed.pcap"]);
    assert!(ok);
    assert_eq!(strict, stdout, "nothing in it is offloaded");
    assert!(
        stderr.contains("hint: 1 packet(s) dropped for bad_checksum"),
        "{stderr}"
    );
    assert!(stderr.contains("--checksums auto"), "{stderr}");
    // The old flag is `--checksums off`.
    for flag in [&["--no-checksums"][..], &["--checksums", "off"][..]] {
        let mut args = flag.to_vec();
        args.push("tests/captures/malformed.pcap");
        let (ok, stdout, stderr) = replay(&args);
        assert!(ok);
        assert!(!stdout.contains("bad_checksum"), "{stdout}");
        assert!(
            stdout.contains(
                "    4  0.010000  10.0.0.2:40008 > 203.0.113.5:80 TCP [S] seq=1000 ack=0 len=0  accept new_by_rule rule=lan-out  NONE -> SYN_SENT:LISTEN"
            ),
            "{flag:?}: {stdout}"
        );
        assert!(!stderr.contains("hint"), "{stderr}");
    }
}

#[test]
fn rules_with_interfaces_get_a_note() {
    let dir = tmp();
    let rules = dir.path().join("ifaces.toml");
    std::fs::write(
        &rules,
        "[policy]\ndefault = \"drop\"\n\n[[rule]]\nname = \"from-lan\"\naction = \"accept\"\nin_iface = \"eth1\"\n",
    )
    .unwrap();
    let out = conntrackd(&[
        "replay",
        "--rules",
        path_str(&rules),
        "-q",
        "tests/captures/example.pcap",
    ]);
    assert!(out.status.success());
    assert!(
        text(&out.stderr).contains("note: rules from-lan name interfaces"),
        "{}",
        text(&out.stderr)
    );
}

fn engine(rules: &str) -> Engine {
    let config = rules_file::load(&root().join(rules)).unwrap();
    Engine::new(config.engine, config.policy)
}

#[test]
fn library_replay_agrees_with_the_command() {
    for (name, ext) in [
        ("example", "pcap"),
        ("udp_icmp", "pcapng"),
        ("ipv6", "pcap"),
    ] {
        let rules = if name == "example" {
            "rules/default.toml"
        } else {
            RULES
        };
        let rows = replay_capture(
            &engine(rules),
            &root().join(format!("tests/captures/{name}.{ext}")),
            Checksums::Verify,
        )
        .unwrap();
        let golden =
            std::fs::read_to_string(root().join(format!("tests/golden/{name}.jsonl"))).unwrap();
        let expected: Vec<(String, String)> = golden
            .lines()
            .filter(|l| !l.starts_with("{\"summary\""))
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                (
                    v["verdict"].as_str().unwrap().into(),
                    v["reason"].as_str().unwrap().into(),
                )
            })
            .collect();
        let got: Vec<(String, String)> = rows
            .iter()
            .map(|r| match &r.kind {
                RowKind::Packet { decision, .. } => (
                    decision.verdict().to_string(),
                    decision.reason.name().to_string(),
                ),
                RowKind::Skipped(s) => ("skip".into(), s.name().into()),
            })
            .collect();
        assert_eq!(got, expected, "{name}");
    }
}

#[test]
fn replay_packets_uses_the_timestamps_as_the_clock() {
    // A SYN, then the SYN+ACK 121 s later: the half-open entry (syn_sent 120 s) is gone.
    let e = engine(RULES);
    let mut f = Conv::new("10.0.0.2:40000", "203.0.113.5:80", 1, 1);
    let syn = f.c(SYN, b"");
    let synack = f.s(SYN | ACK, b"");
    let t0 = Timestamp::from_secs(1_700_000_000);
    let rows = replay_packets(
        &e,
        [
            (t0, &syn[..]),
            (t0 + std::time::Duration::from_secs(121), &synack[..]),
        ],
    );
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].verdict(), Some(Verdict::Accept));
    assert_eq!(rows[1].verdict(), Some(Verdict::Drop));
    assert_eq!(rows[1].decision().unwrap().reason.name(), "no_connection");
    assert_eq!(rows[1].index, 2);

    // Within the timeout it passes.
    let e = engine(RULES);
    let rows = replay_packets(
        &e,
        [
            (t0, &syn[..]),
            (t0 + std::time::Duration::from_secs(119), &synack[..]),
        ],
    );
    assert_eq!(rows[1].verdict(), Some(Verdict::Accept));
}

/// Packet lines without the time column (its decimals follow the format).
fn decisions(out: &str) -> Vec<String> {
    packet_lines(out)
        .iter()
        .map(|l| {
            let (index, rest) = l.trim_start().split_once("  ").unwrap();
            let (_time, rest) = rest.split_once("  ").unwrap();
            format!("{index} {rest}")
        })
        .collect()
}

#[test]
fn every_link_layer_and_format_gives_the_same_decisions() {
    let dir = tmp();
    let formats = [
        Format::Pcap { nanos: false },
        Format::Pcap { nanos: true },
        Format::PcapNg { tsresol: None },
        Format::PcapNg { tsresol: Some(9) },
        Format::PcapNg { tsresol: Some(3) },
    ];
    for (name, family_link) in [
        ("tcp_client_close", Link::Ipv4),
        ("ipv6", Link::Ipv6),
        ("udp_icmp", Link::Ipv4),
    ] {
        let scenario = crate::scenarios::all()
            .into_iter()
            .find(|(n, _)| *n == name)
            .unwrap()
            .1();
        let expected = decisions(&golden_lines(name).join("\n"));
        let links = [
            Link::Ethernet,
            Link::Vlan(7),
            Link::QinQ(1, 2),
            Link::Raw,
            family_link,
            Link::Sll,
            Link::Sll2,
            Link::Null,
        ];
        for link in links {
            for format in formats {
                let cap = scenario.relink(link, format);
                let p = dir.path().join("relinked");
                std::fs::write(&p, cap.bytes()).unwrap();
                let (ok, stdout, stderr) = replay(&[path_str(&p)]);
                assert!(ok, "{name} {link:?} {format:?}: {stderr}");
                assert_eq!(decisions(&stdout), expected, "{name} {link:?} {format:?}");
            }
        }
    }
}

#[test]
fn damaged_captures_never_panic() {
    // Bytes flipped and files cut at random (a fixed LCG: deterministic).
    let mut seed: u64 = 0x5eed;
    let mut next = move || {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (seed >> 33) as usize
    };
    let dir = tmp();
    let p = dir.path().join("damaged");
    let engine = engine(RULES);
    for (name, _) in crate::scenarios::all() {
        let b = crate::scenarios::all()
            .into_iter()
            .find(|(n, _)| *n == name)
            .unwrap()
            .1()
        .bytes();
        for round in 0..60 {
            let mut bytes = b.clone();
            for _ in 0..1 + next() % 8 {
                let at = next() % bytes.len();
                bytes[at] = next() as u8;
            }
            if round % 3 == 0 {
                bytes.truncate(next() % bytes.len());
            }
            std::fs::write(&p, &bytes).unwrap();
            // Either rows or an error; never a panic.
            let _ = replay_capture(&engine, &p, Checksums::Verify);
        }
    }
}

#[test]
fn pcapng_simple_and_obsolete_packet_blocks_and_several_sections() {
    use pcap_file::pcapng::blocks::enhanced_packet::EnhancedPacketBlock;
    use pcap_file::pcapng::blocks::interface_description::InterfaceDescriptionBlock;
    use pcap_file::pcapng::blocks::packet::PacketBlock;
    use pcap_file::pcapng::blocks::section_header::SectionHeaderBlock;
    use pcap_file::pcapng::blocks::simple_packet::SimplePacketBlock;
    use pcap_file::pcapng::PcapNgWriter;
    use pcap_file::Endianness;
    use std::borrow::Cow;
    use std::time::Duration;

    let mut f = Conv::new("10.0.0.2:40000", "203.0.113.5:80", 100, 200);
    let eth = |ip: Vec<u8>| Link::Ethernet.wrap(0x0800, &ip);
    let (syn, synack, ack) = (
        eth(f.c(SYN, b"")),
        eth(f.s(SYN | ACK, b"")),
        eth(f.c(ACK, b"")),
    );
    let t = 1_700_000_000u64 * 1_000_000; // microseconds (the default resolution)
    let mut w = PcapNgWriter::with_endianness(Vec::new(), Endianness::Big).unwrap();
    w.write_pcapng_block(InterfaceDescriptionBlock::new(DataLink::ETHERNET, 0))
        .unwrap();
    w.write_pcapng_block(EnhancedPacketBlock {
        interface_id: 0,
        timestamp: Duration::from_nanos(t),
        original_len: syn.len() as u32,
        data: Cow::Borrowed(&syn),
        options: vec![],
    })
    .unwrap();
    w.write_pcapng_block(PacketBlock {
        interface_id: 0,
        drop_count: 0,
        timestamp: t + 2_500,
        captured_len: synack.len() as u32,
        original_len: synack.len() as u32,
        data: Cow::Borrowed(&synack),
        options: vec![],
    })
    .unwrap();
    // No timestamp: it takes the previous packet's; its padding is not data.
    w.write_pcapng_block(SimplePacketBlock {
        original_len: ack.len() as u32,
        data: Cow::Borrowed(&ack),
    })
    .unwrap();
    // A second section (as `cat a.pcapng b.pcapng` makes): interfaces start over.
    w.write_pcapng_block(SectionHeaderBlock {
        endianness: Endianness::Little,
        ..Default::default()
    })
    .unwrap();
    w.write_pcapng_block(InterfaceDescriptionBlock::new(DataLink::RAW, 0))
        .unwrap();
    let data = f.c(ACK | crate::gen::PSH, b"hi");
    w.write_pcapng_block(EnhancedPacketBlock {
        interface_id: 0,
        timestamp: Duration::from_nanos(t + 3_000_000),
        original_len: data.len() as u32,
        data: Cow::Borrowed(&data),
        options: vec![],
    })
    .unwrap();
    let dir = tmp();
    let p = dir.path().join("blocks.pcapng");
    std::fs::write(&p, w.into_inner()).unwrap();
    let (ok, stdout, stderr) = replay(&[path_str(&p)]);
    assert!(ok, "{stderr}");
    let lines = packet_lines(&stdout);
    assert_eq!(lines.len(), 4, "{stdout}");
    assert!(lines[0].starts_with("    1  0.000000  10.0.0.2:40000 > 203.0.113.5:80 TCP [S] "));
    assert!(lines[1].starts_with("    2  0.002500  203.0.113.5:80 > 10.0.0.2:40000 TCP [S.] "));
    assert!(lines[1].ends_with("SYN_SENT:LISTEN -> SYN_SENT:SYN_RECV"));
    assert!(lines[2].starts_with("    3  0.002500  10.0.0.2:40000 > 203.0.113.5:80 TCP [.] "));
    assert!(lines[2].ends_with("-> ESTABLISHED:ESTABLISHED"));
    assert!(lines[3].starts_with("    4  3.000000  10.0.0.2:40000 > 203.0.113.5:80 TCP [P.] "));
    assert!(lines[3].contains("len=2  accept tracked"), "{}", lines[3]);
}

/// `conntrackd check | head` and `conntrackd replay … | head`: the reader
/// is gone before the command writes, and the command ends quietly (killed
/// by SIGPIPE, as `cat` is), with no panic or backtrace on stderr.
#[test]
fn a_closed_pipe_ends_a_command_quietly() {
    use std::os::unix::process::ExitStatusExt;
    use std::process::{Command, Stdio};
    for args in [
        vec!["check", "--rules", RULES],
        vec!["replay", "--rules", RULES, "tests/captures/example.pcap"],
    ] {
        let (reader, writer) = std::io::pipe().expect("a pipe");
        // The reading end is closed before the command starts.
        drop(reader);
        let out = Command::new(env!("CARGO_BIN_EXE_conntrackd"))
            .args(&args)
            .current_dir(root())
            .stdout(writer)
            .stderr(Stdio::piped())
            .output()
            .expect("run conntrackd");
        let stderr = text(&out.stderr);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert_eq!(
            out.status.signal(),
            Some(libc::SIGPIPE),
            "{args:?}: {:?} {stderr}",
            out.status
        );
    }
}
