//! Why a guest left EL1: the lower-EL exception syndrome decoded once into a
//! typed event, which the trap dispatcher then routes.

use crate::address::GuestPhysAddr;
use crate::exception_syndrome::{ExceptionClass, ExceptionSyndrome, FaultStatus};

/// A guest load or store that hit a guest-physical address with no RAM
/// behind it, with the syndrome the hardware gave for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MmioAccess {
    pub address: GuestPhysAddr,
    /// Bytes: 1, 2, 4 or 8.
    pub width: u8,
    pub is_write: bool,
    /// The general register (31 means XZR for stores / discard for loads).
    pub register: u8,
    /// Loads: sign-extend the value to the register width.
    pub sign_extend: bool,
    /// Loads: the register is 64 bits wide (else the upper half is zeroed).
    pub sixty_four_bit_register: bool,
}

/// A decoded guest exit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestExit {
    /// A data abort at stage 2 with a valid instruction syndrome: an access
    /// the hypervisor can emulate.
    Mmio(MmioAccess),
    /// A data abort at stage 2 that the syndrome does not describe (load or
    /// store pair, writeback forms, exclusives, SIMD): the guest gets an
    /// external abort.
    UndecodableDataAbort {
        address: GuestPhysAddr,
        is_write: bool,
    },
    /// A data abort whose fault is not a stage-2 translation miss (e.g. an
    /// external abort from a device, or an alignment fault).
    OtherDataAbort {
        address: GuestPhysAddr,
        status: FaultStatus,
    },
    /// An instruction fetch from a guest-physical address with nothing
    /// executable behind it.
    InstructionAbort {
        address: GuestPhysAddr,
    },
    /// HVC with its immediate.
    Hypercall {
        immediate: u16,
    },
    /// SMC (trapped by HCR_EL2.TSC).
    SecureMonitorCall,
    WaitForInterrupt,
    WaitForEvent,
    /// MSR/MRS to a trapped system register.
    SystemRegister {
        is_read: bool,
        register: u8,
        encoding: SystemRegisterEncoding,
    },
    /// Anything else, by class.
    Unhandled {
        class: ExceptionClass,
    },
}

/// The op0/op1/CRn/CRm/op2 of a trapped system-register access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SystemRegisterEncoding {
    pub op0: u8,
    pub op1: u8,
    pub crn: u8,
    pub crm: u8,
    pub op2: u8,
}

/// The guest-physical address of a stage-2 abort: HPFAR_EL2.FIPA gives the
/// page (bits 47:12, in HPFAR bits 43:4), FAR_EL2 the offset in it.
#[must_use]
pub const fn faulting_guest_address(hpfar: u64, far: u64) -> GuestPhysAddr {
    GuestPhysAddr(((hpfar & 0x0000_0FFF_FFFF_FFF0) << 8) | (far & 0xFFF))
}

/// Recognises an access to emulate with plain bit tests on the syndrome
/// (EC 0x24, ISV set, a translation or access-flag fault, not cache
/// maintenance): the most frequent exit, checked before anything else.
#[inline]
#[must_use]
pub fn decode_emulated_mmio(
    syndrome: ExceptionSyndrome,
    far: u64,
    hpfar: u64,
) -> Option<MmioAccess> {
    const EC_DATA_ABORT_LOWER_EL: u64 = 0x24;
    const ISV: u64 = 1 << 24;
    const CACHE_MAINTENANCE: u64 = 1 << 8;
    const FAULT_KIND_MASK: u64 = 0x3C;
    const TRANSLATION_FAULT: u64 = 0x04;
    const ACCESS_FLAG_FAULT: u64 = 0x08;
    let esr = syndrome.0;
    let fault_kind = esr & FAULT_KIND_MASK;
    let emulated = (esr >> 26) & 0x3F == EC_DATA_ABORT_LOWER_EL
        && esr & ISV != 0
        && esr & CACHE_MAINTENANCE == 0
        && (fault_kind == TRANSLATION_FAULT || fault_kind == ACCESS_FLAG_FAULT);
    emulated.then(|| MmioAccess {
        address: faulting_guest_address(hpfar, far),
        width: 1 << ((esr >> 22) & 0b11),
        is_write: esr & (1 << 6) != 0,
        register: ((esr >> 16) & 0x1F) as u8,
        sign_extend: esr & (1 << 21) != 0,
        sixty_four_bit_register: esr & (1 << 15) != 0,
    })
}

