//! Exceptions taken at EL1: the saved context, syndrome decoding and the
//! report a guest prints before it stops.
//!
//! The vectors (in the runtime) save the interrupted registers in a
//! [`TrapFrame`] and hand it to one handler. The only exception it recovers
//! from is a data abort of a [`crate::probe`] access; anything else is
//! reported as
//!
//! ```text
//! guest exception: data abort from the same EL (synchronous external abort, read), ESR 0x96000010, FAR 0x20000000, ELR 0x40081234
//! ```
//!
//! and the VM stops with [`crate::exit_status::UNEXPECTED_EXCEPTION`].
//! Syndrome layouts: Arm ARM (DDI 0487), D24.2.40 "ESR_EL1".

use core::fmt;

use tessera_arm_defs::exception_syndrome::{ExceptionClass, FaultStatus as SharedFaultStatus};

use crate::arch;

/// Points this vCPU's VBAR_EL1 at `address`, replacing the SDK's vectors.
///
/// # Safety
/// Every later exception on this vCPU is taken there: it must hold a vector
/// table, unless the caller means to provoke what happens when it does not
/// (which under Tessera stops the VM).
pub unsafe fn set_vector_base(address: u64) {
    // SAFETY: the caller vouches for the new vector base.
    unsafe { arch::set_vector_base(address) };
}

/// The registers the vectors save, in this layout (the assembly in the
/// runtime uses the offsets below). The handler may change them: the
/// interrupted context resumes with whatever is here.
#[repr(C)]
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrapFrame {
    /// x0..x30.
    pub x: [u64; 31],
    /// ELR_EL1: where the interrupted context resumes.
    pub elr: u64,
    /// SPSR_EL1: its PSTATE.
    pub spsr: u64,
    /// Keeps the frame a multiple of 16 bytes, as SP must stay aligned.
    pub padding: u64,
}

impl TrapFrame {
    pub const SIZE: usize = 272;
    pub const ELR_OFFSET: usize = 248;
}

const _: () = assert!(core::mem::size_of::<TrapFrame>() == TrapFrame::SIZE);
const _: () = assert!(core::mem::offset_of!(TrapFrame, elr) == TrapFrame::ELR_OFFSET);
const _: () = assert!(core::mem::offset_of!(TrapFrame, spsr) == TrapFrame::ELR_OFFSET + 8);
const _: () = assert!(TrapFrame::SIZE.is_multiple_of(16));

/// What kind of exception a vector entry is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExceptionType {
    Synchronous,
    Irq,
    Fiq,
    SError,
}

/// Where the exception came from, which picks the quarter of the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExceptionOrigin {
    /// EL1 using SP_EL0 (EL1t).
    CurrentElSp0,
    /// EL1 using SP_EL1 (EL1h): where guests built with this SDK run.
    CurrentElSpx,
    LowerElAarch64,
    LowerElAarch32,
}

/// One of the 16 entries of the vector table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VectorKind {
    pub origin: ExceptionOrigin,
    pub exception_type: ExceptionType,
}

impl VectorKind {
    /// The entry at `index` (0..16, in table order: offset `index * 0x80`).
    #[must_use]
    pub const fn from_index(index: u64) -> Option<Self> {
        let origin = match index / 4 {
            0 => ExceptionOrigin::CurrentElSp0,
            1 => ExceptionOrigin::CurrentElSpx,
            2 => ExceptionOrigin::LowerElAarch64,
            3 => ExceptionOrigin::LowerElAarch32,
            _ => return None,
        };
        let exception_type = match index % 4 {
            0 => ExceptionType::Synchronous,
            1 => ExceptionType::Irq,
            2 => ExceptionType::Fiq,
            _ => ExceptionType::SError,
        };
        Some(Self {
            origin,
            exception_type,
        })
    }
}

/// An exception syndrome (ESR_EL1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Syndrome(pub u64);

