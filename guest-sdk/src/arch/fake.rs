//! The host stand-in for `aarch64.rs`. Nothing here is reached by the unit
//! tests; it exists so the examples compile on the host. Hypercalls answer
//! NOT_SUPPORTED, console output is dropped, accesses never happen.

use core::ops::Range;

use super::{ProbeOutcome, ProbeSites};

/// PSCI's NOT_SUPPORTED, as the register value an HVC would return.
const NOT_SUPPORTED: u64 = -1_i64 as u64;

pub fn hvc(_function: u32, _arg1: u64, _arg2: u64, _arg3: u64) -> u64 {
    NOT_SUPPORTED
}

pub fn console_write_byte(_byte: u8) {}

pub fn mpidr() -> u64 {
    0
}

pub fn counter() -> u64 {
    0
}

pub fn physical_counter() -> u64 {
    0
}

pub fn ticks_around_nothing() -> u64 {
    0
}

/// # Safety
/// Always safe on the host, where it reads nothing; see the real one.
pub unsafe fn ticks_around_read32(_address: usize) -> u64 {
    0
}

pub fn counter_frequency() -> u64 {
    1_000_000_000
}

pub fn park() -> ! {
    loop {
        core::hint::spin_loop();
    }
}

/// # Safety
/// Always safe on the host, where it does nothing; see the real one.
pub unsafe fn set_vector_base(_address: u64) {}

pub fn probe_read(address: u64) -> ProbeOutcome {
    ProbeOutcome {
        value: 0,
        esr: 0,
        far: address,
    }
}

/// # Safety
/// Always safe on the host, where it does nothing; see the real one.
pub unsafe fn probe_write(_address: u64, _value: u64) -> ProbeOutcome {
    ProbeOutcome::default()
}

pub fn probe_sites() -> ProbeSites {
    ProbeSites { read: 0, write: 0 }
}

pub fn secondary_entry_address() -> u64 {
    0
}

pub fn image_range() -> Range<u64> {
    0..0
}
