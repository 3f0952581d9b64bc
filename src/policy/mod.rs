//! The policy: which new connections are allowed.
//!
//! An ordered list of named rules, first match wins, else the default action.
//! Rules decide only new connections; packets of a tracked connection follow
//! its state. The TOML schema ([`PolicySpec`], [`RuleSpec`]) is compiled into a
//! [`Policy`] once, so matching does no parsing and no allocation.

mod values;

use crate::conntrack::sources::{Rate, SourceLimits};
use crate::wire::{Packet, Transport};
use serde::Deserialize;
use std::fmt;
pub use values::{one_or_many_strings, Cidr, List, PortRange, ProtoSpec};

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Accept,
    Drop,
    /// Drop, and answer the sender: a TCP RST, or an ICMP/ICMPv6 port
    /// unreachable for other protocols (rate-limited; see `wire::reject`).
    Reject,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::Accept => "accept",
            Action::Drop => "drop",
            Action::Reject => "reject",
        })
    }
}

/// `[policy]`
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySpec {
    /// What happens to a new connection no rule matches.
    pub default: Action,
}

/// One `[[rule]]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    pub name: String,
    pub action: Action,
    #[serde(default)]
    pub proto: Option<ProtoSpec>,
    #[serde(default)]
    pub src: List<Cidr>,
    #[serde(default)]
    pub dst: List<Cidr>,
    #[serde(default)]
    pub src_ports: List<PortRange>,
    #[serde(default)]
    pub dst_ports: List<PortRange>,
    /// Input interface; a trailing `+` matches a prefix (`eth+`), as in iptables.
    #[serde(default)]
    pub in_iface: Option<String>,
    #[serde(default)]
    pub out_iface: Option<String>,
    #[serde(default)]
    pub icmp_type: Option<u8>,
    /// Log (rate-limited) each new connection this rule decides.
    #[serde(default)]
    pub log: bool,
    /// Most connections one source address may hold through rules with
    /// source limits (pf's `max-src-conn`).
    #[serde(default)]
    pub max_src_conn: Option<u32>,
    /// `"N/S"`: most new connections one source may open in S seconds
    /// (pf's `max-src-conn-rate`).
    #[serde(default)]
    pub max_src_conn_rate: Option<String>,
    /// Seconds a source that exceeds one of those limits is refused every
    /// new connection (pf's `overload`); 0: only the one over the limit.
    #[serde(default)]
    pub overload_secs: u32,
    /// Answer this rule's new TCP connections with SYN cookies and open them
    /// to the server only once the client proved its address (the SYN
    /// proxy; `[engine] synproxy` turns it on for every rule).
    #[serde(default)]
    pub synproxy: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Iface {
    name: String,
    prefix: bool,
}

impl Iface {
    fn new(spec: &str) -> Iface {
        match spec.strip_suffix('+') {
            Some(p) => Iface {
                name: p.to_string(),
                prefix: true,
            },
            None => Iface {
                name: spec.to_string(),
                prefix: false,
            },
        }
    }

    fn matches(&self, iface: Option<&str>) -> bool {
        match iface {
            Some(i) if self.prefix => i.starts_with(&self.name),
            Some(i) => i == self.name,
            None => false,
        }
    }
}

/// The rules added, removed, changed and moved by a reload (by name), and
/// the default action's change.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PolicyDiff {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
    pub moved: Vec<String>,
    pub default: Option<(Action, Action)>,
}

impl fmt::Display for PolicyDiff {
    /// `added web, ssh; changed dns; default drop -> reject`, or `no change`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        for (what, names) in [
            ("added", &self.added),
            ("removed", &self.removed),
            ("changed", &self.changed),
            ("moved", &self.moved),
        ] {
            if !names.is_empty() {
                parts.push(format!("{what} {}", names.join(", ")));
            }
        }
        if let Some((old, new)) = self.default {
            parts.push(format!("default {old} -> {new}"));
        }
        if parts.is_empty() {
            f.write_str("no change")
        } else {
            f.write_str(&parts.join("; "))
        }
    }
}

