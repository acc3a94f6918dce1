//! Decoding a guest's load or store from its instruction, for the accesses
//! whose data abort comes without a valid syndrome (ESR_EL2.ISV = 0): load
//! and store pairs and the writeback forms, which clients that map a
//! device's pages as cacheable memory produce (the vdev-shmem ABI,
//! "What counts as a plain load or store"). Everything the ABI calls plain
//! is decoded; everything else (exclusives, atomics, SIMD/FP registers,
//! cache maintenance, prefetches, anything unknown) is `NotPlain`, and the
//! guest gets the synchronous external abort the ABI names.
//!
//! Encodings: Arm ARM (DDI 0487) C4.1.66-C4.1.68, "Loads and Stores": the
//! load/store register (unsigned immediate, unscaled immediate,
//! immediate pre- and post-indexed, register offset), load/store register
//! pair (offset, pre- and post-indexed, no-allocate), and load-acquire /
//! store-release register classes.

#![forbid(unsafe_code)]

use tessera_vdevs::AccessWidth;

use crate::memory::address::GuestPhysAddr;
use crate::traps::guest_exit::MmioAccess;

/// How one register moves to or from memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transfer {
    pub width: AccessWidth,
    pub is_write: bool,
    /// The general register (31 is XZR: loads discard, stores store zero).
    pub register: u8,
    /// Loads: sign-extend to the register.
    pub sign_extend: bool,
    /// Loads: the register is 64 bits wide (else the upper half is zeroed).
    pub sixty_four_bit_register: bool,
}

/// The base-register update of a writeback form.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Writeback {
    /// The base register (31 is the stack pointer).
    pub base: u8,
    /// What is added to the base.
    pub offset: i64,
    /// Post-indexed: the access uses the old base (else pre-indexed: the
    /// new one).
    pub post_index: bool,
}

/// A decoded guest instruction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decoded {
    /// One register, at the faulting address.
    Single {
        transfer: Transfer,
        writeback: Option<Writeback>,
    },
    /// Two registers, `first` at the faulting address and `second`
    /// `first.width` bytes after it. The first is at `first_offset` bytes
    /// from the value register `base` held before the instruction (its
    /// immediate, or 0 when post-indexed): a fault on the second register
    /// alone, the first having been in another page, is told apart by it.
    Pair {
        first: Transfer,
        second_register: u8,
        base: u8,
        first_offset: i64,
        writeback: Option<Writeback>,
    },
    /// Not a plain load or store.
    NotPlain,
}

const fn field(instruction: u32, low: u32, bits: u32) -> u32 {
    (instruction >> low) & ((1 << bits) - 1)
}

/// The signed value of the `bits`-wide field at `low`.
const fn signed_field(instruction: u32, low: u32, bits: u32) -> i64 {
    let value = field(instruction, low, bits) as i64;
    let sign = 1 << (bits - 1);
    (value ^ sign) - sign
}

const fn width_of(size: u32) -> AccessWidth {
    match size {
        0 => AccessWidth::Byte,
        1 => AccessWidth::HalfWord,
        2 => AccessWidth::Word,
        _ => AccessWidth::DoubleWord,
    }
}

