//! Reading the hypervisor's final verdict off its console, so that
//! `tessera run` can end QEMU and pass the system's status on even where
//! the machine cannot stop QEMU itself (a production image after a failure,
//! and every run on `raspi4b`, which has no power-off).
//!
//! The rule (also in docs/ARCHITECTURE.md, "Power-off"): the final verdict
//! is a whole console line that is exactly `tessera: power off, status N`,
//! N in decimal. The hypervisor prints it once, last, on every way a run
//! ends: `power_off` after the VMs (or the bring-up self-test), and
//! `fail_stop` after a refusal to start, a crash report or a panic (status
//! 1). Only the hypervisor can print it: every line a guest sends comes out
//! as `[name] text`, and the virtual UART ends a guest's line at its `\n`
//! and drops its `\r`, so guest text can never start a console line. The
//! match is on the line as received, from its first byte; only the `\r`
//! of the console's `\r\n` is removed, so a line that merely contains the
//! text (after a tag, a space or an escape sequence) does not count.

/// What the verdict line starts with; the status follows.
pub const POWER_OFF_PREFIX: &str = "tessera: power off, status ";

/// A console line longer than this is not a verdict, so it is not kept
/// whole: a guest that never ends a line cannot make the watcher grow.
const LONGEST_VERDICT_LINE: usize = POWER_OFF_PREFIX.len() + 10;

/// The status in `line` if it is the final verdict line. `line` is one
/// console line without its `\n`.
pub fn verdict(line: &[u8]) -> Option<u32> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let digits = line.strip_prefix(POWER_OFF_PREFIX.as_bytes())?;
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// Finds the verdict in console output that arrives in pieces, split
/// anywhere.
#[derive(Debug, Default)]
pub struct VerdictWatcher {
    /// The start of the current line, while it can still be a verdict.
    line: Vec<u8>,
    /// The current line is already too long to be one.
    overlong: bool,
    found: Option<u32>,
}

impl VerdictWatcher {
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes the next piece of output; returns the verdict the first time
    /// a piece completes its line.
    pub fn feed(&mut self, bytes: &[u8]) -> Option<u32> {
        let before = self.found;
        for &byte in bytes {
            if byte == b'\n' {
                if !self.overlong && self.found.is_none() {
                    self.found = verdict(&self.line);
                }
                self.line.clear();
                self.overlong = false;
            } else if !self.overlong {
                self.line.push(byte);
                if self.line.len() > LONGEST_VERDICT_LINE {
                    self.line.clear();
                    self.overlong = true;
                }
            }
        }
        if before.is_none() { self.found } else { None }
    }

    /// The verdict, once seen.
    pub fn found(&self) -> Option<u32> {
        self.found
    }
}

/// The tool's exit status for a verdict: the status itself where a process
/// status can carry it, and a failure for any other non-zero status (which
/// must not wrap to 0).
pub fn exit_status(status: u32) -> u8 {
    u8::try_from(status).unwrap_or(u8::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_power_off_line_is_the_verdict() {
        assert_eq!(verdict(b"tessera: power off, status 0"), Some(0));
        assert_eq!(verdict(b"tessera: power off, status 1\r"), Some(1));
        assert_eq!(
            verdict(b"tessera: power off, status 4294967295"),
            Some(u32::MAX)
        );
    }

    #[test]
    fn anything_else_is_not() {
        for line in [
            &b""[..],
            b"tessera: system halted",
            b"tessera: all 2 VMs stopped, 1 failed",
            b"tessera: power off, status ",
            b"tessera: power off, status x",
            b"tessera: power off, status 1 ",
            b"tessera: power off, status 1\r\r",
            b"tessera: power off, status -1",
            b"tessera: power off, status 4294967296",
            b" tessera: power off, status 0",
            b"Tessera: power off, status 0",
        ] {
            assert_eq!(verdict(line), None, "{}", String::from_utf8_lossy(line));
        }
    }

    #[test]
    fn a_guest_line_that_imitates_the_verdict_does_not_count() {
        let mut watcher = VerdictWatcher::new();
        let console = b"[mimic] tessera: power off, status 0\r\n\
                        [mimic] \x1b[2K\rtessera: power off, status 0\r\n\
                        [mimic] \rtessera: power off, status 0\r\n\
                        tessera: vm mimic: stopped cleanly\r\n";
        assert_eq!(watcher.feed(console), None);
        assert_eq!(watcher.found(), None);
        assert_eq!(
            watcher.feed(b"tessera: power off, status 3\r\ntessera: system halted\r\n"),
            Some(3)
        );
    }

    #[test]
    fn the_verdict_is_found_however_the_output_is_split() {
        let console = b"Tessera 0.1.0\r\n[alpha] hi\r\ntessera: power off, status 1\r\n";
        for split in 0..=console.len() {
            let mut watcher = VerdictWatcher::new();
            let first = watcher.feed(&console[..split]);
            let second = watcher.feed(&console[split..]);
            assert_eq!(first.or(second), Some(1), "split at {split}");
            assert!(first.is_none() || second.is_none(), "reported once");
            assert_eq!(watcher.found(), Some(1));
        }
    }

    #[test]
    fn an_unfinished_line_is_not_a_verdict_yet() {
        let mut watcher = VerdictWatcher::new();
        assert_eq!(watcher.feed(b"tessera: power off, status 1"), None);
        assert_eq!(watcher.feed(b"0"), None);
        assert_eq!(watcher.feed(b"\r\n"), Some(10));
    }

    #[test]
    fn the_first_verdict_stands() {
        let mut watcher = VerdictWatcher::new();
        assert_eq!(watcher.feed(b"tessera: power off, status 1\n"), Some(1));
        assert_eq!(watcher.feed(b"tessera: power off, status 0\n"), None);
        assert_eq!(watcher.found(), Some(1));
    }

    #[test]
    fn a_long_line_is_dropped_not_kept() {
        let mut watcher = VerdictWatcher::new();
        let mut long = b"[chatty] ".to_vec();
        long.extend(std::iter::repeat_n(b'x', 100_000));
        long.extend_from_slice(b"tessera: power off, status 0");
        assert_eq!(watcher.feed(&long), None);
        assert!(watcher.line.len() <= LONGEST_VERDICT_LINE);
        assert_eq!(watcher.feed(b"\n"), None);
        assert_eq!(watcher.feed(b"tessera: power off, status 0\n"), Some(0));
    }

    #[test]
    fn exit_statuses_never_wrap_to_success() {
        assert_eq!(exit_status(0), 0);
        assert_eq!(exit_status(1), 1);
        assert_eq!(exit_status(255), 255);
        assert_eq!(exit_status(256), 255);
        assert_eq!(exit_status(u32::MAX), 255);
    }
}
