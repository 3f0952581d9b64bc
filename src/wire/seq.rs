//! TCP sequence numbers: 32-bit, compared modulo 2^32 (RFC 1982 style).
//!
//! Deliberately no `Ord`: wrapping order is not transitive. Use `before` /
//! `after`, which match the kernel's macros of the same names.

use std::fmt;
use std::ops::{Add, Sub};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SeqNum(pub u32);

impl SeqNum {
    /// `self` comes strictly before `other` (kernel `before(a, b)`).
    #[inline]
    pub fn before(self, other: SeqNum) -> bool {
        (self.0.wrapping_sub(other.0) as i32) < 0
    }

    /// `self` comes strictly after `other` (kernel `after(a, b)`).
    #[inline]
    pub fn after(self, other: SeqNum) -> bool {
        other.before(self)
    }

    /// The later of the two.
    #[inline]
    pub fn max(self, other: SeqNum) -> SeqNum {
        if self.after(other) {
            self
        } else {
            other
        }
    }

    /// Forward distance from `earlier` to `self`, wrapping.
    #[inline]
    pub fn distance_from(self, earlier: SeqNum) -> u32 {
        self.0.wrapping_sub(earlier.0)
    }
}

impl Add<u32> for SeqNum {
    type Output = SeqNum;
    #[inline]
    fn add(self, n: u32) -> SeqNum {
        SeqNum(self.0.wrapping_add(n))
    }
}

impl Sub<u32> for SeqNum {
    type Output = SeqNum;
    #[inline]
    fn sub(self, n: u32) -> SeqNum {
        SeqNum(self.0.wrapping_sub(n))
    }
}

impl fmt::Display for SeqNum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn wraps_around_2_pow_32() {
        let high = SeqNum(u32::MAX - 5);
        let low = high + 10;
        assert_eq!(low, SeqNum(4));
        assert!(high.before(low));
        assert!(low.after(high));
        assert_eq!(low - 10, high);
        assert_eq!(low.distance_from(high), 10);
        assert_eq!(high.max(low), low);
    }

    proptest! {
        #[test]
        fn before_and_after_are_antisymmetric(a: u32, b: u32) {
            // Exactly half the space apart, both directions are "before" (as in the kernel).
            prop_assume!(a.wrapping_sub(b) != 1 << 31);
            let (a, b) = (SeqNum(a), SeqNum(b));
            prop_assert!(!(a.before(b) && a.after(b)));
            prop_assert_eq!(a.before(b), b.after(a));
            if a == b {
                prop_assert!(!a.before(b) && !a.after(b));
            }
        }

        #[test]
        fn adding_less_than_half_the_space_moves_forward(a: u32, n in 1u32..(1 << 31)) {
            let a = SeqNum(a);
            prop_assert!(a.before(a + n));
            prop_assert!((a + n).after(a));
            prop_assert_eq!((a + n).distance_from(a), n);
            prop_assert_eq!((a + n) - n, a);
        }

        #[test]
        fn max_is_one_of_its_arguments_and_not_before_either(a: u32, b: u32) {
            prop_assume!(a.wrapping_sub(b) != 1 << 31);
            let (a, b) = (SeqNum(a), SeqNum(b));
            let m = a.max(b);
            prop_assert!(m == a || m == b);
            prop_assert!(!m.before(a) && !m.before(b));
        }
    }
}
