//! The kernel command line (`/chosen/bootargs`), as the test guests read it.
//!
//! Syntax: words separated by spaces; a word is `key=value` or a bare `key`.
//! Values the examples use:
//!
//! - numbers: decimal (`200`) or hexadecimal with `0x` (`0x4800_0000`);
//!   `_` may separate digits;
//! - addresses: a number, optionally `+` or `-` a number (`0x40000000-8`:
//!   the last 8 bytes below `0x4000_0000`);
//! - address lists: addresses separated by commas, no spaces
//!   (`probe=0x48000000,0x40000000-8,0x0a000000`).

use core::fmt;

/// The words of a bootargs string.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bootargs<'a> {
    text: &'a str,
}

impl<'a> Bootargs<'a> {
    #[must_use]
    pub const fn new(text: &'a str) -> Self {
        Self { text }
    }

    /// The value of the first `key=value` word for `key`; `Some("")` for a
    /// bare `key`.
    #[must_use]
    pub fn get(&self, key: &str) -> Option<&'a str> {
        self.text.split_ascii_whitespace().find_map(|word| {
            let (name, value) = word.split_once('=').unwrap_or((word, ""));
            (name == key).then_some(value)
        })
    }
}

/// What is wrong with a value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Problem {
    Empty,
    NotANumber,
    TooLarge,
}

/// A value that does not parse, and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BootargError<'a> {
    pub text: &'a str,
    pub problem: Problem,
}

/// `"0xZZ": not a number`
impl fmt::Display for BootargError<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let reason = match self.problem {
            Problem::Empty => "empty",
            Problem::NotANumber => "not a number",
            Problem::TooLarge => "does not fit in 64 bits",
        };
        write!(f, "\"{}\": {reason}", self.text)
    }
}

/// The number the boot device tree's bootargs give for `key`: `None`
/// without a device tree, bootargs or `key` (the examples' settings, each
/// with its default).
///
/// # Errors
/// The value does not parse (see [`parse_number`]).
pub fn boot_number(key: &str) -> Result<Option<u64>, BootargError<'static>> {
    crate::device_tree::DeviceTree::boot()
        .ok()
        .and_then(|tree| Bootargs::new(tree.bootargs()?).get(key))
        .map(parse_number)
        .transpose()
}

/// Parses a decimal or `0x` hexadecimal number; `_` may separate digits.
///
/// # Errors
/// An empty string, a character that is not a digit, or more than 64 bits.
pub fn parse_number(text: &str) -> Result<u64, BootargError<'_>> {
    let error = |problem| BootargError { text, problem };
    let (digits, radix) = match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => (hex, 16),
        None => (text, 10),
    };
    if digits.is_empty() {
        return Err(error(Problem::Empty));
    }
    let mut value: u64 = 0;
    let mut seen_digit = false;
    for character in digits.chars() {
        if character == '_' {
            continue;
        }
        let digit = character
            .to_digit(radix)
            .ok_or_else(|| error(Problem::NotANumber))?;
        seen_digit = true;
        value = value
            .checked_mul(u64::from(radix))
            .and_then(|value| value.checked_add(u64::from(digit)))
            .ok_or_else(|| error(Problem::TooLarge))?;
    }
    if seen_digit {
        Ok(value)
    } else {
        Err(error(Problem::NotANumber))
    }
}

/// Parses `NUMBER`, `NUMBER+NUMBER` or `NUMBER-NUMBER`.
///
/// # Errors
/// A part that is not a number, or a result outside 0..2^64.
pub fn parse_address(text: &str) -> Result<u64, BootargError<'_>> {
    let Some(split) = text.find(['+', '-']) else {
        return parse_number(text);
    };
    let base = parse_number(&text[..split])?;
    let offset = parse_number(&text[split + 1..])?;
    let result = if text.as_bytes()[split] == b'+' {
        base.checked_add(offset)
    } else {
        base.checked_sub(offset)
    };
    result.ok_or(BootargError {
        text,
        problem: Problem::TooLarge,
    })
}

/// The addresses of a comma-separated list, each parsed with
/// [`parse_address`]. An empty list has no items.
pub fn address_list(text: &str) -> impl Iterator<Item = Result<u64, BootargError<'_>>> {
    text.split(',')
        .filter(move |_| !text.is_empty())
        .map(parse_address)
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::string::ToString;
    use std::vec::Vec;

    use super::*;

    #[test]
    fn without_a_boot_device_tree_no_setting_is_given() {
        // On the host the runtime has recorded no device tree.
        assert_eq!(boot_number("wait_ms"), Ok(None));
    }

    #[test]
    fn words_are_found_by_key() {
        let args = Bootargs::new("  probe=0x48000000,0x0a000000 wait_ms=50 quiet key=a=b ");
        assert_eq!(args.get("probe"), Some("0x48000000,0x0a000000"));
        assert_eq!(args.get("wait_ms"), Some("50"));
        assert_eq!(args.get("quiet"), Some(""));
        assert_eq!(args.get("key"), Some("a=b"));
        assert_eq!(args.get("wait"), None);
        assert_eq!(Bootargs::new("").get("probe"), None);
        // The first word wins.
        assert_eq!(Bootargs::new("a=1 a=2").get("a"), Some("1"));
    }

    #[test]
    fn numbers_parse_in_both_radixes() {
        assert_eq!(parse_number("200"), Ok(200));
        assert_eq!(parse_number("0x4800_0000"), Ok(0x4800_0000));
        assert_eq!(parse_number("0XfF"), Ok(0xFF));
        assert_eq!(parse_number("0xffffffffffffffff"), Ok(u64::MAX));
    }

    #[test]
    fn bad_numbers_say_why() {
        let problem = |text| parse_number(text).unwrap_err().problem;
        assert_eq!(problem(""), Problem::Empty);
        assert_eq!(problem("0x"), Problem::Empty);
        assert_eq!(problem("_"), Problem::NotANumber);
        assert_eq!(problem("12a"), Problem::NotANumber);
        assert_eq!(problem("0x1_0000_0000_0000_0000"), Problem::TooLarge);
        assert_eq!(problem("18446744073709551616"), Problem::TooLarge);
        assert_eq!(
            parse_number("0xZZ").unwrap_err().to_string(),
            "\"0xZZ\": not a number"
        );
    }

    #[test]
    fn addresses_take_an_offset() {
        assert_eq!(parse_address("0x40000000-8"), Ok(0x3FFF_FFF8));
        assert_eq!(parse_address("0x40000000+0x1000"), Ok(0x4000_1000));
        assert_eq!(parse_address("4096"), Ok(4096));
        assert_eq!(parse_address("0-1").unwrap_err().problem, Problem::TooLarge);
        assert_eq!(parse_address("0x10-").unwrap_err().problem, Problem::Empty);
        assert_eq!(parse_address("-8").unwrap_err().problem, Problem::Empty);
    }

    #[test]
    fn address_lists_split_on_commas() {
        let list: Vec<_> = address_list("0x48000000,0x40000000-8,0x0a000000").collect();
        assert_eq!(list, [Ok(0x4800_0000), Ok(0x3FFF_FFF8), Ok(0x0A00_0000)]);
        assert_eq!(address_list("").count(), 0);
        let bad: Vec<_> = address_list("0x10,,0x20").collect();
        assert_eq!(bad[1].unwrap_err().problem, Problem::Empty);
    }
}
