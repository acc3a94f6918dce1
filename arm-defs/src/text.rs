//! Fixed texts kept compact: a list of short texts as one string of
//! NUL-ended entries, looked up by position. A `match` that yields a
//! `&'static str` per case compiles to a table of a pointer and a length
//! per case (16 bytes each), which LTO may copy into every caller; such a
//! list costs one byte per entry. For texts that are many and short and
//! printed off the measured paths (a lookup walks the list).

/// Whether `list` is exactly `entries` NUL-ended strings: each list is
/// held to its cases by a compile-time assertion, so that a case added
/// without its text, or a text without its NUL, fails the build rather
/// than printing nothing or the wrong entry.
#[must_use]
pub const fn holds_nul_ended_entries(list: &str, entries: usize) -> bool {
    let bytes = list.as_bytes();
    let mut ends = 0;
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] == 0 {
            ends += 1;
        }
        index += 1;
    }
    ends == entries && (bytes.is_empty() || bytes[bytes.len() - 1] == 0)
}

/// Entry `index` of `list`, a run of NUL-ended strings; empty past the end.
#[must_use]
pub const fn nul_ended_entry(list: &'static str, index: usize) -> &'static str {
    let bytes = list.as_bytes();
    let mut start = 0;
    let mut end = 0;
    let mut seen = 0;
    while end < bytes.len() {
        if bytes[end] == 0 {
            if seen == index {
                break;
            }
            seen += 1;
            start = end + 1;
        }
        end += 1;
    }
    // A NUL is a whole character, so both splits are at boundaries.
    match list.split_at_checked(end) {
        Some((up_to_end, _)) => match up_to_end.split_at_checked(start) {
            Some((_, entry)) => entry,
            None => "",
        },
        None => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_holds_its_entries_only_when_every_one_is_ended() {
        assert!(holds_nul_ended_entries("one\0\0three\0", 3));
        assert!(!holds_nul_ended_entries("one\0\0three\0", 2));
        assert!(!holds_nul_ended_entries("one\0three", 2));
        assert!(!holds_nul_ended_entries("one\0three", 1));
        assert!(holds_nul_ended_entries("", 0));
    }

    #[test]
    fn finds_each_entry_and_nothing_past_the_end() {
        const LIST: &str = "one\0\0three\0";
        assert_eq!(nul_ended_entry(LIST, 0), "one");
        assert_eq!(nul_ended_entry(LIST, 1), "");
        assert_eq!(nul_ended_entry(LIST, 2), "three");
        assert_eq!(nul_ended_entry(LIST, 3), "");
        assert_eq!(nul_ended_entry(LIST, usize::MAX), "");
        assert_eq!(nul_ended_entry("", 0), "");
    }
}
