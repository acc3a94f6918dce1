//! The GICv3 redistributors' register files (Arm IHI 0069H §12.10-12.11),
//! one pair of 64 KB frames per vCPU over the VM's interrupt state.
//!
//! The redistributor region is laid out as the architecture does it for a
//! GIC without virtual LPIs (§12.10): vCPU n's RD_base frame at n * 128 KB,
//! its SGI_base frame 64 KB later. Any vCPU of the VM may access any of
//! them, as on hardware; frames past the VM's last vCPU, reserved offsets,
//! and widths the register does not allow read as zero and ignore writes.
//! The SGI and PPI registers of the SGI frame share their semantics (and
//! code) with the distributor's bit, priority and configuration registers.
//! No LPIs: GICR_CTLR, PROPBASER and PENDBASER are RAZ/WI and GICR_TYPER
//! says so.

#![forbid(unsafe_code)]

use tessera_vdevs::AccessWidth;

use super::distributor::{
    BYTE_OR_WORD, BitRegister, IIDR, WORD, WORD_OR_DOUBLEWORD, identification, width_allowed,
};
use super::state::{Effects, GicVersion, VgicState};
use crate::vm::ids::VcpuId;

/// The size of one vCPU's pair of frames.
pub const FRAMES_SIZE: u64 = 0x2_0000;
/// The SGI_base frame's offset from its RD_base frame.
pub const SGI_FRAME: u64 = 0x1_0000;

/// RD_base frame offsets (the register map: IHI 0069H §12.10).
pub mod rd_offset {
    /// GICR_CTLR: IHI 0069H §12.11.
    pub const CTLR: u64 = 0x0000;
    /// GICR_IIDR: IHI 0069H §12.11.
    pub const IIDR: u64 = 0x0004;
    /// GICR_TYPER: IHI 0069H §12.11, 64 bits.
    pub const TYPER: u64 = 0x0008;
    /// GICR_WAKER: IHI 0069H §12.11.
    pub const WAKER: u64 = 0x0014;
    /// GICR_PIDR2: IHI 0069H §12.1 (identification registers).
    pub const PIDR2: u64 = 0xFFE8;
}

/// SGI_base frame offsets (IHI 0069H §12.10): word 0 of the
/// distributor's bit registers, IPRIORITYR0-7, ICFGR0-1.
pub mod sgi_offset {
    /// GICR_IGROUPR0 .. GICR_ICACTIVER0 (IHI 0069H §12.11): IGROUPR0 at 0x080, ISENABLER0 at 0x100, ...
    /// ICACTIVER0 at 0x380, as in the distributor.
    pub const BIT_REGISTERS: u64 = 0x0080;
    pub const BIT_REGISTERS_END: u64 = 0x0400;
    /// GICR_IPRIORITYR<n>: IHI 0069H §12.11.
    pub const IPRIORITYR: u64 = 0x0400;
    pub const IPRIORITYR_END: u64 = 0x0420;
    /// GICR_ICFGR0 (SGIs) and GICR_ICFGR1 (PPIs): IHI 0069H §12.11.
    pub const ICFGR: u64 = 0x0C00;
    pub const ICFGR_END: u64 = 0x0C08;
}

/// GICR_WAKER.ProcessorSleep and ChildrenAsleep.
const WAKER_PROCESSOR_SLEEP: u32 = 1 << 1;
const WAKER_CHILDREN_ASLEEP: u32 = 1 << 2;
/// GICR_TYPER.Last: this is the last redistributor of the region.
const TYPER_LAST: u64 = 1 << 4;

/// Where an access into the redistributor region lands.
enum Frame {
    Rd(VcpuId, u64),
    Sgi(VcpuId, u64),
}

