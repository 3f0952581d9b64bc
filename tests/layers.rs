//! The architecture, checked: every path a module's code names (`crate::…`,
//! `super::…`, and each item of a `use crate::{…}` group) resolves to a
//! module it may use.
//!
//! - Between top-level modules: the sans-IO core never reaches the shells,
//!   `wire` reaches nothing above it, and the shells reach each other only
//!   downwards: the daemon runs the kernel adapters, and the daemon, replay
//!   and the command line read the rules file through `rules_file`.
//! - Inside the daemon, between its rooms: `shared` reaches no other room,
//!   `packet` and `operations` reach only `shared` (never each other), and
//!   `lifecycle` reaches them all.
//! - No two daemon files use each other, directly or round a longer cycle.
//!   A `mod.rs` declaring and re-exporting its own children is structure,
//!   not use: those arrows are not counted.
//!
//! Comments and string literals are not checked (a doc link may point
//! anywhere).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Each top-level module and the modules its code may name.
const ALLOWED: &[(&str, &[&str])] = &[
    ("time", &[]),
    ("reason", &[]),
    ("wire", &["reason"]),
    ("conntrack", &["synproxy", "wire", "reason", "time"]),
    ("policy", &["conntrack", "wire", "reason", "time"]),
    (
        "engine",
        &["conntrack", "policy", "synproxy", "wire", "reason", "time"],
    ),
    ("cluster", &["conntrack", "synproxy", "wire", "time"]),
    ("synproxy", &["wire", "time"]),
    ("config", &["engine", "policy", "wire", "reason", "time"]),
    ("kernel", &["wire", "reason", "time"]),
    ("rules_file", &["config"]),
    (
        "replay",
        &[
            "rules_file",
            "config",
            "engine",
            "conntrack",
            "policy",
            "synproxy",
            "wire",
            "reason",
            "time",
        ],
    ),
    (
        "daemon",
        &[
            "kernel",
            "rules_file",
            "config",
            "cluster",
            "engine",
            "conntrack",
            "policy",
            "synproxy",
            "wire",
            "reason",
            "time",
        ],
    ),
    ("cli", &["daemon", "replay", "rules_file"]),
];

/// The daemon's rooms and the rooms each may name (besides itself).
const ROOMS: &[(&str, &[&str])] = &[
    ("shared", &[]),
    ("packet", &["shared"]),
    ("operations", &["shared"]),
    ("cluster", &["shared"]),
    ("lifecycle", &["shared", "packet", "operations", "cluster"]),
];

fn rust_files(path: &Path, out: &mut Vec<PathBuf>) {
    if path.is_dir() {
        for entry in std::fs::read_dir(path).unwrap() {
            rust_files(&entry.unwrap().path(), out);
        }
    } else if path.extension().is_some_and(|e| e == "rs") {
        out.push(path.to_path_buf());
    }
}

/// The module path of a file under `src`: `daemon/packet/mod.rs` and
/// `daemon/packet.rs` are both `daemon::packet`; `lib.rs` is the root.
fn module_of(relative: &Path) -> Vec<String> {
    let mut parts: Vec<String> = relative
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let last = parts.pop().unwrap();
    let stem = last.trim_end_matches(".rs");
    if !matches!(stem, "mod" | "lib" | "main") {
        parts.push(stem.to_string());
    }
    parts
}

