//! Decoding of the Exception Syndrome Register (ESR_ELx), Arm ARM D24.2.40.
//!
//! Decoded once, here, into typed values: the hypervisor's crash report and
//! trap dispatcher and the guest SDK's exception reports all work from
//! these types rather than from raw bits.

use core::fmt;

/// A raw ESR_ELx value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExceptionSyndrome(pub u64);

/// The exception class, ESR_ELx.EC (bits 31:26).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExceptionClass {
    Unknown,
    WfiWfe,
    SimdFpAccess,
    IllegalExecutionState,
    Svc64,
    Hvc64,
    Smc64,
    SystemRegister,
    SveAccess,
    InstructionAbortLowerEl,
    InstructionAbortSameEl,
    PcAlignment,
    DataAbortLowerEl,
    DataAbortSameEl,
    SpAlignment,
    FpException64,
    SError,
    BreakpointLowerEl,
    BreakpointSameEl,
    SoftwareStepLowerEl,
    SoftwareStepSameEl,
    WatchpointLowerEl,
    WatchpointSameEl,
    Brk64,
    /// A class this decoder does not name; carries the raw EC.
    Other(u8),
}

impl ExceptionClass {
    #[must_use]
    pub const fn from_code(code: u8) -> Self {
        match code {
            0x00 => Self::Unknown,
            0x01 => Self::WfiWfe,
            0x07 => Self::SimdFpAccess,
            0x0E => Self::IllegalExecutionState,
            0x15 => Self::Svc64,
            0x16 => Self::Hvc64,
            0x17 => Self::Smc64,
            0x18 => Self::SystemRegister,
            0x19 => Self::SveAccess,
            0x20 => Self::InstructionAbortLowerEl,
            0x21 => Self::InstructionAbortSameEl,
            0x22 => Self::PcAlignment,
            0x24 => Self::DataAbortLowerEl,
            0x25 => Self::DataAbortSameEl,
            0x26 => Self::SpAlignment,
            0x2C => Self::FpException64,
            0x2F => Self::SError,
            0x30 => Self::BreakpointLowerEl,
            0x31 => Self::BreakpointSameEl,
            0x32 => Self::SoftwareStepLowerEl,
            0x33 => Self::SoftwareStepSameEl,
            0x34 => Self::WatchpointLowerEl,
            0x35 => Self::WatchpointSameEl,
            0x3C => Self::Brk64,
            other => Self::Other(other),
        }
    }

    /// Its place in [`CLASS_DESCRIPTIONS`]: its place in the declaration,
    /// so the compiler needs no table to find it.
    const fn description_index(self) -> usize {
        match self {
            Self::Unknown => 0,
            Self::WfiWfe => 1,
            Self::SimdFpAccess => 2,
            Self::IllegalExecutionState => 3,
            Self::Svc64 => 4,
            Self::Hvc64 => 5,
            Self::Smc64 => 6,
            Self::SystemRegister => 7,
            Self::SveAccess => 8,
            Self::InstructionAbortLowerEl => 9,
            Self::InstructionAbortSameEl => 10,
            Self::PcAlignment => 11,
            Self::DataAbortLowerEl => 12,
            Self::DataAbortSameEl => 13,
            Self::SpAlignment => 14,
            Self::FpException64 => 15,
            Self::SError => 16,
            Self::BreakpointLowerEl => 17,
            Self::BreakpointSameEl => 18,
            Self::SoftwareStepLowerEl => 19,
            Self::SoftwareStepSameEl => 20,
            Self::WatchpointLowerEl => 21,
            Self::WatchpointSameEl => 22,
            Self::Brk64 => 23,
            Self::Other(_) => 24,
        }
    }

    #[must_use]
    pub const fn description(self) -> &'static str {
        crate::text::nul_ended_entry(CLASS_DESCRIPTIONS, self.description_index())
    }
}