/// Decodes `instruction`.
#[must_use]
pub const fn decode(instruction: u32) -> Decoded {
    let register = field(instruction, 0, 5) as u8;
    let base = field(instruction, 5, 5) as u8;
    // Load/store register, single: size 111 V 0x opc ...
    if instruction & 0x3A00_0000 == 0x3800_0000 {
        if field(instruction, 26, 1) != 0 {
            return Decoded::NotPlain; // SIMD/FP register
        }
        let size = field(instruction, 30, 2);
        let opc = field(instruction, 22, 2);
        let Some(transfer) = single_transfer(size, opc, register) else {
            return Decoded::NotPlain;
        };
        if field(instruction, 24, 1) == 1 {
            // Unsigned immediate offset: no writeback.
            return Decoded::Single {
                transfer,
                writeback: None,
            };
        }
        if field(instruction, 21, 1) == 1 {
            // Register offset (bits 11:10 = 10) is plain; with 00 the
            // class is the LSE atomics.
            return if field(instruction, 10, 2) == 0b10 {
                Decoded::Single {
                    transfer,
                    writeback: None,
                }
            } else {
                Decoded::NotPlain
            };
        }
        let offset = signed_field(instruction, 12, 9);
        return match field(instruction, 10, 2) {
            // Unscaled (LDUR/STUR) and unprivileged (LDTR/STTR).
            0b00 | 0b10 => Decoded::Single {
                transfer,
                writeback: None,
            },
            0b01 => Decoded::Single {
                transfer,
                writeback: Some(Writeback {
                    base,
                    offset,
                    post_index: true,
                }),
            },
            _ => Decoded::Single {
                transfer,
                writeback: Some(Writeback {
                    base,
                    offset,
                    post_index: false,
                }),
            },
        };
    }
    // Load/store register pair: opc 101 V xxx L imm7 Rt2 Rn Rt.
    if instruction & 0x3A00_0000 == 0x2800_0000 {
        if field(instruction, 26, 1) != 0 {
            return Decoded::NotPlain;
        }
        let opc = field(instruction, 30, 2);
        let load = field(instruction, 22, 1) == 1;
        let (width, sign_extend, sixty_four) = match (opc, load) {
            (0b00, _) => (AccessWidth::Word, false, false),
            (0b01, true) => (AccessWidth::Word, true, true), // LDPSW
            (0b10, _) => (AccessWidth::DoubleWord, false, true),
            _ => return Decoded::NotPlain,
        };
        let scale = width.bytes() as i64;
        let offset = signed_field(instruction, 15, 7) * scale;
        let writeback = match field(instruction, 23, 2) {
            0b01 => Some(Writeback {
                base,
                offset,
                post_index: true,
            }),
            0b11 => Some(Writeback {
                base,
                offset,
                post_index: false,
            }),
            // Signed offset, and the no-allocate form.
            _ => None,
        };
        let first_offset = match writeback {
            Some(Writeback {
                post_index: true, ..
            }) => 0,
            _ => offset,
        };
        return Decoded::Pair {
            base,
            first_offset,
            first: Transfer {
                width,
                is_write: !load,
                register,
                sign_extend,
                sixty_four_bit_register: sixty_four,
            },
            second_register: field(instruction, 10, 5) as u8,
            writeback,
        };
    }
    // Load-acquire / store-release register (LDAR/STLR): size 001000 1 L 0
    // 11111 1 11111 Rn Rt. The exclusives and other ordered forms differ in
    // o2/o1/o0 and are not plain.
    if instruction & 0x3FBF_FC00 == 0x089F_FC00 {
        let size = field(instruction, 30, 2);
        let load = field(instruction, 22, 1) == 1;
        return Decoded::Single {
            transfer: Transfer {
                width: width_of(size),
                is_write: !load,
                register,
                sign_extend: false,
                sixty_four_bit_register: size == 3,
            },
            writeback: None,
        };
    }
    Decoded::NotPlain
}

/// What a trapped plain load or store does, ready to carry out: one or
/// two accesses (each a syndrome-like [`MmioAccess`]) and the base
/// register's new value for a writeback form.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plan {
    pub first: MmioAccess,
    /// A pair's second register, `first.width` bytes after the first.
    pub second: Option<MmioAccess>,
    /// The base register (31: the stack pointer) and its new value.
    pub writeback: Option<(u8, u64)>,
}

/// Why a trapped access is not carried out: the guest gets the external
/// abort.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unplanned {
    /// Not a plain load or store (exclusive, atomic, SIMD, anything else).
    NotPlain,
    /// The access does not lie whole in the faulting page (it crosses the
    /// page's end, or a pair's first register was in the page before).
    OutsidePage,
}

