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
    let e = error("[policy]\ndefault = \"drop\"\n[daemon]\nqueues = \"3-1\"\n");
    assert!(
        e.contains("bad queue spec") && e.starts_with("rules.toml:4:"),
        "{e}"
    );
}

#[test]
fn missing_policy_and_missing_file_are_clear() {
    let e = error("[engine]\nloose_pickup = true\n");
    assert!(e.contains("policy"), "{e}");
    let e = Config::load(Path::new("/nonexistent/rules.toml"))
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("/nonexistent/rules.toml: "), "{e}");
}

#[test]
fn shipped_rules_files_are_valid() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("rules");
    let mut files = vec![root.join("default.toml")];
    for entry in std::fs::read_dir(root.join("examples")).unwrap() {
        files.push(entry.unwrap().path());
    }
    assert!(files.len() >= 3, "default plus a few examples");
    for f in files {
        let c = Config::load(&f).unwrap_or_else(|e| panic!("{e}"));
        // No deprecated key in what we ship.
        assert!(c.warnings.is_empty(), "{}: {:?}", f.display(), c.warnings);
    }
    // The default file's [engine] and [daemon] are the defaults it says it shows.
    let d = Config::load(&root.join("default.toml")).unwrap();
    assert_eq!(d.engine, crate::EngineSettings::default());
    assert_eq!(d.daemon, crate::config::DaemonSettings::default());
}

#[test]
fn values_accept_one_or_many_and_names_or_numbers() {
    let c = parse(
        "[policy]\ndefault = \"drop\"\n[[rule]]\nname = \"r\"\naction = \"accept\"\nproto = 6\nsrc = \"2001:db8::/32\"\ndst = [\"198.18.0.0/15\", \"10.1.2.3\"]\nsrc_ports = \"1024-65535\"\ndst_ports = [22, \"80\", \"8000-8080\"]\n",
    )
    .unwrap();
    let shown = c.policy.to_string();
    assert!(shown.contains("proto=6 src=2001:db8::/32 dst=198.18.0.0/15,10.1.2.3/32 src_ports=1024-65535 dst_ports=22,80,8000-8080"), "{shown}");
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
