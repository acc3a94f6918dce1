//! What benchmark guests use (`make bench`, docs/benchmarks.md): timed
//! instruction sequences read with the generic timer's virtual counter, and
//! the min / median / max of a set of samples, printed in the form the host
//! tool parses.
//!
//! Under the benchmark QEMU flags (`-icount shift=0` and a 1 GHz counter)
//! one counter tick is one emulated instruction.

use core::fmt;

use crate::arch;

/// Counter ticks from one ISB-ordered read of CNTVCT_EL0 to the next with
/// nothing between: the calibration to subtract from
/// [`ticks_around_read32`].
#[must_use]
pub fn ticks_around_nothing() -> u64 {
    arch::ticks_around_nothing()
}

/// Counter ticks around one 32-bit load from `address`, read as
/// [`ticks_around_nothing`] reads them (so their difference is the load's
/// cost).
///
/// # Safety
/// `address` must be 4-byte aligned and safe to read: RAM, or a device
/// register whose read has no side effects.
#[must_use]
pub unsafe fn ticks_around_read32(address: usize) -> u64 {
    // SAFETY: passed on to the caller.
    unsafe { arch::ticks_around_read32(address) }
}

/// The smallest, middle and largest of a set of samples.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Summary {
    pub min: u64,
    /// The middle sample; of an even count, the lower of the two middle
    /// ones (so it is always a value that was measured).
    pub median: u64,
    pub max: u64,
}

impl Summary {
    /// Sorts `samples` and summarises them; `None` when there are none.
    #[must_use]
    pub fn of(samples: &mut [u64]) -> Option<Self> {
        samples.sort_unstable();
        Some(Self {
            min: *samples.first()?,
            median: samples[(samples.len() - 1) / 2],
            max: *samples.last()?,
        })
    }
}

/// `min=1 median=2 max=3`: the form the host tool parses after a figure's
/// name.
impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "min={} median={} max={}",
            self.min, self.median, self.max
        )
    }
}

#[cfg(test)]
mod tests {
    extern crate std;

    use super::*;

    #[test]
    fn odd_counts_take_the_middle_sample() {
        let mut samples = [9, 3, 7, 1, 5];
        let summary = Summary::of(&mut samples).unwrap();
        assert_eq!(
            summary,
            Summary {
                min: 1,
                median: 5,
                max: 9
            }
        );
        assert_eq!(samples, [1, 3, 5, 7, 9]);
    }

    #[test]
    fn even_counts_take_the_lower_middle_sample() {
        let summary = Summary::of(&mut [4, 1, 3, 2]).unwrap();
        assert_eq!(summary.median, 2);
        assert_eq!(Summary::of(&mut [7]).unwrap().median, 7);
        assert_eq!(Summary::of(&mut []), None);
    }

    #[test]
    fn prints_as_the_tool_parses_it() {
        let summary = Summary {
            min: 10,
            median: 12,
            max: 400,
        };
        assert_eq!(std::format!("{summary}"), "min=10 median=12 max=400");
    }
}
