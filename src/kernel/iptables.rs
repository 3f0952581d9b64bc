//! `--install-iptables`: conntrackd's own chain in the filter table, for IPv4
//! and IPv6, installed and removed atomically with `iptables-restore --noflush`.
//!
//! Installed (for queues 0-1, fail-open, hook FORWARD):
//!
//! ```text
//! *filter
//! :CONNTRACKD - [0:0]
//! -A CONNTRACKD -j NFQUEUE --queue-balance 0:1 --queue-bypass
//! -I FORWARD 1 -j CONNTRACKD
//! COMMIT
//! ```
//!
//! The jump is inserted first in each hook chain so that conntrackd sees every
//! packet. An accept verdict ends the traversal of that chain (as `ACCEPT`
//! does): rules after the jump only see what conntrackd does not queue.
//!
//! The answers to rejected packets (`action = "reject"`), which conntrackd
//! sends from this host through a raw socket, traverse OUTPUT, not FORWARD:
//! with FORWARD (the default hook) or INPUT hooked they are never queued back to
//! conntrackd. With OUTPUT hooked they would be, and dropped there as packets
//! of no connection (a RST, an ICMP error); the daemon warns at start.

use anyhow::{bail, Context as _};
use std::io::{Read as _, Write as _};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    /// The family's iptables command: `iptables` or `ip6tables`.
    pub fn command(self) -> &'static str {
        self.iptables()
    }

    fn iptables(self) -> &'static str {
        match self {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        }
    }

    fn restore(self) -> &'static str {
        match self {
            Family::V4 => "iptables-restore",
            Family::V6 => "ip6tables-restore",
        }
    }

    fn save(self) -> &'static str {
        match self {
            Family::V4 => "iptables-save",
            Family::V6 => "ip6tables-save",
        }
    }

    /// nftables' name of the family's filter table.
    fn nft_family(self) -> &'static str {
        match self {
            Family::V4 => "ip",
            Family::V6 => "ip6",
        }
    }
}

/// A table (`filter`, `mangle`) as `iptables-save` prints it: `Some("")` when
/// there is no such table (`iptables-save -t filter` would print an empty one
/// either way with iptables-nft), `None` if iptables-save fails.
fn save_table(family: Family, table: &str) -> Option<String> {
    let start = format!("*{table}");
    let out = run(&mut Command::new(family.save()), "").ok()?;
    if !out.status.success() {
        return None;
    }
    let text = out.stdout;
    // Tables are printed from `*name` to `COMMIT`.
    let mut filter = String::new();
    let mut inside = false;
    for line in text.lines() {
        if line.starts_with('*') {
            inside = line == start;
        }
        if inside {
            filter.push_str(line);
            filter.push('\n');
            if line == "COMMIT" {
                inside = false;
            }
        }
    }
    Some(filter)
}

/// Whether a saved filter table holds nothing but built-in chains with the
/// ACCEPT policy (what iptables-nft creates on first use).
#[cfg(test)]
fn is_pristine(save: &str) -> bool {
    is_pristine_table(save, "*filter")
}

fn is_pristine_table(save: &str, start: &str) -> bool {
    save.lines().all(|l| {
        l.is_empty()
            || l.starts_with('#')
            || l == start
            || l == "COMMIT"
            || (l.starts_with(':') && l.contains(" ACCEPT"))
    }) && save.lines().any(|l| l == start)
}

/// What to install.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Spec {
    pub chain: String,
    /// Built-in chains of the filter table that jump to `chain`.
    pub hooks: Vec<String>,
    pub first_queue: u16,
    pub last_queue: u16,
    /// Add `--queue-bypass`: accept when no program is bound to the queue.
    pub queue_bypass: bool,
    /// Hand-off mode's mark bit(s): save them from the packet mark to the
    /// connmark (mangle POSTROUTING), and accept TCP packets without SYN,
    /// FIN or RST whose connmark has them before queueing.
    pub handoff_mark: Option<u32>,
    /// Hand-off mode with the SYN proxy: a SYNPROXY rule after the NFQUEUE
    /// rule. It is never reached (NFQUEUE ends the chain); adding it
    /// registers the kernel's SYN proxy hooks, which rewrite the timestamps
    /// of proxied connections handed to the kernel. Only when every hook is
    /// FORWARD or INPUT (the target's only hooks).
    pub synproxy_hooks: bool,
}

