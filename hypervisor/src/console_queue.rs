//! The console's output queue: whole lines from the VMs and the hypervisor,
//! in the order they were completed, waiting for the physical UART.
//!
//! Writing to a real UART takes time (about 87 µs a character at 115200
//! baud). If each VM wrote its lines to the UART itself, a chatty or hostile
//! VM would hold the console while the others' vCPUs waited to print. Here
//! a VM only copies its line into the queue, and whoever finds the UART free
//! moves queued bytes into its FIFO without waiting. Each VM may have at
//! most [`VM_SHARE`] bytes queued; a VM over its share sees its virtual
//! UART's transmit FIFO full (UARTFR.TXFF) until the queue drains, as a
//! real UART would tell it to wait, and a line it sends anyway is dropped
//! and counted. So one VM's output can delay, but never block or crowd out,
//! another's.
//!
//! Lines come out whole and in the order they were queued, so the console
//! reads as it did when every line was written at once.

use crate::manifest::MAX_VMS;

/// Who a line came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Hypervisor,
    Vm(usize),
}

/// Bytes of queued output one VM may have at a time: eight lines of 256.
pub const VM_SHARE: usize = 2048;
/// Bytes of queued output the hypervisor may have.
pub const HYPERVISOR_SHARE: usize = 4096;
/// The whole queue: every VM's share and the hypervisor's, so no source
/// can take another's room.
pub const CAPACITY: usize = MAX_VMS * VM_SHARE + HYPERVISOR_SHARE;
/// Each queued line is preceded by a record header: source and length.
const HEADER_BYTES: usize = 3;

/// The share a line of `line_bytes` takes while queued.
#[must_use]
pub const fn record_bytes(line_bytes: usize) -> usize {
    line_bytes + HEADER_BYTES
}
/// The source byte of a hypervisor record.
const HYPERVISOR_TAG: u8 = 0xFF;