/// Decodes a lower-EL exception taken to EL2.
#[must_use]
pub fn decode(syndrome: ExceptionSyndrome, far: u64, hpfar: u64) -> GuestExit {
    if let Some(access) = decode_emulated_mmio(syndrome, far, hpfar) {
        return GuestExit::Mmio(access);
    }
    let iss = syndrome.iss();
    match syndrome.class() {
        ExceptionClass::DataAbortLowerEl => {
            let Some(abort) = syndrome.data_abort() else {
                return GuestExit::Unhandled {
                    class: syndrome.class(),
                };
            };
            let address = faulting_guest_address(hpfar, far);
            match abort.status {
                FaultStatus::Translation { .. } | FaultStatus::AccessFlag { .. }
                    if abort.syndrome_valid && !abort.cache_maintenance =>
                {
                    GuestExit::Mmio(MmioAccess {
                        address,
                        width: abort.access_size,
                        is_write: abort.is_write,
                        register: abort.register,
                        sign_extend: abort.sign_extend,
                        sixty_four_bit_register: abort.sixty_four_bit_register,
                    })
                }
                FaultStatus::Translation { .. } | FaultStatus::AccessFlag { .. } => {
                    GuestExit::UndecodableDataAbort {
                        address,
                        is_write: abort.is_write,
                    }
                }
                status => GuestExit::OtherDataAbort { address, status },
            }
        }
        ExceptionClass::InstructionAbortLowerEl => GuestExit::InstructionAbort {
            address: faulting_guest_address(hpfar, far),
        },
        ExceptionClass::Hvc64 => GuestExit::Hypercall {
            immediate: (iss & 0xFFFF) as u16,
        },
        ExceptionClass::Smc64 => GuestExit::SecureMonitorCall,
        ExceptionClass::WfiWfe => {
            if iss & 1 == 0 {
                GuestExit::WaitForInterrupt
            } else {
                GuestExit::WaitForEvent
            }
        }
        ExceptionClass::SystemRegister => GuestExit::SystemRegister {
            is_read: iss & 1 != 0,
            register: ((iss >> 5) & 0x1F) as u8,
            encoding: SystemRegisterEncoding {
                op0: ((iss >> 20) & 0b11) as u8,
                op2: ((iss >> 17) & 0b111) as u8,
                op1: ((iss >> 14) & 0b111) as u8,
                crn: ((iss >> 10) & 0xF) as u8,
                crm: ((iss >> 1) & 0xF) as u8,
            },
        },
        class => GuestExit::Unhandled { class },
    }
}

