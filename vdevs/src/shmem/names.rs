//! Region names and the allow/deny rules that admit them.
//!
//! A name is what a guest writes into the factory's 32-byte `name` field:
//! 1 to 31 bytes, each printable ASCII other than space (0x21..=0x7e),
//! then a NUL. Bytes after the first NUL are ignored. Anything else is
//! ILLEGAL_NAME (vdev-shmem-abi.md, "Status codes").
//!
//! A pattern is written the same way (1 to 31 bytes of 0x21..=0x7e), where
//! `*` stands for any run of bytes, empty included, and `?` for exactly one
//! byte. Both are always wildcards: a pattern cannot ask for a literal `*`
//! or `?`, though a name may contain them.

/// The size of the factory's `name` field: the name and its NUL.
pub const NAME_FIELD_BYTES: usize = 32;

/// The longest name: the field less its NUL.
pub const MAX_NAME_BYTES: usize = NAME_FIELD_BYTES - 1;

/// The longest pattern. A pattern longer than any name could still match
/// one through empty `*`s, but nobody needs that, and the bound keeps a
/// rule the size of a name.
pub const MAX_PATTERN_BYTES: usize = MAX_NAME_BYTES;

/// How many allow and deny rules one device instance may have.
pub const MAX_RULES: usize = 8;

/// A byte a name or pattern may hold.
const fn is_name_byte(byte: u8) -> bool {
    matches!(byte, 0x21..=0x7e)
}

/// A well-formed region name, kept NUL-padded to the field size so that two
/// names compare as arrays.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Name {
    bytes: [u8; NAME_FIELD_BYTES],
}

impl Name {
    /// No name (all NUL); never the name of a region.
    pub(crate) const NONE: Self = Self {
        bytes: [0; NAME_FIELD_BYTES],
    };

    /// The name in a factory `name` field, or `None` when the field holds
    /// an illegal one.
    #[must_use]
    pub fn from_field(field: &[u8; NAME_FIELD_BYTES]) -> Option<Self> {
        let length = field.iter().position(|&byte| byte == 0)?;
        Self::new(&field[..length])
    }

    /// `bytes` as a name (no NUL), or `None` when they do not form one.
    /// Out of line: boot and the factory's requests each had a copy.
    #[must_use]
    #[inline(never)]
    pub fn new(bytes: &[u8]) -> Option<Self> {
        if bytes.is_empty()
            || bytes.len() > MAX_NAME_BYTES
            || !bytes.iter().all(|&byte| is_name_byte(byte))
        {
            return None;
        }
        let mut name = Self::NONE;
        name.bytes[..bytes.len()].copy_from_slice(bytes);
        Some(name)
    }

    /// The name's bytes, without the NUL.
    #[must_use]
    pub fn as_bytes(&self) -> &[u8] {
        let length = self
            .bytes
            .iter()
            .position(|&byte| byte == 0)
            .unwrap_or(NAME_FIELD_BYTES);
        &self.bytes[..length]
    }
}

/// Why a pattern was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PatternError {
    Empty,
    /// More than [`MAX_PATTERN_BYTES`].
    TooLong,
    /// The byte at this index is outside 0x21..=0x7e.
    BadByte {
        index: usize,
    },
}

/// A name pattern with `*` and `?` wildcards.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pattern {
    bytes: [u8; MAX_PATTERN_BYTES],
    length: u8,
}

impl Pattern {
    /// `bytes` as a pattern.
    ///
    /// # Errors
    ///
    /// When `bytes` is empty, too long, or holds a byte a name cannot.
    pub fn new(bytes: &[u8]) -> Result<Self, PatternError> {
        if bytes.is_empty() {
            return Err(PatternError::Empty);
        }
        if bytes.len() > MAX_PATTERN_BYTES {
            return Err(PatternError::TooLong);
        }
        if let Some(index) = bytes.iter().position(|&byte| !is_name_byte(byte)) {
            return Err(PatternError::BadByte { index });
        }
        let mut pattern = Self {
            bytes: [0; MAX_PATTERN_BYTES],
            length: bytes.len() as u8,
        };
        pattern.bytes[..bytes.len()].copy_from_slice(bytes);
        Ok(pattern)
    }

    #[must_use]
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.length)]
    }

    /// Whether the whole of `name` matches.
    ///
    /// The usual greedy walk that remembers the last `*`: when a later byte
    /// fails, that `*` swallows one more byte and the walk resumes after
    /// it. Bounded by pattern length times name length, no recursion.
    #[must_use]
    pub fn matches(&self, name: &[u8]) -> bool {
        let pattern = self.as_bytes();
        let (mut at_pattern, mut at_name) = (0, 0);
        // The last `*` seen, and the name position it has swallowed up to.
        let mut star: Option<(usize, usize)> = None;
        while at_name < name.len() {
            match pattern.get(at_pattern) {
                Some(b'*') => {
                    star = Some((at_pattern, at_name));
                    at_pattern += 1;
                }
                Some(&byte) if byte == b'?' || byte == name[at_name] => {
                    at_pattern += 1;
                    at_name += 1;
                }
                _ => {
                    let Some((star_at, swallowed)) = star else {
                        return false;
                    };
                    star = Some((star_at, swallowed + 1));
                    at_pattern = star_at + 1;
                    at_name = swallowed + 1;
                }
            }
        }
        pattern[at_pattern..].iter().all(|&byte| byte == b'*')
    }
}

/// What a matching rule decides.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RuleKind {
    Allow,
    Deny,
}

/// One `allow` or `deny` entry of a device instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rule {
    pub kind: RuleKind,
    pub pattern: Pattern,
}

