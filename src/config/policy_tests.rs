use crate::config::{Config, ConfigError};
use std::path::Path;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, Path::new("rules.toml"))
}

fn error(text: &str) -> String {
    parse(text).expect_err("should be refused").to_string()
}

#[test]
fn errors_name_file_line_and_column() {
    let e = error("[policy]\ndefault = \"maybe\"\n");
    assert!(e.starts_with("rules.toml:2:11: "), "{e}");
    assert!(e.contains("accept") && e.contains("drop"), "{e}");

    let e = error("[policy]\ndefault = \"drop\"\n\n[[rule]]\nname = \"x\"\naction = \"accept\"\nsrc = \"10.0.0.0/33\"\n");
    assert!(e.starts_with("rules.toml:7:7: "), "{e}");
    assert!(e.contains("prefix length"), "{e}");

    let e = error("[policy]\ndefault = \"drop\"\n[[rule]]\nname = \"x\"\naction = \"accept\"\nproto = \"tcp\"\ndst_ports = [\"90-80\"]\n");
    assert!(e.starts_with("rules.toml:7:"), "{e}");
    assert!(e.contains("reversed"), "{e}");
}

#[test]
fn unknown_fields_are_refused() {
    let e = error(
        "[policy]\ndefault = \"drop\"\n[[rule]]\nname = \"x\"\naction = \"accept\"\ndport = 22\n",
    );
    assert!(e.starts_with("rules.toml:6:1: "), "{e}");
    assert!(e.contains("dport"), "{e}");
    let e = error("[policy]\ndefault = \"drop\"\n[engine]\nmax_conns = 5\n");
    assert!(
        e.contains("max_conns") && e.starts_with("rules.toml:4:"),
        "{e}"
    );
}

#[test]
fn rule_consistency_is_checked() {
    let e = error("[policy]\ndefault = \"drop\"\n[[rule]]\nname = \"p\"\naction = \"accept\"\ndst_ports = 22\n");
    assert!(e.contains("ports need proto"), "{e}");
    assert!(e.starts_with("rules.toml:3:"), "{e}");
    let e = error("[policy]\ndefault = \"drop\"\n[[rule]]\nname = \"a\"\naction = \"drop\"\n[[rule]]\nname = \"a\"\naction = \"drop\"\n");
    assert!(e.contains("duplicate rule name"), "{e}");
    assert!(e.starts_with("rules.toml:6:"), "{e}");
    let e = error("[policy]\ndefault = \"drop\"\n[[rule]]\nname = \"i\"\naction = \"drop\"\nproto = \"tcp\"\nicmp_type = 8\n");
    assert!(e.contains("icmp_type needs proto"), "{e}");
}

/// (A missing file: see `crate::rules_file`, which reads it.)
#[test]
fn missing_policy_is_clear() {
    let e = error("[engine]\nloose_pickup = true\n");
    assert!(e.contains("policy"), "{e}");
}

#[test]
fn shipped_rules_files_are_valid() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("rules");
    let mut files = vec![root.join("default.toml")];
    for entry in std::fs::read_dir(root.join("examples")).unwrap() {
        files.push(entry.unwrap().path());
    }
    assert!(files.len() >= 3, "default plus a few examples");
    let load = |f: &Path| {
        let text = std::fs::read_to_string(f).unwrap();
        Config::parse(&text, f).unwrap_or_else(|e| panic!("{e}"))
    };
    for f in files {
        let c = load(&f);
        // No deprecated key in what we ship ([daemon]'s: see the daemon's tests).
        assert!(c.warnings.is_empty(), "{}: {:?}", f.display(), c.warnings);
    }
    // The default file's [engine] is the defaults it says it shows ([daemon]:
    // see the daemon's tests).
    let d = load(&root.join("default.toml"));
    assert_eq!(d.engine, crate::EngineSettings::default());
}

#[test]
fn values_accept_one_or_many_and_names_or_numbers() {
    let c = parse(
        "[policy]\ndefault = \"drop\"\n[[rule]]\nname = \"r\"\naction = \"accept\"\nproto = 6\nsrc = \"2001:db8::/32\"\ndst = [\"198.18.0.0/15\", \"10.1.2.3\"]\nsrc_ports = \"1024-65535\"\ndst_ports = [22, \"80\", \"8000-8080\"]\n",
    )
    .unwrap();
    let shown = c.policy.to_string();
    assert!(shown.contains("proto=tcp src=2001:db8::/32 dst=198.18.0.0/15,10.1.2.3/32 src_ports=1024-65535 dst_ports=22,80,8000-8080"), "{shown}");
}