/// A byte FIFO of line records, with each source's share accounted. The
/// storage is lent in, so that it can live in memory boot does not zero.
pub struct ConsoleQueue<'a> {
    bytes: &'a mut [u8; CAPACITY],
    /// Where the oldest queued byte is.
    head: usize,
    /// Bytes queued, headers included.
    len: usize,
    /// Payload bytes still to go out of the record at `head` (0: the next
    /// byte at `head` is a header).
    record_left: usize,
    /// The source of the record being sent.
    record_source: Source,
    /// Bytes queued per source, headers included.
    queued_by_vm: [usize; MAX_VMS],
    queued_by_hypervisor: usize,
    /// Payload bytes refused per VM since last taken.
    dropped_by_vm: [usize; MAX_VMS],
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
            record_source: Source::Hypervisor,
            queued_by_vm: [0; MAX_VMS],
            queued_by_hypervisor: 0,
            dropped_by_vm: [0; MAX_VMS],
        }
    }

    fn share(source: Source) -> usize {
        match source {
            Source::Hypervisor => HYPERVISOR_SHARE,
            Source::Vm(_) => VM_SHARE,
        }
    }

    /// Whether nothing is queued.
    #[must_use]
    pub const fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes `source` has queued (record headers included).
    #[must_use]
    pub fn queued(&self, source: Source) -> usize {
        match source {
            Source::Hypervisor => self.queued_by_hypervisor,
            Source::Vm(index) => self.queued_by_vm.get(index).copied().unwrap_or(0),
        }
    }

    fn queued_mut(&mut self, source: Source) -> Option<&mut usize> {
        match source {
            Source::Hypervisor => Some(&mut self.queued_by_hypervisor),
            Source::Vm(index) => self.queued_by_vm.get_mut(index),
        }
    }

    /// Whether `source` could queue a line of `line_bytes` now.
    #[must_use]
    pub fn has_room(&self, source: Source, line_bytes: usize) -> bool {
        let needed = record_bytes(line_bytes);
        let in_range = match source {
            Source::Hypervisor => true,
            Source::Vm(index) => index < MAX_VMS,
        };
        in_range
            && line_bytes <= usize::from(u16::MAX)
            && self.queued(source) + needed <= Self::share(source)
    }

    /// Queues one line, the concatenation of `parts`, for `source`. Returns
    /// false and queues nothing when the source's share has no room for it
    /// (a VM's refused bytes are counted, see [`Self::take_dropped`]).
    pub fn push(&mut self, source: Source, parts: &[&[u8]]) -> bool {
        let line_bytes: usize = parts.iter().map(|part| part.len()).sum();
        if !self.has_room(source, line_bytes) {
            if let Source::Vm(index) = source
                && let Some(dropped) = self.dropped_by_vm.get_mut(index)
            {
                *dropped += line_bytes;
            }
            return false;
        }
        let tag = match source {
            Source::Hypervisor => HYPERVISOR_TAG,
            // `has_room` checked the index against MAX_VMS, far below 0xFF.
            Source::Vm(index) => index as u8,
        };
        let length = (line_bytes as u16).to_le_bytes();
        for byte in [tag, length[0], length[1]]
            .into_iter()
            .chain(parts.iter().flat_map(|part| part.iter().copied()))
        {
            // Within capacity: the shares add up to it.
            let tail = (self.head + self.len) % CAPACITY;
            self.bytes[tail] = byte;
            self.len += 1;
        }
        if let Some(queued) = self.queued_mut(source) {
            *queued += record_bytes(line_bytes);
        }
        true
    }

    /// How many of `source`'s bytes were refused since the count was last
    /// taken.
    #[must_use]
    pub fn dropped(&self, source: Source) -> usize {
        match source {
            Source::Hypervisor => 0,
            Source::Vm(index) => self.dropped_by_vm.get(index).copied().unwrap_or(0),
        }
    }

    /// Takes the count of `source`'s bytes refused since it was last taken.
    pub fn take_dropped(&mut self, source: Source) -> usize {
        match source {
            Source::Hypervisor => 0,
            Source::Vm(index) => self.dropped_by_vm.get_mut(index).map_or(0, core::mem::take),
        }
    }

    fn pop_byte(&mut self) -> u8 {
        let byte = self.bytes[self.head];
        self.head = (self.head + 1) % CAPACITY;
        self.len -= 1;
        byte
    }

    /// Hands queued bytes, oldest first, to `write` until it refuses one
    /// (the UART's FIFO is full; that byte stays queued) or the queue is
    /// empty. Returns true when the queue is empty.
    pub fn drain(&mut self, mut write: impl FnMut(u8) -> bool) -> bool {
        while self.len > 0 {
            if self.record_left == 0 {
                let tag = self.pop_byte();
                let length = u16::from_le_bytes([self.pop_byte(), self.pop_byte()]);
                self.record_source = if tag == HYPERVISOR_TAG {
                    Source::Hypervisor
                } else {
                    Source::Vm(usize::from(tag))
                };
                self.record_left = usize::from(length);
                self.release(self.record_source, HEADER_BYTES);
                continue;
            }
            if !write(self.bytes[self.head]) {
                return false;
            }
            self.pop_byte();
            self.record_left -= 1;
            self.release(self.record_source, 1);
        }
        true
    }

    fn release(&mut self, source: Source, bytes: usize) {
        if let Some(queued) = self.queued_mut(source) {
            *queued -= bytes;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::boxed::Box;
    use std::vec::Vec;

    /// A UART FIFO that takes `room` bytes, then refuses.
    fn fifo(out: &mut Vec<u8>, room: usize) -> impl FnMut(u8) -> bool + '_ {
        let limit = out.len() + room;
        move |byte| {
            if out.len() < limit {
                out.push(byte);
                true
            } else {
                false
            }
        }
    }

    #[test]
    fn lines_come_out_whole_and_in_the_order_they_were_queued() {
        let mut storage = Box::new([0; CAPACITY]);
        let mut queue = ConsoleQueue::new(&mut storage);
        assert!(queue.push(Source::Vm(0), &[b"[a] ", b"one", b"\n"]));
        assert!(queue.push(Source::Hypervisor, &[b"tessera: two\n"]));
        assert!(queue.push(Source::Vm(1), &[b"[b] three\n"]));
        let mut out = Vec::new();
        assert!(queue.drain(fifo(&mut out, usize::MAX)));
        assert_eq!(out, b"[a] one\ntessera: two\n[b] three\n");
        assert_eq!(queue.queued(Source::Vm(0)), 0);
        assert_eq!(queue.queued(Source::Hypervisor), 0);
    }

    #[test]
    fn a_full_uart_leaves_the_rest_queued_for_later() {
        let mut storage = Box::new([0; CAPACITY]);
        let mut queue = ConsoleQueue::new(&mut storage);
        queue.push(Source::Vm(2), &[b"abcdef"]);
        let mut out = Vec::new();
        assert!(!queue.drain(fifo(&mut out, 4)));
        assert_eq!(out, b"abcd");
        assert_eq!(queue.queued(Source::Vm(2)), 2);
        assert!(queue.drain(fifo(&mut out, 16)));
        assert_eq!(out, b"abcdef");
        assert_eq!(queue.queued(Source::Vm(2)), 0);
    }

    #[test]
    fn a_vm_over_its_share_is_refused_and_counted_without_touching_others() {
        let mut storage = Box::new([0; CAPACITY]);
        let mut queue = ConsoleQueue::new(&mut storage);
        let line = [b'x'; 253]; // 256 bytes with the header
        for _ in 0..VM_SHARE / 256 {
            assert!(queue.push(Source::Vm(0), &[&line]));
        }
        assert!(!queue.has_room(Source::Vm(0), 1));
        assert!(!queue.push(Source::Vm(0), &[b"lost"]));
        assert!(!queue.push(Source::Vm(0), &[b"lost too"]));
        assert_eq!(queue.dropped(Source::Vm(0)), 12);
        assert_eq!(queue.take_dropped(Source::Vm(0)), 12);
        assert_eq!(queue.take_dropped(Source::Vm(0)), 0);
        // Every other VM, and the hypervisor, still have their whole share.
        for other in 1..MAX_VMS {
            assert!(queue.has_room(Source::Vm(other), VM_SHARE - HEADER_BYTES));
        }
        assert!(queue.has_room(Source::Hypervisor, HYPERVISOR_SHARE - HEADER_BYTES));
        // Draining gives the room back.
        let mut out = Vec::new();
        queue.drain(fifo(&mut out, 300));
        assert!(queue.has_room(Source::Vm(0), 200));
    }

    #[test]
    fn every_share_filled_at_once_fits_and_wraps_around() {
        let mut storage = Box::new([0; CAPACITY]);
        let mut queue = ConsoleQueue::new(&mut storage);
        let mut out = Vec::new();
        // Move the head off zero first, so the records wrap.
        queue.push(Source::Vm(3), &[b"0123456789"]);
        queue.drain(fifo(&mut out, 16));
        out.clear();
        for vm in 0..MAX_VMS {
            let line = [b'a' + vm as u8; VM_SHARE - HEADER_BYTES];
            assert!(queue.push(Source::Vm(vm), &[&line]));
        }
        let line = [b'H'; HYPERVISOR_SHARE - HEADER_BYTES];
        assert!(queue.push(Source::Hypervisor, &[&line]));
        assert!(queue.drain(fifo(&mut out, usize::MAX)));
        assert_eq!(out.len(), CAPACITY - (MAX_VMS + 1) * HEADER_BYTES);
        for vm in 0..MAX_VMS {
            let start = vm * (VM_SHARE - HEADER_BYTES);
            assert!(
                out[start..start + VM_SHARE - HEADER_BYTES]
                    .iter()
                    .all(|byte| *byte == b'a' + vm as u8)
            );
        }
    }

    #[test]
    fn unknown_vms_and_oversized_lines_are_refused() {
        let mut storage = Box::new([0; CAPACITY]);
        let mut queue = ConsoleQueue::new(&mut storage);
        assert!(!queue.push(Source::Vm(MAX_VMS), &[b"x"]));
        assert!(!queue.push(Source::Hypervisor, &[&[0u8; HYPERVISOR_SHARE]]));
        let mut out = Vec::new();
        assert!(queue.drain(fifo(&mut out, usize::MAX)));
        assert!(out.is_empty());
    }
}