/// Exception classes (ESR_EL1.EC, bits 31:26) this crate names.
pub mod class {
    pub const UNKNOWN: u8 = 0x00;
    pub const WFI_WFE: u8 = 0x01;
    pub const FP_SIMD_ACCESS: u8 = 0x07;
    pub const ILLEGAL_EXECUTION_STATE: u8 = 0x0E;
    pub const SVC_AARCH64: u8 = 0x15;
    pub const HVC_AARCH64: u8 = 0x16;
    pub const SMC_AARCH64: u8 = 0x17;
    pub const SYSTEM_REGISTER: u8 = 0x18;
    pub const SVE_ACCESS: u8 = 0x19;
    pub const INSTRUCTION_ABORT_LOWER_EL: u8 = 0x20;
    pub const INSTRUCTION_ABORT_SAME_EL: u8 = 0x21;
    pub const PC_ALIGNMENT: u8 = 0x22;
    pub const DATA_ABORT_LOWER_EL: u8 = 0x24;
    pub const DATA_ABORT_SAME_EL: u8 = 0x25;
    pub const SP_ALIGNMENT: u8 = 0x26;
    pub const FP_EXCEPTION_AARCH64: u8 = 0x2C;
    pub const SERROR: u8 = 0x2F;
    pub const BREAKPOINT_LOWER_EL: u8 = 0x30;
    pub const BREAKPOINT_SAME_EL: u8 = 0x31;
    pub const SOFTWARE_STEP_LOWER_EL: u8 = 0x32;
    pub const SOFTWARE_STEP_SAME_EL: u8 = 0x33;
    pub const WATCHPOINT_LOWER_EL: u8 = 0x34;
    pub const WATCHPOINT_SAME_EL: u8 = 0x35;
    pub const BRK: u8 = 0x3C;
}

/// Fault status codes (ESR_EL1.ISS.{D,I}FSC, bits 5:0) this crate names.
pub mod fault_status {
    /// Synchronous external abort, not on a translation table walk: what
    /// Tessera injects for an access to guest-physical space with nothing
    /// behind it.
    pub const SYNCHRONOUS_EXTERNAL_ABORT: u8 = 0x10;
    pub const ALIGNMENT: u8 = 0x21;
}

/// ISS.WnR for data aborts: the access was a write.
const WRITE_NOT_READ: u64 = 1 << 6;

impl Syndrome {
    /// ESR.EC.
    #[must_use]
    pub const fn class(self) -> u8 {
        ((self.0 >> 26) & 0x3F) as u8
    }

    /// ESR.ISS.
    #[must_use]
    pub const fn iss(self) -> u32 {
        (self.0 & 0x1FF_FFFF) as u32
    }

    #[must_use]
    pub const fn is_data_abort(self) -> bool {
        matches!(
            self.class(),
            class::DATA_ABORT_SAME_EL | class::DATA_ABORT_LOWER_EL
        )
    }

    #[must_use]
    pub const fn is_instruction_abort(self) -> bool {
        matches!(
            self.class(),
            class::INSTRUCTION_ABORT_SAME_EL | class::INSTRUCTION_ABORT_LOWER_EL
        )
    }

    /// The DFSC or IFSC of a data or instruction abort.
    #[must_use]
    pub const fn fault_status(self) -> Option<FaultStatus> {
        if self.is_data_abort() || self.is_instruction_abort() {
            Some(FaultStatus((self.0 & 0x3F) as u8))
        } else {
            None
        }
    }

    /// For a data abort, whether the access was a write.
    #[must_use]
    pub const fn is_write(self) -> Option<bool> {
        if self.is_data_abort() {
            Some(self.0 & WRITE_NOT_READ != 0)
        } else {
            None
        }
    }

    /// A data abort at EL1 reporting a synchronous external abort: what a
    /// guest gets for touching what is not its own.
    #[must_use]
    pub const fn is_external_data_abort(self) -> bool {
        self.class() == class::DATA_ABORT_SAME_EL
            && (self.0 & 0x3F) as u8 == fault_status::SYNCHRONOUS_EXTERNAL_ABORT
    }