/// The problems of a refused file, one `file:line:column: message` each.
fn problems(text: &str) -> Vec<String> {
    parse(text).expect_err("should be refused").lines()
}

#[test]
fn every_problem_is_reported_each_rule_on_its_own() {
    let text = r#"[engine]
max_conns = 5

[daemon]
queues = "3-1"

[policy]
default = "drop"

[[rule]]
name = "bad-cidr"
action = "accept"
src = "10.0.0.0/33"

[[rule]]
name = "unknown-key-and-bad-value"
actoin = "drop"
action = "accept"
proto = "tcp"
dst_ports = ["90-80"]

[[rule]]
name = "ports-without-proto"
action = "accept"
dst_ports = 22

[[rule]]
name = "no-action"

[[rule]]
name = "fine"
action = "accept"
"#;
    let p = problems(text);
    let at = |prefix: &str, needle: &str| {
        assert!(
            p.iter()
                .any(|l| l.starts_with(prefix) && l.contains(needle)),
            "no {prefix} {needle:?} in {p:#?}"
        )
    };
    at("rules.toml:2:1: ", "unknown field `max_conns`");
    // [daemon] is not checked here (`parse` ignores it): the daemon's tests
    // find its bad queue spec among the file's other problems.
    at("rules.toml:13:7: ", "prefix length");
    at("rules.toml:17:1: ", "unknown field `actoin`");
    at("rules.toml:20:14: ", "reversed");
    at("rules.toml:22:1: ", "ports need proto");
    at("rules.toml:27:1: ", "missing field `action`");
    assert_eq!(p.len(), 6, "nothing more, nothing twice: {p:#?}");
    let mut sorted = p.clone();
    sorted.sort_by_key(|l| {
        let mut f = l.split(':').skip(1).map(|n| n.parse::<usize>().unwrap());
        (f.next().unwrap(), f.next().unwrap())
    });
    assert_eq!(p, sorted, "in file order");
}

#[test]
fn an_error_is_not_followed_by_what_it_causes() {
    // A bad required value is not also "missing"; a rule with a bad proto
    // is not also told that its ports need one.
    let p = problems(
        "[policy]\ndefault = \"drop\"\n[[rule]]\nname = 5\naction = \"accept\"\n\
         [[rule]]\nname = \"b\"\naction = \"accept\"\nproto = \"tcpp\"\ndst_ports = 22\n",
    );
    assert_eq!(p.len(), 2, "{p:#?}");
    assert!(p[0].starts_with("rules.toml:4:8: "), "{p:#?}");
    assert!(p[1].starts_with("rules.toml:9:9: ") && p[1].contains("unknown protocol"));
    // A bad [policy] default is one problem, not also a missing [policy].
    for text in [
        "[policy]\ndefault = \"maybe\"\n",
        "policy.default = \"maybe\"\n",
    ] {
        let p = problems(text);
        assert_eq!(p.len(), 1, "{text}: {p:#?}");
    }
    // A syntax error stops there: nothing after it can be read.
    let p = problems("[policy]\ndefault = \"drop\"\n[[rule]\nname = 1\n");
    assert_eq!(p.len(), 1, "{p:#?}");
    assert!(p[0].starts_with("rules.toml:3:"), "{p:#?}");
    // Two semantic problems in two rules, and a duplicate name.
    let p = problems(
        "[policy]\ndefault = \"drop\"\n\
         [[rule]]\nname = \"a\"\naction = \"drop\"\nicmp_type = 8\n\
         [[rule]]\nname = \"a\"\naction = \"drop\"\noverload_secs = 5\n",
    );
    assert_eq!(p.len(), 3, "{p:#?}");
    assert!(p[0].starts_with("rules.toml:3:") && p[0].contains("icmp_type needs proto"));
    assert!(
        p.iter().any(|l| l.contains("duplicate rule name")),
        "{p:#?}"
    );
    assert!(
        p.iter().any(|l| l.contains("overload_secs needs")),
        "{p:#?}"
    );
}

