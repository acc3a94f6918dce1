//! The console's output queue: the VMs' lines, in the order they were
//! completed, waiting for the physical UART.
//!
//! Writing to a real UART takes time (about 87 µs a character at 115200
//! baud). If each VM wrote its lines to the UART itself, a chatty or hostile
//! VM would hold the console while the others' vCPUs waited to print. Here
//! a VM only copies its line into the queue, and whoever finds the UART free
//! moves queued bytes into its FIFO without waiting. Each VM may have at
//! most [`VM_SHARE`] bytes queued. A VM near its share sees its virtual
//! UART's transmit FIFO full (UARTFR.TXFF, see [`ready_threshold`]) until
//! the queue drains, as a real UART would tell it to wait; a line it sends
//! anyway is dropped, its bytes counted, and the loss reported in a
//! `tessera:` line (which a guest cannot forge: guest lines start with
//! `[name]`) ahead of the VM's next line. So one VM's output can delay,
//! but never block or crowd out, another's.
//!
//! Lines come out whole and in the order they were queued. The VM's name
//! and its text are escaped as they are queued ([`super::escape`]), so what
//! a VM sends cannot end its line early, move the cursor or erase its tag;
//! what the queue holds and counts is the escaped text.

use core::fmt::Write;

use super::escape::{Escaped, MAX_EXPANSION};
use crate::boot::manifest::MAX_VMS;

/// Bytes of queued output one VM may have at a time: seven full lines.
pub const VM_SHARE: usize = 2048;
/// The whole queue: every VM's share, so no VM can take another's room.
pub const CAPACITY: usize = MAX_VMS * VM_SHARE;
/// Each queued line is preceded by a record header: VM and length.
const HEADER_BYTES: usize = 3;
const _: () = assert!(
    MAX_VMS <= u8::MAX as usize,
    "a VM index fits the header's byte"
);

/// The longest guest text one line carries once escaped (the virtual UART's
/// line buffer, every byte of it a `\xNN`).
const LONGEST_TEXT: usize = tessera_vdevs::console::LINE_CAPACITY * MAX_EXPANSION;
/// The dropped-output notice, around the VM's name and the count.
const NOTICE_START: &str = "tessera: vm ";
const NOTICE_END: &str = " bytes of its output dropped (sent while the console was full)\r\n";
/// ": " plus the most digits a count has.
const NOTICE_COUNT_BYTES: usize = 2 + 20;

/// The queued size of a guest line of `text_bytes` (escaped) from a VM whose
/// name is `name_bytes` long (escaped): `[name] text\r\n` and the header.
const fn line_record(name_bytes: usize, text_bytes: usize) -> usize {
    HEADER_BYTES + 1 + name_bytes + 2 + text_bytes + 2
}

/// The queued size of the longest dropped-output notice for a VM whose name
/// is `name_bytes` long.
const fn notice_record(name_bytes: usize) -> usize {
    HEADER_BYTES + NOTICE_START.len() + name_bytes + NOTICE_COUNT_BYTES + NOTICE_END.len()
}

/// The most a VM (its name `name_bytes` long once escaped, see
/// [`super::escape::escaped_len`]) may have queued and still be sure its next line, even
/// the longest and with a dropped-output notice before it, fits its share.
/// Its UART shows TXFF above this.
#[must_use]
pub const fn ready_threshold(name_bytes: usize) -> usize {
    VM_SHARE.saturating_sub(line_record(name_bytes, LONGEST_TEXT) + notice_record(name_bytes))
}

/// A byte FIFO of line records, with each VM's share accounted. The storage
/// is lent in, so that it can live in memory boot does not zero.
pub struct ConsoleQueue<'a> {
    bytes: &'a mut [u8; CAPACITY],
    /// Where the oldest queued byte is.
    head: usize,
    /// Bytes queued, headers included.
    len: usize,
    /// Bytes still to go out of the record at `head` (0: the next byte at
    /// `head` is a header).
    record_left: usize,
    /// The VM of the record being sent.
    record_vm: usize,
    /// Bytes queued per VM, headers included.
    queued_by_vm: [usize; MAX_VMS],
    /// Guest text bytes refused per VM and not reported yet.
    dropped_by_vm: [usize; MAX_VMS],
}

