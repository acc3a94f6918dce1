//! The one rule for printing bytes from outside — a guest's console lines,
//! the VM names and other values a system package or a configuration
//! supplies, file names — used by the hypervisor's console, its messages,
//! the package reader's errors and the host tool alike.
//!
//! Printable ASCII (`0x20..=0x7E`) passes through, except the backslash,
//! which is doubled (`\\`). Every other byte — control characters (ESC,
//! carriage return, backspace, tab, line feed, DEL) and every byte from
//! `0x80` up — is shown as `\xNN`, two lower-case hex digits. So nothing
//! from outside can move the terminal's cursor, erase a line, start a new
//! one, or switch colours: a colour code such as `ESC [ 3 1 m` prints as the
//! text `\x1b[31m` and colours nothing. The backslash is doubled so the
//! escaped text reads back to exactly the bytes that were sent (a guest that
//! prints the four characters `\x1b` shows `\\x1b`).
//!
//! Nothing here needs a heap: [`Escaped`] formats in place, and
//! [`Escaped::bytes`] yields the escaped bytes one at a time for the console
//! queue.

use core::fmt;
use core::fmt::Write;

/// The most bytes one input byte becomes (`\xNN`).
pub const MAX_EXPANSION: usize = 4;

/// Whether `byte` is printed as it is.
const fn passes(byte: u8) -> bool {
    matches!(byte, 0x20..=0x7E) && byte != b'\\'
}

/// The escaped form of one byte, in a buffer of its own.
#[derive(Clone, Copy)]
struct EscapedByte {
    bytes: [u8; MAX_EXPANSION],
    len: u8,
}

impl EscapedByte {
    const fn new(byte: u8) -> Self {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        if passes(byte) {
            Self {
                bytes: [byte, 0, 0, 0],
                len: 1,
            }
        } else if byte == b'\\' {
            Self {
                bytes: [b'\\', b'\\', 0, 0],
                len: 2,
            }
        } else {
            Self {
                bytes: [
                    b'\\',
                    b'x',
                    HEX[(byte >> 4) as usize],
                    HEX[(byte & 0xF) as usize],
                ],
                len: 4,
            }
        }
    }
}

/// How many bytes `bytes` takes once escaped.
#[must_use]
pub const fn escaped_len(bytes: &[u8]) -> usize {
    let mut total = 0;
    let mut index = 0;
    while index < bytes.len() {
        total += EscapedByte::new(bytes[index]).len as usize;
        index += 1;
    }
    total
}

/// Prints the bytes (or string) it wraps by the module's rule:
/// `println!("tessera: vm {}: stopped", Escaped::str(name))`.
#[derive(Clone, Copy)]
pub struct Escaped<'a>(pub &'a [u8]);

impl<'a> Escaped<'a> {
    /// Wraps a string (a VM name from the manifest, say).
    #[must_use]
    pub const fn str(text: &'a str) -> Self {
        Self(text.as_bytes())
    }

    /// How many bytes the escaped text takes.
    #[must_use]
    pub const fn len(&self) -> usize {
        escaped_len(self.0)
    }

    /// Whether the escaped text is empty (the input is).
    #[must_use]
    pub const fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The escaped text, one byte at a time.
    pub fn bytes(self) -> impl Iterator<Item = u8> + 'a {
        self.0.iter().flat_map(|&byte| {
            let escaped = EscapedByte::new(byte);
            (0..usize::from(escaped.len)).map(move |index| escaped.bytes[index])
        })
    }
}

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Byte by byte: every escaped byte is ASCII, so each is a `char`
        // of its own, and no run of bytes needs checking as UTF-8 (the
        // UTF-8 validator is code and a 256-byte table in the image).
        for byte in self.bytes() {
            formatter.write_char(char::from(byte))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    extern crate std;

    use super::*;
    use std::format;
    use std::string::String;
    use std::vec::Vec;

    fn shown(bytes: &[u8]) -> String {
        let text = format!("{}", Escaped(bytes));
        let streamed: Vec<u8> = Escaped(bytes).bytes().collect();
        assert_eq!(text.as_bytes(), streamed, "Display and bytes() agree");
        assert_eq!(text.len(), escaped_len(bytes), "escaped_len is exact");
        text
    }

    #[test]
    fn printable_ascii_passes_and_the_backslash_is_doubled() {
        assert_eq!(shown(b"hello, world ~!"), "hello, world ~!");
        assert_eq!(shown(b"a\\b"), "a\\\\b");
        assert_eq!(
            shown(b"\\x1b"),
            "\\\\x1b",
            "a literal \\x1b reads differently from ESC"
        );
        assert_eq!(shown(b""), "");
    }

    #[test]
    fn control_bytes_and_bytes_above_ascii_become_hex_escapes() {
        assert_eq!(shown(b"\x1b[31mred\x1b[0m"), "\\x1b[31mred\\x1b[0m");
        assert_eq!(shown(b"\x1b[2K\rgone"), "\\x1b[2K\\x0dgone");
        assert_eq!(shown(b"ab\x08\x08cd"), "ab\\x08\\x08cd");
        assert_eq!(shown(b"\t\n\x7f\x00"), "\\x09\\x0a\\x7f\\x00");
        assert_eq!(shown("é".as_bytes()), "\\xc3\\xa9");
        assert_eq!(shown(b"\x9b2K"), "\\x9b2K", "the 8-bit CSI is escaped too");
        assert_eq!(shown(&[0xFF]), "\\xff");
    }

    #[test]
    fn every_byte_comes_out_as_printable_ascii_and_reads_back() {
        let all: Vec<u8> = (0..=255).collect();
        let text = shown(&all);
        assert!(text.bytes().all(|byte| (0x20..=0x7E).contains(&byte)));
        // Undo the escapes: the rule loses nothing.
        let mut back = Vec::new();
        let mut bytes = text.bytes();
        while let Some(byte) = bytes.next() {
            if byte != b'\\' {
                back.push(byte);
                continue;
            }
            match bytes.next() {
                Some(b'\\') => back.push(b'\\'),
                Some(b'x') => {
                    let digits: String = bytes.by_ref().take(2).map(char::from).collect();
                    back.push(u8::from_str_radix(&digits, 16).unwrap());
                }
                other => panic!("unexpected escape {other:?}"),
            }
        }
        assert_eq!(back, all);
        assert!(escaped_len(&all) <= all.len() * MAX_EXPANSION);
    }

    #[test]
    fn a_vm_name_with_escape_and_newline_cannot_start_a_line_of_its_own() {
        // A manifest name made to end the hypervisor's line and print a
        // forged one, erasing what came before it.
        let name = "a\x1b[2K\r\ntessera: vm b: stopped cleanly";
        let line = format!("tessera: vm {}: stopped cleanly\n", Escaped::str(name));
        assert_eq!(line.matches('\n').count(), 1, "one line: {line:?}");
        assert!(!line.contains('\r') && !line.contains('\x1b'));
        assert_eq!(
            line,
            "tessera: vm a\\x1b[2K\\x0d\\x0atessera: vm b: stopped cleanly: stopped cleanly\n"
        );
        assert_eq!(
            Escaped::str(name).len(),
            line.len() - "tessera: vm : stopped cleanly\n".len()
        );
        assert!(!Escaped::str(name).is_empty());
    }

    #[test]
    fn the_length_is_known_at_compile_time_for_a_threshold() {
        const LEN: usize = escaped_len(b"n\x1b");
        assert_eq!(LEN, 5);
    }
}
