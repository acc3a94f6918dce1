//! The register frame saved by the EL2 exception vectors, and the crash
//! report printed when the hypervisor itself takes an exception it does not
//! expect.

use core::fmt;

use crate::traps::exception_syndrome::ExceptionSyndrome;

/// General registers and exception state, as saved by the vector stubs.
/// The layout is shared with the assembly in `arch/aarch64/vectors.rs`:
/// x0..x30 at offset 8*n, then the fields below in order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrapFrame {
    pub registers: [u64; 31],
    /// The stack pointer at the time of the exception.
    pub stack_pointer: u64,
    /// ELR_EL2: where the exception was taken.
    pub exception_link: u64,
    /// SPSR_EL2: the saved processor state.
    pub saved_state: u64,
    /// ESR_EL2.
    pub syndrome: u64,
    /// FAR_EL2.
    pub fault_address: u64,
}

impl TrapFrame {
    /// Resumes the guest after the instruction it trapped on, which the
    /// hypervisor carried out: ELR moves past it (an A64 instruction is 4
    /// bytes), and SPSR.SS is cleared, so a guest single-stepping that
    /// instruction takes its step exception right after it, as if the
    /// instruction had run (a trapped instruction leaves SS set).
    pub const fn step_over_trapped_instruction(&mut self) {
        const SOFTWARE_STEP: u64 = 1 << 21;
        self.exception_link = self.exception_link.wrapping_add(4);
        self.saved_state &= !SOFTWARE_STEP;
    }
}

/// The frame size in bytes; the assembly reserves exactly this much.
pub const TRAP_FRAME_SIZE: usize = core::mem::size_of::<TrapFrame>();
const _: () = assert!(TRAP_FRAME_SIZE == 36 * 8);
const _: () = assert!(
    TRAP_FRAME_SIZE.is_multiple_of(16),
    "the stack stays 16-byte aligned"
);

/// Which vector an exception arrived through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VectorKind {
    Synchronous,
    Irq,
    Fiq,
    SError,
}

impl VectorKind {
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Synchronous => "synchronous exception",
            Self::Irq => "IRQ",
            Self::Fiq => "FIQ",
            Self::SError => "SError",
        }
    }
}

/// Decodes SPSR_ELx.M[3:0] into the exception level and stack it names.
fn describe_mode(saved_state: u64) -> &'static str {
    match saved_state & 0xF {
        0b0000 => "EL0t",
        0b0100 => "EL1t",
        0b0101 => "EL1h",
        0b1000 => "EL2t",
        0b1001 => "EL2h",
        _ => "unknown mode",
    }
}

/// Writes the full crash report: the CPU, what was taken, the decoded
/// syndrome, FAR, ELR, SPSR and every general register. The first line
/// always contains `CRASH REPORT` so that logs and test runners can find it.
///
/// # Errors
/// Only those of the writer.
pub fn write_crash_report(
    out: &mut impl fmt::Write,
    cpu: usize,
    kind: VectorKind,
    frame: &TrapFrame,
) -> fmt::Result {
    writeln!(
        out,
        "==== CRASH REPORT: hypervisor {} on cpu {cpu} ====",
        kind.name()
    )?;
    writeln!(out, "ESR_EL2  {}", ExceptionSyndrome(frame.syndrome))?;
    writeln!(out, "FAR_EL2  {:#018x}", frame.fault_address)?;
    writeln!(out, "ELR_EL2  {:#018x}", frame.exception_link)?;
    writeln!(
        out,
        "SPSR_EL2 {:#018x} ({}, DAIF {:04b})",
        frame.saved_state,
        describe_mode(frame.saved_state),
        (frame.saved_state >> 6) & 0xF
    )?;
    // Two a line: x0..x30, then sp (one format for all of them).
    for index in 0..32 {
        // Entry 31 is sp (the frame holds x0..x30).
        let value = frame
            .registers
            .get(index)
            .copied()
            .unwrap_or(frame.stack_pointer);
        if index < 31 {
            write!(out, "x{index:<2}")?;
        } else {
            out.write_str("sp ")?;
        }
        write!(out, " {value:#018x}")?;
        out.write_str(if index % 2 == 0 { "  " } else { "\n" })?;
    }
    writeln!(out, "==== end of crash report ====")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stepping_over_a_trapped_instruction_moves_on_and_ends_the_step() {
        let mut frame = TrapFrame {
            exception_link: 0x4008_0000,
            saved_state: 0x3C5 | (1 << 21),
            ..TrapFrame::default()
        };
        frame.step_over_trapped_instruction();
        assert_eq!(frame.exception_link, 0x4008_0004);
        assert_eq!(frame.saved_state, 0x3C5);
    }

    #[test]
    fn report_names_cpu_syndrome_and_every_register() {
        let mut frame = TrapFrame {
            syndrome: (0x25 << 26) | (1 << 25) | (1 << 6) | 0x04,
            fault_address: 0xdead_0000,
            exception_link: 0x4008_1234,
            saved_state: 0x3C9,
            stack_pointer: 0x4010_0000,
            ..TrapFrame::default()
        };
        for (index, register) in frame.registers.iter_mut().enumerate() {
            *register = 0x1000 + index as u64;
        }
        let mut text = String::new();
        write_crash_report(&mut text, 2, VectorKind::Synchronous, &frame).unwrap();
        assert!(text.starts_with("==== CRASH REPORT: hypervisor synchronous exception on cpu 2"));
        assert!(text.contains("data abort from the same EL"), "{text}");
        assert!(
            text.contains("translation fault, level 0 on write"),
            "{text}"
        );
        assert!(text.contains("FAR_EL2  0x00000000dead0000"));
        assert!(text.contains("ELR_EL2  0x0000000040081234"));
        assert!(text.contains("(EL2h, DAIF 1111)"), "{text}");
        for index in 0..31 {
            let expected = format!("x{index:<2} {:#018x}", 0x1000 + index);
            assert!(text.contains(&expected), "missing {expected} in\n{text}");
        }
        assert!(text.contains("sp  0x0000000040100000"));
    }
}