/// `text` with comments and string and character literals blanked out
/// (newlines kept), so that only code is read.
fn code_only(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    let blank = |out: &mut String, s: &[u8]| {
        for &c in s {
            out.push(if c == b'\n' { '\n' } else { ' ' });
        }
    };
    while i < b.len() {
        let rest = &b[i..];
        if rest.starts_with(b"//") {
            let end = rest.iter().position(|&c| c == b'\n').unwrap_or(rest.len());
            blank(&mut out, &rest[..end]);
            i += end;
        } else if rest.starts_with(b"/*") {
            // Nested block comments, as Rust has them.
            let (mut depth, mut j) = (0usize, 0);
            while j < rest.len() {
                if rest[j..].starts_with(b"/*") {
                    depth += 1;
                    j += 2;
                } else if rest[j..].starts_with(b"*/") {
                    depth -= 1;
                    j += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    j += 1;
                }
            }
            blank(&mut out, &rest[..j]);
            i += j;
        } else if (rest.starts_with(b"r\"") || rest.starts_with(b"r#"))
            && !b
                .get(i.wrapping_sub(1))
                .is_some_and(|c| c.is_ascii_alphanumeric() || *c == b'_')
        {
            let hashes = rest[1..].iter().take_while(|&&c| c == b'#').count();
            if rest.get(1 + hashes) != Some(&b'"') {
                out.push(rest[0] as char);
                i += 1;
                continue;
            }
            let close: Vec<u8> = std::iter::once(b'"')
                .chain(std::iter::repeat(b'#').take(hashes))
                .collect();
            let body = 2 + hashes;
            let end = rest[body..]
                .windows(close.len())
                .position(|w| w == close.as_slice())
                .map_or(rest.len(), |p| body + p + close.len());
            blank(&mut out, &rest[..end]);
            i += end;
        } else if rest[0] == b'"' {
            let mut j = 1;
            while j < rest.len() && rest[j] != b'"' {
                j += if rest[j] == b'\\' { 2 } else { 1 };
            }
            let end = (j + 1).min(rest.len());
            blank(&mut out, &rest[..end]);
            i += end;
        } else if rest[0] == b'\'' {
            // A character literal ('x', '\n', '\u{..}'), or a lifetime ('a).
            let end = if rest.get(1) == Some(&b'\\') {
                rest[2..].iter().position(|&c| c == b'\'').map(|p| p + 3)
            } else {
                let ch = text[i + 1..].chars().next().map_or(1, char::len_utf8);
                (rest.get(1 + ch) == Some(&b'\'')).then_some(ch + 2)
            };
            match end {
                Some(end) => {
                    blank(&mut out, &rest[..end]);
                    i += end;
                }
                None => {
                    out.push('\'');
                    i += 1;
                }
            }
        } else {
            let ch = text[i..].chars().next().unwrap();
            out.push(ch);
            i += ch.len_utf8();
        }
    }
    out
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Reads one path tail after `prefix::` from `s` (which starts just after
/// the `::`), a `{…}` group giving one path per item; returns the paths and
/// how much of `s` they took.
fn path_tails(s: &str, prefix: &[String], out: &mut Vec<Vec<String>>) -> usize {
    let mut path = prefix.to_vec();
    let mut i = 0;
    loop {
        let rest = &s[i..];
        let skipped = rest.len() - rest.trim_start().len();
        i += skipped;
        let rest = &s[i..];
        if let Some(group) = rest.strip_prefix('{') {
            i += 1;
            let mut taken = 0;
            loop {
                let g = &group[taken..];
                let ws = g.len() - g.trim_start().len();
                taken += ws;
                if group[taken..].starts_with('}') {
                    taken += 1;
                    break;
                }
                if taken >= group.len() {
                    break;
                }
                taken += path_tails(&group[taken..], &path, out);
                // ` as alias` ends an item.
                taken += group[taken..]
                    .find([',', '}'])
                    .unwrap_or(group.len() - taken);
                if group[taken..].starts_with(',') {
                    taken += 1;
                }
            }
            return i + taken;
        }
        let name: String = rest
            .chars()
            .take_while(|&c| is_ident(c) || c == '*')
            .collect();
        if name.is_empty() {
            out.push(path);
            return i;
        }
        i += name.len();
        path.push(name);
        if s[i..].starts_with("::") {
            i += 2;
        } else {
            // `as alias` and whatever follows end the path.
            out.push(path);
            return i;
        }
    }
}

/// Every path `code` names from `crate` or `super`, resolved to an absolute
/// module path, for code of module `module`. Inline `mod name {…}` blocks
/// are followed, so `super` inside `mod tests` is the file's own module.
fn named_paths(code: &str, module: &[String]) -> Vec<Vec<String>> {
    let mut found = Vec::new();
    // The inline modules open at each brace depth.
    let mut inline: Vec<(String, usize)> = Vec::new();
    let mut depth = 0usize;
    let mut i = 0;
    let chars: Vec<(usize, char)> = code.char_indices().collect();
    let mut k = 0;
    while k < chars.len() {
        let (at, c) = chars[k];
        if at < i {
            k += 1;
            continue;
        }
        match c {
            '{' => depth += 1,
            '}' => {
                depth = depth.saturating_sub(1);
                while inline.last().is_some_and(|(_, d)| *d > depth) {
                    inline.pop();
                }
            }
            _ => {}
        }
        let word_start = !code[..at].ends_with(is_ident) && is_ident(c);
        if !word_start {
            k += 1;
            continue;
        }
        let word: String = code[at..].chars().take_while(|&c| is_ident(c)).collect();
        let after = &code[at + word.len()..];
        if word == "mod" {
            let name: String = after
                .trim_start()
                .chars()
                .take_while(|&c| is_ident(c))
                .collect();
            let tail = after.trim_start()[name.len()..].trim_start();
            if !name.is_empty() && tail.starts_with('{') {
                inline.push((name, depth + 1));
            }
        }
        if (word == "crate" || word == "super") && after.starts_with("::") {
            let mut here: Vec<String> = module.to_vec();
            here.extend(inline.iter().map(|(n, _)| n.clone()));
            let mut start = at;
            let mut base: Vec<String> = Vec::new();
            if word == "crate" {
                start += "crate::".len();
            } else {
                base = here.clone();
                while code[start..].starts_with("super::") {
                    base.pop();
                    start += "super::".len();
                }
            }
            let mut paths = Vec::new();
            let used = path_tails(&code[start..], &base, &mut paths);
            found.extend(paths);
            i = start + used;
        } else {
            i = at + word.len();
        }
        k += 1;
    }
    found
}

/// A daemon room (`packet`, …), or `daemon` for the daemon's own root.
fn room(path: &[String]) -> Option<&str> {
    match path {
        [d, room, ..] if d == "daemon" && ROOMS.iter().any(|(r, _)| r == room) => Some(room),
        [d, ..] if d == "daemon" => Some("daemon"),
        _ => None,
    }
}

struct Source {
    relative: PathBuf,
    module: Vec<String>,
    paths: Vec<Vec<String>>,
}

fn sources() -> Vec<Source> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files
        .into_iter()
        .map(|file| {
            let relative = file.strip_prefix(&src).unwrap().to_path_buf();
            let module = module_of(&relative);
            let code = code_only(&std::fs::read_to_string(&file).unwrap());
            let paths = named_paths(&code, &module);
            Source {
                relative,
                module,
                paths,
            }
        })
        .collect()
}

/// What is wrong with `sources`' arrows, one line each.
fn wrong_arrows(sources: &[Source]) -> Vec<String> {
    let top: BTreeSet<&str> = ALLOWED.iter().map(|(m, _)| *m).collect();
    let mut wrong = Vec::new();
    for s in sources {
        let Some(from) = s.module.first() else {
            continue; // lib.rs and main.rs may name anything
        };
        let allowed = ALLOWED
            .iter()
            .find(|(m, _)| m == from)
            .map_or(&[][..], |(_, a)| *a);
        for path in &s.paths {
            let Some(to) = path.first() else { continue };
            if to != from && top.contains(to.as_str()) && !allowed.contains(&to.as_str()) {
                wrong.push(format!(
                    "{}: names crate::{to}, which {from} may not use",
                    s.relative.display()
                ));
            }
            if let (Some(a), Some(b)) = (room(&s.module), room(path)) {
                let may = a == b
                    || a == "daemon"
                    || ROOMS.iter().any(|(r, reach)| *r == a && reach.contains(&b));
                if !may && b != "daemon" {
                    wrong.push(format!(
                        "{}: names daemon::{b} ({}), which the {a} room may not use",
                        s.relative.display(),
                        path.join("::")
                    ));
                }
            }
        }
    }
    wrong
}

/// Cycles between daemon files (a `mod.rs` to its own children excluded).
fn daemon_cycles(sources: &[Source]) -> Vec<String> {
    let modules: BTreeMap<Vec<String>, &Source> = sources
        .iter()
        .filter(|s| room(&s.module).is_some())
        .map(|s| (s.module.clone(), s))
        .collect();
    // The file that defines the longest module prefix of `path`.
    let file_of = |path: &[String]| {
        (1..=path.len())
            .rev()
            .find_map(|n| modules.get(&path[..n]).map(|s| s.module.clone()))
    };
    let mut edges: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
    for s in modules.values() {
        let is_parent = s.relative.ends_with("mod.rs");
        for path in &s.paths {
            let Some(to) = file_of(path) else { continue };
            let own_child = is_parent && to.starts_with(&s.module);
            if to != s.module && !own_child {
                edges.entry(s.module.clone()).or_default().insert(to);
            }
        }
    }
    let mut cycles = Vec::new();
    for (from, tos) in &edges {
        for to in tos {
            // A path back from `to` to `from`?
            let mut seen = BTreeSet::new();
            let mut stack = vec![to.clone()];
            while let Some(m) = stack.pop() {
                if &m == from {
                    cycles.push(format!(
                        "{} -> {} -> … -> back",
                        from.join("::"),
                        to.join("::")
                    ));
                    break;
                }
                if seen.insert(m.clone()) {
                    stack.extend(edges.get(&m).into_iter().flatten().cloned());
                }
            }
        }
    }
    cycles
}

#[test]
fn every_module_names_only_the_layers_below_it() {
    let sources = sources();
    assert!(sources.len() > 40, "only {} files read", sources.len());
    let daemon_files = sources.iter().filter(|s| room(&s.module).is_some()).count();
    assert!(daemon_files > 15, "only {daemon_files} daemon files read");
    let wrong = wrong_arrows(&sources);
    assert!(
        wrong.is_empty(),
        "arrows pointing the wrong way:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn no_two_daemon_files_use_each_other() {
    let cycles = daemon_cycles(&sources());
    assert!(cycles.is_empty(), "cycles:\n{}", cycles.join("\n"));
}

fn modules(paths: Vec<Vec<String>>) -> Vec<String> {
    paths.into_iter().map(|p| p.join("::")).collect()
}

#[test]
fn the_check_reads_paths_groups_and_super_but_not_comments_or_strings() {
    let m = |s: &str| s.split("::").map(str::to_string).collect::<Vec<_>>();
    let code = code_only(
        "use crate::daemon::packet::worker::Worker; // crate::kernel\n\
         use crate::{kernel, wire::{lax, Framing as F}};\n\
         let s = \"crate::replay\"; let c = '{'; /* crate::cli */\n\
         use super::super::shared::{Stop, WorkerStats};\n\
         mod tests { use super::*; }\n",
    );
    let found = modules(named_paths(&code, &m("daemon::operations::control")));
    assert_eq!(
        found,
        [
            "daemon::packet::worker::Worker",
            "kernel",
            "wire::lax",
            "wire::Framing",
            "daemon::shared::Stop",
            "daemon::shared::WorkerStats",
            "daemon::operations::control::*",
        ]
    );
}

#[test]
fn a_wrong_way_import_and_a_cycle_are_found() {
    let m = |s: &str| s.split("::").map(str::to_string).collect::<Vec<_>>();
    let source = |file: &str, module: &str, code: &str| Source {
        relative: PathBuf::from(file),
        module: m(module),
        paths: named_paths(&code_only(code), &m(module)),
    };
    let planted = [
        source(
            "daemon/operations/control.rs",
            "daemon::operations::control",
            "use super::super::packet::worker::Worker;",
        ),
        source("wire/mod.rs", "wire", "use crate::{reason, engine};"),
        source(
            "synproxy/cookie.rs",
            "synproxy::cookie",
            "use crate::{wire::SeqNum, time::Timestamp, conntrack::Table};",
        ),
        source(
            "daemon/packet/worker.rs",
            "daemon::packet::worker",
            "use super::reject::Replies;",
        ),
        source(
            "daemon/packet/reject.rs",
            "daemon::packet::reject",
            "use super::worker::Worker;",
        ),
    ];
    assert_eq!(
        wrong_arrows(&planted),
        [
            "daemon/operations/control.rs: names daemon::packet \
             (daemon::packet::worker::Worker), which the operations room may not use",
            "wire/mod.rs: names crate::engine, which wire may not use",
            "synproxy/cookie.rs: names crate::conntrack, which synproxy may not use",
        ]
    );
    assert_eq!(
        daemon_cycles(&planted).len(),
        2,
        "worker <-> reject, both ways"
    );
}
