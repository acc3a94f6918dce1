//! Time from the generic timer's virtual counter (CNTVCT_EL0, ticking at
//! CNTFRQ_EL0).

use crate::arch;

/// The virtual counter now.
#[must_use]
pub fn ticks() -> u64 {
    arch::counter()
}

/// The physical counter (CNTPCT_EL0) now, after an ISB. Unlike
/// [`ticks`], no hypervisor offset applies: it counts from the machine's
/// power-on.
#[must_use]
pub fn physical_ticks() -> u64 {
    arch::physical_counter()
}

/// Counter ticks per second.
#[must_use]
pub fn frequency() -> u64 {
    arch::counter_frequency()
}

/// `milliseconds` in ticks of a counter running at `frequency` Hz,
/// saturating.
#[must_use]
pub const fn ms_to_ticks(milliseconds: u64, frequency: u64) -> u64 {
    let ticks = milliseconds as u128 * frequency as u128 / 1000;
    if ticks > u64::MAX as u128 {
        u64::MAX
    } else {
        ticks as u64
    }
}

/// `ticks` of a counter running at `frequency` Hz in whole milliseconds
/// (0 for a 0 Hz counter).
#[must_use]
pub const fn ticks_to_ms(ticks: u64, frequency: u64) -> u64 {
    if frequency == 0 {
        0
    } else {
        (ticks as u128 * 1000 / frequency as u128) as u64
    }
}

/// A point in counter time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Deadline {
    at: u64,
}

impl Deadline {
    /// `milliseconds` from now.
    #[must_use]
    pub fn after_ms(milliseconds: u64) -> Self {
        Self {
            at: ticks().saturating_add(ms_to_ticks(milliseconds, frequency())),
        }
    }

    /// When the virtual counter reaches `ticks`.
    #[must_use]
    pub const fn at_ticks(ticks: u64) -> Self {
        Self { at: ticks }
    }

    /// The virtual-counter value it stands for.
    #[must_use]
    pub const fn ticks(&self) -> u64 {
        self.at
    }

    #[must_use]
    pub fn has_passed(&self) -> bool {
        ticks() >= self.at
    }
}

/// Busy-waits for `milliseconds`.
pub fn delay_ms(milliseconds: u64) {
    let deadline = Deadline::after_ms(milliseconds);
    while !deadline.has_passed() {
        core::hint::spin_loop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn milliseconds_convert_both_ways() {
        // QEMU virt's default counter: 62.5 MHz.
        assert_eq!(ms_to_ticks(200, 62_500_000), 12_500_000);
        assert_eq!(ticks_to_ms(12_500_000, 62_500_000), 200);
        assert_eq!(ms_to_ticks(1, 1_000_000_000), 1_000_000);
        assert_eq!(ms_to_ticks(u64::MAX, 1_000_000_000), u64::MAX);
        assert_eq!(ticks_to_ms(5, 0), 0);
    }
}