/// The class descriptions in [`ExceptionClass::description_index`] order
/// (declaration order), each ended by a NUL. One string rather than a `match` yielding a `&str`
/// per class: such a match compiles to a table of a pointer and a length
/// per class (16 bytes each), and LTO copies that table into every caller
/// it inlines the match into.
const CLASS_DESCRIPTIONS: &str = concat!(
    "unknown reason (undefined instruction)\0",
    "WFI or WFE\0",
    "SIMD/FP access trapped\0",
    "illegal execution state\0",
    "SVC (AArch64)\0",
    "HVC (AArch64)\0",
    "SMC (AArch64)\0",
    "MSR/MRS/system instruction trapped\0",
    "SVE access trapped\0",
    "instruction abort from a lower EL\0",
    "instruction abort from the same EL\0",
    "PC alignment fault\0",
    "data abort from a lower EL\0",
    "data abort from the same EL\0",
    "SP alignment fault\0",
    "floating-point exception (AArch64)\0",
    "SError interrupt\0",
    "breakpoint\0",
    "breakpoint\0",
    "software step\0",
    "software step\0",
    "watchpoint\0",
    "watchpoint\0",
    "BRK instruction\0",
    "unrecognised exception class\0",
);
const _: () = assert!(crate::text::holds_nul_ended_entries(
    CLASS_DESCRIPTIONS,
    ExceptionClass::Other(0).description_index() + 1
));

/// Fault status code of an abort (DFSC/IFSC, bits 5:0 of the ISS).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultStatus {
    AddressSize { level: u8 },
    Translation { level: u8 },
    AccessFlag { level: u8 },
    Permission { level: u8 },
    SynchronousExternal,
    SynchronousTagCheck,
    SynchronousExternalOnWalk { level: u8 },
    SynchronousParityOrEcc,
    Alignment,
    TlbConflict,
    Other(u8),
}

impl FaultStatus {
    #[must_use]
    pub const fn from_code(code: u8) -> Self {
        let level = code & 0b11;
        match code {
            0x00..=0x03 => Self::AddressSize { level },
            0x04..=0x07 => Self::Translation { level },
            0x09..=0x0B => Self::AccessFlag { level },
            0x0D..=0x0F => Self::Permission { level },
            0x10 => Self::SynchronousExternal,
            0x11 => Self::SynchronousTagCheck,
            0x14..=0x17 => Self::SynchronousExternalOnWalk { level },
            0x18 => Self::SynchronousParityOrEcc,
            0x21 => Self::Alignment,
            0x30 => Self::TlbConflict,
            other => Self::Other(other),
        }
    }
}

impl fmt::Display for FaultStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::AddressSize { level } => write!(f, "address size fault, level {level}"),
            Self::Translation { level } => write!(f, "translation fault, level {level}"),
            Self::AccessFlag { level } => write!(f, "access flag fault, level {level}"),
            Self::Permission { level } => write!(f, "permission fault, level {level}"),
            Self::SynchronousExternal => f.write_str("synchronous external abort"),
            Self::SynchronousTagCheck => f.write_str("synchronous tag check fault"),
            Self::SynchronousParityOrEcc => f.write_str("synchronous parity or ECC error"),
            Self::SynchronousExternalOnWalk { level } => {
                write!(f, "synchronous external abort on table walk, level {level}")
            }
            Self::Alignment => f.write_str("alignment fault"),
            Self::TlbConflict => f.write_str("TLB conflict abort"),
            Self::Other(code) => write!(f, "fault status {code:#04x}"),
        }
    }
}

/// The instruction-specific syndrome of a data abort (ISS bits 24:0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DataAbortSyndrome {
    /// Whether bits 23:14 (access size, register, sign extension) are valid.
    pub syndrome_valid: bool,
    /// Access size in bytes, when `syndrome_valid`.
    pub access_size: u8,
    /// Whether the load sign-extends, when `syndrome_valid`.
    pub sign_extend: bool,
    /// The transfer register number (31 = XZR), when `syndrome_valid`.
    pub register: u8,
    /// Whether the register is 64 bits wide, when `syndrome_valid`.
    pub sixty_four_bit_register: bool,
    /// Load-acquire / store-release, when `syndrome_valid`.
    pub acquire_release: bool,
    /// FAR is not valid (FnV).
    pub far_not_valid: bool,
    /// Cache maintenance or address translation instruction.
    pub cache_maintenance: bool,
    /// Fault on a stage-2 walk for a stage-1 walk.
    pub stage1_walk: bool,
    pub is_write: bool,
    pub status: FaultStatus,
}

