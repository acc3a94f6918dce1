//! Text from a config, a package or a file name, made safe to print.
//!
//! The rule is `tessera_package::escape`, the one the hypervisor prints
//! by too:
//! printable ASCII (`0x20..=0x7E`) passes, the backslash is doubled (`\\`),
//! and every other byte of the text's UTF-8 — control characters (line
//! feed, carriage return, ESC, backspace, tab, DEL) and everything above
//! ASCII — is shown as `\xNN`. So a value can neither start a line of its
//! own (a fake `FILE: OK`), nor move the cursor, erase, or colour the
//! terminal: `ESC [ 3 1 m` prints as `\x1b[31m`. The text reads back to
//! exactly the bytes it was.

pub use tessera_package::escape::Escaped;

/// Wraps `text` for printing: `format!("{}", escaped(name))`.
#[must_use]
pub fn escaped(text: &str) -> Escaped<'_> {
    Escaped(text.as_bytes())
}

/// `text` escaped, as a string.
#[must_use]
pub fn escape(text: &str) -> String {
    escaped(text).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    // The rule itself (every byte, the round trip) is tested where it is
    // written, in `tessera_package::escape`; these pin what the tool's
    // messages rely on.

    #[test]
    fn printable_ascii_passes_and_the_backslash_is_doubled() {
        assert_eq!(escape("vm-1 RAM = 64M"), "vm-1 RAM = 64M");
        assert_eq!(escape("a\\b"), "a\\\\b");
        assert_eq!(escape(""), "");
    }

    #[test]
    fn control_characters_and_everything_above_ascii_are_hex_escapes() {
        assert_eq!(escape("\x1b[31mred\x1b[0m"), "\\x1b[31mred\\x1b[0m");
        assert_eq!(escape("x\x1b[2K\rback\x08"), "x\\x1b[2K\\x0dback\\x08");
        assert_eq!(escape("\t\n\x7f\0"), "\\x09\\x0a\\x7f\\x00");
        assert_eq!(escape("é\u{202e}"), "\\xc3\\xa9\\xe2\\x80\\xae");
        assert_eq!(escape("\u{9b}2K"), "\\xc2\\x9b2K");
        assert_eq!(Escaped(&[0xFF, b'a']).to_string(), "\\xffa");
    }

    #[test]
    fn a_crafted_value_cannot_print_a_line_of_its_own() {
        let name = "x\n/tmp/evil.toml: OK\r\x1b[2K";
        let line = format!("systems/a.toml: vm[0].name: \"{}\" is bad", escaped(name));
        assert!(!line.contains('\n') && !line.contains('\r') && !line.contains('\x1b'));
        assert_eq!(
            line,
            "systems/a.toml: vm[0].name: \"x\\x0a/tmp/evil.toml: OK\\x0d\\x1b[2K\" is bad"
        );
    }

    #[test]
    fn a_crafted_config_cannot_make_check_print_a_fake_ok_line() {
        // Values and keys made to end the message, print `FILE: OK` and
        // erase what came before it; a file name doing the same.
        let dir = std::env::temp_dir().join(format!("tessera-escape-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("evil\n.toml");
        std::fs::write(
            &file,
            "[board]\n\
             name = \"virt\\nsystems/demo.toml: OK\\r\\u001b[2K\"\n\
             gic-version = 3\n\
             cpus = 1\n\
             memory = \"1G\"\n\
             \"x\\u001b[1A\\rsystems/demo.toml: OK\" = 1\n",
        )
        .unwrap();
        let errors = crate::system::load_config(&file).unwrap_err().to_string();
        let _ = std::fs::remove_dir_all(&dir);
        for line in errors.lines() {
            assert!(
                line.bytes().all(|byte| (0x20..=0x7E).contains(&byte)),
                "{line:?}"
            );
            assert!(line.contains("evil\\x0a.toml: "), "{line:?}");
            assert!(!line.starts_with("systems/demo.toml"), "{line:?}");
        }
        assert!(
            errors.contains(
                "board.name: unknown board \"virt\\x0asystems/demo.toml: OK\\x0d\\x1b[2K\""
            ),
            "{errors}"
        );
        assert!(
            errors.contains("\"x\\x1b[1A\\x0dsystems/demo.toml: OK\": unknown key"),
            "{errors}"
        );
    }
}
