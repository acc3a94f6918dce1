//! Accesses a test expects to abort.
//!
//! [`probe_read`] and [`probe_write`] make one 64-bit access each
//! ([`probe_read32`] and [`probe_write32`] one 32-bit access,
//! [`probe_write8`] one byte, [`probe_load_exclusive`] one LDXR,
//! [`probe_atomic_add`] one LDADD where the CPU has it). If it
//! takes a data abort, the exception handler does not stop the VM: it hands
//! the syndrome and fault address back and the probe returns
//! `Err(Abort { .. })`. The handler recognises a probe by the address of the
//! faulting instruction — the accessors' one load and one store — so no
//! per-vCPU "expecting a fault" state is needed and any vCPU may probe at
//! any time. An abort anywhere else is still fatal.
//!
//! With the MMU off every access is a Device access: the address must be
//! 8-byte aligned, or the probe reports an alignment fault.

use core::fmt;

use crate::arch::{self, PROBE_ESR_REGISTER, PROBE_FAR_REGISTER, ProbeSites};
use crate::exception::{Syndrome, TrapFrame, class};

/// A probe access that took a data abort.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Abort {
    /// ESR_EL1 of the abort.
    pub esr: u64,
    /// FAR_EL1 of the abort: the address the access faulted on.
    pub far: u64,
}

impl Abort {
    #[must_use]
    pub const fn syndrome(&self) -> Syndrome {
        Syndrome(self.esr)
    }

    /// A synchronous external abort (DFSC 0x10) at exactly `address`: what
    /// Tessera delivers for an access outside everything the VM was given.
    #[must_use]
    pub const fn is_external_abort_at(&self, address: u64) -> bool {
        self.syndrome().is_external_data_abort() && self.far == address
    }
}

/// `<syndrome> (ESR 0x.., FAR 0x..)`, e.g.
/// `data abort from the same EL (synchronous external abort, read) (ESR 0x96000010, FAR 0x48000000)`.
impl fmt::Display for Abort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (ESR {:#x}, FAR {:#x})",
            self.syndrome(),
            self.esr,
            self.far
        )
    }
}

/// Reads 64 bits at `address`; `Err` if the read took a data abort.
///
/// Reading a device register may have side effects on that device (a
/// UART's receive FIFO, for one); that is the caller's business.
///
/// # Errors
/// The abort's syndrome and fault address.
pub fn probe_read(address: u64) -> Result<u64, Abort> {
    let outcome = arch::probe_read(address);
    completed(&outcome).map(|()| outcome.value)
}

/// Writes `value` (64 bits) to `address`; `Err` if the write took a data
/// abort.
///
/// # Safety
/// If the write does not abort it happens: `address` must not be memory
/// this program relies on (its image, stacks, device tree, console).
///
/// # Errors
/// The abort's syndrome and fault address.
pub unsafe fn probe_write(address: u64, value: u64) -> Result<(), Abort> {
    // SAFETY: the caller vouches for the write.
    let outcome = unsafe { arch::probe_write(address, value) };
    completed(&outcome)
}

/// Reads 32 bits at `address` (4-byte aligned); `Err` if the read took a
/// data abort. As [`probe_read`] otherwise.
///
/// # Errors
/// The abort's syndrome and fault address.
pub fn probe_read32(address: u64) -> Result<u32, Abort> {
    let outcome = arch::probe_read32(address);
    completed(&outcome).map(|()| outcome.value as u32)
}

/// Writes `value` (32 bits) to `address` (4-byte aligned); `Err` if the
/// write took a data abort.
///
/// # Safety
/// As [`probe_write`], for the 4 bytes at `address`.
///
/// # Errors
/// The abort's syndrome and fault address.
pub unsafe fn probe_write32(address: u64, value: u32) -> Result<(), Abort> {
    // SAFETY: the caller vouches for the write.
    let outcome = unsafe { arch::probe_write32(address, value) };
    completed(&outcome)
}

/// Writes the byte `value` to `address`; `Err` if the write took a data
/// abort.
///
/// # Safety
/// As [`probe_write`], for the byte at `address`.
///
/// # Errors
/// The abort's syndrome and fault address.
pub unsafe fn probe_write8(address: u64, value: u8) -> Result<(), Abort> {
    // SAFETY: the caller vouches for the write.
    let outcome = unsafe { arch::probe_write8(address, value) };
    completed(&outcome)
}

/// A 64-bit load-exclusive (LDXR) from `address`, the exclusive monitor
/// cleared after it; `Err` if it took a data abort. For pages a device
/// emulates, where exclusives are refused (vdev-shmem's).
///
/// # Errors
/// The abort's syndrome and fault address.
pub fn probe_load_exclusive(address: u64) -> Result<u64, Abort> {
    let outcome = arch::probe_load_exclusive(address);
    completed(&outcome).map(|()| outcome.value)
}

