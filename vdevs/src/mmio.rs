//! The decoded form of a trapped guest access, shared by every device model.

/// The width of one MMIO access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccessWidth {
    Byte,
    HalfWord,
    Word,
    DoubleWord,
}

impl AccessWidth {
    /// From a size in bytes (1, 2, 4 or 8).
    #[must_use]
    #[inline]
    pub const fn from_bytes(bytes: u8) -> Option<Self> {
        match bytes {
            1 => Some(Self::Byte),
            2 => Some(Self::HalfWord),
            4 => Some(Self::Word),
            8 => Some(Self::DoubleWord),
            _ => None,
        }
    }

    #[must_use]
    pub const fn bytes(self) -> u8 {
        match self {
            Self::Byte => 1,
            Self::HalfWord => 2,
            Self::Word => 4,
            Self::DoubleWord => 8,
        }
    }

    /// Keeps the low `bytes()` bytes of `value`.
    #[must_use]
    #[inline]
    pub const fn truncate(self, value: u64) -> u64 {
        match self {
            Self::DoubleWord => value,
            _ => value & ((1u64 << (self.bytes() as u32 * 8)) - 1),
        }
    }
}

/// A device model behind a guest-physical MMIO window.
///
/// `offset` is relative to the start of the device's window. Reads of
/// registers the model does not implement return 0 and writes to them are
/// ignored, as real devices do for reserved offsets.
pub trait MmioDevice {
    /// The size of the device's window in bytes.
    fn window_size(&self) -> u64;
    fn read(&mut self, offset: u64, width: AccessWidth) -> u64;
    fn write(&mut self, offset: u64, width: AccessWidth, value: u64);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn widths_round_trip_and_truncate() {
        for bytes in [1, 2, 4, 8] {
            assert_eq!(AccessWidth::from_bytes(bytes).unwrap().bytes(), bytes);
        }
        assert_eq!(AccessWidth::from_bytes(3), None);
        assert_eq!(AccessWidth::Byte.truncate(0x1234), 0x34);
        assert_eq!(AccessWidth::HalfWord.truncate(0x12_3456), 0x3456);
        assert_eq!(AccessWidth::Word.truncate(u64::MAX), 0xFFFF_FFFF);
        assert_eq!(AccessWidth::DoubleWord.truncate(u64::MAX), u64::MAX);
    }
}