impl VgicState {
    /// The frame and offset within it that `offset` names, if it is a
    /// frame of one of this VM's vCPUs (GICv3 only).
    fn frame(&self, offset: u64) -> Option<Frame> {
        if self.version != GicVersion::V3 {
            return None;
        }
        let index = usize::try_from(offset / FRAMES_SIZE).ok()?;
        let vcpu = VcpuId::new(index).filter(|vcpu| self.vcpu_in_range(*vcpu))?;
        let within = offset % FRAMES_SIZE;
        Some(if within < SGI_FRAME {
            Frame::Rd(vcpu, within)
        } else {
            Frame::Sgi(vcpu, within - SGI_FRAME)
        })
    }

    /// GICR_TYPER of `vcpu` (IHI 0069H §12.11): its affinity (Aff0 =
    /// its index) in [63:32], its processor number in [23:8], Last for the
    /// VM's last vCPU, and no LPIs.
    fn redistributor_typer(&self, vcpu: VcpuId) -> u64 {
        let index = vcpu.index() as u64;
        let last = if vcpu.index() + 1 == self.vcpu_count {
            TYPER_LAST
        } else {
            0
        };
        (index << 32) | (index << 8) | last
    }

    /// A read by `vcpu` at `offset` in the VM's redistributor region.
    #[must_use]
    pub fn redistributor_read(&self, vcpu: VcpuId, offset: u64, width: AccessWidth) -> u64 {
        if !self.vcpu_in_range(vcpu) {
            return 0;
        }
        let value = match self.frame(offset) {
            Some(Frame::Rd(frame_vcpu, offset)) => self.read_rd_frame(frame_vcpu, offset, width),
            Some(Frame::Sgi(frame_vcpu, offset)) => self.read_sgi_frame(frame_vcpu, offset, width),
            None => 0,
        };
        width.truncate(value)
    }

    fn read_rd_frame(&self, frame_vcpu: VcpuId, offset: u64, width: AccessWidth) -> u64 {
        match offset {
            rd_offset::IIDR if width_allowed(offset, width, WORD) => u64::from(IIDR),
            rd_offset::TYPER | 0x000C if width_allowed(offset, width, WORD_OR_DOUBLEWORD) => {
                let typer = self.redistributor_typer(frame_vcpu);
                if offset == rd_offset::TYPER {
                    typer
                } else {
                    typer >> 32
                }
            }
            rd_offset::WAKER
                if width_allowed(offset, width, WORD)
                    && self.processor_sleep[frame_vcpu.index()] =>
            {
                u64::from(WAKER_PROCESSOR_SLEEP | WAKER_CHILDREN_ASLEEP)
            }
            0xFFD0..0x10000 if width_allowed(offset, width, WORD) => {
                u64::from(identification(self.version, rd_offset::PIDR2, offset))
            }
            // GICR_CTLR (no LPIs to enable, writes complete at once),
            // STATUSR, PROPBASER, PENDBASER and the rest: RAZ/WI.
            _ => 0,
        }
    }

    fn read_sgi_frame(&self, frame_vcpu: VcpuId, offset: u64, width: AccessWidth) -> u64 {
        match offset {
            sgi_offset::BIT_REGISTERS..sgi_offset::BIT_REGISTERS_END
                if offset.is_multiple_of(0x80) && width_allowed(offset, width, WORD) =>
            {
                BitRegister::decode(offset).map_or(0, |(register, word)| {
                    u64::from(self.read_bits(frame_vcpu, register, word))
                })
            }
            sgi_offset::IPRIORITYR..sgi_offset::IPRIORITYR_END
                if width_allowed(offset, width, BYTE_OR_WORD) =>
            {
                let first = (offset - sgi_offset::IPRIORITYR) as u32;
                self.read_priorities(frame_vcpu, first, u32::from(width.bytes()))
            }
            sgi_offset::ICFGR..sgi_offset::ICFGR_END if width_allowed(offset, width, WORD) => {
                let word = ((offset - sgi_offset::ICFGR) / 4) as u32;
                u64::from(self.read_config(frame_vcpu, word))
            }
            // IGRPMODR0 and NSACR: RAZ/WI with one security state.
            _ => 0,
        }
    }