/// A device instance's rules, in the order the configuration wrote them.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Rules {
    list: [Rule; MAX_RULES],
    count: usize,
}

impl Rules {
    pub(crate) const NONE: Self = Self {
        list: [Rule {
            kind: RuleKind::Allow,
            pattern: Pattern {
                bytes: [0; MAX_PATTERN_BYTES],
                length: 0,
            },
        }; MAX_RULES],
        count: 0,
    };

    /// `rules` kept in order; `None` when there are more than [`MAX_RULES`].
    pub(crate) fn new(rules: &[Rule]) -> Option<Self> {
        let mut kept = Self::NONE;
        kept.list.get_mut(..rules.len())?.copy_from_slice(rules);
        kept.count = rules.len();
        Some(kept)
    }

    /// The first rule that matches decides; with none matching, a name is
    /// refused if any rule is an allow (an allow list), and admitted
    /// otherwise (a deny list, or no rules).
    pub(crate) fn permit(&self, name: &Name) -> bool {
        let rules = &self.list[..self.count];
        match rules
            .iter()
            .find(|rule| rule.pattern.matches(name.as_bytes()))
        {
            Some(rule) => rule.kind == RuleKind::Allow,
            None => !rules.iter().any(|rule| rule.kind == RuleKind::Allow),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(text: &[u8]) -> [u8; NAME_FIELD_BYTES] {
        let mut field = [0; NAME_FIELD_BYTES];
        field[..text.len()].copy_from_slice(text);
        field
    }

    #[test]
    fn names_are_1_to_31_printable_bytes_then_nul() {
        assert_eq!(
            Name::from_field(&field(b"testing")).unwrap().as_bytes(),
            b"testing"
        );
        let longest = [b'a'; MAX_NAME_BYTES];
        assert_eq!(
            Name::from_field(&field(&longest)).unwrap().as_bytes(),
            longest
        );
        assert_eq!(Name::from_field(&[b'a'; NAME_FIELD_BYTES]), None, "no NUL");
        assert_eq!(Name::from_field(&field(b"")), None, "empty");
        assert_eq!(Name::from_field(&field(b"a b")), None, "space");
        assert_eq!(Name::from_field(&field(b"a\x7f")), None, "DEL");
        assert_eq!(Name::from_field(&field(b"\x01")), None);
        assert_eq!(Name::from_field(&field(b"caf\xc3\xa9")), None, "not ASCII");
        // What follows the NUL does not matter.
        let mut trailing = field(b"ab");
        trailing[5] = 0xff;
        assert_eq!(Name::from_field(&trailing), Name::new(b"ab"));
        assert_eq!(Name::new(&[b'a'; 32]), None);
    }

    #[test]
    fn patterns_match_with_star_and_question_mark() {
        let cases: &[(&[u8], &[u8], bool)] = &[
            (b"abc", b"abc", true),
            (b"abc", b"abcd", false),
            (b"abc", b"ab", false),
            (b"*", b"anything", true),
            (b"a*", b"a", true),
            (b"a*", b"ba", false),
            (b"*c", b"abc", true),
            (b"a?c", b"abc", true),
            (b"a?c", b"ac", false),
            (b"a*b*c", b"axxbyyc", true),
            (b"a*b*c", b"axxbyy", false),
            (b"*ab*ab", b"xabyabab", true),
            (b"**", b"x", true),
            (b"?*?", b"x", false),
            (b"?*?", b"xy", true),
            (b"vm1-*", b"vm1-chan", true),
            (b"vm1-*", b"vm2-chan", false),
        ];
        for &(pattern, name, expected) in cases {
            assert_eq!(
                Pattern::new(pattern).unwrap().matches(name),
                expected,
                "{:?} against {:?}",
                core::str::from_utf8(pattern),
                core::str::from_utf8(name)
            );
        }
    }

    #[test]
    fn malformed_patterns_are_refused() {
        assert_eq!(Pattern::new(b""), Err(PatternError::Empty));
        assert_eq!(Pattern::new(&[b'*'; 32]), Err(PatternError::TooLong));
        assert_eq!(
            Pattern::new(b"ab c"),
            Err(PatternError::BadByte { index: 2 })
        );
        assert!(Pattern::new(&[b'*'; 31]).is_ok());
    }

    fn rule(kind: RuleKind, pattern: &[u8]) -> Rule {
        Rule {
            kind,
            pattern: Pattern::new(pattern).unwrap(),
        }
    }

    fn permits(rules: &[Rule], name: &[u8]) -> bool {
        Rules::new(rules).unwrap().permit(&Name::new(name).unwrap())
    }

    #[test]
    fn first_matching_rule_wins_then_the_default() {
        use RuleKind::{Allow, Deny};
        assert!(permits(&[], b"x"), "no rules: everything allowed");
        let deny_only = [rule(Deny, b"secret*")];
        assert!(!permits(&deny_only, b"secret-1"));
        assert!(permits(&deny_only, b"public"), "only denies: default allow");
        let allow_only = [rule(Allow, b"chan?")];
        assert!(permits(&allow_only, b"chan1"));
        assert!(!permits(&allow_only, b"chan12"), "an allow: default deny");
        let ordered = [rule(Deny, b"chan0"), rule(Allow, b"chan*")];
        assert!(!permits(&ordered, b"chan0"), "the earlier deny wins");
        assert!(permits(&ordered, b"chan1"));
        let reversed = [rule(Allow, b"chan*"), rule(Deny, b"chan0")];
        assert!(permits(&reversed, b"chan0"), "the earlier allow wins");
        assert!(!permits(&reversed, b"other"));
        assert!(Rules::new(&[rule(Allow, b"a"); MAX_RULES + 1]).is_none());
    }
}
