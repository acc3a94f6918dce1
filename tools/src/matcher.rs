//! Checks a serial log against a scenario's expectations. Every pattern is
//! a regex searched for within one line at a time (anchor it with `^`/`$`
//! to match the whole line), so a message can never be pieced together
//! from two lines that happen to be adjacent.

use std::fmt;

use regex::Regex;

/// A regex that remembers how it was written, for messages.
#[derive(Clone, Debug)]
pub struct Pattern {
    source: String,
    regex: Regex,
}

impl Pattern {
    pub fn new(source: &str) -> Result<Self, regex::Error> {
        Ok(Pattern {
            source: source.to_string(),
            regex: Regex::new(source)?,
        })
    }

    pub fn is_match(&self, line: &str) -> bool {
        self.regex.is_match(line)
    }

    pub fn source(&self) -> &str {
        &self.source
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "/{}/", self.source)
    }
}

#[derive(Clone, Debug, Default)]
pub struct Expectations {
    /// Must all appear, each on a later line than the one before it.
    pub ordered: Vec<Pattern>,
    /// Must all appear, anywhere.
    pub unordered: Vec<Pattern>,
    /// Must match no line at all.
    pub forbidden: Vec<Pattern>,
}

/// One way a log failed its expectations. Line and entry numbers count
/// from 1, as an editor shows them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mismatch {
    OrderedMissing {
        entry: usize,
        pattern: String,
        /// The log line that satisfied the previous entry, if any did.
        after_line: Option<usize>,
        /// Where the line does appear, out of order, if it does.
        seen_earlier_at: Option<usize>,
    },
    UnorderedMissing {
        entry: usize,
        pattern: String,
    },
    Forbidden {
        line: usize,
        pattern: String,
        text: String,
    },
}

/// Lines longer than this are cut in messages; the log has them whole.
const MAX_QUOTED_CHARS: usize = 160;

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Mismatch::OrderedMissing {
                entry,
                pattern,
                after_line,
                seen_earlier_at,
            } => {
                write!(f, "expected line {entry} /{pattern}/ never seen")?;
                if let Some(after) = after_line {
                    write!(f, " after line {after}")?;
                }
                if let Some(earlier) = seen_earlier_at {
                    write!(f, " (it appears earlier, at line {earlier})")?;
                }
                Ok(())
            }
            Mismatch::UnorderedMissing { entry, pattern } => {
                write!(
                    f,
                    "expected (any order) line {entry} /{pattern}/ never seen"
                )
            }
            Mismatch::Forbidden {
                line,
                pattern,
                text,
            } => write!(
                f,
                "forbidden line {line} matches /{pattern}/: {}",
                quote_line(text)
            ),
        }
    }
}

fn quote_line(text: &str) -> String {
    match text.char_indices().nth(MAX_QUOTED_CHARS) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text.to_string(),
    }
}

/// Splits a log into lines, dropping the `\r` of serial `\r\n` endings.
pub fn log_lines(log: &str) -> Vec<&str> {
    log.split_terminator('\n')
        .map(|line| line.trim_end_matches('\r'))
        .collect()
}

impl Expectations {
    /// Every way `log` falls short, in this order: forbidden lines (as they
    /// appear in the log), then missing ordered lines, then missing
    /// unordered ones. Empty means the log meets every expectation.
    pub fn check(&self, log: &str) -> Vec<Mismatch> {
        let lines = log_lines(log);
        let mut mismatches = self.forbidden_lines(&lines);
        mismatches.extend(self.missing_ordered(&lines));
        mismatches.extend(self.missing_unordered(&lines));
        mismatches
    }

    /// One mismatch per offending line, naming the first pattern it matches.
    fn forbidden_lines(&self, lines: &[&str]) -> Vec<Mismatch> {
        lines
            .iter()
            .enumerate()
            .filter_map(|(index, line)| {
                let pattern = self.forbidden.iter().find(|p| p.is_match(line))?;
                Some(Mismatch::Forbidden {
                    line: index + 1,
                    pattern: pattern.source().to_string(),
                    text: line.to_string(),
                })
            })
            .collect()
    }