/// What stopped a [`ConsoleQueue::drain`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DrainStop {
    /// Nothing is queued.
    Empty,
    /// The writer refused a byte (the UART's FIFO is full); it stays queued.
    WriterFull,
    /// The byte limit was reached.
    Limit,
}

/// Room for a formatted notice.
struct NoticeBuffer {
    bytes: [u8; 128],
    len: usize,
}

impl Write for NoticeBuffer {
    fn write_str(&mut self, text: &str) -> core::fmt::Result {
        let end = self.len + text.len();
        self.bytes
            .get_mut(self.len..end)
            .ok_or(core::fmt::Error)?
            .copy_from_slice(text.as_bytes());
        self.len = end;
        Ok(())
    }
}

impl<'a> ConsoleQueue<'a> {
    /// An empty queue over `storage`, whose contents do not matter.
    #[must_use]
    pub const fn new(storage: &'a mut [u8; CAPACITY]) -> Self {
        Self {
            bytes: storage,
            head: 0,
            len: 0,
            record_left: 0,
            record_vm: 0,
            queued_by_vm: [0; MAX_VMS],
            dropped_by_vm: [0; MAX_VMS],
        }
    }

    /// Whether nothing is queued.
    #[must_use]
    pub const fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes VM `vm` has queued (record headers included).
    #[must_use]
    pub fn queued(&self, vm: usize) -> usize {
        self.queued_by_vm.get(vm).copied().unwrap_or(0)
    }

    /// Guest text bytes of VM `vm` refused and not reported yet.
    #[must_use]
    pub fn dropped(&self, vm: usize) -> usize {
        self.dropped_by_vm.get(vm).copied().unwrap_or(0)
    }

    /// Takes the count of VM `vm`'s refused bytes, for a report made
    /// elsewhere (when the VM stops).
    pub fn take_dropped(&mut self, vm: usize) -> usize {
        self.dropped_by_vm.get_mut(vm).map_or(0, core::mem::take)
    }

    /// Queues `[name] text` for VM `vm`, both escaped, preceded by a notice
    /// of what the VM lost before, if anything. Returns false and queues
    /// nothing when the VM's share has no room for both; the text's bytes
    /// are then counted as dropped.
    pub fn push_guest_line(&mut self, vm: usize, name: &str, text: &[u8]) -> bool {
        let Some(&dropped) = self.dropped_by_vm.get(vm) else {
            return false;
        };
        let mut notice = NoticeBuffer {
            bytes: [0; 128],
            len: 0,
        };
        // A name too long for the buffer leaves the notice out (not cut
        // short) rather than the line.
        if dropped > 0
            && write!(
                notice,
                "{NOTICE_START}{}: {dropped}{NOTICE_END}",
                Escaped::str(name)
            )
            .is_err()
        {
            notice.len = 0;
        }
        // `write_str` keeps `len` within `bytes`.
        let notice = notice.bytes.get(..notice.len).unwrap_or_default();
        let (name, text) = (Escaped::str(name), Escaped(text));
        let line_bytes = 1 + name.len() + 2 + text.len() + 2;
        let notice_needed = if notice.is_empty() {
            0
        } else {
            HEADER_BYTES + notice.len()
        };
        let needed = notice_needed + HEADER_BYTES + line_bytes;
        if line_bytes > usize::from(u16::MAX) || self.queued(vm) + needed > VM_SHARE {
            self.dropped_by_vm[vm] += text.0.len();
            return false;
        }
        if !notice.is_empty() {
            self.append_header(vm, notice.len());
            self.append_bytes(vm, notice);
            self.dropped_by_vm[vm] = 0;
        }
        self.append_header(vm, line_bytes);
        self.append_bytes(vm, b"[");
        self.append_escaped(vm, name);
        self.append_bytes(vm, b"] ");
        self.append_escaped(vm, text);
        self.append_bytes(vm, b"\r\n");
        true
    }

    /// Appends the header of a record of `length` bytes; the caller checked
    /// the VM's share has room for the whole record (the shares add up to
    /// the capacity, so the queue has too), and appends its bytes next.
    fn append_header(&mut self, vm: usize, length: usize) {
        let length = (length as u16).to_le_bytes();
        self.append_bytes(vm, &[vm as u8, length[0], length[1]]);
    }

