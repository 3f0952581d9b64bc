//! The rules file: engine settings and the policy, in TOML, parsed from
//! text it is given (reading the file is a shell's work: see
//! `crate::rules_file`).
//!
//! Unknown keys are refused, and every error names `file:line:column`; all
//! of a file's errors are reported, not only the first. The `[daemon]`
//! and `[cluster]` tables belong to the daemon, a shell: the core parses
//! them as the types the caller names ([`Config::parse_with`],
//! [`Config::parse_shell`]), and their problems are reported with the rest
//! of the file's.

pub use crate::engine::settings::{EngineSettings, Timeouts};
use crate::policy::{PolicySpec, RuleSpec};
use serde::de::{DeserializeOwned, IgnoredAny};
use serde::Deserialize;
use std::fmt;
use std::path::{Path, PathBuf};

/// A table of the rules file that a shell owns (`[daemon]`, `[cluster]`):
/// the core deserializes it as one of its tables, so that its errors are reported
/// with every other problem of the file, and hands it to the shell.
/// [`IgnoredAny`] takes any table and checks nothing: for those that do not
/// run the daemon (replay, the tests).
pub trait ShellTable: DeserializeOwned + Default {
    /// What serde cannot check, once the whole file is read: pushes each
    /// warning as `name:line:column: message` (see [`line_column`]) and each
    /// problem as its byte offset in `text` and its message.
    fn check(
        &mut self,
        text: &str,
        name: &str,
        warnings: &mut Vec<String>,
        problems: &mut Vec<(usize, String)>,
    ) {
        let _ = (text, name, warnings, problems);
    }

    /// The table's line in [`Config::summary`], if it has one.
    fn summary(&self) -> Option<String> {
        None
    }
}

impl ShellTable for IgnoredAny {}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, bound = "D: ShellTable, C: ShellTable")]
struct RulesFile<D, C> {
    #[serde(default)]
    engine: EngineSettings,
    #[serde(default)]
    daemon: D,
    /// Absent: the node runs alone.
    #[serde(default)]
    cluster: Option<C>,
    policy: PolicySpec,
    #[serde(default, rename = "rule")]
    rules: Vec<toml::Spanned<RuleSpec>>,
}

/// A parsed, validated rules file.
#[derive(Clone, Debug)]
pub struct Config {
    /// The file's name, as messages show it.
    pub path: PathBuf,
    pub engine: EngineSettings,
    pub policy: crate::policy::Policy,
    /// What the file should change but that does not stop it from loading
    /// (deprecated keys), each as `file:line:column: message`.
    pub warnings: Vec<String>,
}

/// A rules file that could not be used, with where and why.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Every problem found, in file order (at least one); shown one a line.
    #[error("{}", lines(.path, .problems).join("\n"))]
    Invalid {
        path: String,
        problems: Vec<Problem>,
    },
}

/// One problem of a rules file, and where it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

fn lines(path: &str, problems: &[Problem]) -> Vec<String> {
    problems
        .iter()
        .map(|p| format!("{path}:{}:{}: {}", p.line, p.column, p.message))
        .collect()
}

impl ConfigError {
    /// One line per problem, each `file:line:column: message`.
    pub fn lines(&self) -> Vec<String> {
        match self {
            ConfigError::Invalid { path, problems } => lines(path, problems),
        }
    }
}

/// Warns of each rule address written with host bits set (read as its
/// network; see `Cidr::host_bits`), where it is written.
fn host_bits_warnings(text: &str, name: &str, warnings: &mut Vec<String>) {
    let Ok(doc) = text.parse::<toml_edit::ImDocument<String>>() else {
        return;
    };
    let Some(rules) = doc.get("rule").and_then(|r| r.as_array_of_tables()) else {
        return;
    };
    for rule in rules.iter() {
        for key in ["src", "dst"] {
            let values: Vec<&toml_edit::Value> = match rule.get(key).and_then(|i| i.as_value()) {
                Some(toml_edit::Value::Array(a)) => a.iter().collect(),
                Some(v) => vec![v],
                None => Vec::new(),
            };
            for v in values {
                if let (Some(msg), Some(span)) = (
                    v.as_str().and_then(crate::policy::Cidr::host_bits),
                    v.span(),
                ) {
                    let (line, column) = line_column(text, span.start);
                    warnings.push(format!("{name}:{line}:{column}: {msg}"));
                }
            }
        }
    }
}

/// 1-based line and column of a byte offset.
pub fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = text[line_start..offset].chars().count() + 1;
    (line, column)
}

