//! Sizes and addresses as people write them in configurations and read
//! them in messages: `"64M"`, `0x4000_0000`.

use tessera_package::rules;

pub use tessera_package::rules::{GIB, KIB, MIB};

/// Parses `<digits><unit>` with unit `K`, `M` or `G` (powers of 1024).
/// The error is a reason to put after the value in a message.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let not_a_size =
        || format!("\"{text}\" is not a size: expected digits and a unit K, M or G, e.g. \"64M\"");
    let Some(unit) = text.chars().last() else {
        return Err(not_a_size());
    };
    let digits = &text[..text.len() - unit.len_utf8()];
    if digits.is_empty() || !digits.bytes().all(|byte| byte.is_ascii_digit()) {
        return Err(not_a_size());
    }
    let scale = match unit {
        'K' => KIB,
        'M' => MIB,
        'G' => GIB,
        _ => return Err(not_a_size()),
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|count| count.checked_mul(scale))
        .ok_or_else(|| format!("\"{text}\" is too large"))
}

/// The shortest exact form with the largest unit that divides `bytes`:
/// `1G`, `64M`, `1536K`, or plain bytes.
pub fn format_size(bytes: u64) -> String {
    rules::Size(bytes).to_string()
}

/// Hexadecimal with `_` every four digits, as offsets are written in the
/// docs: `0x8_0000`.
pub fn hex(value: u64) -> String {
    rules::Hex(value).to_string()
}

/// A guest-physical address: like [`hex`], at least eight digits, so
/// addresses in one message line up: `0x0800_0000`, `0x4000_0000`.
pub fn address(value: u64) -> String {
    rules::Address(value).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_with_units() {
        assert_eq!(parse_size("64M"), Ok(64 * MIB));
        assert_eq!(parse_size("1G"), Ok(GIB));
        assert_eq!(parse_size("512K"), Ok(512 * KIB));
        assert_eq!(parse_size("0M"), Ok(0));
    }

    #[test]
    fn sizes_without_a_known_unit_are_refused() {
        for bad in [
            "", "M", "64", "12Q", "64m", "1.5G", "-1M", " 1M", "1 M", "64MB", "é",
        ] {
            let err = parse_size(bad).unwrap_err();
            assert_eq!(
                err,
                format!(
                    "\"{bad}\" is not a size: expected digits and a unit K, M or G, e.g. \"64M\""
                )
            );
        }
    }

    #[test]
    fn overflowing_sizes_are_refused() {
        assert_eq!(
            parse_size("99999999999999G"),
            Err("\"99999999999999G\" is too large".into())
        );
        assert_eq!(
            parse_size("99999999999999999999M"),
            Err("\"99999999999999999999M\" is too large".into())
        );
    }

    #[test]
    fn sizes_format_with_the_largest_exact_unit() {
        assert_eq!(format_size(GIB), "1G");
        assert_eq!(format_size(96 * MIB), "96M");
        assert_eq!(format_size(1536 * KIB), "1536K");
        assert_eq!(format_size(100), "100 bytes");
        assert_eq!(format_size(0), "0 bytes");
    }

    #[test]
    fn hex_groups_by_four_digits() {
        assert_eq!(hex(0x4000_0000), "0x4000_0000");
        assert_eq!(hex(0x8_0000), "0x8_0000");
        assert_eq!(hex(0x1000), "0x1000");
        assert_eq!(hex(0), "0x0");
        assert_eq!(hex(1 << 39), "0x80_0000_0000");
    }

    #[test]
    fn addresses_have_at_least_eight_digits() {
        assert_eq!(address(0x800_0000), "0x0800_0000");
        assert_eq!(address(0), "0x0000_0000");
        assert_eq!(address(1 << 39), "0x80_0000_0000");
    }
}