    /// Takes each entry's earliest match after the previous entry's match;
    /// taking the earliest never rules out a later entry, so this finds the
    /// order whenever one exists. A missing entry does not advance the
    /// position, so later entries are still checked.
    fn missing_ordered(&self, lines: &[&str]) -> Vec<Mismatch> {
        let mut mismatches = Vec::new();
        let mut search_from = 0;
        let mut previous_match = None;
        for (index, pattern) in self.ordered.iter().enumerate() {
            let found = lines[search_from..]
                .iter()
                .position(|line| pattern.is_match(line));
            match found {
                Some(offset) => {
                    let line_index = search_from + offset;
                    previous_match = Some(line_index + 1);
                    search_from = line_index + 1;
                }
                None => mismatches.push(Mismatch::OrderedMissing {
                    entry: index + 1,
                    pattern: pattern.source().to_string(),
                    after_line: previous_match,
                    seen_earlier_at: lines[..search_from]
                        .iter()
                        .position(|line| pattern.is_match(line))
                        .map(|line_index| line_index + 1),
                }),
            }
        }
        mismatches
    }

    fn missing_unordered(&self, lines: &[&str]) -> Vec<Mismatch> {
        self.unordered
            .iter()
            .enumerate()
            .filter(|(_, pattern)| !lines.iter().any(|line| pattern.is_match(line)))
            .map(|(index, pattern)| Mismatch::UnorderedMissing {
                entry: index + 1,
                pattern: pattern.source().to_string(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn patterns(sources: &[&str]) -> Vec<Pattern> {
        sources.iter().map(|s| Pattern::new(s).unwrap()).collect()
    }

    fn expect(ordered: &[&str], unordered: &[&str], forbidden: &[&str]) -> Expectations {
        Expectations {
            ordered: patterns(ordered),
            unordered: patterns(unordered),
            forbidden: patterns(forbidden),
        }
    }

    const BOOT_LOG: &str = "Tessera 0.1.0 (abc) on qemu-virt\r\n\
                            cpu 0 online\r\n\
                            cpu 2 online\r\n\
                            cpu 1 online\r\n\
                            all VMs stopped\r\n";

    #[test]
    fn a_good_log_has_no_mismatches() {
        let expectations = expect(
            &[
                r"Tessera \d+\.\d+\.\d+ .* on qemu-virt$",
                "cpu 0 online",
                "all VMs stopped",
            ],
            &["cpu 1 online", "cpu 2 online"],
            &["PANIC"],
        );
        assert_eq!(expectations.check(BOOT_LOG), vec![]);
    }

    #[test]
    fn carriage_returns_are_stripped_before_matching() {
        let expectations = expect(&["^cpu 0 online$"], &[], &[]);
        assert_eq!(expectations.check(BOOT_LOG), vec![]);
    }

    #[test]
    fn out_of_order_line_is_reported_with_where_it_was_seen() {
        let expectations = expect(&["cpu 0 online", "cpu 1 online", "cpu 2 online"], &[], &[]);
        let mismatches = expectations.check(BOOT_LOG);
        assert_eq!(
            mismatches,
            vec![Mismatch::OrderedMissing {
                entry: 3,
                pattern: "cpu 2 online".into(),
                after_line: Some(4),
                seen_earlier_at: Some(3),
            }]
        );
        assert_eq!(
            mismatches[0].to_string(),
            "expected line 3 /cpu 2 online/ never seen after line 4 (it appears earlier, at line 3)"
        );
    }

    #[test]
    fn missing_first_line_has_no_after_clause() {
        let expectations = expect(&["hello"], &[], &[]);
        let mismatches = expectations.check(BOOT_LOG);
        assert_eq!(
            mismatches[0].to_string(),
            "expected line 1 /hello/ never seen"
        );
    }

    #[test]
    fn one_line_cannot_satisfy_two_ordered_entries() {
        let expectations = expect(&["cpu 0", "online"], &[], &[]);
        assert!(expectations.check("cpu 0 online\n").len() == 1);
        assert!(
            expectations
                .check("cpu 0 online\ncpu 1 online\n")
                .is_empty()
        );
    }

    #[test]
    fn a_missing_entry_does_not_stop_later_ones_from_matching() {
        let expectations = expect(&["cpu 0 online", "nowhere", "cpu 1 online"], &[], &[]);
        let mismatches = expectations.check(BOOT_LOG);
        assert_eq!(mismatches.len(), 1);
        assert_eq!(
            mismatches[0].to_string(),
            "expected line 2 /nowhere/ never seen after line 2"
        );
    }

    #[test]
    fn greedy_earliest_match_still_finds_a_valid_order() {
        // "a" first matches line 1; "b" must then come after it.
        let expectations = expect(&["a", "b", "a"], &[], &[]);
        assert!(expectations.check("a\nb\na\n").is_empty());
        assert_eq!(expectations.check("a\na\nb\n").len(), 1);
    }

    #[test]
    fn unordered_lines_are_found_anywhere() {
        let expectations = expect(&[], &["all VMs stopped", "Tessera", "cpu 3 online"], &[]);
        let mismatches = expectations.check(BOOT_LOG);
        assert_eq!(
            mismatches,
            vec![Mismatch::UnorderedMissing {
                entry: 3,
                pattern: "cpu 3 online".into()
            }]
        );
        assert_eq!(
            mismatches[0].to_string(),
            "expected (any order) line 3 /cpu 3 online/ never seen"
        );
    }

    #[test]
    fn forbidden_lines_are_reported_with_line_number_and_text() {
        let log = "ok\nboot\nPANIC at stage2.rs:12\nmore\n";
        let expectations = expect(&[], &[], &["panicked at", "PANIC"]);
        let mismatches = expectations.check(log);
        assert_eq!(
            mismatches[0].to_string(),
            "forbidden line 3 matches /PANIC/: PANIC at stage2.rs:12"
        );
    }

    #[test]
    fn forbidden_mismatches_come_first() {
        let expectations = expect(&["never"], &[], &["boom"]);
        let mismatches = expectations.check("boom\n");
        assert!(matches!(mismatches[0], Mismatch::Forbidden { .. }));
        assert!(matches!(mismatches[1], Mismatch::OrderedMissing { .. }));
    }

    #[test]
    fn word_bounded_fail_pattern() {
        let fail = Pattern::new(r"(^|\W)FAIL(\W|$)").unwrap();
        for line in ["FAIL", "test FAIL: x", "[FAIL]", "vm1: FAIL"] {
            assert!(fail.is_match(line), "{line}");
        }
        for line in ["FAILED_COUNT=0", "no failure", "XFAIL", "0 failed"] {
            assert!(!fail.is_match(line), "{line}");
        }
    }

    #[test]
    fn long_forbidden_lines_are_cut_in_messages() {
        let long = "PANIC ".to_string() + &"é".repeat(400);
        let expectations = expect(&[], &[], &["PANIC"]);
        let message = expectations.check(&long)[0].to_string();
        assert!(message.ends_with("..."), "{message}");
        assert!(message.len() < 400, "{message}");
    }

    #[test]
    fn empty_log_misses_everything() {
        let expectations = expect(&["a"], &["b"], &["c"]);
        assert_eq!(expectations.check("").len(), 2);
    }

    #[test]
    fn log_lines_handles_missing_final_newline_and_blank_lines() {
        assert_eq!(log_lines("a\r\n\r\nb"), vec!["a", "", "b"]);
        assert_eq!(log_lines("a\n"), vec!["a"]);
    }
}