impl Config {
    /// Parses rules text; `path` is used in messages. `[daemon]` is read as
    /// any table and not checked: see [`Config::parse_with`].
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        Config::parse_with::<IgnoredAny>(text, path).map(|(config, _)| config)
    }

    /// Parses rules text, and its `[daemon]` table as a `D` for the shell
    /// that owns it; `path` is used in messages. Every problem is reported,
    /// not only the first: each `[[rule]]` and each key is checked on its own
    /// (see [`collect`]), and `D`'s problems are among them.
    pub fn parse_with<D: ShellTable>(text: &str, path: &Path) -> Result<(Config, D), ConfigError> {
        Config::parse_shell::<D, IgnoredAny>(text, path).map(|(config, daemon, _)| (config, daemon))
    }

    /// [`Config::parse_with`], and the `[cluster]` table as a `C` when the
    /// file has one (its problems are the file's too).
    pub fn parse_shell<D: ShellTable, C: ShellTable>(
        text: &str,
        path: &Path,
    ) -> Result<(Config, D, Option<C>), ConfigError> {
        let name = path.display().to_string();
        let collected = collect::deserialize_all::<RulesFile<D, C>>(text);
        let mut problems = collected.errors;
        let mut warnings = Vec::new();
        let mut parsed = None;
        if let Some(mut file) = collected.value {
            file.daemon.check(text, &name, &mut warnings, &mut problems);
            if let Some(cluster) = &mut file.cluster {
                cluster.check(text, &name, &mut warnings, &mut problems);
            }
            host_bits_warnings(text, &name, &mut warnings);
            // A rule that lost a key to an error would only repeat it.
            file.rules
                .retain(|r| !collected.damaged.contains(&r.span()));
            let policy = crate::policy::Policy::compile(&file.policy, &file.rules)
                .map_err(|errors| problems.extend(errors))
                .ok();
            check_engine(&file.engine, text, &mut problems);
            parsed = policy.map(|policy| {
                let config = Config {
                    path: path.to_path_buf(),
                    engine: file.engine,
                    policy,
                    warnings,
                };
                (config, file.daemon, file.cluster)
            });
        }
        match parsed {
            Some(parsed) if problems.is_empty() => Ok(parsed),
            _ => {
                // In file order; an offset serde could not place comes first.
                problems.sort_by_key(|(offset, _)| *offset);
                problems.dedup();
                Err(ConfigError::Invalid {
                    path: name,
                    problems: problems
                        .into_iter()
                        .map(|(offset, message)| {
                            let (line, column) = line_column(text, offset);
                            Problem {
                                line,
                                column,
                                message,
                            }
                        })
                        .collect(),
                })
            }
        }
    }

    /// A one-screen summary (`conntrackd check`): the file, `[engine]`,
    /// `table`'s line (see [`ShellTable::summary`]), the policy.
    pub fn summary(&self, table: &impl ShellTable) -> String {
        self.summary_of(&[table.summary()])
    }

    /// [`Config::summary`] with the shell tables' lines (see
    /// [`ShellTable::summary`]) in the order given.
    pub fn summary_of(&self, tables: &[Option<String>]) -> String {
        let mut s = format!(
            "rules file: {}\nengine: max_connections={} max_half_open={} loose_pickup={} \
             synproxy={} time_wait={}s established={}s\n",
            self.path.display(),
            self.engine.max_connections,
            self.engine.max_half_open,
            self.engine.loose_pickup,
            format!("{:?}", self.engine.synproxy).to_lowercase(),
            self.engine.timeouts.time_wait,
            self.engine.timeouts.established
        );
        for line in tables.iter().flatten() {
            s.push_str(line);
            s.push('\n');
        }
        s.push_str(&self.policy.to_string());
        s
    }
}

/// `[engine]`'s limits that serde cannot check.
/// Where `[engine]`'s key `path` (`["max_connections"]`, `["adaptive",
/// "start"]`) is written, or its table, as a byte offset (0: not found).
fn engine_offset(text: &str, path: &[&str]) -> usize {
    let Ok(doc) = text.parse::<toml_edit::ImDocument<String>>() else {
        return 0;
    };
    let mut item = doc.get("engine");
    let mut at = item.and_then(|i| i.span()).map(|s| s.start);
    for key in path {
        item = item.and_then(|i| i.get(key));
        // A dotted key's table has no span of its own; its keys have.
        if let Some(span) = item.and_then(|i| i.span()) {
            at = Some(span.start);
        }
    }
    at.unwrap_or(0)
}