    /// The exception class as words, e.g. "data abort from the same EL"
    /// (the decoder the hypervisor uses too, `tessera-arm-defs`).
    #[must_use]
    pub const fn class_name(self) -> Option<&'static str> {
        match ExceptionClass::from_code(self.class()) {
            ExceptionClass::Other(_) => None,
            known => Some(known.description()),
        }
    }
}

/// Describes the syndrome: the class, and for aborts the fault status and
/// the direction, e.g. `data abort from the same EL (synchronous external abort, write)`.
impl fmt::Display for Syndrome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.class_name() {
            Some(name) => f.write_str(name)?,
            None => write!(f, "exception class {:#04x}", self.class())?,
        }
        if let Some(status) = self.fault_status() {
            write!(f, " ({status}")?;
            match self.is_write() {
                Some(true) => f.write_str(", write")?,
                Some(false) => f.write_str(", read")?,
                None => {}
            }
            f.write_str(")")?;
        }
        Ok(())
    }
}

/// A data or instruction fault status code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FaultStatus(pub u8);

/// Described by the decoder the hypervisor uses too (`tessera-arm-defs`).
impl fmt::Display for FaultStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&SharedFaultStatus::from_code(self.0), f)
    }
}

/// What the handler prints for an exception it does not recover from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExceptionReport {
    pub kind: VectorKind,
    pub syndrome: Syndrome,
    pub fault_address: u64,
    pub return_address: u64,
}