#[test]
fn a_missing_policy_is_reported_with_the_other_problems() {
    let p = problems("[polcy]\ndefault = \"drop\"\n[engine]\nmax_connections = 0\n");
    assert!(
        p.iter().any(|l| l.contains("unknown field `polcy`")),
        "{p:#?}"
    );
    assert!(
        p.iter().any(|l| l.contains("missing field `policy`")),
        "{p:#?}"
    );
}

#[test]
fn a_cidr_with_host_bits_set_is_read_as_its_network_with_a_warning_where_it_is_written() {
    let c = parse(
        "[policy]\ndefault = \"drop\"\n[[rule]]\nname = \"r\"\naction = \"accept\"\n\
         src = [\"198.18.0.0/15\", \"198.18.1.5/15\"]\ndst = \"2001:db8::1/32\"\n",
    )
    .unwrap();
    let w = &c.warnings;
    assert_eq!(w.len(), 2, "{w:#?}");
    assert!(w[0].starts_with("rules.toml:6:25: "), "{w:#?}");
    assert!(w[0].contains("read as the network 198.18.0.0/15"), "{w:#?}");
    assert!(w[1].starts_with("rules.toml:7:7: "), "{w:#?}");
}

#[test]
fn the_summary_names_protocols() {
    let c = parse(
        "[policy]\ndefault = \"drop\"\n\
         [[rule]]\nname = \"a\"\naction = \"accept\"\nproto = 17\n\
         [[rule]]\nname = \"b\"\naction = \"accept\"\nproto = \"ipv6-icmp\"\n\
         [[rule]]\nname = \"c\"\naction = \"accept\"\nproto = 1\n\
         [[rule]]\nname = \"d\"\naction = \"accept\"\nproto = 47\n",
    )
    .unwrap();
    let shown = c.to_string();
    for want in [
        "accept a proto=udp\n",
        "accept b proto=icmpv6\n",
        "accept c proto=icmp\n",
        // No name for it: the number, as everywhere else.
        "accept d proto=47\n",
    ] {
        assert!(shown.contains(want), "{want:?} in {shown}");
    }
}

#[test]
fn reject_is_an_action_and_a_default_and_drops_without_tracking() {
    use crate::engine::Context;
    use crate::wire::{build, TcpFlags};
    use crate::{Reason, Timestamp, Verdict};
    let c = parse(
        "[policy]\ndefault = \"reject\"\n[[rule]]\nname = \"no-ssh\"\naction = \"reject\"\nproto = \"tcp\"\ndst_ports = 22\n[[rule]]\nname = \"web\"\naction = \"accept\"\nproto = \"tcp\"\ndst_ports = 80\n",
    )
    .unwrap();
    assert!(c.policy.uses_reject());
    let shown = c.policy.to_string();
    assert!(
        shown.contains("default reject") && shown.contains("reject no-ssh"),
        "{shown}"
    );
    let engine = crate::Engine::new(c.engine, c.policy);
    let (client, now) = ("198.18.0.2:40000".parse().unwrap(), Timestamp::from_secs(1));
    let syn = |port: u16| {
        let server = std::net::SocketAddr::new([198, 19, 0, 2].into(), port);
        build::tcp(client, server).flags(TcpFlags::SYN).build()
    };
    let ctx = Context::default();
    let d = engine.decide(&syn(22), &ctx, now);
    assert_eq!(
        (d.reason, d.verdict(), d.rule),
        (Reason::RejectByRule, Verdict::Drop, Some(0))
    );
    let d = engine.decide(&syn(23), &ctx, now);
    assert_eq!((d.reason, d.rule), (Reason::RejectByDefault, None));
    let udp = build::udp(client, "198.19.0.2:53".parse().unwrap(), b"q");
    assert_eq!(
        engine.decide(&udp, &ctx, now).reason,
        Reason::RejectByDefault
    );
    assert_eq!(
        engine.connections().len(),
        0,
        "a rejected packet opens nothing"
    );
    assert_eq!(engine.decide(&syn(80), &ctx, now).reason, Reason::NewByRule);
    // Without reject anywhere.
    let plain = parse("[policy]\ndefault = \"drop\"\n").unwrap();
    assert!(!plain.policy.uses_reject());
}

