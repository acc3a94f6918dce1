//! The decoded form of a trapped guest access, shared by every device model.

/// The width of one MMIO access. The discriminant is log2 of the size in
/// bytes, as in an Arm syndrome's SAS field, so converting either way is a
/// shift rather than a table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum AccessWidth {
    Byte = 0,
    HalfWord = 1,
    Word = 2,
    DoubleWord = 3,
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

    /// From a log2 size field, as in an Arm syndrome's SAS (0 = byte ..
    /// 3 = doubleword); only the low two bits are looked at.
    #[must_use]
    #[inline]
    pub const fn from_log2_bytes(field: u64) -> Self {
        match field & 0b11 {
            0 => Self::Byte,
            1 => Self::HalfWord,
            2 => Self::Word,
            _ => Self::DoubleWord,
        }
    }

    #[must_use]
    #[inline]
    pub const fn bytes(self) -> u8 {
        1 << self as u8
    }

    #[must_use]
    #[inline]
    pub const fn bits(self) -> u32 {
        8 << self as u32
    }

    /// Keeps the low `bytes()` bytes of `value`.
    #[must_use]
    #[inline]
    pub const fn truncate(self, value: u64) -> u64 {
        // 64 - bits is 56, 48, 32 or 0: always a valid shift.
        value & (u64::MAX >> (64 - self.bits()))
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
        for (field, bytes) in [(0, 1), (1, 2), (2, 4), (3, 8), (7, 8)] {
            assert_eq!(AccessWidth::from_log2_bytes(field).bytes(), bytes);
        }
        assert_eq!(AccessWidth::Byte.truncate(0x1234), 0x34);
        assert_eq!(AccessWidth::HalfWord.truncate(0x12_3456), 0x3456);
        assert_eq!(AccessWidth::Word.truncate(u64::MAX), 0xFFFF_FFFF);
        assert_eq!(AccessWidth::DoubleWord.truncate(u64::MAX), u64::MAX);
    }
}