/// Sign- or zero-extends a value loaded by an emulated MMIO read into what
/// the destination register must hold.
#[must_use]
#[inline]
pub const fn extend_loaded_value(access: &MmioAccess, value: u64) -> u64 {
    // Shift the access's bytes to the top, then back: arithmetically for a
    // sign-extending load, logically otherwise (a 64-bit access shifts by 0).
    let shift = 64 - access.width as u32 * 8;
    let extended = if access.sign_extend {
        (((value << shift) as i64) >> shift) as u64
    } else {
        (value << shift) >> shift
    };
    if access.sixty_four_bit_register {
        extended
    } else {
        extended & 0xFFFF_FFFF
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HPFAR_FOR_0X0900_0000: u64 = 0x0900_0000 >> 8;

    #[test]
    fn a_word_store_to_the_uart_decodes_to_an_mmio_access() {
        // EC 0x24, IL, ISV, SAS=2 (word), SRT=3, WnR, DFSC level-2 translation.
        let esr = ExceptionSyndrome(
            (0x24 << 26) | (1 << 25) | (1 << 24) | (2 << 22) | (3 << 16) | (1 << 6) | 0x06,
        );
        let exit = decode(esr, 0x0900_0030, HPFAR_FOR_0X0900_0000);
        assert_eq!(
            exit,
            GuestExit::Mmio(MmioAccess {
                address: GuestPhysAddr(0x0900_0030),
                width: 4,
                is_write: true,
                register: 3,
                sign_extend: false,
                sixty_four_bit_register: false,
            })
        );
    }

    #[test]
    fn the_fast_path_agrees_with_the_syndrome_fields() {
        // LDRSH x5 (sign-extending halfword into a 64-bit register), access
        // flag fault level 3, read.
        let esr = ExceptionSyndrome(
            (0x24 << 26)
                | (1 << 25)
                | (1 << 24)
                | (1 << 22)
                | (1 << 21)
                | (5 << 16)
                | (1 << 15)
                | 0x0B,
        );
        assert_eq!(
            decode(esr, 0x0900_0002, HPFAR_FOR_0X0900_0000),
            GuestExit::Mmio(MmioAccess {
                address: GuestPhysAddr(0x0900_0002),
                width: 2,
                is_write: false,
                register: 5,
                sign_extend: true,
                sixty_four_bit_register: true,
            })
        );
        // A permission fault with a valid syndrome is not emulated MMIO.
        let permission = ExceptionSyndrome((0x24 << 26) | (1 << 25) | (1 << 24) | 0x0F);
        assert!(matches!(
            decode(permission, 0, 0),
            GuestExit::OtherDataAbort { .. }
        ));
        // Cache maintenance on an unmapped address is not MMIO either.
        let maintenance = ExceptionSyndrome((0x24 << 26) | (1 << 25) | (1 << 24) | (1 << 8) | 0x06);
        assert!(matches!(
            decode(maintenance, 0, 0),
            GuestExit::UndecodableDataAbort { .. }
        ));
    }

    #[test]
    fn a_pair_store_without_syndrome_is_undecodable() {
        let esr = ExceptionSyndrome((0x24 << 26) | (1 << 25) | (1 << 6) | 0x07);
        assert_eq!(
            decode(esr, 0x1008, 0x4800_0000 >> 8),
            GuestExit::UndecodableDataAbort {
                address: GuestPhysAddr(0x4800_0008),
                is_write: true
            }
        );
    }

    #[test]
    fn hvc_wfi_wfe_smc_and_sysreg() {
        assert_eq!(
            decode(ExceptionSyndrome((0x16 << 26) | (1 << 25) | 0x1234), 0, 0),
            GuestExit::Hypercall { immediate: 0x1234 }
        );
        assert_eq!(
            decode(ExceptionSyndrome(0x01 << 26), 0, 0),
            GuestExit::WaitForInterrupt
        );
        assert_eq!(
            decode(ExceptionSyndrome((0x01 << 26) | 1), 0, 0),
            GuestExit::WaitForEvent
        );
        assert_eq!(
            decode(ExceptionSyndrome(0x17 << 26), 0, 0),
            GuestExit::SecureMonitorCall
        );
        // MRS x2, OSLSR_EL1: op0=2, op1=0, CRn=1, CRm=1, op2=4, read.
        let iss = (2 << 20) | (4 << 17) | (1 << 10) | (2 << 5) | (1 << 1) | 1;
        assert_eq!(
            decode(ExceptionSyndrome((0x18 << 26) | iss), 0, 0),
            GuestExit::SystemRegister {
                is_read: true,
                register: 2,
                encoding: SystemRegisterEncoding {
                    op0: 2,
                    op1: 0,
                    crn: 1,
                    crm: 1,
                    op2: 4
                }
            }
        );
    }

    #[test]
    fn loads_are_extended_as_the_instruction_asks() {
        let mut access = MmioAccess {
            address: GuestPhysAddr(0),
            width: 1,
            is_write: false,
            register: 0,
            sign_extend: true,
            sixty_four_bit_register: true,
        };
        assert_eq!(extend_loaded_value(&access, 0x80), 0xFFFF_FFFF_FFFF_FF80);
        access.sixty_four_bit_register = false;
        assert_eq!(extend_loaded_value(&access, 0x80), 0xFFFF_FF80);
        access.sign_extend = false;
        assert_eq!(extend_loaded_value(&access, 0x1_80), 0x80);
        access.width = 8;
        access.sixty_four_bit_register = true;
        assert_eq!(extend_loaded_value(&access, u64::MAX), u64::MAX);
    }
}
