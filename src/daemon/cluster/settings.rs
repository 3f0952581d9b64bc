//! The rules file's `[cluster]` table: which NATS servers carry the
//! gateways' messages, this node's name and its peers'. Read by the core's
//! parser as a shell table ([`crate::config::Config::parse_shell`]), so that
//! its problems are reported with the rest of the file's, each at its
//! `file:line:column`. Without the table the node runs alone.

use crate::cluster::valid_node;
use crate::config::{line_column, ShellTable};
use serde::Deserialize;
use std::fmt;
use std::path::PathBuf;

/// A secret read from the rules file: never shown (`Debug` hides it).
#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"(secret)\"")
    }
}

/// `[cluster]`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ClusterSettings {
    /// NATS servers, `nats://host:port` or `tls://host:port` (one or a list).
    #[serde(deserialize_with = "crate::policy::one_or_many_strings")]
    pub servers: Vec<String>,
    /// This node's name (see `cluster::valid_node`).
    pub node: String,
    /// The only nodes whose messages are accepted (one or a list).
    #[serde(deserialize_with = "crate::policy::one_or_many_strings")]
    pub peers: Vec<String>,
    /// The first token of every subject: `{subject}.changes.{node}`,
    /// `{subject}.hello.{node}`, `{subject}.bulk`.
    #[serde(default = "default_subject")]
    pub subject: String,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub password: Option<Secret>,
    /// The password, read from this file at start (its first line).
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// A NATS credentials file (JWT and NKey seed), instead of a user.
    #[serde(default)]
    pub creds_file: Option<PathBuf>,
    #[serde(default)]
    pub tls_ca_file: Option<PathBuf>,
    #[serde(default)]
    pub tls_cert_file: Option<PathBuf>,
    #[serde(default)]
    pub tls_key_file: Option<PathBuf>,
    #[serde(default)]
    pub tls_required: bool,
    /// A connection's window progress is published at most this often,
    /// in milliseconds (0: only its state changes).
    #[serde(default = "default_progress_ms")]
    pub progress_ms: u16,
    /// While changes come, the outbox is sent this often, in milliseconds:
    /// a change waits at most this long for others to share its message.
    #[serde(default = "default_batch_ms")]
    pub batch_ms: u16,
    /// Every local entry is published again over this many seconds, which
    /// repairs lost records and keeps the peers' copies from expiring (0: never).
    #[serde(default = "default_refresh_secs")]
    pub refresh_secs: u64,
    /// How long a starting node waits for its peers' copies of their
    /// tables before it reports ready without them, in milliseconds.
    #[serde(default = "default_bulk_timeout_ms")]
    pub bulk_timeout_ms: u64,
}

/// The longest `batch_ms`: a peer's copy may lag this much behind.
pub const MAX_BATCH_MS: u16 = 100;

fn default_subject() -> String {
    "conntrackd".into()
}

fn default_progress_ms() -> u16 {
    5
}

fn default_batch_ms() -> u16 {
    5
}

fn default_refresh_secs() -> u64 {
    10
}

fn default_bulk_timeout_ms() -> u64 {
    2000
}

impl Default for ClusterSettings {
    fn default() -> Self {
        ClusterSettings {
            servers: Vec::new(),
            node: String::new(),
            peers: Vec::new(),
            subject: default_subject(),
            user: None,
            password: None,
            password_file: None,
            creds_file: None,
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
            tls_required: false,
            progress_ms: default_progress_ms(),
            batch_ms: default_batch_ms(),
            refresh_secs: default_refresh_secs(),
            bulk_timeout_ms: default_bulk_timeout_ms(),
        }
    }
}

/// Whether `url` names a NATS server as `[cluster] servers` takes it.
fn server_problem(url: &str) -> Option<String> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return Some(format!(
            "cluster.servers: {url:?} is not a URL such as \"nats://198.18.255.1:4222\""
        ));
    };
    if scheme != "nats" && scheme != "tls" {
        return Some(format!(
            "cluster.servers: {url:?}: the scheme must be nats:// or tls://"
        ));
    }
    // user:password@ belongs in user and password (or password_file): a
    // URL is shown in logs and in `conntrackd cluster`.
    let bad_host = rest.is_empty()
        || rest.contains(['@', '/', '?', '#', ' '])
        || rest.starts_with(':')
        || rest
            .rsplit_once(':')
            .is_some_and(|(host, port)| !host.ends_with(']') && port.parse::<u16>().is_err());
    bad_host.then(|| {
        format!(
            "cluster.servers: {url:?}: give host:port only (credentials go in \
             cluster.user and cluster.password or password_file)"
        )
    })
}