fn check_engine(e: &EngineSettings, text: &str, problems: &mut Vec<(usize, String)>) {
    if e.max_connections == 0 {
        problems.push((
            engine_offset(text, &["max_connections"]),
            "engine.max_connections must be at least 1".into(),
        ));
    }
    let a = &e.adaptive;
    let ordered = a.start.partial_cmp(&a.end) == Some(std::cmp::Ordering::Less);
    if !(0.0..=1.0).contains(&a.start) || !ordered || a.floor == 0 {
        problems.push((
            engine_offset(
                text,
                &["adaptive", if a.floor == 0 { "floor" } else { "start" }],
            ),
            format!(
                "engine.adaptive: need 0 <= start < end and floor >= 1 (start = {}, \
                 end = {}, floor = {})",
                a.start, a.end, a.floor
            ),
        ));
    }
    let sa = &e.synproxy_adaptive;
    if !(0.0 < sa.end && sa.end < sa.start && sa.start <= 1.0) {
        problems.push((
            engine_offset(text, &["synproxy_adaptive", "start"]),
            format!(
                "engine.synproxy_adaptive: need 0 < end < start <= 1 (on above start, off \
                 again below end; start = {}, end = {})",
                sa.start, sa.end
            ),
        ));
    }
    let d = &e.synproxy_defaults;
    if !(536..=9000).contains(&d.mss) || d.wscale > 14 {
        problems.push((
            engine_offset(
                text,
                &[
                    "synproxy_defaults",
                    if d.wscale > 14 { "wscale" } else { "mss" },
                ],
            ),
            format!(
                "engine.synproxy_defaults: need 536 <= mss <= 9000 and wscale <= 14 (RFC 7323) \
                 (mss = {}, wscale = {})",
                d.mss, d.wscale
            ),
        ));
    }
}

impl fmt::Display for Config {
    /// [`Config::summary`] without a shell's table.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.summary(&IgnoredAny))
    }
}

mod collect;

/// The `[policy]` and `[[rule]]` tables as a rules file gives them.
#[cfg(test)]
mod policy_tests;

#[cfg(test)]
mod tests {
    use super::*;

    /// The one problem of a refused file.
    fn only_problem<T: fmt::Debug>(parsed: Result<T, ConfigError>) -> Problem {
        match parsed {
            Err(ConfigError::Invalid { mut problems, .. }) if problems.len() == 1 => {
                problems.remove(0)
            }
            other => panic!("expected one problem: {other:?}"),
        }
    }

    /// A shell's table, as a test has one: `limit` must be under 10 (a
    /// check serde cannot make), and `old_limit` is its deprecated name.
    #[derive(Debug, Default, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields, default)]
    struct Shell {
        limit: u8,
        old_limit: Option<toml::Spanned<u8>>,
    }

    impl ShellTable for Shell {
        fn check(
            &mut self,
            text: &str,
            name: &str,
            warnings: &mut Vec<String>,
            problems: &mut Vec<(usize, String)>,
        ) {
            if let Some(old) = self.old_limit.take() {
                let (line, column) = line_column(text, old.span().start);
                warnings.push(format!("{name}:{line}:{column}: old_limit is deprecated"));
                self.limit = old.into_inner();
            }
            if self.limit >= 10 {
                let at = text.find("limit").unwrap_or(0);
                problems.push((at, format!("limit {} is not under 10", self.limit)));
            }
        }

        fn summary(&self) -> Option<String> {
            Some(format!("shell: limit={}", self.limit))
        }
    }

    #[test]
    fn the_shell_gets_its_table_checked_and_its_problems_are_the_files() {
        let parse = |t: &str| Config::parse_with::<Shell>(t, Path::new("r.toml"));
        let (c, shell) = parse("[daemon]\nlimit = 3\n[policy]\ndefault = \"drop\"\n").unwrap();
        assert_eq!(shell.limit, 3);
        assert!(c.warnings.is_empty());
        // Absent: its default.
        let (_, shell) = parse("[policy]\ndefault = \"drop\"\n").unwrap();
        assert_eq!(shell, Shell::default());
        // Its warnings come first, then the core's.
        let (c, shell) = parse(
            "[daemon]\nold_limit = 4\n[policy]\ndefault = \"drop\"\n[[rule]]\nname = \"r\"\n\
             action = \"accept\"\nsrc = \"10.0.0.1/8\"\n",
        )
        .unwrap();
        assert_eq!(shell.limit, 4);
        assert_eq!(c.warnings.len(), 2, "{:?}", c.warnings);
        assert_eq!(c.warnings[0], "r.toml:2:13: old_limit is deprecated");
        assert!(
            c.warnings[1].starts_with("r.toml:8:7: "),
            "{:?}",
            c.warnings
        );
        // Its serde errors and its check's problems are among the file's
        // others, in file order.
        let lines = parse(
            "[engine]\nmax_conns = 1\n[daemon]\nlimt = 1\n[policy]\ndefault = \"drop\"\n\
             [[rule]]\nname = \"r\"\naction = \"maybe\"\n",
        )
        .unwrap_err()
        .lines();
        assert_eq!(lines.len(), 3, "{lines:#?}");
        assert!(lines[0].starts_with("r.toml:2:1: unknown field `max_conns`"));
        assert!(lines[1].starts_with("r.toml:4:1: unknown field `limt`"));
        assert!(lines[2].starts_with("r.toml:9:10: "), "{lines:#?}");
        let p = only_problem(parse(
            "[daemon]\nlimit = 12\n[policy]\ndefault = \"drop\"\n",
        ));
        assert_eq!((p.line, p.column), (2, 1));
        assert_eq!(p.message, "limit 12 is not under 10");
        let p = only_problem(parse(
            "[daemon]\nlimit = 300\n[policy]\ndefault = \"drop\"\n",
        ));
        assert_eq!((p.line, p.column), (2, 9), "{}", p.message);
    }

