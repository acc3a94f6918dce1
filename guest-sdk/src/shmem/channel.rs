//! A single-producer, single-consumer message channel in one region.
//!
//! One guest sends ([`Sender`]), another receives ([`Receiver`]), each
//! through its own [`Connection`] to the same region. Messages are up to
//! `slot_bytes - 8` bytes; both ends must use the same `slot_bytes` (the
//! layout is computed, not stored, so a fresh zero-filled region is an
//! empty channel and needs no set-up by either side).
//!
//! # Layout (offsets in the region)
//!
//! | offset | field | written by |
//! |---|---|---|
//! | 0x000 | head: messages sent (u64, counts up) | producer |
//! | 0x040 | tail: messages received (u64) | consumer |
//! | 0x080 | consumer waiting (u32, 0 or 1) | consumer |
//! | 0x0C0 | producer waiting (u32) | producer |
//! | 0x100 | closed (u32) | producer |
//! | 0x200 | slot `n % slots`: length (u32), 4 bytes unused, payload | producer |
//!
//! Each field is written by one side only, and each sits in its own
//! 64-byte line so the two sides never write the same cache line.
//!
//! # Ordering
//!
//! - The producer writes a slot, then `dmb ish`, then the head: a consumer
//!   that sees the head sees the slot. The consumer loads the head, then
//!   `dmb ish`, then reads the slot.
//! - The consumer reads a slot, then `dmb ish`, then stores the tail: the
//!   producer cannot overwrite the slot before it has been read. The
//!   producer loads the tail, then `dmb ish`, before writing that slot.
//! - Signals only when the other side sleeps: a side that finds nothing to
//!   do stores its waiting flag, `dmb ish`, then looks again before it
//!   sleeps; the other side stores its index, `dmb ish`, then loads the
//!   flag and notifies if it is set. A full barrier sits between each
//!   side's store and load, so at least one of them sees the other's
//!   store: either the sleeper sees the new index and does not sleep, or
//!   the waker sees the flag and notifies. A notify is never lost (sender
//!   bits wait in the status until read), and one that finds the sleeper
//!   already awake only costs a spurious wake-up.
//!
//! `dmb ish` orders Device accesses (MMU off) as well as Normal cacheable
//! ones, so the same code is right for both; the notify itself adds the
//! `dsb ish` described in the module above.
//!
//! Waiting is [`Connection::wait`], so the rules there apply: with IRQs
//! masked the channel polls the status itself, with IRQs unmasked the
//! vector's handler must call [`Connection::poll`]. A notify goes to every
//! peer but the sender ([`Connection::notify_all_but_me`]): the region is
//! meant for the two ends alone.

use core::fmt;

use super::{Bus, Connection, Data, DataError, Hardware};
use crate::arch;
use crate::time::Deadline;

/// Bytes before the first slot.
pub const HEADER_BYTES: usize = 0x200;
/// Bytes of a slot before its payload.
pub const SLOT_HEADER_BYTES: usize = 8;

const HEAD: usize = 0x000;
const TAIL: usize = 0x040;
const CONSUMER_WAITING: usize = 0x080;
const PRODUCER_WAITING: usize = 0x0C0;
const CLOSED: usize = 0x100;
const SLOT_LENGTH: usize = 0;

/// What went wrong in the channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChannelError {
    /// `slot_bytes` is not a multiple of 8 of at least 16.
    BadSlotSize { slot_bytes: usize },
    /// The region has no room for the header and two slots.
    RegionTooSmall { region_bytes: usize, needed: usize },
    /// A message longer than a slot's payload.
    TooLong { length: usize, max: usize },
    /// The buffer is shorter than the next message (which stays).
    BufferTooSmall { length: usize, needed: usize },
    /// `try_send`: no free slot.
    Full,
    /// `try_receive`: no message.
    Empty,
    /// No message, and the producer closed the channel.
    Closed,
    /// The deadline passed first.
    Timeout,
    /// The indices or a length in the region are impossible: the other
    /// side broke the protocol, or the two ends use different slot sizes.
    Corrupt { head: u64, tail: u64, length: u32 },
    /// An access to the region was refused (a bug: the layout keeps every
    /// access inside).
    Data(DataError),
}