impl ExceptionSyndrome {
    #[must_use]
    pub const fn class_code(self) -> u8 {
        ((self.0 >> 26) & 0x3F) as u8
    }

    #[must_use]
    pub const fn class(self) -> ExceptionClass {
        ExceptionClass::from_code(self.class_code())
    }

    /// IL: the trapped instruction was 32 bits wide (always, in AArch64).
    #[must_use]
    pub const fn instruction_is_32_bit(self) -> bool {
        self.0 & (1 << 25) != 0
    }

    /// The instruction-specific syndrome, bits 24:0.
    #[must_use]
    pub const fn iss(self) -> u32 {
        (self.0 & 0x1FF_FFFF) as u32
    }

    /// The data-abort view of the ISS, for the two data-abort classes.
    #[must_use]
    pub const fn data_abort(self) -> Option<DataAbortSyndrome> {
        match self.class() {
            ExceptionClass::DataAbortLowerEl | ExceptionClass::DataAbortSameEl => {}
            _ => return None,
        }
        let iss = self.iss();
        Some(DataAbortSyndrome {
            syndrome_valid: iss & (1 << 24) != 0,
            access_size: 1 << ((iss >> 22) & 0b11),
            sign_extend: iss & (1 << 21) != 0,
            register: ((iss >> 16) & 0x1F) as u8,
            sixty_four_bit_register: iss & (1 << 15) != 0,
            acquire_release: iss & (1 << 14) != 0,
            far_not_valid: iss & (1 << 10) != 0,
            cache_maintenance: iss & (1 << 8) != 0,
            stage1_walk: iss & (1 << 7) != 0,
            is_write: iss & (1 << 6) != 0,
            status: FaultStatus::from_code((iss & 0x3F) as u8),
        })
    }

    /// The fault status of an instruction abort.
    #[must_use]
    pub const fn instruction_abort_status(self) -> Option<FaultStatus> {
        match self.class() {
            ExceptionClass::InstructionAbortLowerEl | ExceptionClass::InstructionAbortSameEl => {
                Some(FaultStatus::from_code((self.iss() & 0x3F) as u8))
            }
            _ => None,
        }
    }
}

