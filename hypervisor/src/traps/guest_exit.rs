//! Why a guest left EL1: the lower-EL exception syndrome decoded once into a
//! typed event, which the trap dispatcher then routes.

use tessera_vdevs::AccessWidth;

use crate::memory::address::GuestPhysAddr;
use crate::traps::crash_report::TrapFrame;
use crate::traps::exception_syndrome::{ExceptionClass, ExceptionSyndrome, FaultStatus};

/// A guest load or store that hit a guest-physical address with no RAM
/// behind it, with the syndrome the hardware gave for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MmioAccess {
    pub address: GuestPhysAddr,
    pub width: AccessWidth,
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

/// The architecture's generic name, `S<op0>_<op1>_C<n>_C<m>_<op2>`, which
/// assemblers accept for any register (written out rather than derived
/// `Debug`: the image then carries none of the `Debug` builders).
impl core::fmt::Display for SystemRegisterEncoding {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "S{}_{}_C{}_C{}_{}",
            self.op0, self.op1, self.crn, self.crm, self.op2
        )
    }
}

/// The guest-physical address of a stage-2 abort: HPFAR_EL2.FIPA gives the
/// page (bits 47:12, in HPFAR bits 43:4), FAR_EL2 the offset in it.
#[must_use]
pub const fn faulting_guest_address(hpfar: u64, far: u64) -> GuestPhysAddr {
    GuestPhysAddr(((hpfar & 0x0000_0FFF_FFFF_FFF0) << 8) | (far & 0xFFF))
}

/// Recognises the most frequent exit, an access to emulate, with one masked
/// compare of the syndrome: EC 0x24 (data abort from a lower EL), ISV set,
/// not cache maintenance, and a translation fault at any level. Everything
/// else, including an access-flag fault (Tessera's stage-2 entries always
/// have AF set, so it does not arise from them), is left to [`decode`].
#[inline]
#[must_use]
pub fn decode_emulated_mmio(
    syndrome: ExceptionSyndrome,
    far: u64,
    hpfar: u64,
) -> Option<MmioAccess> {
    const EXCEPTION_CLASS: u64 = 0x3F << 26;
    const DATA_ABORT_LOWER_EL: u64 = 0x24 << 26;
    const ISV: u64 = 1 << 24;
    const CACHE_MAINTENANCE: u64 = 1 << 8;
    /// DFSC bits 5:2; bits 1:0 are the translation level.
    const FAULT_KIND: u64 = 0x3C;
    const TRANSLATION_FAULT: u64 = 0x04;
    const MASK: u64 = EXCEPTION_CLASS | ISV | CACHE_MAINTENANCE | FAULT_KIND;
    const EMULATED: u64 = DATA_ABORT_LOWER_EL | ISV | TRANSLATION_FAULT;
    let esr = syndrome.0;
    (esr & MASK == EMULATED).then(|| MmioAccess {
        address: faulting_guest_address(hpfar, far),
        width: AccessWidth::from_log2_bytes(esr >> 22),
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
                        width: AccessWidth::from_bytes(abort.access_size)
                            .unwrap_or(AccessWidth::DoubleWord),
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

/// Which of a guest's general registers a trap frame holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SavedRegisters {
    /// x0..x30: the full exit path.
    All,
    /// x0..x18 and x30: the device-access fast path, which leaves the
    /// callee-saved x19..x29 live in the CPU (`arch::vectors`).
    CallerSaved,
}

/// The frame of the device-access fast path: only x0..x18 and x30 hold
/// the guest's values; x19..x29, SP, ELR, SPSR, ESR and FAR are stale (ESR
/// and FAR come to the fast path in registers). The type lets code read
/// only what is there.
#[repr(transparent)]
pub struct CallerSavedFrame(TrapFrame);

impl CallerSavedFrame {
    /// The registers a device access may use.
    pub const fn access(&mut self) -> AccessFrame<'_> {
        AccessFrame {
            frame: &mut self.0,
            saved: SavedRegisters::CallerSaved,
        }
    }
}

/// A trapped guest's registers as an emulated device access uses them:
/// the data register, from a full frame or from
/// the fast path's partial one.
pub struct AccessFrame<'a> {
    frame: &'a mut TrapFrame,
    saved: SavedRegisters,
}