/// Plans `decoded`, which faulted at guest-physical `address` and
/// virtual `fault_virtual` (FAR), `base_value` giving the value a
/// register (31: the stack pointer) held before the instruction.
///
/// # Errors
///
/// [`Unplanned`] says why the access is refused.
pub fn plan(
    decoded: Decoded,
    address: GuestPhysAddr,
    fault_virtual: u64,
    base_value: impl Fn(u8) -> u64,
) -> Result<Plan, Unplanned> {
    const PAGE: u64 = 0x1000;
    let access = |transfer: Transfer, address: GuestPhysAddr| MmioAccess {
        address,
        width: transfer.width,
        is_write: transfer.is_write,
        register: transfer.register,
        sign_extend: transfer.sign_extend,
        sixty_four_bit_register: transfer.sixty_four_bit_register,
    };
    let writeback_of = |writeback: Option<Writeback>| {
        writeback.map(|w| (w.base, base_value(w.base).wrapping_add_signed(w.offset)))
    };
    match decoded {
        Decoded::NotPlain => Err(Unplanned::NotPlain),
        Decoded::Single {
            transfer,
            writeback,
        } => {
            if address.0 % PAGE + u64::from(transfer.width.bytes()) > PAGE {
                return Err(Unplanned::OutsidePage);
            }
            Ok(Plan {
                first: access(transfer, address),
                second: None,
                writeback: writeback_of(writeback),
            })
        }
        Decoded::Pair {
            first,
            second_register,
            base,
            first_offset,
            writeback,
        } => {
            let bytes = u64::from(first.width.bytes());
            // A fault on the second register means the first was in the
            // page before: it may have been written already, and is not
            // the device's. The page offsets tell (a first register in the
            // page before differs there), and only they: FAR's top byte
            // may not hold a tagged pointer's tag.
            if base_value(base).wrapping_add_signed(first_offset) & 0xFFF != fault_virtual & 0xFFF
                || address.0 % PAGE + 2 * bytes > PAGE
            {
                return Err(Unplanned::OutsidePage);
            }
            let second = Transfer {
                register: second_register,
                ..first
            };
            Ok(Plan {
                first: access(first, address),
                second: Some(access(second, GuestPhysAddr(address.0 + bytes))),
                writeback: writeback_of(writeback),
            })
        }
    }
}