impl From<DataError> for ChannelError {
    fn from(error: DataError) -> Self {
        Self::Data(error)
    }
}

impl fmt::Display for ChannelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadSlotSize { slot_bytes } => {
                write!(
                    f,
                    "slot size {slot_bytes} is not a multiple of 8 of at least 16"
                )
            }
            Self::RegionTooSmall {
                region_bytes,
                needed,
            } => write!(
                f,
                "a region of {region_bytes} bytes is below the {needed} needed"
            ),
            Self::TooLong { length, max } => {
                write!(
                    f,
                    "a message of {length} bytes is over the {max} a slot holds"
                )
            }
            Self::BufferTooSmall { length, needed } => {
                write!(f, "a buffer of {length} bytes for a message of {needed}")
            }
            Self::Full => f.write_str("no free slot"),
            Self::Empty => f.write_str("no message"),
            Self::Closed => f.write_str("closed by the producer"),
            Self::Timeout => f.write_str("timed out"),
            Self::Corrupt { head, tail, length } => write!(
                f,
                "the channel's state is impossible (head {head}, tail {tail}, length {length})"
            ),
            Self::Data(error) => write!(f, "{error}"),
        }
    }
}

/// Where things are in a region of a given size with slots of a given size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    slot_bytes: usize,
    slots: u64,
}

impl Layout {
    /// The layout of a channel in `region_bytes` with `slot_bytes` slots.
    ///
    /// # Errors
    /// `BadSlotSize`, `RegionTooSmall` (fewer than 2 slots fit).
    pub const fn new(region_bytes: usize, slot_bytes: usize) -> Result<Self, ChannelError> {
        if !slot_bytes.is_multiple_of(8) || slot_bytes < 16 {
            return Err(ChannelError::BadSlotSize { slot_bytes });
        }
        let needed = HEADER_BYTES + 2 * slot_bytes;
        if region_bytes < needed {
            return Err(ChannelError::RegionTooSmall {
                region_bytes,
                needed,
            });
        }
        Ok(Self {
            slot_bytes,
            slots: ((region_bytes - HEADER_BYTES) / slot_bytes) as u64,
        })
    }

    /// How many messages fit before the producer must wait.
    #[must_use]
    pub const fn slots(&self) -> u64 {
        self.slots
    }

    /// The longest message.
    #[must_use]
    pub const fn max_message(&self) -> usize {
        self.slot_bytes - SLOT_HEADER_BYTES
    }

    /// The offset of the slot of message number `sequence`.
    const fn slot(&self, sequence: u64) -> usize {
        HEADER_BYTES + (sequence % self.slots) as usize * self.slot_bytes
    }

    /// Whether `head` and `tail` can both be true at once.
    const fn consistent(&self, head: u64, tail: u64) -> bool {
        head >= tail && head - tail <= self.slots
    }
}

/// The producing end.
#[derive(Debug)]
pub struct Sender<'c, B: Bus = Hardware> {
    connection: &'c Connection<B>,
    data: Data<'c>,
    layout: Layout,
    /// Messages sent (this end owns the head).
    head: u64,
}

impl<'c, B: Bus> Sender<'c, B> {
    /// The producing end of the channel in `connection`'s region, with
    /// slots of `slot_bytes`. Carries on from the head in the region (0 in
    /// a fresh one).
    ///
    /// # Errors
    /// As [`Layout::new`]; `Corrupt` if the indices in the region are.
    pub fn new(connection: &'c Connection<B>, slot_bytes: usize) -> Result<Self, ChannelError> {
        let data = connection.data();
        let layout = Layout::new(data.len(), slot_bytes)?;
        let head = data.read_u64(HEAD)?;
        let sender = Self {
            connection,
            data,
            layout,
            head,
        };
        sender.free_slots()?;
        Ok(sender)
    }

    #[must_use]
    pub const fn layout(&self) -> Layout {
        self.layout
    }

    /// Messages sent so far.
    #[must_use]
    pub const fn sent(&self) -> u64 {
        self.head
    }