/// Whether `subject` can be the first tokens of a NATS subject.
fn subject_ok(subject: &str) -> bool {
    !subject.is_empty()
        && subject.split('.').all(|token| {
            !token.is_empty()
                && token
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// Where `[cluster]`'s `key` (or its `index`-th element) is written, as a
/// byte offset (the table's, or 0, when it is not found).
fn offset(text: &str, key: &str, index: Option<usize>) -> usize {
    let Ok(doc) = text.parse::<toml_edit::ImDocument<String>>() else {
        return 0;
    };
    let table = doc.get("cluster");
    let mut at = table.and_then(|t| t.span()).map_or(0, |s| s.start);
    let item = table.and_then(|t| t.get(key));
    if let Some(span) = item.and_then(|i| i.span()) {
        at = span.start;
    }
    if let (Some(i), Some(toml_edit::Value::Array(a))) = (index, item.and_then(|i| i.as_value())) {
        if let Some(span) = a.get(i).and_then(|v| v.span()) {
            at = span.start;
        }
    }
    at
}

impl ShellTable for ClusterSettings {
    fn check(
        &mut self,
        text: &str,
        name: &str,
        warnings: &mut Vec<String>,
        problems: &mut Vec<(usize, String)>,
    ) {
        let mut problem = |key: &str, index: Option<usize>, message: String| {
            problems.push((offset(text, key, index), message));
        };
        if self.servers.is_empty() {
            problem(
                "servers",
                None,
                "cluster.servers names no server: give at least one nats:// URL".into(),
            );
        }
        for (i, url) in self.servers.iter().enumerate() {
            if let Some(why) = server_problem(url) {
                problem("servers", Some(i), why);
            }
        }
        if !valid_node(&self.node) {
            problem(
                "node",
                None,
                format!(
                    "cluster.node {:?} is not a node name: 1 to 32 letters, digits, - or _",
                    self.node
                ),
            );
        }
        if self.peers.is_empty() {
            problem(
                "peers",
                None,
                "cluster.peers names no peer: give the other gateways' node names".into(),
            );
        }
        for (i, peer) in self.peers.iter().enumerate() {
            if !valid_node(peer) {
                problem(
                    "peers",
                    Some(i),
                    format!(
                        "cluster.peers: {peer:?} is not a node name: 1 to 32 letters, digits, - or _"
                    ),
                );
            } else if *peer == self.node {
                problem(
                    "peers",
                    Some(i),
                    format!("cluster.peers names this node itself ({peer:?})"),
                );
            } else if self.peers[..i].contains(peer) {
                problem(
                    "peers",
                    Some(i),
                    format!("cluster.peers names {peer:?} twice"),
                );
            }
        }
        if !subject_ok(&self.subject) {
            problem(
                "subject",
                None,
                format!(
                    "cluster.subject {:?} is not a NATS subject prefix: tokens of letters, \
                     digits, - or _, separated by dots",
                    self.subject
                ),
            );
        }
        if self.password.is_some() && self.password_file.is_some() {
            problem(
                "password_file",
                None,
                "cluster.password and cluster.password_file: give only one".into(),
            );
        }
        let has_password = self.password.is_some() || self.password_file.is_some();
        if has_password != self.user.is_some() {
            let key = if self.user.is_some() {
                "user"
            } else if self.password.is_some() {
                "password"
            } else {
                "password_file"
            };
            problem(
                key,
                None,
                "cluster.user needs a password (cluster.password or password_file), and a \
                 password a user"
                    .into(),
            );
        }
        if self.creds_file.is_some() && self.user.is_some() {
            problem(
                "creds_file",
                None,
                "cluster.creds_file and cluster.user: give only one way to log in".into(),
            );
        }
        if self.tls_cert_file.is_some() != self.tls_key_file.is_some() {
            let key = if self.tls_cert_file.is_some() {
                "tls_cert_file"
            } else {
                "tls_key_file"
            };
            problem(
                key,
                None,
                "cluster.tls_cert_file and cluster.tls_key_file go together".into(),
            );
        }
        if !(1..=MAX_BATCH_MS).contains(&self.batch_ms) {
            problem(
                "batch_ms",
                None,
                format!(
                    "cluster.batch_ms = {}: from 1 to {MAX_BATCH_MS} (milliseconds a change \
                     waits at most before it is sent)",
                    self.batch_ms
                ),
            );
        }
        if self.refresh_secs == 0 {
            let (line, column) = line_column(text, offset(text, "refresh_secs", None));
            warnings.push(format!(
                "{name}:{line}:{column}: cluster.refresh_secs = 0: local entries are never \
                 published again, so the peers' copies of idle connections expire and lost \
                 records are never repaired"
            ));
        }
    }

    fn summary(&self) -> Option<String> {
        Some(format!(
            "cluster: node={} peers={} servers={} subject={} progress_ms={} batch_ms={} \
             refresh_secs={} bulk_timeout_ms={}",
            self.node,
            self.peers.join(","),
            self.servers.join(","),
            self.subject,
            self.progress_ms,
            self.batch_ms,
            self.refresh_secs,
            self.bulk_timeout_ms
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, ConfigError, Problem};
    use serde::de::IgnoredAny;
    use std::path::Path;

    const POLICY: &str = "[policy]\ndefault = \"accept\"\n";

    fn parse(cluster: &str) -> Result<Option<ClusterSettings>, ConfigError> {
        let text = format!("{POLICY}[cluster]\n{cluster}");
        Config::parse_shell::<IgnoredAny, ClusterSettings>(&text, Path::new("r.toml"))
            .map(|(_, _, c)| c)
    }

    /// The problems of a refused `[cluster]` (its keys start on line 4).
    fn problems(cluster: &str) -> Vec<Problem> {
        match parse(cluster) {
            Err(ConfigError::Invalid { problems, .. }) => problems,
            other => panic!("expected problems: {other:?}"),
        }
    }

    fn only(cluster: &str) -> Problem {
        let mut p = problems(cluster);
        assert_eq!(p.len(), 1, "{p:#?}");
        p.remove(0)
    }

    const GOOD: &str =
        "servers = [\"nats://198.18.255.1:4222\"]\nnode = \"gw-a\"\npeers = [\"gw-b\"]\n";

    #[test]
    fn a_cluster_table_is_read_with_its_defaults() {
        let c = parse(GOOD).unwrap().unwrap();
        assert_eq!(c.servers, ["nats://198.18.255.1:4222"]);
        assert_eq!(
            (c.node.as_str(), c.peers.as_slice()),
            ("gw-a", &["gw-b".to_string()][..])
        );
        assert_eq!(c.subject, "conntrackd");
        assert_eq!(
            (c.progress_ms, c.batch_ms, c.refresh_secs, c.bulk_timeout_ms),
            (5, 5, 10, 2000)
        );
        assert!(c.user.is_none() && c.password.is_none() && !c.tls_required);
        let none = Config::parse_shell::<IgnoredAny, ClusterSettings>(POLICY, Path::new("r.toml"))
            .unwrap()
            .2;
        assert!(none.is_none(), "no table, no cluster");
        let all = format!(
            "{GOOD}subject = \"ctd.lab\"\nuser = \"ctd\"\npassword = \"s3cret\"\n\
             tls_ca_file = \"/etc/ca.pem\"\ntls_required = true\nprogress_ms = 0\n\
             refresh_secs = 30\nbulk_timeout_ms = 500\nbatch_ms = 10\n"
        );
        let c = parse(&all).unwrap().unwrap();
        assert_eq!(c.subject, "ctd.lab");
        assert_eq!(c.password, Some(Secret("s3cret".into())));
        assert!(
            !format!("{c:?}").contains("s3cret"),
            "Debug hides the password"
        );
        assert_eq!(
            (c.progress_ms, c.batch_ms, c.refresh_secs, c.bulk_timeout_ms),
            (0, 10, 30, 500)
        );
        // One server and one peer without a list, as every list key.
        let one = parse("servers = \"tls://[2001:db8::1]:4222\"\nnode = \"a\"\npeers = \"b\"\n")
            .unwrap()
            .unwrap();
        assert_eq!((one.servers.len(), one.peers.len()), (1, 1));
    }

    #[test]
    fn every_mistake_is_reported_where_it_is_written() {
        let at = |p: &Problem| (p.line, p.column);
        let p = only("servers = [\"nats://a:4222\"]\nnode = \"gw a\"\npeers = [\"gw-b\"]\n");
        assert_eq!(at(&p), (5, 8), "{}", p.message);
        assert!(p.message.contains("is not a node name"), "{}", p.message);

        let p =
            only("servers = [\"nats://a:4222\"]\nnode = \"gw-a\"\npeers = [\"gw-b\", \"gw-a\"]\n");
        assert_eq!(at(&p), (6, 18), "{}", p.message);
        assert!(
            p.message.contains("names this node itself"),
            "{}",
            p.message
        );

        for bad in [0, MAX_BATCH_MS + 1] {
            let p = only(&format!("{GOOD}batch_ms = {bad}\n"));
            assert_eq!(at(&p), (7, 12), "{}", p.message);
            assert!(p.message.contains("from 1 to 100"), "{}", p.message);
        }

        let p = only("servers = []\nnode = \"gw-a\"\npeers = [\"gw-b\"]\n");
        assert_eq!(at(&p), (4, 11), "{}", p.message);
        assert!(p.message.contains("names no server"), "{}", p.message);

        let p = only(
            "servers = [\"nats://a:4222\", \"http://b:4222\"]\nnode = \"gw-a\"\npeers = \"gw-b\"\n",
        );
        assert_eq!(at(&p), (4, 29), "{}", p.message);
        assert!(p.message.contains("nats:// or tls://"), "{}", p.message);
        for bad in [
            "198.18.255.1:4222",
            "nats://u:p@host:4222",
            "nats://host:port",
            "nats://",
        ] {
            let p = only(&format!("servers = {bad:?}\nnode = \"a\"\npeers = \"b\"\n"));
            assert_eq!(at(&p), (4, 11), "{bad}: {}", p.message);
        }

        let p = only(&format!("{GOOD}colour = \"blue\"\n"));
        assert_eq!(at(&p), (7, 1), "{}", p.message);
        assert!(
            p.message.contains("unknown field `colour`"),
            "{}",
            p.message
        );

        let p = only(&format!(
            "{GOOD}user = \"ctd\"\npassword = \"x\"\npassword_file = \"/etc/p\"\n"
        ));
        assert_eq!(at(&p), (9, 17), "{}", p.message);
        assert!(p.message.contains("give only one"), "{}", p.message);

        let p = only(&format!("{GOOD}password = \"x\"\n"));
        assert_eq!(at(&p), (7, 12), "{}", p.message);
        assert!(p.message.contains("needs a password"), "{}", p.message);

        let p = only(&format!("{GOOD}subject = \"ctd.*\"\n"));
        assert_eq!(at(&p), (7, 11), "{}", p.message);

        let p = only(&format!("{GOOD}tls_cert_file = \"/c.pem\"\n"));
        assert_eq!(at(&p), (7, 17), "{}", p.message);

        let p = only("node = \"gw-a\"\npeers = [\"gw-b\"]\n");
        assert!(
            p.message.contains("missing field `servers`"),
            "{}",
            p.message
        );

        // Several at once, in file order.
        let many = problems("servers = []\nnode = \"\"\npeers = [\"x y\"]\n");
        assert_eq!(many.len(), 3, "{many:#?}");
        assert_eq!(many.iter().map(|p| p.line).collect::<Vec<_>>(), [4, 5, 6]);
    }

    #[test]
    fn no_refresh_is_a_warning_and_the_summary_has_a_line() {
        let text = format!("{POLICY}[cluster]\n{GOOD}refresh_secs = 0\n");
        let (config, _, c) =
            Config::parse_shell::<IgnoredAny, ClusterSettings>(&text, Path::new("r.toml")).unwrap();
        assert_eq!(config.warnings.len(), 1);
        assert!(config.warnings[0].starts_with("r.toml:7:16: cluster.refresh_secs = 0"));
        let line = c.unwrap().summary().unwrap();
        assert!(
            line.starts_with("cluster: node=gw-a peers=gw-b servers=nats://"),
            "{line}"
        );
    }
}
