//! Guest console output, assembled into lines without a heap.

/// Where a console device's output goes, one line at a time.
///
/// Lines never contain `\n`, nor end in `\r`; a `\r` inside a line (one
/// that did not end it) is passed on. A line longer than
/// [`LINE_CAPACITY`] arrives as several calls, with nothing marking the
/// continuation. The sink adds whatever framing it wants (the hypervisor
/// prefixes the VM's name); models know nothing of names. Bytes are passed
/// through unfiltered otherwise, so a sink writing to a terminal must
/// neutralise control characters (the hypervisor escapes them).
pub trait ConsoleSink {
    fn write_line(&mut self, line: &[u8]);

    /// Whether the sink can take another line of up to [`LINE_CAPACITY`]
    /// bytes now. A UART model shows its transmit FIFO full while it
    /// cannot, as hardware tells a writer to wait; a line written anyway
    /// may be dropped.
    fn ready(&self) -> bool {
        true
    }
}

/// Lets the hypervisor keep ownership of the sink and lend it to a model.
impl<T: ConsoleSink + ?Sized> ConsoleSink for &mut T {
    fn write_line(&mut self, line: &[u8]) {
        (**self).write_line(line);
    }

    fn ready(&self) -> bool {
        (**self).ready()
    }
}

/// The longest line a [`LineBuffer`] hands to its sink in one call.
pub const LINE_CAPACITY: usize = 256;

/// Collects transmitted bytes until a line is complete.
///
/// `\n` ends a line, and the `\r`s just before it are dropped, so `\r\n`
/// and `\n` guests give the same lines. Any other `\r` stays in the line
/// for the sink to show (escaped: on a terminal it would return the cursor
/// over the sink's prefix). A full buffer is handed over only when one more
/// byte arrives, so a line of exactly [`LINE_CAPACITY`] bytes followed by
/// `\n` (or `\r\n`) stays one line rather than becoming a full line plus
/// an empty one.
#[derive(Clone, Debug)]
pub struct LineBuffer {
    bytes: [u8; LINE_CAPACITY],
    len: usize,
    /// The last hand-over was of a full buffer, in the middle of a line.
    split: bool,
}

impl LineBuffer {
    #[must_use]
    pub const fn new() -> Self {
        Self {
            bytes: [0; LINE_CAPACITY],
            len: 0,
            split: false,
        }
    }

    /// Adds one transmitted byte, handing a line to `sink` when one is
    /// complete or the buffer has no room left.
    pub fn push(&mut self, byte: u8, sink: &mut impl ConsoleSink) {
        if byte == b'\n' {
            let line = self.pending();
            let mut text = line;
            while let [rest @ .., b'\r'] = text {
                text = rest;
            }
            let ending = line.len() - text.len();
            // Only carriage returns after a full buffer handed over: they
            // ended that line, which has no rest to hand over.
            if !(self.split && text.is_empty() && ending > 0) {
                sink.write_line(text);
            }
            self.len = 0;
            self.split = false;
            return;
        }
        // `>=`, though `len` never passes the capacity: it shows the
        // compiler that the store below is in bounds.
        if self.len >= LINE_CAPACITY {
            sink.write_line(self.pending());
            self.len = 0;
            self.split = true;
        }
        self.bytes[self.len] = byte;
        self.len += 1;
    }

    /// Hands a partial line to `sink`, if there is one (for example when the
    /// VM stops mid-line).
    pub fn flush(&mut self, sink: &mut impl ConsoleSink) {
        if self.len > 0 {
            sink.write_line(self.pending());
            self.len = 0;
        }
        self.split = false;
    }

    /// The bytes of the line not yet handed over.
    #[must_use]
    pub fn pending(&self) -> &[u8] {
        // `len` never passes the capacity; the `min` shows the compiler so.
        &self.bytes[..self.len.min(LINE_CAPACITY)]
    }
}

impl Default for LineBuffer {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec::Vec;

    #[derive(Default)]
    struct Lines(Vec<Vec<u8>>);

    impl ConsoleSink for Lines {
        fn write_line(&mut self, line: &[u8]) {
            self.0.push(line.to_vec());
        }
    }

    fn feed(buffer: &mut LineBuffer, sink: &mut Lines, bytes: &[u8]) {
        for &byte in bytes {
            buffer.push(byte, sink);
        }
    }

    #[test]
    fn carriage_returns_before_a_line_feed_vanish_and_empty_lines_survive() {
        let mut buffer = LineBuffer::new();
        let mut sink = Lines::default();
        feed(&mut buffer, &mut sink, b"ab\r\n\nc\n\r\n\r\r\nd\r\r\n");
        assert_eq!(sink.0, [&b"ab"[..], b"", b"c", b"", b"", b"d"]);
        assert!(buffer.pending().is_empty());
    }

    #[test]
    fn a_carriage_return_that_ends_no_line_is_kept_for_the_sink_to_show() {
        let mut buffer = LineBuffer::new();
        let mut sink = Lines::default();
        feed(&mut buffer, &mut sink, b"\rforged\n50%\r60%\r\n\rx");
        buffer.flush(&mut sink);
        assert_eq!(sink.0, [&b"\rforged"[..], b"50%\r60%", b"\rx"]);
        // Even where a line has only carriage returns before the line feed.
        feed(&mut buffer, &mut sink, b"\r\r\n");
        assert_eq!(sink.0.last().unwrap(), b"");
    }

    #[test]
    fn a_full_line_ended_by_carriage_return_and_line_feed_is_still_one_line() {
        let mut buffer = LineBuffer::new();
        let mut sink = Lines::default();
        feed(&mut buffer, &mut sink, &[b'x'; LINE_CAPACITY]);
        feed(&mut buffer, &mut sink, b"\r\n");
        assert_eq!(sink.0, [[b'x'; LINE_CAPACITY]]);
        // A longer line is split, and its rest keeps a carriage return that
        // ends nothing.
        feed(&mut buffer, &mut sink, &[b'y'; LINE_CAPACITY + 1]);
        feed(&mut buffer, &mut sink, b"\r\rz\r\n");
        assert_eq!(sink.0[1], [b'y'; LINE_CAPACITY]);
        assert_eq!(sink.0[2], b"y\r\rz");
        assert_eq!(sink.0.len(), 3);
    }

    #[test]
    fn exactly_full_line_is_one_line() {
        let mut buffer = LineBuffer::new();
        let mut sink = Lines::default();
        feed(&mut buffer, &mut sink, &[b'x'; LINE_CAPACITY]);
        assert!(sink.0.is_empty());
        buffer.push(b'\n', &mut sink);
        assert_eq!(sink.0, [[b'x'; LINE_CAPACITY]]);
    }

    #[test]
    fn flush_of_empty_buffer_writes_nothing() {
        let mut buffer = LineBuffer::new();
        let mut sink = Lines::default();
        buffer.flush(&mut sink);
        feed(&mut buffer, &mut sink, b"ok\n");
        buffer.flush(&mut sink);
        assert_eq!(sink.0, [b"ok"]);
    }
}
