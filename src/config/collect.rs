//! Every deserialization error of a rules file, not only the first.
//!
//! serde stops at the first error. So the file is parsed once into a
//! document that keeps each key's and value's place, deserialized, and after
//! each error the part it points at is taken out and the rest deserialized
//! again, until it goes through: the key at or under the error (an unknown
//! key, a bad value), or, for an error about a whole table (a missing key),
//! that `[[rule]]` or table. The error that taking out a key causes (the
//! "missing field" of a required key just taken out) is not reported twice.

use serde::de::DeserializeOwned;
use std::ops::Range;
use toml_edit::{DocumentMut, ImDocument, Item, Table};

/// What [`deserialize_all`] found.
pub(super) struct Collected<T> {
    /// What is left once the bad parts are taken out; `None` when nothing
    /// is (a syntax error, or an error about the whole file).
    pub value: Option<T>,
    /// Byte offset and message of each error, in the order found.
    pub errors: Vec<(usize, String)>,
    /// The tables that lost a key or more: checks of what they hold would
    /// only repeat those errors.
    pub damaged: Vec<Range<usize>>,
}

/// Where a table is: the keys to it from the top level, with `@offset` for
/// an element of an array of tables (`rule`, `@120`). Spans cannot say it:
/// a dotted table (`policy.default = ...`) has none.
type Scope = Vec<String>;

/// Errors reported at most, per file.
const MAX_ERRORS: usize = 100;

pub(super) fn deserialize_all<T: DeserializeOwned>(text: &str) -> Collected<T> {
    let mut found = Collected {
        value: None,
        errors: Vec::new(),
        damaged: Vec::new(),
    };
    let doc = match ImDocument::parse(text) {
        Ok(doc) => doc,
        Err(e) => {
            let at = e.span().map_or(0, |s| s.start);
            found.errors.push((at, e.message().trim().to_string()));
            return found;
        }
    };
    let mut root = doc.as_table().clone();
    // Keys taken out so far, to recognise the errors that follow from that.
    let mut taken: Vec<(Scope, String)> = Vec::new();
    loop {
        let error = match toml_edit::de::from_document::<T>(DocumentMut::from(root.clone())) {
            Ok(value) => {
                found.value = Some(value);
                return found;
            }
            Err(e) => e,
        };
        let message = error.message().trim().to_string();
        // A zero-length span (or none) is serde's word for the top level.
        let span = error.span().filter(|s| !s.is_empty());
        let at = span.as_ref().map_or(0, |s| s.start);
        let about = span.as_ref().and_then(|span| {
            take_out(
                &mut root,
                &mut Vec::new(),
                span,
                &mut taken,
                &mut found.damaged,
            )
        });
        let scope = about.clone().unwrap_or_default();
        let follows_from_an_earlier_one = missing_field(&message)
            .is_some_and(|k| taken.iter().any(|(s, t)| *s == scope && t == k));
        if !follows_from_an_earlier_one {
            found.errors.push((at, message));
        }
        // Each round parses the document again: a file with thousands of
        // errors stops at MAX_ERRORS (it is not a file to fix by the list).
        if found.errors.len() >= MAX_ERRORS {
            found.errors.push((
                at,
                format!("and maybe more: stopped after {MAX_ERRORS} errors"),
            ));
            return found;
        }
        if about.is_none() {
            return found;
        }
    }
}

/// `missing field `name``: the key's name.
fn missing_field(message: &str) -> Option<&str> {
    message.strip_prefix("missing field `")?.split('`').next()
}

fn within(inner: &Range<usize>, outer: Option<Range<usize>>) -> bool {
    outer.is_some_and(|o| o.start <= inner.start && inner.end <= o.end)
}

/// Takes out of `table` (at `scope`) the innermost key whose key or value
/// holds `span`, or the table whose whole span it is; returns where what it
/// took out was, or `None` when nothing holds `span`.
fn take_out(
    table: &mut Table,
    scope: &mut Scope,
    span: &Range<usize>,
    taken: &mut Vec<(Scope, String)>,
    damaged: &mut Vec<Range<usize>>,
) -> Option<Scope> {
    let keys: Vec<String> = table.iter().map(|(k, _)| k.to_string()).collect();
    for key in keys {
        let key_span = table.key(&key).and_then(|k| k.span());
        let Some(item) = table.get_mut(&key) else {
            continue;
        };
        let mut take_key = within(span, key_span);
        scope.push(key.clone());
        match item {
            Item::Table(sub) if !take_key => {
                take_key = sub.span().as_ref() == Some(span);
                if !take_key {
                    if let Some(about) = take_out(sub, scope, span, taken, damaged) {
                        return Some(about);
                    }
                }
            }
            Item::ArrayOfTables(array) if !take_key => {
                for i in 0..array.len() {
                    let Some(element) = array.get_mut(i) else {
                        continue;
                    };
                    let element_span = element.span();
                    scope.push(format!("@{}", element_span.as_ref().map_or(0, |s| s.start)));
                    if element_span.as_ref() == Some(span) {
                        array.remove(i);
                        return Some(scope.clone());
                    }
                    if let Some(about) = take_out(element, scope, span, taken, damaged) {
                        return Some(about);
                    }
                    scope.pop();
                }
            }
            Item::Value(v) => take_key |= within(span, v.span()),
            _ => {}
        }
        if take_key {
            let about = scope.clone();
            scope.pop();
            table.remove(&key);
            if let Some(s) = table.span() {
                damaged.push(s);
            }
            taken.push((scope.clone(), key));
            return Some(about);
        }
        scope.pop();
    }
    None
}