impl<'a> AccessFrame<'a> {
    /// A frame with every register saved.
    pub const fn full(frame: &'a mut TrapFrame) -> Self {
        Self {
            frame,
            saved: SavedRegisters::All,
        }
    }

    /// Whether `access`'s data register is in this frame (XZR always is).
    #[must_use]
    #[inline]
    pub const fn holds_register_of(&self, access: &MmioAccess) -> bool {
        match self.saved {
            SavedRegisters::All => true,
            SavedRegisters::CallerSaved => access.register < 19 || access.register > 29,
        }
    }

    /// `access`'s data register, or `None` when it is not in the frame.
    #[must_use]
    #[inline]
    pub fn data_register(&mut self, access: &MmioAccess) -> Option<DataRegister<'_>> {
        self.holds_register_of(access).then(|| DataRegister {
            // Register 31 is XZR: no slot.
            slot: self.frame.registers.get_mut(usize::from(access.register)),
        })
    }
}

/// The data register of an emulated access, known to be in the frame.
pub struct DataRegister<'f> {
    slot: Option<&'f mut u64>,
}

impl DataRegister<'_> {
    /// The value a store writes: the register, or zero for XZR.
    #[must_use]
    #[inline]
    pub fn stored_value(&self) -> u64 {
        self.slot.as_deref().copied().unwrap_or(0)
    }

    /// Finishes a load: the device's `value`, extended as the instruction
    /// asks, goes to the register (nowhere for XZR).
    #[inline]
    pub fn complete_load(self, access: &MmioAccess, value: u64) {
        self.complete_load_as(access.load_shape(), value);
    }

    /// [`complete_load`](Self::complete_load) with only what the
    /// extension needs of the access.
    #[inline]
    pub fn complete_load_as(self, shape: LoadShape, value: u64) {
        if let Some(slot) = self.slot {
            *slot = extend_loaded_value(&shape.access(), value);
        }
    }
}

/// What extending a loaded value needs of an access (its width and
/// extension), three bytes that travel in one register: the device fast
/// path hands it to each device's out-of-line function, where the whole
/// `MmioAccess` would go through memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoadShape {
    pub width: AccessWidth,
    sign_extend: bool,
    sixty_four_bit_register: bool,
}

impl LoadShape {
    /// An access of this shape (address and register do not matter to
    /// the extension).
    const fn access(self) -> MmioAccess {
        MmioAccess {
            address: GuestPhysAddr(0),
            width: self.width,
            is_write: false,
            register: 0,
            sign_extend: self.sign_extend,
            sixty_four_bit_register: self.sixty_four_bit_register,
        }
    }
}

impl MmioAccess {
    /// Its width and extension.
    #[must_use]
    pub const fn load_shape(&self) -> LoadShape {
        LoadShape {
            width: self.width,
            sign_extend: self.sign_extend,
            sixty_four_bit_register: self.sixty_four_bit_register,
        }
    }
}