/// `guest exception: <what>, ESR 0x.., FAR 0x.., ELR 0x..` on one line.
/// `<what>` is the decoded syndrome for synchronous exceptions and SErrors
/// (see [`Syndrome`]'s `Display`), "unexpected IRQ" or "unexpected FIQ"
/// otherwise; an exception that did not come from EL1h says where from.
impl fmt::Display for ExceptionReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("guest exception: ")?;
        match self.kind.exception_type {
            ExceptionType::Synchronous => write!(f, "{}", self.syndrome)?,
            ExceptionType::Irq => f.write_str("unexpected IRQ")?,
            ExceptionType::Fiq => f.write_str("unexpected FIQ")?,
            ExceptionType::SError => write!(f, "SError (ISS {:#x})", self.syndrome.iss())?,
        }
        match self.kind.origin {
            ExceptionOrigin::CurrentElSpx => {}
            ExceptionOrigin::CurrentElSp0 => f.write_str(" taken from EL1t")?,
            ExceptionOrigin::LowerElAarch64 => f.write_str(" taken from EL0 (AArch64)")?,
            ExceptionOrigin::LowerElAarch32 => f.write_str(" taken from EL0 (AArch32)")?,
        }
        write!(
            f,
            ", ESR {:#x}, FAR {:#x}, ELR {:#x}",
            self.syndrome.0, self.fault_address, self.return_address
        )
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::string::ToString;

    use super::*;

    /// EC 0x25, IL, DFSC 0x10: a read that hit nothing.
    const EXTERNAL_READ: u64 = 0x9600_0010;
    /// The same with WnR set.
    const EXTERNAL_WRITE: u64 = 0x9600_0050;

    fn sync_at_el1h() -> VectorKind {
        VectorKind::from_index(4).unwrap()
    }

    #[test]
    fn vector_indices_map_to_origin_and_type() {
        assert_eq!(
            VectorKind::from_index(0),
            Some(VectorKind {
                origin: ExceptionOrigin::CurrentElSp0,
                exception_type: ExceptionType::Synchronous
            })
        );
        assert_eq!(
            VectorKind::from_index(5),
            Some(VectorKind {
                origin: ExceptionOrigin::CurrentElSpx,
                exception_type: ExceptionType::Irq
            })
        );
        assert_eq!(
            VectorKind::from_index(15),
            Some(VectorKind {
                origin: ExceptionOrigin::LowerElAarch32,
                exception_type: ExceptionType::SError
            })
        );
        assert_eq!(VectorKind::from_index(16), None);
    }

    #[test]
    fn data_abort_syndrome_decodes() {
        let read = Syndrome(EXTERNAL_READ);
        assert_eq!(read.class(), class::DATA_ABORT_SAME_EL);
        assert!(read.is_data_abort());
        assert!(read.is_external_data_abort());
        assert_eq!(read.is_write(), Some(false));
        assert_eq!(
            read.fault_status(),
            Some(FaultStatus(fault_status::SYNCHRONOUS_EXTERNAL_ABORT))
        );
        assert_eq!(Syndrome(EXTERNAL_WRITE).is_write(), Some(true));
        // A translation fault is not what isolation tests want to see.
        assert!(!Syndrome(0x9600_0045).is_external_data_abort());
        // Nor an external abort taken from a lower EL.
        assert!(!Syndrome(0x9200_0010).is_external_data_abort());
    }

    #[test]
    fn non_aborts_have_no_fault_status() {
        let svc = Syndrome(0x5600_0000);
        assert_eq!(svc.class(), class::SVC_AARCH64);
        assert_eq!(svc.fault_status(), None);
        assert_eq!(svc.is_write(), None);
        assert_eq!(svc.to_string(), "SVC (AArch64)");
    }

    #[test]
    fn syndromes_describe_themselves() {
        assert_eq!(
            Syndrome(EXTERNAL_READ).to_string(),
            "data abort from the same EL (synchronous external abort, read)"
        );
        assert_eq!(
            Syndrome(0x9600_0061).to_string(),
            "data abort from the same EL (alignment fault, write)"
        );
        assert_eq!(
            Syndrome(0x8600_0006).to_string(),
            "instruction abort from the same EL (translation fault, level 2)"
        );
        assert_eq!(
            Syndrome(0x0200_0000).to_string(),
            "unknown reason (undefined instruction)"
        );
        assert_eq!(Syndrome(0xF200_0001).to_string(), "BRK instruction");
        assert_eq!(Syndrome(0xE800_0000).to_string(), "exception class 0x3a");
        assert_eq!(FaultStatus(0x3F).to_string(), "fault status 0x3f");
        assert_eq!(
            FaultStatus(0x15).to_string(),
            "synchronous external abort on table walk, level 1"
        );
    }

    #[test]
    fn report_is_one_line_in_the_documented_shape() {
        let report = ExceptionReport {
            kind: sync_at_el1h(),
            syndrome: Syndrome(EXTERNAL_READ),
            fault_address: 0x2000_0000,
            return_address: 0x4008_1234,
        };
        assert_eq!(
            report.to_string(),
            "guest exception: data abort from the same EL (synchronous external abort, read), \
             ESR 0x96000010, FAR 0x20000000, ELR 0x40081234"
        );
    }

    #[test]
    fn report_names_asynchronous_exceptions_and_odd_origins() {
        let irq = ExceptionReport {
            kind: VectorKind::from_index(5).unwrap(),
            syndrome: Syndrome(0),
            fault_address: 0,
            return_address: 0x4008_0100,
        };
        assert_eq!(
            irq.to_string(),
            "guest exception: unexpected IRQ, ESR 0x0, FAR 0x0, ELR 0x40080100"
        );
        let serror = ExceptionReport {
            kind: VectorKind::from_index(7).unwrap(),
            syndrome: Syndrome(0xBE00_0000),
            fault_address: 0,
            return_address: 0x4008_0200,
        };
        assert_eq!(
            serror.to_string(),
            "guest exception: SError (ISS 0x0), ESR 0xbe000000, FAR 0x0, ELR 0x40080200"
        );
        let from_sp0 = ExceptionReport {
            kind: VectorKind::from_index(0).unwrap(),
            syndrome: Syndrome(0xF200_0000),
            fault_address: 0,
            return_address: 0x4008_0300,
        };
        assert_eq!(
            from_sp0.to_string(),
            "guest exception: BRK instruction taken from EL1t, ESR 0xf2000000, FAR 0x0, ELR 0x40080300"
        );
    }
}
