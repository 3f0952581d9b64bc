//! The architecture, checked: every `crate::` path in a module's code names
//! a module it may use. The sans-IO core never reaches the shells, `wire`
//! reaches nothing above it, and the shells do not reach each other except
//! the daemon, which runs the kernel adapters. Comments are not checked (a
//! doc link may point anywhere).

use std::collections::BTreeSet;
use std::path::Path;

/// Each top-level module and the modules its code may name.
const ALLOWED: &[(&str, &[&str])] = &[
    ("time", &[]),
    ("reason", &[]),
    ("wire", &["reason"]),
    ("conntrack", &["wire", "reason", "time"]),
    ("policy", &["conntrack", "wire", "reason", "time"]),
    ("engine", &["conntrack", "policy", "wire", "reason", "time"]),
    ("config", &["engine", "policy", "wire", "reason", "time"]),
    ("kernel", &["wire", "reason", "time"]),
    (
        "replay",
        &[
            "config",
            "engine",
            "conntrack",
            "policy",
            "wire",
            "reason",
            "time",
        ],
    ),
    (
        "daemon",
        &[
            "kernel",
            "config",
            "engine",
            "conntrack",
            "policy",
            "wire",
            "reason",
            "time",
        ],
    ),
    ("cli", &["daemon", "replay"]),
];

fn rust_files(path: &Path, out: &mut Vec<std::path::PathBuf>) {
    if path.is_dir() {
        for entry in std::fs::read_dir(path).unwrap() {
            rust_files(&entry.unwrap().path(), out);
        }
    } else if path.extension().is_some_and(|e| e == "rs") {
        out.push(path.to_path_buf());
    }
}

/// The top-level modules named by `crate::x` in the code (not comments) of `text`.
fn named_modules(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            let tail = &rest[at + "crate::".len()..];
            let name: String = tail
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            // `crate::Engine` and the like are the root's re-exports of the core.
            if name.chars().next().is_some_and(|c| c.is_ascii_lowercase()) {
                names.insert(name);
            }
            rest = tail;
        }
    }
    names
}

#[test]
fn every_module_names_only_the_layers_below_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut wrong = Vec::new();
    let mut checked = 0;
    for (module, allowed) in ALLOWED {
        let mut files = Vec::new();
        for path in [src.join(module), src.join(format!("{module}.rs"))] {
            if path.exists() {
                rust_files(&path, &mut files);
            }
        }
        assert!(!files.is_empty(), "no source for module {module}");
        for file in files {
            checked += 1;
            let text = std::fs::read_to_string(&file).unwrap();
            for name in named_modules(&text) {
                if name != *module && !allowed.contains(&name.as_str()) {
                    wrong.push(format!(
                        "{}: names crate::{name}, which {module} may not use",
                        file.strip_prefix(&src).unwrap().display()
                    ));
                }
            }
        }
    }
    assert!(checked > 30, "only {checked} files checked");
    assert!(
        wrong.is_empty(),
        "arrows pointing the wrong way:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn the_check_sees_an_import() {
    let names = named_modules("use crate::daemon::worker::Worker; // crate::kernel\n");
    assert_eq!(names.into_iter().collect::<Vec<_>>(), ["daemon"]);
}