/// A compiled rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub name: String,
    pub action: Action,
    pub log: bool,
    proto: Option<u8>,
    src: Vec<Cidr>,
    dst: Vec<Cidr>,
    src_ports: Vec<PortRange>,
    dst_ports: Vec<PortRange>,
    in_iface: Option<Iface>,
    out_iface: Option<Iface>,
    icmp_type: Option<u8>,
    /// Per-source limits of the connections this rule admits.
    pub source_limits: SourceLimits,
    /// Its TCP connections go through the SYN proxy.
    pub synproxy: bool,
}

/// Interfaces a packet crossed (names, as the rules use them).
#[derive(Clone, Copy, Debug, Default)]
pub struct Interfaces<'a> {
    pub input: Option<&'a str>,
    pub output: Option<&'a str>,
}

impl Rule {
    fn matches(&self, p: &Packet, ifaces: &Interfaces<'_>) -> bool {
        if let Some(proto) = self.proto {
            if p.protocol != proto {
                return false;
            }
        }
        if !self.src.is_empty() && !self.src.iter().any(|c| c.contains(p.src)) {
            return false;
        }
        if !self.dst.is_empty() && !self.dst.iter().any(|c| c.contains(p.dst)) {
            return false;
        }
        if !self.src_ports.is_empty() || !self.dst_ports.is_empty() {
            let Some((sp, dp)) = p.ports() else {
                return false;
            };
            if !self.src_ports.is_empty() && !self.src_ports.iter().any(|r| r.contains(sp)) {
                return false;
            }
            if !self.dst_ports.is_empty() && !self.dst_ports.iter().any(|r| r.contains(dp)) {
                return false;
            }
        }
        if let Some(i) = &self.in_iface {
            if !i.matches(ifaces.input) {
                return false;
            }
        }
        if let Some(i) = &self.out_iface {
            if !i.matches(ifaces.output) {
                return false;
            }
        }
        if let Some(t) = self.icmp_type {
            match p.transport {
                Transport::Icmp(icmp) if icmp.icmp_type == t => {}
                _ => return false,
            }
        }
        true
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.action, self.name)?;
        if let Some(p) = self.proto {
            write!(f, " proto={}", crate::wire::protocol_name(p))?;
        }
        let join = |v: &[String]| v.join(",");
        if !self.src.is_empty() {
            write!(
                f,
                " src={}",
                join(&self.src.iter().map(|c| c.to_string()).collect::<Vec<_>>())
            )?;
        }
        if !self.dst.is_empty() {
            write!(
                f,
                " dst={}",
                join(&self.dst.iter().map(|c| c.to_string()).collect::<Vec<_>>())
            )?;
        }
        if !self.src_ports.is_empty() {
            write!(
                f,
                " src_ports={}",
                join(
                    &self
                        .src_ports
                        .iter()
                        .map(|c| c.to_string())
                        .collect::<Vec<_>>()
                )
            )?;
        }
        if !self.dst_ports.is_empty() {
            write!(
                f,
                " dst_ports={}",
                join(
                    &self
                        .dst_ports
                        .iter()
                        .map(|c| c.to_string())
                        .collect::<Vec<_>>()
                )
            )?;
        }
        if let Some(i) = &self.in_iface {
            write!(f, " in={}{}", i.name, if i.prefix { "+" } else { "" })?;
        }
        if let Some(i) = &self.out_iface {
            write!(f, " out={}{}", i.name, if i.prefix { "+" } else { "" })?;
        }
        if let Some(t) = self.icmp_type {
            write!(f, " icmp_type={t}")?;
        }
        if self.log {
            write!(f, " log")?;
        }
        if self.synproxy {
            write!(f, " synproxy")?;
        }
        Ok(())
    }
}