#[test]
fn a_reload_diff_names_rules_added_removed_changed_and_moved() {
    let old = parse(
        "[policy]\ndefault = \"drop\"\n\
         [[rule]]\nname = \"web\"\naction = \"accept\"\nproto = \"tcp\"\ndst_ports = [80]\n\
         [[rule]]\nname = \"dns\"\naction = \"accept\"\nproto = \"udp\"\ndst_ports = [53]\n\
         [[rule]]\nname = \"ssh\"\naction = \"accept\"\nproto = \"tcp\"\ndst_ports = [22]\n",
    )
    .unwrap()
    .policy;
    let new = parse(
        "[policy]\ndefault = \"reject\"\n\
         [[rule]]\nname = \"dns\"\naction = \"accept\"\nproto = \"udp\"\ndst_ports = [53]\n\
         [[rule]]\nname = \"web\"\naction = \"accept\"\nproto = \"tcp\"\ndst_ports = [80, 443]\n\
         [[rule]]\nname = \"imap\"\naction = \"accept\"\nproto = \"tcp\"\ndst_ports = [993]\n",
    )
    .unwrap()
    .policy;
    let d = new.diff(&old);
    assert_eq!(d.added, ["imap"]);
    assert_eq!(d.removed, ["ssh"]);
    assert_eq!(d.changed, ["web"]);
    assert_eq!(d.moved, ["dns"]);
    assert_eq!(
        d.to_string(),
        "added imap; removed ssh; changed web; moved dns; default drop -> reject"
    );
    assert_eq!(old.diff(&old).to_string(), "no change");
}

#[test]
fn a_file_of_many_errors_stops_at_a_hundred() {
    let mut text = String::from("[policy]\ndefault = \"drop\"\n");
    for i in 0..300 {
        text.push_str(&format!("[[rule]]\nname = \"r{i}\"\naction = \"maybe\"\n"));
    }
    let p = problems(&text);
    assert_eq!(p.len(), 101, "{:#?}", &p[95..]);
    assert!(p[100].contains("stopped after 100 errors"), "{}", p[100]);
}

#[test]
fn engine_errors_point_at_the_key_not_at_a_comment_naming_it() {
    let p = problems(
        "# max_connections: the table's size\n[policy]\ndefault = \"drop\"\n\
         [engine]\nmax_connections = 0\n",
    );
    assert_eq!(p.len(), 1, "{p:#?}");
    assert!(p[0].starts_with("rules.toml:5:"), "{p:#?}");
    let p = problems("[policy]\ndefault = \"drop\"\n[engine]\nadaptive.floor = 0\n");
    assert_eq!(p.len(), 1, "{p:#?}");
    assert!(p[0].starts_with("rules.toml:4:"), "{p:#?}");
}

#[test]
fn the_syn_proxy_is_checked_where_it_is_written() {
    let rule = |extra: &str| {
        format!("[policy]\ndefault = \"drop\"\n[[rule]]\nname = \"w\"\n{extra}synproxy = true\n")
    };
    let e = error(&rule("action = \"drop\"\nproto = \"tcp\"\n"));
    assert!(
        e.contains("synproxy = true needs action = \"accept\""),
        "{e}"
    );
    assert!(e.starts_with("rules.toml:3:"), "{e}");
    let e = error(&rule("action = \"accept\"\nproto = \"udp\"\n"));
    assert!(e.contains("TCP only"), "{e}");
    // No proto: the rule's TCP connections are proxied, the rest as ever.
    let c = parse(&rule("action = \"accept\"\n")).unwrap();
    assert!(c.policy.uses_synproxy());
    assert!(c.policy.to_string().contains(" synproxy"));

    let e = error("[policy]\ndefault = \"drop\"\n[engine]\nsynproxy = \"sometimes\"\n");
    assert!(e.starts_with("rules.toml:4:"), "{e}");
    let e =
        error("[policy]\ndefault = \"drop\"\n[engine.synproxy_adaptive]\nstart = 0.1\nend = 0.2\n");
    assert!(e.contains("need 0 < end < start <= 1"), "{e}");
    assert!(e.starts_with("rules.toml:4:"), "{e}");
    let e = error("[policy]\ndefault = \"drop\"\n[engine.synproxy_defaults]\nwscale = 15\n");
    assert!(e.contains("wscale <= 14"), "{e}");
    assert!(e.starts_with("rules.toml:4:"), "{e}");
    let c = parse("[policy]\ndefault = \"drop\"\n[engine]\nsynproxy = \"adaptive\"\n").unwrap();
    assert_eq!(
        c.engine.synproxy,
        crate::engine::settings::SynproxyMode::Adaptive
    );
}