/// A single-register load or store of `size` with `opc` (C4.1.66), or
/// `None` for a prefetch or an unallocated combination.
const fn single_transfer(size: u32, opc: u32, register: u8) -> Option<Transfer> {
    let width = width_of(size);
    let (is_write, sign_extend, sixty_four) = match (size, opc) {
        (_, 0b00) => (true, false, size == 3),
        (_, 0b01) => (false, false, size == 3),
        // Sign-extending to 64 bits: LDRSB/LDRSH/LDRSW (size 3 is PRFM).
        (0..=2, 0b10) => (false, true, true),
        // Sign-extending to 32 bits: LDRSB/LDRSH (word: unallocated).
        (0..=1, 0b11) => (false, true, false),
        _ => return None,
    };
    Some(Transfer {
        width,
        is_write,
        register,
        sign_extend,
        sixty_four_bit_register: sixty_four,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transfer(width: AccessWidth, is_write: bool, register: u8) -> Transfer {
        Transfer {
            width,
            is_write,
            register,
            sign_extend: false,
            sixty_four_bit_register: width == AccessWidth::DoubleWord,
        }
    }

    fn writeback(base: u8, offset: i64, post_index: bool) -> Option<Writeback> {
        Some(Writeback {
            base,
            offset,
            post_index,
        })
    }

    // The encodings are those an assembler gives (llvm-mc).

    #[test]
    fn single_registers_with_and_without_writeback() {
        use AccessWidth::*;
        let cases = [
            // ldr w1, [x2, #8]
            (0xB940_0841, transfer(Word, false, 1), None),
            // str x3, [x4], #16
            (
                0xF801_0483,
                transfer(DoubleWord, true, 3),
                writeback(4, 16, true),
            ),
            // ldr x5, [x6, #-8]!
            (
                0xF85F_8CC5,
                transfer(DoubleWord, false, 5),
                writeback(6, -8, false),
            ),
            // ldur x1, [x2, #-3]
            (0xF85F_D041, transfer(DoubleWord, false, 1), None),
            // strb w3, [x4, #1]!
            (0x3800_1C83, transfer(Byte, true, 3), writeback(4, 1, false)),
            // str xzr, [x5], #8
            (
                0xF800_84BF,
                transfer(DoubleWord, true, 31),
                writeback(5, 8, true),
            ),
            // ldr x1, [x2, x3]
            (0xF863_6841, transfer(DoubleWord, false, 1), None),
            // ldrh w1, [sp, #-2]!
            (
                0x785F_EFE1,
                transfer(HalfWord, false, 1),
                writeback(31, -2, false),
            ),
            // ldar w1, [x2]
            (0x88DF_FC41, transfer(Word, false, 1), None),
            // stlr x3, [x4]
            (0xC89F_FC83, transfer(DoubleWord, true, 3), None),
        ];
        for (instruction, transfer, writeback) in cases {
            assert_eq!(
                decode(instruction),
                Decoded::Single {
                    transfer,
                    writeback
                },
                "{instruction:#010x}"
            );
        }
    }

    #[test]
    fn sign_extending_loads() {
        let sign = |width, sixty_four, register| Transfer {
            width,
            is_write: false,
            register,
            sign_extend: true,
            sixty_four_bit_register: sixty_four,
        };
        // ldrsh w7, [x8, #2]!
        assert_eq!(
            decode(0x78C0_2D07),
            Decoded::Single {
                transfer: sign(AccessWidth::HalfWord, false, 7),
                writeback: writeback(8, 2, false)
            }
        );
        // ldrsb x9, [x10], #1
        assert_eq!(
            decode(0x3880_1549),
            Decoded::Single {
                transfer: sign(AccessWidth::Byte, true, 9),
                writeback: writeback(10, 1, true)
            }
        );
        // ldrsw x1, [x2, #4]!
        assert_eq!(
            decode(0xB880_4C41),
            Decoded::Single {
                transfer: sign(AccessWidth::Word, true, 1),
                writeback: writeback(2, 4, false)
            }
        );
    }

    #[test]
    fn pairs_in_every_addressing_form() {
        use AccessWidth::*;
        // (instruction, first, second register, base, first offset,
        // writeback)
        let cases = [
            // ldp x1, x2, [x3, #16]!
            (
                0xA9C1_0861,
                transfer(DoubleWord, false, 1),
                2,
                (3, 16),
                writeback(3, 16, false),
            ),
            // stp w4, w5, [x6], #-8
            (
                0x28BF_14C4,
                transfer(Word, true, 4),
                5,
                (6, 0),
                writeback(6, -8, true),
            ),
            // ldp x10, x11, [sp]
            (
                0xA940_2FEA,
                transfer(DoubleWord, false, 10),
                11,
                (31, 0),
                None,
            ),
            // stnp x1, x2, [x3]
            (0xA800_0861, transfer(DoubleWord, true, 1), 2, (3, 0), None),
            // ldp w1, w2, [x3, #-4]
            (0x297F_8861, transfer(Word, false, 1), 2, (3, -4), None),
            // stp x1, x2, [x3, #24]
            (0xA901_8861, transfer(DoubleWord, true, 1), 2, (3, 24), None),
            // ldp x1, x2, [x3], #-32
            (
                0xA8FE_0861,
                transfer(DoubleWord, false, 1),
                2,
                (3, 0),
                writeback(3, -32, true),
            ),
            // stp x29, x30, [sp, #-16]!
            (
                0xA9BF_7BFD,
                transfer(DoubleWord, true, 29),
                30,
                (31, -16),
                writeback(31, -16, false),
            ),
        ];
        for (instruction, first, second_register, (base, first_offset), writeback) in cases {
            assert_eq!(
                decode(instruction),
                Decoded::Pair {
                    first,
                    second_register,
                    base,
                    first_offset,
                    writeback
                },
                "{instruction:#010x}"
            );
        }
        // ldpsw x7, x8, [x9, #8]
        assert_eq!(
            decode(0x6941_2127),
            Decoded::Pair {
                first: Transfer {
                    width: Word,
                    is_write: false,
                    register: 7,
                    sign_extend: true,
                    sixty_four_bit_register: true,
                },
                second_register: 8,
                base: 9,
                first_offset: 8,
                writeback: None
            }
        );
    }

    #[test]
    fn plans_carry_out_singles_pairs_and_writebacks() {
        let registers = |register: u8| u64::from(register) * 0x1000 + 0x10;
        // str x3, [x4], #16: at the fault address, x4 moves on.
        let plan = super::plan(decode(0xF801_0483), GuestPhysAddr(0x900_0010), 0, registers);
        let plan = plan.unwrap();
        assert_eq!(plan.first.address, GuestPhysAddr(0x900_0010));
        assert!(plan.first.is_write && plan.first.register == 3 && plan.second.is_none());
        assert_eq!(plan.writeback, Some((4, 0x4010 + 16)));
        // stp x1, x2, [x3, #24] faulting at x3 + 24: two doublewords.
        let fault = registers(3) + 24;
        let plan = super::plan(
            decode(0xA901_8861),
            GuestPhysAddr(0x900_0028),
            fault,
            registers,
        )
        .unwrap();
        let second = plan.second.unwrap();
        assert_eq!((plan.first.register, second.register), (1, 2));
        assert_eq!(second.address, GuestPhysAddr(0x900_0030));
        assert_eq!(second.width, AccessWidth::DoubleWord);
        assert_eq!(plan.writeback, None);
        // ldp x1, x2, [x3], #-32: the old base, then the base moves back.
        let plan = super::plan(
            decode(0xA8FE_0861),
            GuestPhysAddr(0x900_0000),
            registers(3),
            registers,
        )
        .unwrap();
        assert!(!plan.first.is_write);
        assert_eq!(plan.writeback, Some((3, registers(3) - 32)));
    }

    #[test]
    fn plans_refuse_what_is_not_wholly_in_the_page() {
        let registers = |register: u8| u64::from(register) * 0x1000 + 0x10;
        // stp x1, x2, [x3, #24], but FAR is 8 bytes on: the first register
        // was in the page before.
        let fault = registers(3) + 32;
        assert_eq!(
            super::plan(
                decode(0xA901_8861),
                GuestPhysAddr(0x900_0000),
                fault,
                registers
            ),
            Err(Unplanned::OutsidePage)
        );
        // A pair whose second register runs past the page.
        let fault = registers(3) + 24;
        assert_eq!(
            super::plan(
                decode(0xA901_8861),
                GuestPhysAddr(0x900_0FF8),
                fault,
                registers
            ),
            Err(Unplanned::OutsidePage)
        );
        // ldr x1, [x2, x3] at the page's last four bytes.
        assert_eq!(
            super::plan(decode(0xF863_6841), GuestPhysAddr(0x900_0FFC), 0, registers),
            Err(Unplanned::OutsidePage)
        );
        // ldxr x1, [x2]
        assert_eq!(
            super::plan(decode(0xC85F_7C41), GuestPhysAddr(0x900_0000), 0, registers),
            Err(Unplanned::NotPlain)
        );
    }

    #[test]
    fn everything_else_is_not_plain() {
        for instruction in [
            0xC85F_7C41, // ldxr x1, [x2]
            0xC85F_FC41, // ldaxr x1, [x2]
            0xC801_FC62, // stlxr w1, x2, [x3]
            0xB821_0062, // ldadd w1, w2, [x3]
            0x3DC0_0020, // ldr q0, [x1]
            0xFC00_8C41, // str d1, [x2, #8]!
            0xF980_0020, // prfm pldl1keep, [x1]
            0xD50B_7421, // dc zva, x1
            0x0000_0000,
            0xFFFF_FFFF,
        ] {
            assert_eq!(
                decode(instruction),
                Decoded::NotPlain,
                "{instruction:#010x}"
            );
        }
    }
}