/// The verdict of the policy on a new connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PolicyMatch {
    pub action: Action,
    /// Index of the matching rule; `None` for the default action.
    pub rule: Option<u16>,
    pub log: bool,
    /// The matching rule's per-source limits (off for the default action).
    pub source_limits: SourceLimits,
    /// The matching rule asks for the SYN proxy.
    pub synproxy: bool,
}

/// A compiled policy.
#[derive(Clone, Debug)]
pub struct Policy {
    pub default: Action,
    pub rules: Vec<Rule>,
    /// Which policy this is since the engine started (each `set_policy`
    /// counts one, wrapping): a connection remembers the generation of the
    /// rule index that admitted it, since a reload renumbers rules.
    pub generation: u16,
}

impl Policy {
    /// A policy that accepts every new connection (tracking stays strict).
    pub fn allow_all() -> Policy {
        Policy {
            default: Action::Accept,
            rules: Vec::new(),
            generation: 0,
        }
    }

    /// Compiles the spec; each error carries the byte offset it refers to.
    /// Every rule is checked, so that one bad rule does not hide another.
    pub fn compile(
        spec: &PolicySpec,
        rules: &[toml::Spanned<RuleSpec>],
    ) -> Result<Policy, Vec<(usize, String)>> {
        if rules.len() > u16::MAX as usize {
            return Err(vec![(0, "too many rules".into())]);
        }
        let mut compiled: Vec<Rule> = Vec::with_capacity(rules.len());
        let mut errors = Vec::new();
        for (i, spanned) in rules.iter().enumerate() {
            let at = spanned.span().start;
            let r = spanned.get_ref();
            let before = errors.len();
            let mut error = |message: String| errors.push((at, message));
            if r.name.trim().is_empty() {
                error("rule name must not be empty".into());
            }
            if rules[..i].iter().any(|o| o.get_ref().name == r.name) {
                error(format!("duplicate rule name {:?}", r.name));
            }
            let proto = r.proto.and_then(|p| p.number());
            let has_ports = !r.src_ports.0.is_empty() || !r.dst_ports.0.is_empty();
            if has_ports && !matches!(proto, Some(6 | 17)) {
                error(format!(
                    "rule {:?}: ports need proto = \"tcp\" or \"udp\"",
                    r.name
                ));
            }
            if r.icmp_type.is_some() && !matches!(proto, Some(1 | 58)) {
                error(format!(
                    "rule {:?}: icmp_type needs proto = \"icmp\" or \"icmpv6\"",
                    r.name
                ));
            }
            for iface in [&r.in_iface, &r.out_iface].into_iter().flatten() {
                if iface.is_empty() || iface.len() > 15 {
                    error(format!(
                        "rule {:?}: interface name {iface:?} must be 1 to 15 characters",
                        r.name
                    ));
                }
            }
            let rate = r.max_src_conn_rate.as_ref().and_then(|text| {
                let rate = parse_rate(text);
                if rate.is_none() {
                    error(format!(
                        "rule {:?}: max_src_conn_rate = {text:?}: expected \"N/S\", \
                         N connections in S seconds, both at least 1",
                        r.name
                    ));
                }
                rate
            });
            let limited = r.max_src_conn.is_some() || r.max_src_conn_rate.is_some();
            if r.overload_secs > 0 && !limited {
                error(format!(
                    "rule {:?}: overload_secs needs max_src_conn or max_src_conn_rate",
                    r.name
                ));
            }
            if r.synproxy && r.action != Action::Accept {
                error(format!(
                    "rule {:?}: synproxy = true needs action = \"accept\" (the proxy opens \
                     connections the rule accepts)",
                    r.name
                ));
            }
            if r.synproxy && proto.is_some_and(|p| p != 6) {
                error(format!(
                    "rule {:?}: synproxy = true applies to TCP only; this rule's proto is not tcp",
                    r.name
                ));
            }
            if errors.len() > before {
                continue;
            }
            let source_limits = SourceLimits {
                max_conn: r.max_src_conn,
                rate,
                overload_secs: r.overload_secs,
            };
            compiled.push(Rule {
                name: r.name.clone(),
                action: r.action,
                log: r.log,
                proto,
                src: r.src.0.clone(),
                dst: r.dst.0.clone(),
                src_ports: r.src_ports.0.clone(),
                dst_ports: r.dst_ports.0.clone(),
                in_iface: r.in_iface.as_deref().map(Iface::new),
                out_iface: r.out_iface.as_deref().map(Iface::new),
                icmp_type: r.icmp_type,
                source_limits,
                synproxy: r.synproxy,
            });
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Policy {
            default: spec.default,
            rules: compiled,
            generation: 0,
        })
    }