/// One line: raw value, class, and the class-specific details.
impl fmt::Display for ExceptionSyndrome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:#010x}: EC {:#04x} {}, IL {}, ISS {:#09x}",
            self.0,
            self.class_code(),
            self.class().description(),
            if self.instruction_is_32_bit() { 32 } else { 16 },
            self.iss()
        )?;
        if let Some(abort) = self.data_abort() {
            write!(
                f,
                "; {} on {}",
                abort.status,
                if abort.is_write { "write" } else { "read" }
            )?;
            if abort.syndrome_valid {
                write!(
                    f,
                    ", {} byte(s) via {}{}",
                    abort.access_size,
                    if abort.sixty_four_bit_register {
                        'x'
                    } else {
                        'w'
                    },
                    abort.register
                )?;
            }
            if abort.far_not_valid {
                f.write_str(", FAR not valid")?;
            }
        } else if let Some(status) = self.instruction_abort_status() {
            write!(f, "; {status}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_a_same_el_data_abort_write() {
        // EC 0x25, IL, ISV, SAS=3 (8 bytes), SRT=1, SF, WnR, DFSC level-1 translation.
        let esr = ExceptionSyndrome(
            (0x25 << 26)
                | (1 << 25)
                | (1 << 24)
                | (3 << 22)
                | (1 << 16)
                | (1 << 15)
                | (1 << 6)
                | 0x05,
        );
        assert_eq!(esr.class(), ExceptionClass::DataAbortSameEl);
        let abort = esr.data_abort().unwrap();
        assert!(abort.syndrome_valid && abort.is_write && abort.sixty_four_bit_register);
        assert_eq!(abort.access_size, 8);
        assert_eq!(abort.register, 1);
        assert_eq!(abort.status, FaultStatus::Translation { level: 1 });
        let text = format!("{esr}");
        assert!(text.contains("data abort from the same EL"), "{text}");
        assert!(
            text.contains("translation fault, level 1 on write, 8 byte(s) via x1"),
            "{text}"
        );
    }

    #[test]
    fn names_what_the_guest_sdk_reports_too() {
        assert_eq!(
            ExceptionClass::from_code(0x2C).description(),
            "floating-point exception (AArch64)"
        );
        assert_eq!(
            FaultStatus::from_code(0x11).to_string(),
            "synchronous tag check fault"
        );
        assert_eq!(
            FaultStatus::from_code(0x18).to_string(),
            "synchronous parity or ECC error"
        );
    }

    #[test]
    fn describes_every_class() {
        let expected = [
            (0x00, "unknown reason (undefined instruction)"),
            (0x01, "WFI or WFE"),
            (0x07, "SIMD/FP access trapped"),
            (0x0E, "illegal execution state"),
            (0x15, "SVC (AArch64)"),
            (0x16, "HVC (AArch64)"),
            (0x17, "SMC (AArch64)"),
            (0x18, "MSR/MRS/system instruction trapped"),
            (0x19, "SVE access trapped"),
            (0x20, "instruction abort from a lower EL"),
            (0x21, "instruction abort from the same EL"),
            (0x22, "PC alignment fault"),
            (0x24, "data abort from a lower EL"),
            (0x25, "data abort from the same EL"),
            (0x26, "SP alignment fault"),
            (0x2C, "floating-point exception (AArch64)"),
            (0x2F, "SError interrupt"),
            (0x30, "breakpoint"),
            (0x31, "breakpoint"),
            (0x32, "software step"),
            (0x33, "software step"),
            (0x34, "watchpoint"),
            (0x35, "watchpoint"),
            (0x3C, "BRK instruction"),
            (0x3E, "unrecognised exception class"),
        ];
        for (code, description) in expected {
            assert_eq!(
                ExceptionClass::from_code(code).description(),
                description,
                "EC {code:#04x}"
            );
        }
        assert_eq!(crate::text::nul_ended_entry(CLASS_DESCRIPTIONS, 25), "");
        assert_eq!(crate::text::nul_ended_entry(CLASS_DESCRIPTIONS, 99), "");
    }

    #[test]
    fn decodes_fault_status_codes() {
        assert_eq!(
            FaultStatus::from_code(0x10),
            FaultStatus::SynchronousExternal
        );
        assert_eq!(
            FaultStatus::from_code(0x0F),
            FaultStatus::Permission { level: 3 }
        );
        assert_eq!(
            FaultStatus::from_code(0x0B),
            FaultStatus::AccessFlag { level: 3 }
        );
        assert_eq!(FaultStatus::from_code(0x21), FaultStatus::Alignment);
        assert_eq!(FaultStatus::from_code(0x3F), FaultStatus::Other(0x3F));
    }

    #[test]
    fn other_classes_have_no_abort_view() {
        let hvc = ExceptionSyndrome((0x16 << 26) | (1 << 25));
        assert_eq!(hvc.class(), ExceptionClass::Hvc64);
        assert_eq!(hvc.data_abort(), None);
        assert_eq!(hvc.instruction_abort_status(), None);
        let unknown = ExceptionSyndrome(0x3E << 26);
        assert_eq!(unknown.class(), ExceptionClass::Other(0x3E));
        assert!(format!("{unknown}").contains("unrecognised"));
    }

    #[test]
    fn decodes_instruction_abort() {
        let esr = ExceptionSyndrome((0x21 << 26) | (1 << 25) | 0x0E);
        assert_eq!(
            esr.instruction_abort_status(),
            Some(FaultStatus::Permission { level: 2 })
        );
        assert!(format!("{esr}").ends_with("permission fault, level 2"));
    }
}
