//! Interface index → name, cached (NFQUEUE gives indices, rules name interfaces).
//!
//! Each worker owns a cache, so lookups take no lock. Indices can be reused
//! after an interface is deleted and names can change: the owner clears the
//! cache periodically and on SIGHUP.

use std::collections::HashMap;

#[derive(Debug, Default)]
pub struct IfNames {
    names: HashMap<u32, Option<Box<str>>, ahash::RandomState>,
}

impl IfNames {
    /// Resolves `index` if it is not cached yet (0 means "no interface").
    #[inline]
    pub fn ensure(&mut self, index: u32) {
        if index != 0 && !self.names.contains_key(&index) {
            self.names.insert(index, lookup(index));
        }
    }

    /// The cached name of `index` (call [`IfNames::ensure`] first).
    #[inline]
    pub fn get(&self, index: u32) -> Option<&str> {
        self.names.get(&index).and_then(|n| n.as_deref())
    }

    pub fn clear(&mut self) {
        self.names.clear();
    }
}

/// `if_indextoname(3)`.
pub fn lookup(index: u32) -> Option<Box<str>> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: buf holds IF_NAMESIZE bytes as if_indextoname requires.
    let p = unsafe { libc::if_indextoname(index, buf.as_mut_ptr()) };
    if p.is_null() {
        return None;
    }
    // SAFETY: on success the buffer holds a NUL-terminated name.
    let name = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) };
    Some(name.to_string_lossy().into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_resolves_and_zero_is_none() {
        let mut c = IfNames::default();
        c.ensure(0);
        assert_eq!(c.get(0), None);
        c.ensure(1);
        assert_eq!(c.get(1), Some("lo"));
        c.ensure(u32::MAX);
        assert_eq!(c.get(u32::MAX), None);
    }
}