/// The never-reached rule of [`Spec::synproxy_hooks`].
const SYNPROXY_HOOKS_RULE: &str = "-p tcp -m comment --comment \"never reached: registers the SYN proxy hooks for proxied connections handed off\" -j SYNPROXY";

impl Spec {
    /// Checks names and the queue list (`--queue-balance` needs a contiguous range).
    pub fn new(
        chain: &str,
        hooks: &[String],
        queues: &[u16],
        queue_bypass: bool,
    ) -> anyhow::Result<Spec> {
        let valid_name = !chain.is_empty()
            && chain.len() <= 28
            && chain
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !valid_name {
            bail!("iptables chain name {chain:?}: use 1 to 28 letters, digits, '_' or '-'");
        }
        if matches!(
            chain,
            "INPUT" | "OUTPUT" | "FORWARD" | "PREROUTING" | "POSTROUTING"
        ) {
            bail!("iptables chain name {chain:?} is a built-in chain");
        }
        let mut normalized = Vec::new();
        for h in hooks {
            let h = h.trim().to_ascii_uppercase();
            if !matches!(h.as_str(), "FORWARD" | "INPUT" | "OUTPUT") {
                bail!("hook {h:?}: expected FORWARD, INPUT or OUTPUT");
            }
            if !normalized.contains(&h) {
                normalized.push(h);
            }
        }
        if normalized.is_empty() {
            bail!("install_iptables needs at least one hook (FORWARD, INPUT or OUTPUT)");
        }
        let (first, last) = match (queues.first(), queues.last()) {
            (Some(f), Some(l)) => (*f, *l),
            _ => bail!("no queue to install a rule for"),
        };
        if (last - first) as usize + 1 != queues.len() {
            bail!(
                "install_iptables needs a contiguous queue range such as 0-3 \
                 (--queue-balance {first}:{last} would also use queues nobody serves)"
            );
        }
        Ok(Spec {
            chain: chain.to_string(),
            hooks: normalized,
            first_queue: first,
            last_queue: last,
            queue_bypass,
            handoff_mark: None,
            synproxy_hooks: false,
        })
    }

    /// Whether the script carries [`Self::synproxy_hooks`]'s rule.
    pub fn has_synproxy_hooks(&self) -> bool {
        self.synproxy_hooks && self.hooks.iter().all(|h| h == "FORWARD" || h == "INPUT")
    }

    /// The NFQUEUE target's arguments.
    pub fn target(&self) -> String {
        let mut t = if self.first_queue == self.last_queue {
            format!("NFQUEUE --queue-num {}", self.first_queue)
        } else {
            format!(
                "NFQUEUE --queue-balance {}:{}",
                self.first_queue, self.last_queue
            )
        };
        if self.queue_bypass {
            t.push_str(" --queue-bypass");
        }
        t
    }

    /// Hand-off mode: the filter rule that lets handed-off connections' packets
    /// through before the NFQUEUE rule.
    fn handoff_accept_rule(&self, m: u32) -> String {
        format!("-p tcp --tcp-flags SYN,FIN,RST NONE -m connmark --mark {m:#x}/{m:#x} -j ACCEPT",)
    }

    /// Hand-off mode: the mangle POSTROUTING rules. The first saves the
    /// verdict's mark bit to the connmark; the second clears it again once a
    /// FIN or RST (always queued, so accepted by conntrackd) passed, so that
    /// the rest of the teardown (the last ACKs) is queued too and the engine
    /// follows the connection to TIME_WAIT, from where a SYN may reopen it.
    fn handoff_mangle_rules(m: u32) -> [String; 2] {
        [
            format!(
                "-m mark --mark {m:#x}/{m:#x} -j CONNMARK --save-mark --nfmask {m:#x} --ctmask {m:#x}"
            ),
            format!(
                "-p tcp -m tcp ! --tcp-flags FIN,RST NONE -j CONNMARK --and-mark {:#x}",
                !m
            ),
        ]
    }