/// Sign- or zero-extends a value loaded by an emulated MMIO read into what
/// the destination register must hold. Bits of `value` above the access
/// width are ignored.
#[must_use]
#[inline]
pub const fn extend_loaded_value(access: &MmioAccess, value: u64) -> u64 {
    // Zero-extended, the access's bytes already fit the destination: a
    // W register takes at most 4 of them, and only X registers take 8.
    let value = access.width.truncate(value);
    if !access.sign_extend {
        return value;
    }
    // Shift the access's bytes to the top, then arithmetically back.
    let shift = 64 - access.width.bits();
    let extended = (((value << shift) as i64) >> shift) as u64;
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
                width: AccessWidth::Word,
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
                width: AccessWidth::HalfWord,
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
    fn the_fast_path_takes_translation_faults_only_and_agrees_with_decode() {
        let valid = (0x24 << 26) | (1 << 25) | (1 << 24) | (2 << 22) | (4 << 16);
        for level in 0..4 {
            let esr = ExceptionSyndrome(valid | 0x04 | level);
            let fast = decode_emulated_mmio(esr, 0x0900_0018, HPFAR_FOR_0X0900_0000);
            assert!(fast.is_some());
            assert_eq!(
                GuestExit::Mmio(fast.unwrap()),
                decode(esr, 0x0900_0018, HPFAR_FOR_0X0900_0000)
            );
        }
        for other in [
            valid | 0x09,                                  // access flag, level 1: left to decode
            valid | 0x0B,                                  // access flag, level 3
            valid | 0x0D,                                  // permission
            valid | 0x10,                                  // synchronous external abort
            valid | (1 << 8) | 0x04,                       // cache maintenance
            (valid & !(1 << 24)) | 0x04,                   // no valid syndrome
            (valid & !(0x3F << 26)) | (0x25 << 26) | 0x04, // from EL2 itself
        ] {
            assert_eq!(decode_emulated_mmio(ExceptionSyndrome(other), 0, 0), None);
        }
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
            width: AccessWidth::Byte,
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
        access.width = AccessWidth::Word;
        assert_eq!(
            extend_loaded_value(&access, 0xFFFF_FFFF_8000_0000),
            0x8000_0000
        );
        access.sign_extend = true;
        assert_eq!(extend_loaded_value(&access, 0x8000_0000), 0x8000_0000);
        assert_eq!(extend_loaded_value(&access, 0x7FFF_FFFF), 0x7FFF_FFFF);
        access.sixty_four_bit_register = true;
        assert_eq!(
            extend_loaded_value(&access, 0x8000_0000),
            0xFFFF_FFFF_8000_0000
        );
        access.sign_extend = false;
        access.width = AccessWidth::DoubleWord;
        access.sixty_four_bit_register = true;
        assert_eq!(extend_loaded_value(&access, u64::MAX), u64::MAX);
    }

    #[test]
    fn loads_and_stores_use_the_syndrome_register_and_xzr_is_discarded() {
        let mut frame = TrapFrame::default();
        frame.registers[7] = 0xAB;
        let mut access = MmioAccess {
            address: GuestPhysAddr(0),
            width: AccessWidth::Byte,
            is_write: true,
            register: 7,
            sign_extend: false,
            sixty_four_bit_register: false,
        };
        let mut view = AccessFrame::full(&mut frame);
        assert_eq!(view.data_register(&access).unwrap().stored_value(), 0xAB);
        access.register = 31;
        assert_eq!(view.data_register(&access).unwrap().stored_value(), 0);
        access.is_write = false;
        view.data_register(&access)
            .unwrap()
            .complete_load(&access, 0x1FF);
        access.register = 30;
        view.data_register(&access)
            .unwrap()
            .complete_load(&access, 0x1FF);
        let mut expected = [0; 31];
        expected[7] = 0xAB;
        expected[30] = 0xFF;
        assert_eq!(frame.registers, expected);
    }

    #[test]
    fn the_fast_path_frame_refuses_the_registers_it_did_not_save() {
        let mut frame = CallerSavedFrame(TrapFrame::default());
        frame.0.registers[19] = 0x1919;
        let mut access = MmioAccess {
            address: GuestPhysAddr(0),
            width: AccessWidth::Word,
            is_write: true,
            register: 19,
            sign_extend: false,
            sixty_four_bit_register: false,
        };
        let mut view = frame.access();
        for register in 19..=29 {
            access.register = register;
            assert!(!view.holds_register_of(&access));
            assert!(view.data_register(&access).is_none());
        }
        for register in (0..19).chain([30, 31]) {
            access.register = register;
            assert!(view.holds_register_of(&access));
        }
        assert_eq!(frame.0.registers[19], 0x1919);
    }
}