    /// A write by `vcpu` of `value` at `offset` in the VM's redistributor
    /// region.
    pub fn redistributor_write(
        &mut self,
        vcpu: VcpuId,
        offset: u64,
        width: AccessWidth,
        value: u64,
    ) -> Effects {
        if !self.vcpu_in_range(vcpu) {
            return Effects::NONE;
        }
        let value = width.truncate(value);
        match self.frame(offset) {
            Some(Frame::Rd(frame_vcpu, offset)) => {
                if offset == rd_offset::WAKER && width_allowed(offset, width, WORD) {
                    // ChildrenAsleep follows ProcessorSleep at once: there
                    // is no interface to quiesce (§12.11). Delivery does
                    // not depend on it: the sleep state serves power
                    // management, which a vCPU does not have, so a guest
                    // that skips the handshake still gets its interrupts.
                    self.processor_sleep[frame_vcpu.index()] =
                        value as u32 & WAKER_PROCESSOR_SLEEP != 0;
                }
                Effects::NONE
            }
            Some(Frame::Sgi(frame_vcpu, offset)) => {
                self.write_sgi_frame(frame_vcpu, offset, width, value)
            }
            None => Effects::NONE,
        }
    }

    fn write_sgi_frame(
        &mut self,
        frame_vcpu: VcpuId,
        offset: u64,
        width: AccessWidth,
        value: u64,
    ) -> Effects {
        match offset {
            sgi_offset::BIT_REGISTERS..sgi_offset::BIT_REGISTERS_END
                if offset.is_multiple_of(0x80) && width_allowed(offset, width, WORD) =>
            {
                BitRegister::decode(offset).map_or(Effects::NONE, |(register, word)| {
                    self.write_bits(frame_vcpu, register, word, value as u32)
                })
            }
            sgi_offset::IPRIORITYR..sgi_offset::IPRIORITYR_END
                if width_allowed(offset, width, BYTE_OR_WORD) =>
            {
                let first = (offset - sgi_offset::IPRIORITYR) as u32;
                self.write_priorities(frame_vcpu, first, u32::from(width.bytes()), value)
            }
            sgi_offset::ICFGR..sgi_offset::ICFGR_END if width_allowed(offset, width, WORD) => {
                let word = ((offset - sgi_offset::ICFGR) / 4) as u32;
                self.write_config(frame_vcpu, word, value as u32)
            }
            _ => Effects::NONE,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::state::SpiSet;
    use super::super::state::tests::{owned, set_of, vcpu};
    use super::*;

    const BYTE: AccessWidth = AccessWidth::Byte;
    const HALF: AccessWidth = AccessWidth::HalfWord;
    const WORD: AccessWidth = AccessWidth::Word;
    const DOUBLE: AccessWidth = AccessWidth::DoubleWord;

    fn v3() -> VgicState {
        VgicState::new(GicVersion::V3, 3, owned())
    }

    fn rd(index: u64, offset: u64) -> u64 {
        index * FRAMES_SIZE + offset
    }

    fn sgi(index: u64, offset: u64) -> u64 {
        index * FRAMES_SIZE + SGI_FRAME + offset
    }

    #[test]
    fn identification_and_typer_per_vcpu() {
        let state = v3();
        let cpu = vcpu(0);
        assert_eq!(
            state.redistributor_read(cpu, rd(1, rd_offset::IIDR), WORD),
            u64::from(IIDR)
        );
        assert_eq!(
            state.redistributor_read(cpu, rd(2, rd_offset::PIDR2), WORD),
            0x3B
        );
        assert_eq!(state.redistributor_read(cpu, rd(0, 0xFFFC), WORD), 0xB1);
        assert_eq!(
            state.redistributor_read(cpu, rd(0, rd_offset::TYPER), DOUBLE),
            0
        );
        assert_eq!(
            state.redistributor_read(cpu, rd(1, rd_offset::TYPER), DOUBLE),
            0x1_0000_0100
        );
        // The last vCPU's says so; both halves can be read as words.
        assert_eq!(
            state.redistributor_read(cpu, rd(2, rd_offset::TYPER), WORD),
            0x210
        );
        assert_eq!(
            state.redistributor_read(cpu, rd(2, rd_offset::TYPER + 4), WORD),
            2
        );
        assert_eq!(
            state.redistributor_read(cpu, rd(2, rd_offset::TYPER), BYTE),
            0
        );
        assert_eq!(
            state.redistributor_read(cpu, rd(2, rd_offset::TYPER + 4), DOUBLE),
            0
        );
        // CTLR, STATUSR, PROPBASER, PENDBASER: RAZ.
        for offset in [0x0, 0x10, 0x70, 0x78] {
            assert_eq!(state.redistributor_read(cpu, rd(0, offset), WORD), 0);
        }
    }

    #[test]
    fn waker_handshake() {
        let mut state = v3();
        let waker = rd(1, rd_offset::WAKER);
        assert_eq!(
            state.redistributor_read(vcpu(0), waker, WORD),
            0b110,
            "reset asleep"
        );
        state.redistributor_write(vcpu(0), waker, WORD, 0);
        assert_eq!(state.redistributor_read(vcpu(1), waker, WORD), 0);
        assert_eq!(
            state.redistributor_read(vcpu(0), rd(0, rd_offset::WAKER), WORD),
            0b110
        );
        // ChildrenAsleep is read-only; byte writes are ignored.
        state.redistributor_write(vcpu(0), waker, WORD, 0b100);
        state.redistributor_write(vcpu(0), waker, BYTE, 0b10);
        assert_eq!(state.redistributor_read(vcpu(1), waker, WORD), 0);
        state.redistributor_write(vcpu(0), waker, WORD, 0b10);
        assert_eq!(state.redistributor_read(vcpu(1), waker, WORD), 0b110);
    }

    #[test]
    fn sgi_frame_registers_are_the_frames_vcpus() {
        let mut state = v3();
        let effects = state.redistributor_write(vcpu(0), sgi(2, 0x100), WORD, 0x0800_0001);
        assert_eq!(
            effects.reevaluate,
            set_of(&[2]),
            "written from vCPU 0, for vCPU 2"
        );
        assert_eq!(
            state.redistributor_read(vcpu(0), sgi(2, 0x100), WORD),
            0x0800_0001
        );
        assert_eq!(state.redistributor_read(vcpu(0), sgi(1, 0x100), WORD), 0);
        state.redistributor_write(vcpu(2), sgi(2, 0x180), WORD, 1);
        assert_eq!(
            state.redistributor_read(vcpu(2), sgi(2, 0x180), WORD),
            0x0800_0000
        );
        // GICv3 SGIs take ISPENDR and ICPENDR.
        state.redistributor_write(vcpu(2), sgi(2, 0x200), WORD, 0x0000_0009);
        assert_eq!(state.redistributor_read(vcpu(2), sgi(2, 0x280), WORD), 9);
        state.redistributor_write(vcpu(2), sgi(2, 0x280), WORD, 1);
        assert_eq!(state.redistributor_read(vcpu(2), sgi(2, 0x200), WORD), 8);
        for (set, clear) in [(0x080, 0x080), (0x300, 0x380)] {
            state.redistributor_write(vcpu(0), sgi(1, set), WORD, 0xFFFF_FFFF);
            assert_eq!(
                state.redistributor_read(vcpu(0), sgi(1, set), WORD),
                0xFFFF_FFFF
            );
            state.redistributor_write(vcpu(0), sgi(1, clear), WORD, 0xFFFF_FFFF);
            let left = if set == clear { 0xFFFF_FFFF } else { 0 };
            assert_eq!(state.redistributor_read(vcpu(0), sgi(1, set), WORD), left);
            // Words past word 0 are reserved (no extended PPIs).
            state.redistributor_write(vcpu(0), sgi(1, set + 4), WORD, 0xFFFF_FFFF);
            assert_eq!(state.redistributor_read(vcpu(0), sgi(1, set + 4), WORD), 0);
            state.redistributor_write(vcpu(0), sgi(1, set), HALF, 0);
            assert_eq!(state.redistributor_read(vcpu(0), sgi(1, set), BYTE), 0);
        }
        assert_eq!(
            state.redistributor_read(vcpu(0), sgi(1, 0x080), WORD),
            0xFFFF_FFFF
        );
    }

    #[test]
    fn sgi_frame_priorities_and_configuration() {
        let mut state = v3();
        state.redistributor_write(vcpu(0), sgi(0, 0x41C), WORD, 0xA0B0_C0D0);
        state.redistributor_write(vcpu(0), sgi(0, 0x400), BYTE, 0x10);
        assert_eq!(state.redistributor_read(vcpu(0), sgi(0, 0x41F), BYTE), 0xA0);
        assert_eq!(
            state.redistributor_read(vcpu(0), sgi(0, 0x41C), WORD),
            0xA0B0_C0D0
        );
        assert_eq!(state.redistributor_read(vcpu(0), sgi(0, 0x400), WORD), 0x10);
        // Past IPRIORITYR7: reserved.
        state.redistributor_write(vcpu(0), sgi(0, 0x420), WORD, 0xFF);
        assert_eq!(state.redistributor_read(vcpu(0), sgi(0, 0x420), WORD), 0);
        // ICFGR0 is fixed edge; ICFGR1 programmable.
        state.redistributor_write(vcpu(0), sgi(0, 0xC00), WORD, 0);
        assert_eq!(
            state.redistributor_read(vcpu(0), sgi(0, 0xC00), WORD),
            0xAAAA_AAAA
        );
        state.redistributor_write(vcpu(0), sgi(0, 0xC04), WORD, 0x0020_0000);
        assert_eq!(
            state.redistributor_read(vcpu(0), sgi(0, 0xC04), WORD),
            0x0020_0000
        );
        assert_eq!(state.redistributor_read(vcpu(1), sgi(1, 0xC04), WORD), 0);
    }

    #[test]
    fn frames_past_the_last_vcpu_and_gicv2_have_nothing() {
        let mut state = v3();
        let before = format!("{state:?}");
        for offset in [
            rd(3, rd_offset::TYPER),
            sgi(3, 0x100),
            rd(7, rd_offset::WAKER),
        ] {
            assert_eq!(
                state.redistributor_write(vcpu(0), offset, WORD, !0),
                Effects::NONE
            );
            assert_eq!(state.redistributor_read(vcpu(0), offset, WORD), 0);
        }
        // Nor does a vCPU the VM does not have get anywhere.
        state.redistributor_write(vcpu(5), sgi(0, 0x100), WORD, !0);
        assert_eq!(format!("{state:?}"), before);
        let mut v2 = VgicState::new(GicVersion::V2, 2, SpiSet::EMPTY);
        v2.redistributor_write(vcpu(0), sgi(0, 0x100), WORD, !0);
        assert_eq!(v2.redistributor_read(vcpu(0), sgi(0, 0x100), WORD), 0);
        assert_eq!(
            v2.redistributor_read(vcpu(0), rd(0, rd_offset::PIDR2), WORD),
            0
        );
    }

    #[test]
    fn a_hostile_sweep_of_the_redistributors_touches_no_spi() {
        // Every offset of every vCPU's frames and of the frame after the
        // last, at every width: SPIs and vCPUs the VM does not have keep
        // their state.
        let mut state = v3();
        let pristine = state.clone();
        for value in [0, u64::MAX] {
            for offset in 0..4 * FRAMES_SIZE {
                for width in [BYTE, HALF, WORD, DOUBLE] {
                    state.redistributor_write(vcpu(0), offset, width, value);
                }
            }
        }
        assert_eq!(state.spis, pristine.spis);
        assert_eq!(state.private[3..], pristine.private[3..]);
        assert_eq!(
            state.private[2][31].priority, 0xFF,
            "vCPU 2's PPIs were written"
        );
        assert_eq!(
            state.distributor_read(vcpu(0), 0x104, WORD),
            0,
            "SPIs still disabled"
        );
    }
}
