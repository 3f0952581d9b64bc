//! The Grafana dashboard (packaging/grafana/conntrackd.json) queries only
//! what the daemon exports: every metric name its PromQL names, and every
//! label it matches on or groups by, is checked against the exposition the
//! metrics module itself encodes (`conntrackd::daemon::metrics`), not against
//! a list kept here. Needs no root.

use conntrackd::daemon::operations::metrics::{default_exposition, exported_names};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};

/// Labels Prometheus adds itself at scrape time.
const TARGET_LABELS: &[&str] = &["instance", "job"];

fn dashboard() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/packaging/grafana/conntrackd.json"
    );
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Every PromQL string of the dashboard: panel targets' `expr`, template
/// variables' `query` and `definition`.
fn queries(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            for (key, value) in map {
                match (key.as_str(), value) {
                    ("expr" | "query" | "definition", Value::String(s)) => out.push(s.clone()),
                    _ => queries(value, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|i| queries(i, out)),
        _ => {}
    }
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// A label matcher: `(label, operator, value)`.
type Matcher = (String, String, String);

/// `(metric, matchers)` of every `conntrackd_*` selector in `expr`.
fn selectors(expr: &str) -> Vec<(String, Vec<Matcher>)> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("conntrackd_") {
        let before = rest[..at].chars().last();
        let tail = &rest[at..];
        let end = tail.find(|c| !is_name_char(c)).unwrap_or(tail.len());
        let name = &tail[..end];
        rest = &tail[end..];
        if before.is_some_and(is_name_char) {
            continue; // part of a longer name
        }
        let mut matchers = Vec::new();
        if let Some(inner) = rest.strip_prefix('{') {
            let close = inner.find('}').expect("a closed label matcher");
            for m in inner[..close].split(',').filter(|m| !m.trim().is_empty()) {
                let op_at = m.find(['=', '!']).expect("a matcher operator");
                let op_len = if m[op_at..].starts_with("=~") || m[op_at..].starts_with("!") {
                    2
                } else {
                    1
                };
                let value = m[op_at + op_len..].trim().trim_matches('"');
                matchers.push((
                    m[..op_at].trim().to_string(),
                    m[op_at..op_at + op_len].to_string(),
                    value.to_string(),
                ));
            }
        }
        out.push((name.to_string(), matchers));
    }
    out
}

/// The labels of `by (...)` and `without (...)` clauses.
fn grouping_labels(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    for keyword in ["by (", "by(", "without (", "without("] {
        for (at, _) in expr.match_indices(keyword) {
            let inner = &expr[at + keyword.len()..];
            let close = inner.find(')').expect("a closed grouping");
            out.extend(inner[..close].split(',').map(|l| l.trim().to_string()));
        }
    }
    out
}

/// Each exported metric's labels and the values they take.
fn exported_labels() -> BTreeMap<String, BTreeMap<String, BTreeSet<String>>> {
    let mut out: BTreeMap<String, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    for line in default_exposition().lines().filter(|l| !l.starts_with('#')) {
        let series = line.rsplit_once(' ').expect("name value").0;
        let (name, labels) = series.split_once('{').unwrap_or((series, ""));
        let entry = out.entry(name.to_string()).or_default();
        for pair in labels
            .trim_end_matches('}')
            .split(',')
            .filter(|p| !p.is_empty())
        {
            let (k, v) = pair.split_once('=').expect("label=value");
            entry
                .entry(k.to_string())
                .or_default()
                .insert(v.trim_matches('"').to_string());
        }
    }
    out
}

#[test]
fn the_dashboard_queries_only_exported_metrics_and_labels() {
    let exported = exported_names();
    let labels = exported_labels();
    assert_eq!(
        exported,
        labels.keys().cloned().collect::<BTreeSet<_>>(),
        "two readings of one exposition"
    );
    let mut all = Vec::new();
    queries(&dashboard(), &mut all);
    let mut queried = BTreeSet::new();
    for expr in &all {
        let found = selectors(expr);
        let mut expr_labels = BTreeSet::new();
        for (name, matchers) in &found {
            assert!(
                exported.contains(name),
                "the dashboard queries {name}, which conntrackd does not export ({expr})"
            );
            queried.insert(name.clone());
            let known = &labels[name];
            expr_labels.extend(known.keys().cloned());
            for (label, op, value) in matchers {
                if TARGET_LABELS.contains(&label.as_str()) {
                    continue;
                }
                let values = known
                    .get(label)
                    .unwrap_or_else(|| panic!("{name} has no label {label} ({expr})"));
                if op == "=" {
                    assert!(
                        values.contains(value),
                        "{name}{{{label}=\"{value}\"}} is never exported ({expr}); \
                         values: {values:?}"
                    );
                }
            }
        }
        for label in grouping_labels(expr) {
            assert!(
                expr_labels.contains(&label) || TARGET_LABELS.contains(&label.as_str()),
                "grouping by {label}, a label none of its metrics has ({expr})"
            );
        }
    }
    // The panels the dashboard promises, each with a query.
    for name in [
        "conntrackd_packets_total",
        "conntrackd_connections",
        "conntrackd_connections_limit",
        "conntrackd_half_open_connections",
        "conntrackd_evictions_total",
        "conntrackd_queue_enobufs_total",
        "conntrackd_reloads_total",
    ] {
        assert!(queried.contains(name), "no panel queries {name}");
    }
}

#[test]
fn the_selector_reader_reads_what_the_dashboard_writes() {
    let s = selectors(
        r#"sum by (reason) (rate(conntrackd_packets_total{verdict="drop",instance=~"$i"}[5m])) / xconntrackd_no"#,
    );
    assert_eq!(
        s,
        vec![(
            "conntrackd_packets_total".to_string(),
            vec![
                ("verdict".into(), "=".into(), "drop".into()),
                ("instance".into(), "=~".into(), "$i".into())
            ]
        )]
    );
    assert_eq!(
        grouping_labels("sum by (a, b) (x) + max without(c) (y)"),
        ["a", "b", "c"]
    );
}
