//! The man pages, generated with clap_mangen from the real command line
//! (src/cli.rs): packaging/conntrackd.8 (the daemon, its options, the list
//! of subcommands) and packaging/conntrackd-SUBCOMMAND.8 for each
//! subcommand, installed by the Debian package (`man conntrackd`). The test
//! fails when a committed page differs from what the clap definitions
//! generate, is missing, or belongs to no subcommand. Regenerate with
//!
//!     UPDATE_GOLDEN=1 cargo test --test manpage
//!
//! which writes the pages (and removes stale ones) and then fails on
//! purpose (it compared nothing); review `git diff packaging/`, then rerun
//! without it.

use clap::CommandFactory;
use std::path::{Path, PathBuf};

const REGENERATE: &str = "regenerate with `UPDATE_GOLDEN=1 cargo test --test manpage`, review \
                          git diff packaging/, then rerun without UPDATE_GOLDEN";

fn updating() -> bool {
    std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| v != "0" && !v.is_empty())
}

fn packaging() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging")
}

/// What the main page says beyond the clap definitions.
const FILES: &str = r#".SH FILES
.TP
\fI/etc/conntrackd/rules.toml\fR
The rules file when \fB\-\-rules\fR is not given (the package installs it). A file of the current directory is never read: from a source checkout, pass \fB\-\-rules rules/default.toml\fR.
.TP
\fI/run/conntrackd/control\fR
The control socket of \fBstats\fR, \fBflows\fR, \fBkill\fR, \fBflush\fR and \fBreload\fR (\fI$RUNTIME_DIRECTORY/control\fR under systemd).
.TP
\fI/var/lib/conntrackd/table\fR
The tracked connections across restarts: under systemd \fI$STATE_DIRECTORY/table\fR, else this file when run as root; \fB\-\-state\-file\fR names another, \fB\-\-state\-file ""\fR none.
.SH SEE ALSO
\fBiptables\fR(8), \fBip6tables\fR(8), and /usr/share/doc/conntrackd\-fw/README.md, which explains the rules file, the hooks and the counters.
"#;

/// Every page: (file name, roff), the main page last.
fn pages() -> Vec<(String, String)> {
    // As clap_mangen::generate_to: no page for clap's own `help` subcommand.
    let mut cli = conntrackd::cli::Cli::command().disable_help_subcommand(true);
    cli.build();
    let mut pages = Vec::new();
    add_pages(&cli, &mut pages);
    let main = pages.last_mut().expect("the main page");
    main.1.push_str(FILES);
    pages
}

/// The page of `cmd` after those of its visible subcommands.
fn add_pages(cmd: &clap::Command, pages: &mut Vec<(String, String)>) {
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        add_pages(sub, pages);
    }
    // Section 8: a daemon and its administration commands (/usr/sbin).
    let man = clap_mangen::Man::new(cmd.clone())
        .section("8")
        .source(format!("conntrackd {}", env!("CARGO_PKG_VERSION")));
    let mut roff = Vec::new();
    man.render(&mut roff).expect("render a man page");
    pages.push((
        man.get_filename(),
        String::from_utf8(roff).expect("UTF-8 roff"),
    ));
}

/// The man pages committed in packaging/.
fn committed() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(packaging())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("conntrackd") && n.ends_with(".8"))
        .collect();
    names.sort();
    names
}

#[test]
fn man_pages_match_the_command_line() {
    let pages = pages();
    let stale: Vec<String> = committed()
        .into_iter()
        .filter(|n| !pages.iter().any(|(name, _)| name == n))
        .collect();
    if updating() {
        let mut written = Vec::new();
        for (name, roff) in &pages {
            let path = packaging().join(name);
            let changed = std::fs::read_to_string(&path).ok().as_deref() != Some(roff.as_str());
            std::fs::write(&path, roff).unwrap();
            written.push(format!(
                "{name} ({})",
                if changed { "changed" } else { "unchanged" }
            ));
        }
        for name in &stale {
            std::fs::remove_file(packaging().join(name)).unwrap();
            written.push(format!("{name} (removed)"));
        }
        panic!(
            "updated packaging/: {}; review git diff packaging/, then rerun without \
             UPDATE_GOLDEN (an updating run compares nothing)",
            written.join(", ")
        );
    }
    let mut wrong = Vec::new();
    for (name, roff) in &pages {
        match std::fs::read_to_string(packaging().join(name)) {
            Ok(page) if page == *roff => {}
            Ok(_) => wrong.push(format!("packaging/{name} differs from src/cli.rs")),
            Err(e) => wrong.push(format!("packaging/{name}: {e}")),
        }
    }
    for name in &stale {
        wrong.push(format!("packaging/{name} belongs to no subcommand"));
    }
    assert!(
        wrong.is_empty(),
        "the man pages do not match the command line:\n  {}\n{REGENERATE}",
        wrong.join("\n  ")
    );
}

/// What an operator looks for is on the pages, so that a generator change
/// that loses it fails here and not only as a diff.
#[test]
fn the_pages_document_the_commands_and_their_options() {
    let pages = pages();
    let page = |name: &str| {
        &pages
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("no {name}"))
            .1
    };
    let main = page("conntrackd.8");
    assert!(main.contains(".TH conntrackd 8"), "{main}");
    for want in [
        "\\-\\-rules",
        "\\-\\-install\\-iptables",
        "/etc/conntrackd/rules.toml",
        "Without a subcommand, runs the daemon",
    ] {
        assert!(main.contains(want), "conntrackd.8 lacks {want:?}");
    }
    // Each visible subcommand has its page, named on the main page.
    let subcommands: Vec<String> = conntrackd::cli::Cli::command()
        .get_subcommands()
        .filter(|s| !s.is_hide_set())
        .map(|s| s.get_name().to_string())
        .collect();
    assert!(subcommands.iter().any(|s| s == "check"));
    for sub in &subcommands {
        let roff = sub.replace('-', "\\-");
        assert!(main.contains(&format!("conntrackd\\-{roff}(8)")), "{sub}");
        let p = page(&format!("conntrackd-{sub}.8"));
        assert!(p.contains(&format!(".TH conntrackd-{sub} 8")), "{p}");
    }
    assert!(page("conntrackd-replay.8").contains("\\-\\-checksums"));
    assert!(page("conntrackd-check.8").contains("\\-\\-rules"));
}