    /// Sends `message`, waiting (as [`Connection::wait`]) while every slot
    /// is taken.
    ///
    /// # Errors
    /// `TooLong`; `Timeout`; `Corrupt`.
    pub fn send(&mut self, message: &[u8], deadline: Option<Deadline>) -> Result<(), ChannelError> {
        self.check_length(message.len())?;
        if self.free_slots()? == 0 {
            self.wait_for_space(deadline)?;
        }
        self.put(message)
    }

    /// Sends `message` if a slot is free.
    ///
    /// # Errors
    /// `Full`; `TooLong`; `Corrupt`.
    pub fn try_send(&mut self, message: &[u8]) -> Result<(), ChannelError> {
        self.check_length(message.len())?;
        if self.free_slots()? == 0 {
            return Err(ChannelError::Full);
        }
        self.put(message)
    }

    /// Marks the channel closed: once the consumer has taken every message
    /// sent, its receive answers `Closed`.
    ///
    /// # Errors
    /// `Data` (a bug).
    pub fn close(self) -> Result<(), ChannelError> {
        // Every message's head store before the flag.
        arch::memory_barrier();
        self.data.write_u32(CLOSED, 1)?;
        // The consumer may be asleep whatever its flag said a moment ago;
        // one notify at the end costs nothing.
        self.connection.notify_all_but_me();
        Ok(())
    }

    const fn check_length(&self, length: usize) -> Result<(), ChannelError> {
        let max = self.layout.max_message();
        if length > max {
            return Err(ChannelError::TooLong { length, max });
        }
        Ok(())
    }

    /// Free slots, from the tail in the region.
    fn free_slots(&self) -> Result<u64, ChannelError> {
        let tail = self.data.read_u64(TAIL)?;
        // The tail load before this side's writes to the slots it frees.
        arch::memory_barrier();
        if !self.layout.consistent(self.head, tail) {
            return Err(ChannelError::Corrupt {
                head: self.head,
                tail,
                length: 0,
            });
        }
        Ok(self.layout.slots - (self.head - tail))
    }

    fn wait_for_space(&mut self, deadline: Option<Deadline>) -> Result<(), ChannelError> {
        self.data.write_u32(PRODUCER_WAITING, 1)?;
        let outcome = loop {
            // The flag store before the tail load; the consumer's tail
            // store before its flag load (module docs, "Ordering").
            arch::memory_barrier();
            match self.free_slots() {
                Ok(0) => {}
                Ok(_) => break Ok(()),
                Err(error) => break Err(error),
            }
            if self.connection.wait(deadline).is_err() {
                break Err(ChannelError::Timeout);
            }
        };
        self.data.write_u32(PRODUCER_WAITING, 0)?;
        outcome
    }

    fn put(&mut self, message: &[u8]) -> Result<(), ChannelError> {
        let slot = self.layout.slot(self.head);
        self.data.write(slot + SLOT_HEADER_BYTES, message)?;
        self.data
            .write_u32(slot + SLOT_LENGTH, message.len() as u32)?;
        // The slot before the head that publishes it.
        arch::memory_barrier();
        self.head += 1;
        self.data.write_u64(HEAD, self.head)?;
        // The head store before the flag load.
        arch::memory_barrier();
        if self.data.read_u32(CONSUMER_WAITING)? != 0 {
            self.connection.notify_all_but_me();
        }
        Ok(())
    }
}

/// The consuming end.
#[derive(Debug)]
pub struct Receiver<'c, B: Bus = Hardware> {
    connection: &'c Connection<B>,
    data: Data<'c>,
    layout: Layout,
    /// Messages received (this end owns the tail).
    tail: u64,
}

impl<'c, B: Bus> Receiver<'c, B> {
    /// The consuming end of the channel in `connection`'s region, with
    /// slots of `slot_bytes` (the producer's). Carries on from the tail in
    /// the region.
    ///
    /// # Errors
    /// As [`Layout::new`]; `Corrupt` if the indices in the region are.
    pub fn new(connection: &'c Connection<B>, slot_bytes: usize) -> Result<Self, ChannelError> {
        let data = connection.data();
        let layout = Layout::new(data.len(), slot_bytes)?;
        let tail = data.read_u64(TAIL)?;
        let receiver = Self {
            connection,
            data,
            layout,
            tail,
        };
        receiver.pending()?;
        Ok(receiver)
    }