    /// Whether a rule or the default rejects (answers what it refuses).
    pub fn uses_reject(&self) -> bool {
        self.default == Action::Reject || self.rules.iter().any(|r| r.action == Action::Reject)
    }

    /// What changed from `old` to this policy, rule by rule (rules are
    /// told apart by name).
    pub fn diff(&self, old: &Policy) -> PolicyDiff {
        let find = |p: &Policy, name: &str| p.rules.iter().position(|r| r.name == name);
        let mut d = PolicyDiff {
            default: (old.default != self.default).then_some((old.default, self.default)),
            ..PolicyDiff::default()
        };
        for (i, rule) in self.rules.iter().enumerate() {
            match find(old, &rule.name) {
                None => d.added.push(rule.name.clone()),
                Some(j) if old.rules[j] != *rule => d.changed.push(rule.name.clone()),
                // Same rule, another place in the order: it may match other packets first.
                Some(j) if j != i => d.moved.push(rule.name.clone()),
                Some(_) => {}
            }
        }
        for rule in &old.rules {
            if find(self, &rule.name).is_none() {
                d.removed.push(rule.name.clone());
            }
        }
        d
    }

    /// Whether any rule names an interface (`in_iface`, `out_iface`).
    pub fn names_interfaces(&self) -> bool {
        self.rules
            .iter()
            .any(|r| r.in_iface.is_some() || r.out_iface.is_some())
    }

    /// Whether any rule asks for the SYN proxy.
    pub fn uses_synproxy(&self) -> bool {
        self.rules.iter().any(|r| r.synproxy)
    }

    /// Whether any rule limits its sources.
    pub fn limits_sources(&self) -> bool {
        self.rules.iter().any(|r| !r.source_limits.is_off())
    }

    /// First matching rule, else the default.
    pub fn evaluate(&self, packet: &Packet, ifaces: &Interfaces<'_>) -> PolicyMatch {
        for (i, rule) in self.rules.iter().enumerate() {
            if rule.matches(packet, ifaces) {
                return PolicyMatch {
                    action: rule.action,
                    rule: Some(i as u16),
                    log: rule.log,
                    source_limits: rule.source_limits,
                    synproxy: rule.synproxy,
                };
            }
        }
        PolicyMatch {
            action: self.default,
            source_limits: SourceLimits::OFF,
            rule: None,
            log: false,
            synproxy: false,
        }
    }

    pub fn rule_name(&self, index: u16) -> Option<&str> {
        self.rules.get(index as usize).map(|r| r.name.as_str())
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "policy: {} rules, default {}",
            self.rules.len(),
            self.default
        )?;
        for (i, r) in self.rules.iter().enumerate() {
            writeln!(f, "  {:>3}. {r}", i + 1)?;
        }
        Ok(())
    }
}

/// `"N/S"` with N, S >= 1.
fn parse_rate(text: &str) -> Option<Rate> {
    let (n, s) = text.split_once('/')?;
    let count: u32 = n.trim().parse().ok()?;
    let seconds: u32 = s.trim().parse().ok()?;
    (count >= 1 && seconds >= 1).then_some(Rate { count, seconds })
}
