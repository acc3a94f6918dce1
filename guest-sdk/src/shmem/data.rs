//! A connection's data pages as a bounded view.
//!
//! Every access is checked against the region's size and the access
//! width's alignment, then made as one relaxed atomic load or store: a
//! plain `ldrb`/`ldrh`/`ldr`/`str` on aarch64, never an exclusive or a
//! pair, so it is right for Device memory (MMU off) and Normal memory alike,
//! is never split or merged by the compiler, and leaves no data race for
//! vCPUs of one guest that share a connection. Ordering between accesses
//! is the caller's (or the channel's) business: the connection's notify
//! and status carry the barriers a signal needs.

use core::fmt;
use core::marker::PhantomData;
use core::sync::atomic::{AtomicU8, AtomicU16, AtomicU32, AtomicU64, Ordering};

/// Why an access to the data was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataError {
    /// `offset..offset + length` is not inside the view of `size` bytes.
    OutOfBounds {
        offset: usize,
        length: usize,
        size: usize,
    },
    /// An offset that is not a multiple of the access width (or of 8, for
    /// [`Data::part`]).
    Misaligned { offset: usize, align: usize },
}

impl fmt::Display for DataError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::OutOfBounds {
                offset,
                length,
                size,
            } => write!(
                f,
                "{length} bytes at offset {offset:#x} run past the {size:#x} bytes of the region"
            ),
            Self::Misaligned { offset, align } => {
                write!(f, "offset {offset:#x} is not a multiple of {align}")
            }
        }
    }
}

/// Some or all of a connection's data pages, borrowed from the connection
/// (so it cannot outlive the attachment). Offsets are from the start of
/// the view; the view's start is 8-byte aligned in memory.
#[derive(Clone, Copy)]
pub struct Data<'a> {
    base: usize,
    length: usize,
    _connection: PhantomData<&'a ()>,
}

impl fmt::Debug for Data<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Data")
            .field("length", &self.length)
            .finish_non_exhaustive()
    }
}

/// Defines a checked load and store of one width.
macro_rules! access {
    ($read:ident, $write:ident, $type:ty, $atomic:ty) => {
        #[doc = concat!("Loads the `", stringify!($type), "` at `offset` (aligned to its size).")]
        ///
        /// # Errors
        /// Out of bounds or misaligned.
        pub fn $read(&self, offset: usize) -> Result<$type, DataError> {
            let address = self.check(offset, size_of::<$type>(), size_of::<$type>())?;
            // SAFETY: `check` proved the bytes inside the view and aligned;
            // `new`'s caller promised them valid for atomic accesses while
            // 'a lasts.
            let cell = unsafe { <$atomic>::from_ptr(address as *mut $type) };
            Ok(cell.load(Ordering::Relaxed))
        }

        #[doc = concat!("Stores `value` as the `", stringify!($type), "` at `offset` (aligned to its size).")]
        ///
        /// # Errors
        /// Out of bounds or misaligned.
        pub fn $write(&self, offset: usize, value: $type) -> Result<(), DataError> {
            let address = self.check(offset, size_of::<$type>(), size_of::<$type>())?;
            // SAFETY: as in the load.
            let cell = unsafe { <$atomic>::from_ptr(address as *mut $type) };
            cell.store(value, Ordering::Relaxed);
            Ok(())
        }
    };
}

impl<'a> Data<'a> {
    /// The `length` bytes at `base`.
    ///
    /// # Safety
    /// `base` is 8-byte aligned and the bytes are valid for atomic loads and
    /// stores (from any thread) for all of `'a`.
    pub(crate) const unsafe fn new(base: usize, length: usize) -> Self {
        Self {
            base,
            length,
            _connection: PhantomData,
        }
    }

    /// Its size in bytes.
    #[must_use]
    pub const fn len(&self) -> usize {
        self.length
    }

    #[must_use]
    pub const fn is_empty(&self) -> bool {
        self.length == 0
    }

    /// The `length` bytes at `offset` of this view, as a view. `offset`
    /// must be a multiple of 8, so the new view is aligned as this one is.
    ///
    /// # Errors
    /// Out of bounds or misaligned.
    pub fn part(&self, offset: usize, length: usize) -> Result<Self, DataError> {
        let base = self.check(offset, length, 8)?;
        // SAFETY: inside this view, which satisfies `new`'s promise for 'a.
        Ok(unsafe { Self::new(base, length) })
    }

    access!(read_u8, write_u8, u8, AtomicU8);
    access!(read_u16, write_u16, u16, AtomicU16);
    access!(read_u32, write_u32, u32, AtomicU32);
    access!(read_u64, write_u64, u64, AtomicU64);

    /// Copies `buffer.len()` bytes from `offset` into `buffer`: bytes up to
    /// an 8-byte boundary, then doublewords, then bytes.
    ///
    /// # Errors
    /// Out of bounds (nothing is copied).
    pub fn read(&self, offset: usize, buffer: &mut [u8]) -> Result<(), DataError> {
        self.check(offset, buffer.len(), 1)?;
        let mut at = offset;
        let mut done = 0;
        while done < buffer.len() {
            let left = buffer.len() - done;
            if at.is_multiple_of(8) && left >= 8 {
                let word = self.read_u64(at)?;
                buffer[done..done + 8].copy_from_slice(&word.to_le_bytes());
                at += 8;
                done += 8;
            } else {
                buffer[done] = self.read_u8(at)?;
                at += 1;
                done += 1;
            }
        }
        Ok(())
    }

    /// Copies `bytes` to `offset`, as [`read`](Self::read) copies.
    ///
    /// # Errors
    /// Out of bounds (nothing is copied).
    pub fn write(&self, offset: usize, bytes: &[u8]) -> Result<(), DataError> {
        self.check(offset, bytes.len(), 1)?;
        let mut at = offset;
        let mut done = 0;
        while done < bytes.len() {
            let left = bytes.len() - done;
            if at.is_multiple_of(8) && left >= 8 {
                let mut word = [0; 8];
                word.copy_from_slice(&bytes[done..done + 8]);
                self.write_u64(at, u64::from_le_bytes(word))?;
                at += 8;
                done += 8;
            } else {
                self.write_u8(at, bytes[done])?;
                at += 1;
                done += 1;
            }
        }
        Ok(())
    }

    /// Sets `length` bytes from `offset` to `byte`.
    ///
    /// # Errors
    /// Out of bounds (nothing is written).
    pub fn fill(&self, offset: usize, length: usize, byte: u8) -> Result<(), DataError> {
        self.check(offset, length, 1)?;
        let word = u64::from_le_bytes([byte; 8]);
        let mut at = offset;
        let end = offset + length;
        while at < end {
            if at.is_multiple_of(8) && end - at >= 8 {
                self.write_u64(at, word)?;
                at += 8;
            } else {
                self.write_u8(at, byte)?;
                at += 1;
            }
        }
        Ok(())
    }

    /// The address of `offset..offset + length`, if inside the view and
    /// `offset` is a multiple of `align`.
    fn check(&self, offset: usize, length: usize, align: usize) -> Result<usize, DataError> {
        let inside = offset
            .checked_add(length)
            .is_some_and(|end| end <= self.length);
        if !inside {
            return Err(DataError::OutOfBounds {
                offset,
                length,
                size: self.length,
            });
        }
        if !offset.is_multiple_of(align) {
            return Err(DataError::Misaligned { offset, align });
        }
        Ok(self.base + offset)
    }
}