    #[must_use]
    pub const fn layout(&self) -> Layout {
        self.layout
    }

    /// Messages received so far.
    #[must_use]
    pub const fn received(&self) -> u64 {
        self.tail
    }

    /// Receives the next message into `buffer` and returns its length,
    /// waiting (as [`Connection::wait`]) while there is none.
    ///
    /// # Errors
    /// `Closed` once the producer closed and every message was taken;
    /// `BufferTooSmall` (the message stays); `Timeout`; `Corrupt`.
    pub fn receive(
        &mut self,
        buffer: &mut [u8],
        deadline: Option<Deadline>,
    ) -> Result<usize, ChannelError> {
        if self.pending()? == 0 {
            self.wait_for_message(deadline)?;
        }
        self.take(buffer)
    }

    /// Receives the next message if there is one.
    ///
    /// # Errors
    /// `Empty`, or `Closed` when the producer closed; as
    /// [`receive`](Self::receive) otherwise.
    pub fn try_receive(&mut self, buffer: &mut [u8]) -> Result<usize, ChannelError> {
        if self.pending()? == 0 {
            return Err(if self.drained_and_closed()? {
                ChannelError::Closed
            } else {
                ChannelError::Empty
            });
        }
        self.take(buffer)
    }

    /// Messages waiting, from the head in the region.
    fn pending(&self) -> Result<u64, ChannelError> {
        let head = self.data.read_u64(HEAD)?;
        // The head load before the loads of the slots it publishes.
        arch::memory_barrier();
        if !self.layout.consistent(head, self.tail) {
            return Err(ChannelError::Corrupt {
                head,
                tail: self.tail,
                length: 0,
            });
        }
        Ok(head - self.tail)
    }

    /// Whether the producer closed and nothing is left: the closed flag,
    /// then the head (the producer stores them in the other order).
    fn drained_and_closed(&self) -> Result<bool, ChannelError> {
        let closed = self.data.read_u32(CLOSED)? != 0;
        arch::memory_barrier();
        Ok(closed && self.pending()? == 0)
    }

    fn wait_for_message(&mut self, deadline: Option<Deadline>) -> Result<(), ChannelError> {
        self.data.write_u32(CONSUMER_WAITING, 1)?;
        let outcome = loop {
            // The flag store before the head load; the producer's head
            // store before its flag load (module docs, "Ordering").
            arch::memory_barrier();
            match self.pending() {
                Ok(0) => {}
                Ok(_) => break Ok(()),
                Err(error) => break Err(error),
            }
            match self.drained_and_closed() {
                Ok(false) => {}
                Ok(true) => break Err(ChannelError::Closed),
                Err(error) => break Err(error),
            }
            if self.connection.wait(deadline).is_err() {
                break Err(ChannelError::Timeout);
            }
        };
        self.data.write_u32(CONSUMER_WAITING, 0)?;
        outcome
    }

    fn take(&mut self, buffer: &mut [u8]) -> Result<usize, ChannelError> {
        let slot = self.layout.slot(self.tail);
        let length = self.data.read_u32(slot + SLOT_LENGTH)?;
        if length as usize > self.layout.max_message() {
            return Err(ChannelError::Corrupt {
                head: self.tail + 1,
                tail: self.tail,
                length,
            });
        }
        let needed = length as usize;
        let Some(destination) = buffer.get_mut(..needed) else {
            return Err(ChannelError::BufferTooSmall {
                length: buffer.len(),
                needed,
            });
        };
        self.data.read(slot + SLOT_HEADER_BYTES, destination)?;
        // The slot's loads before the tail store that gives it back.
        arch::memory_barrier();
        self.tail += 1;
        self.data.write_u64(TAIL, self.tail)?;
        // The tail store before the flag load.
        arch::memory_barrier();
        if self.data.read_u32(PRODUCER_WAITING)? != 0 {
            self.connection.notify_all_but_me();
        }
        Ok(needed)
    }
}