    /// The `iptables-restore --noflush` input that installs everything.
    pub fn install_script(&self) -> String {
        self.install_script_keeping(&[])
    }

    /// The same, for a chain that exists with jumps from `kept` already:
    /// the chain's declaration replaces its rules (`--noflush` flushes a
    /// declared chain, in the same transaction), and only missing jumps are
    /// inserted.
    pub fn install_script_keeping(&self, kept: &[String]) -> String {
        let mut s = format!("*filter\n:{c} - [0:0]\n", c = self.chain);
        if let Some(m) = self.handoff_mark {
            s.push_str(&format!(
                "-A {} {}\n",
                self.chain,
                self.handoff_accept_rule(m)
            ));
        }
        s.push_str(&format!(
            "-A {c} -j {t}\n",
            c = self.chain,
            t = self.target()
        ));
        if self.has_synproxy_hooks() {
            s.push_str(&format!("-A {} {SYNPROXY_HOOKS_RULE}\n", self.chain));
        }
        for h in self.hooks.iter().filter(|h| !kept.contains(h)) {
            s.push_str(&format!("-I {h} 1 -j {}\n", self.chain));
        }
        s.push_str("COMMIT\n");
        if let Some(m) = self.handoff_mark {
            let [save, clear] = Self::handoff_mangle_rules(m);
            s.push_str(&format!(
                "*mangle\n-I POSTROUTING 1 {save}\n-I POSTROUTING 2 {clear}\nCOMMIT\n"
            ));
        }
        s
    }

    /// The `iptables-restore --noflush` input that removes exactly that.
    pub fn remove_script(&self) -> String {
        let mut s = String::from("*filter\n");
        for h in &self.hooks {
            s.push_str(&format!("-D {h} -j {}\n", self.chain));
        }
        s.push_str(&format!("-F {c}\n-X {c}\nCOMMIT\n", c = self.chain));
        if let Some(m) = self.handoff_mark {
            let [save, clear] = Self::handoff_mangle_rules(m);
            s.push_str(&format!(
                "*mangle\n-D POSTROUTING {save}\n-D POSTROUTING {clear}\nCOMMIT\n"
            ));
        }
        s
    }
}

/// How long one iptables command may take before it is killed: a hung
/// iptables must not hang conntrackd's start or shutdown with it.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// What a command printed.
struct Output {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

/// Runs `cmd` with `input` on stdin, or fails if it cannot run or outlives
/// [`COMMAND_TIMEOUT`] (then it is killed).
fn run(cmd: &mut Command, input: &str) -> anyhow::Result<Output> {
    let name = format!("{:?}", cmd.get_program());
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {name}"))?;
    let mut stdin = child.stdin.take().expect("piped stdin");
    let input = input.to_string();
    // Writer and reader threads: a full pipe must not block us.
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let read_all = |mut pipe: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            String::from_utf8_lossy(&bytes).into_owned()
        })
    };
    let stdout = read_all(Box::new(child.stdout.take().expect("piped stdout")));
    let stderr = read_all(Box::new(child.stderr.take().expect("piped stderr")));
    let deadline = Instant::now() + COMMAND_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{name} did not finish within {COMMAND_TIMEOUT:?} and was killed");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let _ = writer.join();
    Ok(Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    })
}

fn restore(family: Family, script: &str) -> anyhow::Result<()> {
    let out = run(
        Command::new(family.restore()).args(["--noflush", "--wait", "5"]),
        script,
    )?;
    if !out.status.success() {
        bail!(
            "{} failed ({}): {}\ninput was:\n{script}",
            family.restore(),
            out.status,
            out.stderr.trim()
        );
    }
    Ok(())
}

fn iptables(family: Family, args: &[&str]) -> anyhow::Result<bool> {
    iptables_t(family, "filter", args)
}

fn iptables_t(family: Family, table: &str, args: &[&str]) -> anyhow::Result<bool> {
    let out = run(
        Command::new(family.iptables())
            .args(["-w", "5", "-t", table])
            .args(args),
        "",
    )?;
    Ok(out.status.success())
}