    /// Appends `bytes` to the record being appended. One loop per kind of
    /// piece, each out of line, rather than one chain of all of a line's
    /// pieces, which compiled to a far larger loop.
    #[inline(never)]
    fn append_bytes(&mut self, vm: usize, bytes: &[u8]) {
        for &byte in bytes {
            self.append_byte(vm, byte);
        }
    }

    /// Appends `text`, escaped, to the record being appended.
    #[inline(never)]
    fn append_escaped(&mut self, vm: usize, text: Escaped<'_>) {
        for byte in text.bytes() {
            self.append_byte(vm, byte);
        }
    }

    #[inline(always)]
    fn append_byte(&mut self, vm: usize, byte: u8) {
        let tail = (self.head + self.len) % CAPACITY;
        self.bytes[tail] = byte;
        self.len += 1;
        self.queued_by_vm[vm] += 1;
    }

    /// The byte at `head`. `head` is always below `CAPACITY`; taking it
    /// modulo `CAPACITY` (a mask) shows the compiler so, which drops a
    /// bounds check and its panic.
    fn head_byte(&self) -> u8 {
        self.bytes[self.head % CAPACITY]
    }

    fn pop_byte(&mut self) -> u8 {
        let byte = self.head_byte();
        self.head = (self.head + 1) % CAPACITY;
        self.len -= 1;
        byte
    }

    /// Whether a line has been partly handed out (the next byte is in the
    /// middle of it).
    #[must_use]
    pub const fn in_line(&self) -> bool {
        self.record_left > 0
    }

    /// Hands queued bytes, oldest first, to `write` until it refuses one
    /// (that byte stays queued), the queue is empty, or `limit` bytes have
    /// gone and a line has just ended: the limit never stops a drain in the
    /// middle of a line, so whoever writes next starts on a line of its own.
    pub fn drain(&mut self, limit: usize, mut write: impl FnMut(u8) -> bool) -> DrainStop {
        let mut written = 0;
        while self.len > 0 {
            if self.record_left == 0 {
                if written >= limit {
                    return DrainStop::Limit;
                }
                let vm = usize::from(self.pop_byte());
                let length = u16::from_le_bytes([self.pop_byte(), self.pop_byte()]);
                let Some(queued) = self.queued_by_vm.get_mut(vm) else {
                    // Only memory corruption makes a bad header: drop
                    // everything rather than index out of bounds (this
                    // also runs on the crash path).
                    self.discard_all();
                    return DrainStop::Empty;
                };
                *queued -= HEADER_BYTES;
                self.record_vm = vm;
                self.record_left = usize::from(length);
                continue;
            }
            if !write(self.head_byte()) {
                return DrainStop::WriterFull;
            }
            self.pop_byte();
            written += 1;
            self.record_left -= 1;
            // `record_vm` was checked when its record's header was read.
            if let Some(queued) = self.queued_by_vm.get_mut(self.record_vm) {
                *queued -= 1;
            }
        }
        DrainStop::Empty
    }

    fn discard_all(&mut self) {
        self.head = 0;
        self.len = 0;
        self.record_left = 0;
        self.queued_by_vm = [0; MAX_VMS];
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::console::escape::escaped_len;
    use std::boxed::Box;
    use std::vec::Vec;

    fn queue() -> ConsoleQueue<'static> {
        ConsoleQueue::new(Box::leak(Box::new([0; CAPACITY])))
    }