/// A 64-bit atomic add (LDADD) of `value` at `address`; the old value, or
/// `Err` if it took a data abort. `None` without FEAT_LSE, where the
/// instruction does not exist.
///
/// # Safety
/// As [`probe_write`], for the 8 bytes at `address`.
///
/// # Errors
/// The abort's syndrome and fault address.
pub unsafe fn probe_atomic_add(address: u64, value: u64) -> Option<Result<u64, Abort>> {
    if !crate::cpu::has_atomics() {
        return None;
    }
    // SAFETY: the caller vouches for the access; the CPU has FEAT_LSE.
    let outcome = unsafe { arch::probe_atomic_add(address, value) };
    Some(completed(&outcome).map(|()| outcome.value))
}

/// `Ok` when the probed access completed, else the abort it took.
fn completed(outcome: &arch::ProbeOutcome) -> Result<(), Abort> {
    if outcome.esr == 0 {
        Ok(())
    } else {
        Err(Abort {
            esr: outcome.esr,
            far: outcome.far,
        })
    }
}

/// The exception handler's half of the probe protocol: if `frame` is a data
/// abort at EL1 of one of the probe accesses, hands ESR and FAR back in the
/// registers the accessor expects, steps over the access and returns true.
/// Otherwise leaves `frame` alone and returns false.
pub(crate) fn recover(
    frame: &mut TrapFrame,
    syndrome: Syndrome,
    fault_address: u64,
    sites: ProbeSites,
) -> bool {
    let at_probe = sites.contains(frame.elr);
    if !at_probe || syndrome.class() != class::DATA_ABORT_SAME_EL {
        return false;
    }
    frame.x[PROBE_ESR_REGISTER] = syndrome.0;
    frame.x[PROBE_FAR_REGISTER] = fault_address;
    // Every A64 instruction is 4 bytes.
    frame.elr += 4;
    true
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::string::ToString;

    use super::*;

    const SITES: ProbeSites = ProbeSites {
        read: 0x4008_1000,
        write: 0x4008_1020,
        read32: 0x4008_1040,
        write32: 0x4008_1060,
        write8: 0x4008_1080,
        load_exclusive: 0x4008_10A0,
        atomic_add: 0x4008_10C0,
    };

    fn frame_at(elr: u64) -> TrapFrame {
        TrapFrame {
            x: [0xAAAA; 31],
            elr,
            ..TrapFrame::default()
        }
    }

    #[test]
    fn data_abort_at_a_probe_site_is_handed_back() {
        for site in [
            SITES.read,
            SITES.write,
            SITES.read32,
            SITES.write32,
            SITES.write8,
            SITES.load_exclusive,
            SITES.atomic_add,
        ] {
            let mut frame = frame_at(site);
            assert!(recover(
                &mut frame,
                Syndrome(0x9600_0010),
                0x4800_0000,
                SITES
            ));
            assert_eq!(frame.x[PROBE_ESR_REGISTER], 0x9600_0010);
            assert_eq!(frame.x[PROBE_FAR_REGISTER], 0x4800_0000);
            assert_eq!(frame.elr, site + 4);
            // Nothing else changes.
            assert_eq!(frame.x[0], 0xAAAA);
            assert_eq!(frame.x[4], 0xAAAA);
        }
    }

    #[test]
    fn aborts_elsewhere_are_not_recovered() {
        let mut frame = frame_at(SITES.read + 4);
        let before = frame.clone();
        assert!(!recover(
            &mut frame,
            Syndrome(0x9600_0010),
            0x4800_0000,
            SITES
        ));
        assert_eq!(frame, before);
    }

    #[test]
    fn other_exceptions_at_a_probe_site_are_not_recovered() {
        // An instruction abort or a breakpoint at the site is a real problem.
        for esr in [0x8600_0010, 0xF200_0000, 0x0200_0000] {
            let mut frame = frame_at(SITES.read);
            assert!(!recover(&mut frame, Syndrome(esr), 0, SITES));
            assert_eq!(frame.elr, SITES.read);
        }
    }

    #[test]
    fn abort_checks_class_status_and_address() {
        let abort = Abort {
            esr: 0x9600_0010,
            far: 0x4800_0000,
        };
        assert!(abort.is_external_abort_at(0x4800_0000));
        assert!(!abort.is_external_abort_at(0x4800_0008));
        let translation = Abort {
            esr: 0x9600_0006,
            far: 0x4800_0000,
        };
        assert!(!translation.is_external_abort_at(0x4800_0000));
        assert_eq!(
            abort.to_string(),
            "data abort from the same EL (synchronous external abort, read) (ESR 0x96000010, FAR 0x48000000)"
        );
    }
}