    #[test]
    fn parse_reads_any_daemon_table_and_checks_nothing_of_it() {
        let text = "[daemon]\nqueues = \"3-1\"\nnot_a_key = [1, \"x\"]\n[daemon.deeper]\n\
                    a = 1\n[policy]\ndefault = \"accept\"\n";
        let c = Config::parse(text, Path::new("r.toml")).unwrap();
        assert!(c.warnings.is_empty());
        assert!(Config::parse_with::<Shell>(text, Path::new("r.toml")).is_err());
    }

    #[test]
    fn the_summary_shows_the_shells_line_after_the_engines() {
        let text = "[daemon]\nlimit = 7\n[policy]\ndefault = \"drop\"\n";
        let (c, shell) = Config::parse_with::<Shell>(text, Path::new("r.toml")).unwrap();
        let shown = c.summary(&shell);
        let lines: Vec<&str> = shown.lines().collect();
        assert_eq!(lines[0], "rules file: r.toml");
        assert!(lines[1].starts_with("engine: max_connections="), "{shown}");
        assert_eq!(lines[2], "shell: limit=7");
        assert_eq!(shown.splitn(4, '\n').nth(3), Some(&*c.policy.to_string()));
        // Without a shell's table: the same, less that line.
        assert_eq!(c.to_string(), shown.replace("shell: limit=7\n", ""));
    }

    #[test]
    fn adaptive_timeouts_are_checked() {
        let ok =
            "[engine.adaptive]\nstart = 0.6\nend = 0.8\nfloor = 3\n[policy]\ndefault = \"drop\"\n";
        let c = Config::parse(ok, Path::new("r.toml")).unwrap();
        assert_eq!((c.engine.adaptive.start, c.engine.adaptive.floor), (0.6, 3));
        for bad in ["start = 0.9\nend = 0.5", "start = -1.0", "floor = 0"] {
            let text = format!("[engine.adaptive]\n{bad}\n[policy]\ndefault = \"drop\"\n");
            let Problem { line, message, .. } =
                only_problem(Config::parse(&text, Path::new("r.toml")));
            // At the key (start, or floor when floor is the trouble).
            assert_eq!(line, 2, "{bad}: {message}");
            assert!(message.contains("engine.adaptive"), "{message}");
        }
    }

    /// Every key whose value is a list takes one value or a list, alike
    /// (`[daemon]`'s are the daemon's: see its tests).
    #[test]
    fn every_list_key_takes_one_value_or_a_list() {
        let rule = |line: &str| {
            let text = format!(
                "[policy]\ndefault = \"drop\"\n[[rule]]\nname = \"r\"\naction = \"accept\"\n\
                 proto = \"tcp\"\n{line}\n"
            );
            let c =
                Config::parse(&text, Path::new("r.toml")).unwrap_or_else(|e| panic!("{line}: {e}"));
            c.policy.rules[0].to_string()
        };
        for (key, one, list, shown) in [
            (
                "src",
                "\"198.18.0.0/15\"",
                "[\"198.18.0.0/15\"]",
                "src=198.18.0.0/15",
            ),
            (
                "dst",
                "\"2001:db8::1\"",
                "[\"2001:db8::1\"]",
                "dst=2001:db8::1/128",
            ),
            ("src_ports", "1024", "[1024]", "src_ports=1024"),
            (
                "dst_ports",
                "\"8000-8080\"",
                "[\"8000-8080\"]",
                "dst_ports=8000-8080",
            ),
        ] {
            let (a, b) = (
                rule(&format!("{key} = {one}")),
                rule(&format!("{key} = {list}")),
            );
            assert!(a.contains(shown), "{key} = {one}: {a}");
            assert_eq!(a, b, "{key}");
        }
    }

    #[test]
    fn line_and_column_are_one_based() {
        let text = "a\nbc\ndef";
        assert_eq!(line_column(text, 0), (1, 1));
        assert_eq!(line_column(text, 3), (2, 2));
        assert_eq!(line_column(text, 5), (3, 1));
    }
}