    /// A UART FIFO that takes `room` bytes, then refuses.
    fn fifo(out: &mut Vec<u8>, room: usize) -> impl FnMut(u8) -> bool + '_ {
        let limit = out.len().saturating_add(room);
        move |byte| {
            if out.len() < limit {
                out.push(byte);
                true
            } else {
                false
            }
        }
    }

    fn drain_all(queue: &mut ConsoleQueue<'_>) -> Vec<u8> {
        let mut out = Vec::new();
        assert_eq!(
            queue.drain(usize::MAX, fifo(&mut out, usize::MAX)),
            DrainStop::Empty
        );
        out
    }

    #[test]
    fn lines_come_out_whole_tagged_and_in_the_order_they_were_queued() {
        let mut queue = queue();
        assert!(queue.push_guest_line(0, "a", b"one"));
        assert!(queue.push_guest_line(1, "b", b"two"));
        assert!(queue.push_guest_line(0, "a", b""));
        assert_eq!(drain_all(&mut queue), b"[a] one\r\n[b] two\r\n[a] \r\n");
        assert_eq!(queue.queued(0), 0);
        assert!(queue.is_empty());
    }

    #[test]
    fn what_a_guest_sends_is_escaped_under_its_tag_and_cannot_forge_a_line() {
        let mut queue = queue();
        // The bytes a hostile guest's line can hold (the line buffer took
        // out the line feeds; a carriage return that ends no line stays).
        assert!(queue.push_guest_line(0, "me", b"\rtessera: vm other: stopped cleanly"));
        assert!(queue.push_guest_line(0, "me", b"\x1b[2K\x1b[1A[other] forged\x08\x08"));
        assert!(queue.push_guest_line(0, "me", b"\x1b[31mred\x1b[0m \\ \xc3\xa9"));
        let out = drain_all(&mut queue);
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            "[me] \\x0dtessera: vm other: stopped cleanly\r\n\
             [me] \\x1b[2K\\x1b[1A[other] forged\\x08\\x08\r\n\
             [me] \\x1b[31mred\\x1b[0m \\\\ \\xc3\\xa9\r\n"
        );
        // Every line starts with the tag, and only the framing's line
        // break and no other control byte reaches the terminal.
        for line in out
            .split(|&byte| byte == b'\n')
            .filter(|line| !line.is_empty())
        {
            assert!(line.starts_with(b"[me] "), "{line:?}");
            let (last, text) = line.split_last().unwrap();
            assert_eq!(*last, b'\r');
            assert!(text.iter().all(|byte| (0x20..=0x7E).contains(byte)));
        }
    }

    #[test]
    fn a_name_from_the_manifest_is_escaped_in_the_tag_and_the_notice() {
        let mut queue = queue();
        let name = "x\x1b[2K\ntessera: vm y";
        let text = [b'q'; 200];
        while queue.push_guest_line(0, name, &text) {}
        drain_all(&mut queue);
        assert!(queue.push_guest_line(0, name, b"after"));
        let out = drain_all(&mut queue);
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            "tessera: vm x\\x1b[2K\\x0atessera: vm y: 200 bytes of its output dropped \
             (sent while the console was full)\r\n\
             [x\\x1b[2K\\x0atessera: vm y] after\r\n"
        );
        // The queue counts what it holds: the escaped bytes.
        assert!(queue.push_guest_line(1, name, b"\x00"));
        assert_eq!(
            queue.queued(1),
            line_record(escaped_len(name.as_bytes()), 4)
        );
    }

    #[test]
    fn a_line_of_nothing_but_control_bytes_fits_under_the_threshold() {
        // The threshold allows for the longest escaped line: a guest that
        // waits for it loses nothing even when every byte is escaped.
        let mut queue = queue();
        let name = "hostile";
        let text = [0x1b; tessera_vdevs::console::LINE_CAPACITY];
        let mut out = Vec::new();
        for _ in 0..20 {
            while queue.queued(5) > ready_threshold(escaped_len(name.as_bytes())) {
                queue.drain(1, fifo(&mut out, usize::MAX));
            }
            assert!(queue.push_guest_line(5, name, &text));
        }
        assert_eq!(queue.dropped(5), 0);
        assert!(ready_threshold(escaped_len(&[0x1b; 32])) > 0);
    }

    #[test]
    fn a_full_uart_or_a_limit_leaves_the_rest_queued_for_later() {
        let mut queue = queue();
        queue.push_guest_line(2, "c", b"abcdef");
        let mut out = Vec::new();
        assert_eq!(
            queue.drain(usize::MAX, fifo(&mut out, 4)),
            DrainStop::WriterFull
        );
        assert_eq!(out, b"[c] ");
        assert!(queue.in_line());
        // A limit reached inside a line lets the line finish first.
        queue.push_guest_line(4, "d", b"next");
        assert_eq!(queue.drain(3, fifo(&mut out, 64)), DrainStop::Limit);
        assert_eq!(out, b"[c] abcdef\r\n");
        assert!(!queue.in_line());
        assert_eq!(queue.queued(2), 0);
        assert_eq!(
            queue.drain(usize::MAX, fifo(&mut out, 64)),
            DrainStop::Empty
        );
        assert_eq!(out, b"[c] abcdef\r\n[d] next\r\n");
    }

    #[test]
    fn a_vm_over_its_share_loses_lines_and_gets_one_report_before_its_next() {
        let mut queue = queue();
        let text = [b'x'; 250]; // 3 + 4 + 250 + 2 = 259 queued bytes a line
        let mut lines = 0;
        while queue.push_guest_line(0, "a", &text) {
            lines += 1;
        }
        assert_eq!(lines, VM_SHARE / 259);
        assert_eq!(queue.dropped(0), 250, "text bytes only, no framing");
        // Every other VM still has its whole share.
        for other in 1..MAX_VMS {
            assert!(queue.push_guest_line(other, "b", &[b'y'; 200]));
        }
        // Once there is room, the notice comes first, then the line.
        let out = drain_all(&mut queue);
        assert_eq!(
            out.len(),
            lines * 259 - lines * 3 + (MAX_VMS - 1) * (4 + 200 + 2)
        );
        assert!(queue.push_guest_line(0, "a", b"back"));
        assert_eq!(
            drain_all(&mut queue),
            b"tessera: vm a: 250 bytes of its output dropped (sent while the console was full)\r\n[a] back\r\n"
        );
        assert_eq!(queue.dropped(0), 0);
    }

    #[test]
    fn a_guest_that_waits_for_the_threshold_never_loses_a_line_again() {
        // The case a notice made worse: a line dropped, then a guest that
        // writes only while it is at or below the threshold.
        let mut queue = queue();
        let name = "vm-with-name";
        let text = [b'z'; LONGEST_TEXT];
        while queue.push_guest_line(3, name, &text) {}
        assert!(queue.dropped(3) > 0);
        let mut out = Vec::new();
        for _ in 0..20 {
            // Drain just enough to get to the threshold, then send.
            while queue.queued(3) > ready_threshold(name.len()) {
                queue.drain(1, fifo(&mut out, usize::MAX));
            }
            assert!(queue.push_guest_line(3, name, &text));
        }
        assert_eq!(queue.dropped(3), 0);
    }

    #[test]
    fn every_share_filled_at_once_fits_and_wraps_around() {
        let mut queue = queue();
        // Move the head off zero first, so the records wrap.
        queue.push_guest_line(3, "w", b"0123456789");
        let mut out = Vec::new();
        queue.drain(9, fifo(&mut out, usize::MAX));
        drain_all(&mut queue);
        for vm in 0..MAX_VMS {
            let text = vec![b'a' + vm as u8; VM_SHARE - line_record(1, 0)];
            assert!(queue.push_guest_line(vm, "n", &text), "vm {vm}");
        }
        let out = drain_all(&mut queue);
        let line = VM_SHARE - HEADER_BYTES;
        assert_eq!(out.len(), MAX_VMS * line);
        for vm in 0..MAX_VMS {
            let text = &out[vm * line + 4..(vm + 1) * line - 2];
            assert!(text.iter().all(|byte| *byte == b'a' + vm as u8));
        }
    }

    #[test]
    fn unknown_vms_and_oversized_lines_are_refused() {
        let mut queue = queue();
        assert!(!queue.push_guest_line(MAX_VMS, "x", b"x"));
        assert!(!queue.push_guest_line(0, "x", &[0u8; VM_SHARE]));
        assert!(drain_all(&mut queue).is_empty());
        assert!(ready_threshold(15) > 0);
    }

    #[test]
    fn a_name_too_long_for_the_notice_leaves_the_notice_out_not_half_of_it() {
        let mut queue = queue();
        let name = "n".repeat(100);
        while queue.push_guest_line(0, &name, &[b'q'; 200]) {}
        drain_all(&mut queue);
        assert!(queue.push_guest_line(0, &name, b"after"));
        let out = drain_all(&mut queue);
        assert!(
            out.starts_with(b"[nnn"),
            "no partial notice before the line"
        );
        assert!(out.ends_with(b"] after\r\n"));
    }

    #[test]
    fn a_corrupt_header_empties_the_queue_instead_of_panicking() {
        let mut queue = queue();
        queue.push_guest_line(1, "a", b"text");
        queue.bytes[queue.head] = 0xEE; // the header's VM byte
        assert_eq!(queue.drain(usize::MAX, |_| true), DrainStop::Empty);
        assert!(queue.is_empty());
        assert_eq!(queue.queued(1), 0);
    }
}