/// Whether the kernel has IPv6 (an AF_INET6 socket can be created; this
/// works where /proc/sys is hidden, as under systemd's ProtectProc).
fn ipv6_enabled() -> bool {
    // SAFETY: plain socket(2); the fd is closed right away.
    let fd = unsafe { libc::socket(libc::AF_INET6, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return false;
    }
    // SAFETY: fd is ours.
    unsafe { libc::close(fd) };
    true
}

/// Removes a chain of that name left by an instance that did not exit cleanly
/// (SIGKILL, crash): the jumps from the built-in chains, then the chain.
/// Returns whether there was one.
fn remove_stale(family: Family, chain: &str, handoff_mark: Option<u32>) -> anyhow::Result<bool> {
    let mut found = false;
    if let Some(m) = handoff_mark {
        found = remove_handoff_mangle(family, m)?;
    }
    if !iptables(family, &["-S", chain])? {
        return Ok(found);
    }
    for hook in ["FORWARD", "INPUT", "OUTPUT"] {
        for _ in 0..64 {
            if !iptables(family, &["-D", hook, "-j", chain])? {
                break;
            }
        }
    }
    iptables(family, &["-F", chain])?;
    if !iptables(family, &["-X", chain])? {
        bail!(
            "{}: chain {chain} exists and cannot be deleted (is it referenced by other rules?)",
            family.iptables()
        );
    }
    Ok(true)
}

/// Removes hand-off's mangle rules for mark `m` (each as often as it is
/// there); whether there were any.
fn remove_handoff_mangle(family: Family, m: u32) -> anyhow::Result<bool> {
    let mut found = false;
    for rule in Spec::handoff_mangle_rules(m) {
        let args: Vec<&str> = ["-D", "POSTROUTING"]
            .into_iter()
            .chain(rule.split(' '))
            .collect();
        for _ in 0..64 {
            if !iptables_t(family, "mangle", &args)? {
                break;
            }
            found = true;
        }
    }
    Ok(found)
}

/// Prepares to take over a chain named as `spec`'s left by an earlier run:
/// removes its jumps from built-in chains `spec` does not hook and its
/// hand-off mangle rules (inserted again by the install script). Returns the
/// hooks that jump to it already, or None when there is no such chain.
fn take_over(family: Family, spec: &Spec) -> anyhow::Result<Option<Vec<String>>> {
    let chain = spec.chain.as_str();
    if !iptables(family, &["-S", chain])? {
        // No chain; hand-off's mangle rules may still be there.
        remove_stale(family, chain, spec.handoff_mark)?;
        return Ok(None);
    }
    let mut kept = Vec::new();
    for hook in ["FORWARD", "INPUT", "OUTPUT"] {
        let wanted = spec.hooks.iter().any(|h| h.eq_ignore_ascii_case(hook));
        if wanted && iptables(family, &["-C", hook, "-j", chain])? {
            kept.push(hook.to_string());
            continue;
        }
        for _ in 0..64 {
            if !iptables(family, &["-D", hook, "-j", chain])? {
                break;
            }
        }
    }
    if let Some(m) = spec.handoff_mark {
        remove_handoff_mangle(family, m)?;
    }
    // The spec's hooks as written (the script names them so).
    Ok(Some(
        spec.hooks
            .iter()
            .filter(|h| kept.iter().any(|k| k.eq_ignore_ascii_case(h)))
            .cloned()
            .collect(),
    ))
}

/// `conntrackd uninstall-iptables`: removes chain `chain` (and hand-off's
/// mangle rules for `handoff_mark`) for IPv4 and IPv6; the families it was
/// found in.
pub fn uninstall(chain: &str, handoff_mark: Option<u32>) -> anyhow::Result<Vec<Family>> {
    let mut found = Vec::new();
    let families: &[Family] = if ipv6_enabled() {
        &[Family::V4, Family::V6]
    } else {
        &[Family::V4]
    };
    for &family in families {
        if remove_stale(family, chain, handoff_mark)? {
            found.push(family);
        }
    }
    Ok(found)
}

/// The installed rules; [`Installed::remove`] (or drop) takes them out again.
#[derive(Debug)]
pub struct Installed {
    spec: Spec,
    families: Vec<Family>,
    /// Tables (filter, mangle) that did not exist before (iptables-nft
    /// creates them, with their built-in chains, on first use).
    created_table: Vec<(Family, &'static str)>,
}

impl Installed {
    pub fn families(&self) -> &[Family] {
        &self.families
    }

    /// The kernel's SYN proxy hooks are registered (see [`Spec::synproxy_hooks`]).
    pub fn synproxy_hooks(&self) -> bool {
        self.spec.has_synproxy_hooks()
    }

    /// Installs for IPv4, and for IPv6 unless the kernel has no IPv6.
    pub fn install(spec: Spec) -> anyhow::Result<Installed> {
        let mut installed = Installed {
            spec,
            families: Vec::new(),
            created_table: Vec::new(),
        };
        let families: &[Family] = if ipv6_enabled() {
            &[Family::V4, Family::V6]
        } else {
            tracing::warn!("the kernel has no IPv6: installing the iptables rule for IPv4 only");
            &[Family::V4]
        };
        for &family in families {
            // A chain left by an earlier run (a fail-closed stop leaves it on
            // purpose; a crash by accident) is taken over, not removed and
            // added again: its rules are replaced in one transaction and its
            // jumps stay, so traffic is never forwarded unqueued meanwhile.
            let kept_hooks = take_over(family, &installed.spec)?;
            if let Some(kept) = &kept_hooks {
                tracing::warn!(
                    chain = installed.spec.chain.as_str(),
                    "{}: took over chain {} left by an earlier run (a fail-closed stop, or \
                     one that did not exit cleanly); jumps kept from {}",
                    family.iptables(),
                    installed.spec.chain,
                    if kept.is_empty() {
                        "none".to_string()
                    } else {
                        kept.join(",")
                    }
                );
            }
            let mut tables = vec!["filter"];
            if installed.spec.handoff_mark.is_some() {
                tables.push("mangle");
            }
            for table in tables {
                if save_table(family, table).is_some_and(|t| t.trim().is_empty()) {
                    installed.created_table.push((family, table));
                }
            }
            // On error, `installed` is dropped and removes what was installed so far.
            let kept = kept_hooks.unwrap_or_default();
            let script = installed.spec.install_script_keeping(&kept);
            match restore(family, &script) {
                Err(e) if installed.spec.has_synproxy_hooks() => {
                    // A kernel without the SYNPROXY target: proxied
                    // connections with timestamps stay in userspace.
                    tracing::warn!(
                        "{}: the SYNPROXY rule that registers the kernel's SYN proxy hooks was \
                         refused ({e:#}); proxied connections that use timestamps are not handed \
                         off",
                        family.iptables()
                    );
                    installed.spec.synproxy_hooks = false;
                    // What the failed script may have committed (its filter
                    // part, when the mangle part failed) is taken over again.
                    let kept = take_over(family, &installed.spec)?.unwrap_or_default();
                    restore(family, &installed.spec.install_script_keeping(&kept))?;
                }
                other => other?,
            }
            installed.families.push(family);
        }
        Ok(installed)
    }

    /// Removes the rules; errors are reported for every family tried.
    pub fn remove(mut self) -> anyhow::Result<()> {
        self.remove_all()
    }

    /// Leaves the rules in place (a fail-closed stop: with no program bound
    /// to the queue and no `--queue-bypass`, the kernel drops what the chain
    /// queues). The next start takes them over; `conntrackd
    /// uninstall-iptables` removes them.
    pub fn keep(mut self) {
        self.families.clear();
    }

    fn remove_all(&mut self) -> anyhow::Result<()> {
        let mut errors = Vec::new();
        for family in std::mem::take(&mut self.families) {
            if let Err(e) = restore(family, &self.spec.remove_script()) {
                // The atomic removal fails as a whole if someone changed our
                // rules meanwhile: take out whatever is left, one by one.
                match remove_stale(family, &self.spec.chain, self.spec.handoff_mark) {
                    Ok(_) => tracing::warn!("{e:#}; removed the remaining rules one by one"),
                    Err(e2) => errors.push(format!("{e:#}; then: {e2:#}")),
                }
            }
            for &(f, table) in &self.created_table {
                if f == family {
                    remove_created_table(family, table);
                }
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            bail!("removing the iptables rules: {}", errors.join("; "))
        }
    }
}

/// With iptables-nft, installing into a namespace or host that had no
/// filter table created one; once it is back to empty built-in chains,
/// delete it (with `nft`, when present) so that the ruleset is as it was.
fn remove_created_table(family: Family, table: &str) {
    let start = format!("*{table}");
    if !save_table(family, table).is_some_and(|t| is_pristine_table(&t, &start)) {
        return;
    }
    let deleted = run(
        Command::new("nft").args(["delete", "table", family.nft_family(), table]),
        "",
    )
    .is_ok_and(|o| o.status.success());
    if !deleted {
        tracing::info!(
            "{}: the filter table conntrackd's chain needed did not exist before; its empty \
             built-in chains remain (install nftables' `nft` to have them removed)",
            family.iptables()
        );
    }
}

impl Drop for Installed {
    fn drop(&mut self) {
        if !self.families.is_empty() {
            if let Err(e) = self.remove_all() {
                tracing::error!("{e:#}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts() {
        let s = Spec::new("CONNTRACKD", &["forward".into()], &[0, 1], true).unwrap();
        assert_eq!(
            s.install_script(),
            "*filter\n:CONNTRACKD - [0:0]\n\
             -A CONNTRACKD -j NFQUEUE --queue-balance 0:1 --queue-bypass\n\
             -I FORWARD 1 -j CONNTRACKD\nCOMMIT\n"
        );
        assert_eq!(
            s.remove_script(),
            "*filter\n-D FORWARD -j CONNTRACKD\n-F CONNTRACKD\n-X CONNTRACKD\nCOMMIT\n"
        );
        let s = Spec::new("X", &["INPUT".into(), "OUTPUT".into()], &[3], false).unwrap();
        assert_eq!(s.target(), "NFQUEUE --queue-num 3");
        assert!(s
            .install_script()
            .contains("-I INPUT 1 -j X\n-I OUTPUT 1 -j X\n"));
    }

    #[test]
    fn the_synproxy_hooks_rule_follows_the_nfqueue_rule_and_only_where_it_may() {
        let mut s = Spec::new("CONNTRACKD", &["forward".into()], &[0], false).unwrap();
        s.synproxy_hooks = true;
        let script = s.install_script();
        let queue = script.find("-j NFQUEUE").unwrap();
        let hooks = script.find("-j SYNPROXY").expect("the hooks rule");
        assert!(
            queue < hooks,
            "never reached: after the NFQUEUE rule\n{script}"
        );
        assert!(s.has_synproxy_hooks());
        // Removed with the chain.
        assert!(s.remove_script().contains("-F CONNTRACKD\n-X CONNTRACKD"));
        // The SYNPROXY target is refused in OUTPUT.
        let mut out = Spec::new("C", &["FORWARD".into(), "OUTPUT".into()], &[0], false).unwrap();
        out.synproxy_hooks = true;
        assert!(!out.has_synproxy_hooks());
        assert!(!out.install_script().contains("SYNPROXY"));
    }

    #[test]
    fn pristine_tables() {
        let empty = "# Generated\n*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [3:180]\n\
                     :OUTPUT ACCEPT [0:0]\nCOMMIT\n# Completed\n";
        assert!(is_pristine(empty));
        assert!(!is_pristine(""));
        assert!(!is_pristine(
            &empty.replace(":FORWARD ACCEPT", ":FORWARD DROP")
        ));
        assert!(!is_pristine(
            &empty.replace("COMMIT", "-A FORWARD -j ACCEPT\nCOMMIT")
        ));
        assert!(!is_pristine(&empty.replace("COMMIT", ":X - [0:0]\nCOMMIT")));
    }

    #[test]
    fn refuses_bad_specs() {
        let f = vec!["FORWARD".to_string()];
        assert!(Spec::new("CONNTRACKD", &f, &[0, 2], true).is_err());
        assert!(Spec::new("FORWARD", &f, &[0], true).is_err());
        assert!(Spec::new("a b", &f, &[0], true).is_err());
        assert!(Spec::new("C", &["PREROUTING".into()], &[0], true).is_err());
        assert!(Spec::new("C", &[], &[0], true).is_err());
    }
}
