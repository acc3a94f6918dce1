//! The distributor's register file, GICv3 (Arm IHI 0069H §12.9) and GICv2
//! (Arm IHI 0048B §4.3), over the VM's interrupt state.
//!
//! A trapped access arrives as `(accessing vCPU, offset, width[, value])`;
//! a read returns the value, a write returns the `Effects` the core must act
//! on. Widths are what the specifications allow (IHI 0069H §12.1, IHI
//! 0048B §4.1): 32-bit everywhere, byte also for the byte-per-interrupt
//! registers (IPRIORITYR, GICv2 ITARGETSR, CPENDSGIR, SPENDSGIR), 64-bit
//! also for GICv3 IROUTER, whose halves can be accessed as words too. An
//! access of another width, a misaligned one, one to a reserved offset or to
//! an interrupt the VM does not own reads as zero and its write is ignored
//! (RAZ/WI), which is what the architecture prescribes for reserved
//! locations and what keeps one VM out of another's interrupts.
//!
//! GICv3 is shown with affinity routing always on and one security state
//! (GICD_CTLR.ARE and DS read as one and ignore writes), which is how a
//! guest at Non-secure EL1 on a virtual GIC finds it (Linux expects it). So
//! the SGI and PPI registers live in each vCPU's redistributor
//! (`redistributor.rs`) and their distributor copies are RAZ/WI
//! (IHI 0069H §12.9: "when affinity routing is enabled ... RES0"), as are
//! GICD_ITARGETSR, GICD_SGIR and the SGI pending registers. No LPIs, no
//! message-based SPIs, no extended SPI range.

#![forbid(unsafe_code)]

use tessera_vdevs::AccessWidth;

use super::state::{
    Effects, GicVersion, INTID_LIMIT, PRIVATE_COUNT, SGI_COUNT, VgicState, spi_index,
};
use crate::vm::ids::{VcpuId, VcpuSet};

/// Distributor register offsets (the register maps: IHI 0069H §12.8, IHI
/// 0048B Table 4-1). Ranges are `[start, end)`.
pub mod offset {
    /// GICD_CTLR: IHI 0069H §12.9, IHI 0048B §4.3.1.
    pub const CTLR: u64 = 0x0000;
    /// GICD_TYPER: IHI 0069H §12.9, IHI 0048B §4.3.2.
    pub const TYPER: u64 = 0x0004;
    /// GICD_IIDR: IHI 0069H §12.9, IHI 0048B §4.3.3.
    pub const IIDR: u64 = 0x0008;
    /// GICD_IGROUPR<n>: IHI 0069H §12.9, IHI 0048B §4.3.4: one bit per interrupt.
    pub const IGROUPR: u64 = 0x0080;
    /// GICD_ISENABLER<n>: IHI 0069H §12.9, IHI 0048B §4.3.5.
    pub const ISENABLER: u64 = 0x0100;
    /// GICD_ICENABLER<n>: IHI 0069H §12.9, IHI 0048B §4.3.6.
    pub const ICENABLER: u64 = 0x0180;
    /// GICD_ISPENDR<n>: IHI 0069H §12.9, IHI 0048B §4.3.7.
    pub const ISPENDR: u64 = 0x0200;
    /// GICD_ICPENDR<n>: IHI 0069H §12.9, IHI 0048B §4.3.8.
    pub const ICPENDR: u64 = 0x0280;
    /// GICD_ISACTIVER<n>: IHI 0069H §12.9, IHI 0048B §4.3.9.
    pub const ISACTIVER: u64 = 0x0300;
    /// GICD_ICACTIVER<n>: IHI 0069H §12.9, IHI 0048B §4.3.10.
    pub const ICACTIVER: u64 = 0x0380;
    /// GICD_IPRIORITYR<n>: IHI 0069H §12.9, IHI 0048B §4.3.11: one byte per interrupt.
    pub const IPRIORITYR: u64 = 0x0400;
    /// GICD_ITARGETSR<n>: IHI 0048B §4.3.12, one byte per interrupt (RES0 in
    /// GICv3 with ARE).
    pub const ITARGETSR: u64 = 0x0800;
    /// GICD_ICFGR<n>: IHI 0069H §12.9, IHI 0048B §4.3.13: two bits per interrupt.
    pub const ICFGR: u64 = 0x0C00;
    /// End of ICFGR (64 registers).
    pub const ICFGR_END: u64 = 0x0D00;
    /// GICD_SGIR: IHI 0048B §4.3.15 (RES0 in GICv3 with ARE).
    pub const SGIR: u64 = 0x0F00;
    /// GICD_CPENDSGIR<n>: IHI 0048B §4.3.16, one byte per SGI.
    pub const CPENDSGIR: u64 = 0x0F10;
    /// GICD_SPENDSGIR<n>: IHI 0048B §4.3.17, one byte per SGI.
    pub const SPENDSGIR: u64 = 0x0F20;
    /// GICD_IROUTER<n>: IHI 0069H §12.9, 64 bits per SPI, INTIDs 32-1019.
    pub const IROUTER: u64 = 0x6000;
    pub const IROUTER_END: u64 = 0x7FE0;
    /// GICv3 identification registers (IHI 0069H §12.1): GICD_PIDR2 at
    /// 0xFFE8.
    pub const V3_PIDR2: u64 = 0xFFE8;
    pub const V3_CIDR0: u64 = 0xFFF0;
    /// GICv2 identification registers (IHI 0048B §4.3.18): GICD_PIDR2 at
    /// 0xFE8.
    pub const V2_PIDR2: u64 = 0x0FE8;
    pub const V2_CIDR0: u64 = 0x0FF0;
}

/// GICD_IIDR and GICR_IIDR: implementer Arm's JEP106 code (0x43B, as
/// virtual GICs conventionally report), product 0x54 ('T'), variant and
/// revision 0. No guest has errata workarounds keyed on this product.
pub const IIDR: u32 = 0x5400_043B;

/// The CoreSight component identification bytes every GIC frame ends with
/// (CIDR0-3 = 0x0D, 0xF0, 0x05, 0xB1).
const CIDR: [u8; 4] = [0x0D, 0xF0, 0x05, 0xB1];

/// PIDR2: ArchRev in bits [7:4] (the field guests check, IHI 0069H
/// §12.1, IHI 0048B §4.3.18), JEDEC bit, and the top bits of Arm's
/// JEP106 identity (0x3B).
pub(super) const fn pidr2(version: GicVersion) -> u32 {
    let arch_rev = match version {
        GicVersion::V2 => 2,
        GicVersion::V3 => 3,
    };
    (arch_rev << 4) | 0b1011
}

/// The value of the identification register at `offset` from the start of
/// its block (PIDR4 .. CIDR3, 0x30 bytes ending the frame).
pub(super) fn identification(version: GicVersion, pidr2_offset: u64, offset: u64) -> u32 {
    let cidr0 = pidr2_offset + 8;
    if offset == pidr2_offset {
        pidr2(version)
    } else if (cidr0..cidr0 + 16).contains(&offset) && offset.is_multiple_of(4) {
        u32::from(CIDR[((offset - cidr0) / 4) as usize])
    } else {
        0
    }
}

// GICD_CTLR fields. GICv3 with DS = 1 (IHI 0069H §12.9, the "single
// Security state" layout) and GICv2 (IHI 0048B §4.3.1) agree on the two
// enables.
const CTLR_ENABLE_GROUP0: u32 = 1 << 0;
const CTLR_ENABLE_GROUP1: u32 = 1 << 1;
/// GICv3: affinity routing enabled; RAO/WI.
const CTLR_ARE: u32 = 1 << 4;
/// GICv3: one security state; RAO/WI.
const CTLR_DS: u32 = 1 << 6;

/// GICD_TYPER.ITLinesNumber: 32 * (N + 1) INTIDs are implemented.
const IT_LINES_NUMBER: u32 = INTID_LIMIT / 32 - 1;
/// GICv3 GICD_TYPER.IDbits: 10 INTID bits (no LPIs, IHI 0069H §12.9).
const TYPER_ID_BITS: u32 = 9 << 19;
/// GICv3 GICD_TYPER.No1N: 1-of-N SPI routing is not supported, so
/// IROUTER.IRM is RAZ/WI and every SPI goes to one named vCPU.
const TYPER_NO_1_OF_N: u32 = 1 << 25;

/// The registers with one bit per interrupt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum BitRegister {
    Group,
    SetEnable,
    ClearEnable,
    SetPending,
    ClearPending,
    SetActive,
    ClearActive,
}

impl BitRegister {
    /// The bit-per-interrupt register at `offset` in `[0x080, 0x400)`, and
    /// the index of its word.
    pub(super) const fn decode(offset: u64) -> Option<(Self, u32)> {
        let register = match offset & !0x7F {
            offset::IGROUPR => Self::Group,
            offset::ISENABLER => Self::SetEnable,
            offset::ICENABLER => Self::ClearEnable,
            offset::ISPENDR => Self::SetPending,
            offset::ICPENDR => Self::ClearPending,
            offset::ISACTIVER => Self::SetActive,
            offset::ICACTIVER => Self::ClearActive,
            _ => return None,
        };
        Some((register, ((offset & 0x7F) / 4) as u32))
    }
}

/// A new delivery for an SPI: its GICv2 GICD_ITARGETSR byte or its GICv3
/// GICD_IROUTER affinity.
#[derive(Clone, Copy, Debug)]
enum Delivery {
    Targets(u8),
    Route(u32),
}

/// Whether an access of `width` at `offset` is one the register allows:
/// one of `allowed`, naturally aligned.
#[inline(always)]
pub(super) fn width_allowed(offset: u64, width: AccessWidth, allowed: Widths) -> bool {
    allowed.0 & (1 << width as u8) != 0 && offset & (u64::from(width.bytes()) - 1) == 0
}

/// The access widths a register allows, one bit per `AccessWidth` (a mask
/// rather than a list: this is on the trapped-access path, `mmio.gicd_read`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Widths(u8);

impl Widths {
    const fn of(widths: &[AccessWidth]) -> Self {
        let mut mask = 0;
        let mut index = 0;
        while index < widths.len() {
            mask |= 1 << widths[index] as u8;
            index += 1;
        }
        Self(mask)
    }
}

pub(super) const WORD: Widths = Widths::of(&[AccessWidth::Word]);
pub(super) const BYTE_OR_WORD: Widths = Widths::of(&[AccessWidth::Byte, AccessWidth::Word]);
pub(super) const WORD_OR_DOUBLEWORD: Widths =
    Widths::of(&[AccessWidth::Word, AccessWidth::DoubleWord]);

impl VgicState {
    // ---- helpers shared with the redistributor's SGI frame ----

    /// Word `word` of a bit-per-interrupt register as `vcpu` sees it.
    pub(super) fn read_bits(&self, vcpu: VcpuId, register: BitRegister, word: u32) -> u32 {
        let mut value = 0;
        for bit in 0..32 {
            let Some(irq) = self.slot(vcpu, word * 32 + bit) else {
                continue;
            };
            let set = match register {
                BitRegister::Group => irq.group1,
                BitRegister::SetEnable | BitRegister::ClearEnable => irq.enabled,
                BitRegister::SetPending | BitRegister::ClearPending => irq.pending(),
                BitRegister::SetActive | BitRegister::ClearActive => irq.active,
            };
            value |= u32::from(set) << bit;
        }
        value
    }

    /// Writes word `word` of a bit-per-interrupt register. Set and clear
    /// registers act on the bits written as one and ignore zeros; IGROUPR
    /// takes every bit.
    pub(super) fn write_bits(
        &mut self,
        vcpu: VcpuId,
        register: BitRegister,
        word: u32,
        value: u32,
    ) -> Effects {
        let mut effects = Effects::NONE;
        for bit in 0..32 {
            let intid = word * 32 + bit;
            let one = value & (1 << bit) != 0;
            if !one && register != BitRegister::Group {
                continue;
            }
            // GICv2 SGIs are made pending and cleared per source through
            // SPENDSGIR/CPENDSGIR; their ISPENDR/ICPENDR bits ignore
            // writes (IHI 0048B §4.3.7, §4.3.8).
            let pending_register = matches!(
                register,
                BitRegister::SetPending | BitRegister::ClearPending
            );
            if pending_register && self.version == GicVersion::V2 && (intid as usize) < SGI_COUNT {
                continue;
            }
            effects.merge(self.update(vcpu, intid, |irq| match register {
                BitRegister::Group => irq.group1 = one,
                BitRegister::SetEnable => irq.enabled = true,
                BitRegister::ClearEnable => irq.enabled = false,
                BitRegister::SetPending => irq.pending_latch = true,
                // Clears the latch only: a level-sensitive interrupt whose
                // line is high stays pending (IHI 0069H chapter 4).
                BitRegister::ClearPending => irq.pending_latch = false,
                BitRegister::SetActive => irq.active = true,
                BitRegister::ClearActive => irq.active = false,
            }));
        }
        effects
    }

    /// The priority bytes of `lanes` interrupts from `first`.
    pub(super) fn read_priorities(&self, vcpu: VcpuId, first: u32, lanes: u32) -> u64 {
        (0..lanes).fold(0, |value, lane| {
            let priority = self.slot(vcpu, first + lane).map_or(0, |irq| irq.priority);
            value | u64::from(priority) << (8 * lane)
        })
    }

    pub(super) fn write_priorities(
        &mut self,
        vcpu: VcpuId,
        first: u32,
        lanes: u32,
        value: u64,
    ) -> Effects {
        let mut effects = Effects::NONE;
        for lane in 0..lanes {
            let priority = (value >> (8 * lane)) as u8;
            effects.merge(self.update(vcpu, first + lane, |irq| irq.priority = priority));
        }
        effects
    }

    /// ICFGR word `word` (16 interrupts, bit 2n+1 set for edge-triggered;
    /// bit 2n is RES0).
    pub(super) fn read_config(&self, vcpu: VcpuId, word: u32) -> u32 {
        let mut value = 0;
        for field in 0..16 {
            if let Some(irq) = self.slot(vcpu, word * 16 + field) {
                value |= u32::from(irq.edge) << (2 * field + 1);
            }
        }
        value
    }

    /// Writes ICFGR word `word`. SGIs are always edge-triggered: their
    /// fields are read-only (IHI 0069H §12.11, IHI 0048B §4.3.13). PPIs'
    /// are programmable here, which both specifications allow.
    pub(super) fn write_config(&mut self, vcpu: VcpuId, word: u32, value: u32) -> Effects {
        let mut effects = Effects::NONE;
        for field in 0..16 {
            let intid = word * 16 + field;
            if (intid as usize) < SGI_COUNT {
                continue;
            }
            let edge = value & (1 << (2 * field + 1)) != 0;
            effects.merge(self.update(vcpu, intid, |irq| irq.edge = edge));
        }
        effects
    }

    fn ctlr(&self) -> u32 {
        let enables = (u32::from(self.enable_group0) * CTLR_ENABLE_GROUP0)
            | (u32::from(self.enable_group1) * CTLR_ENABLE_GROUP1);
        match self.version {
            GicVersion::V2 => enables,
            GicVersion::V3 => enables | CTLR_ARE | CTLR_DS,
        }
    }

    fn typer(&self) -> u32 {
        match self.version {
            GicVersion::V2 => IT_LINES_NUMBER | ((self.vcpu_count as u32 - 1) << 5),
            GicVersion::V3 => IT_LINES_NUMBER | TYPER_ID_BITS | TYPER_NO_1_OF_N,
        }
    }

    /// Whether the distributor register at `offset` addresses the SGIs and
    /// PPIs, which under GICv3 affinity routing live in the redistributor.
    fn private_in_redistributor(&self, first_intid: u32) -> bool {
        self.version == GicVersion::V3 && (first_intid as usize) < PRIVATE_COUNT
    }

    // ---- the register file ----

    /// A read by `vcpu` of the distributor register at `offset`.
    #[must_use]
    pub fn distributor_read(&self, vcpu: VcpuId, offset: u64, width: AccessWidth) -> u64 {
        let value = self.distributor_read_inner(vcpu, offset, width);
        width.truncate(value)
    }

    fn distributor_read_inner(&self, vcpu: VcpuId, offset: u64, width: AccessWidth) -> u64 {
        let v2 = self.version == GicVersion::V2;
        match offset {
            offset::CTLR if width_allowed(offset, width, WORD) => u64::from(self.ctlr()),
            offset::TYPER if width_allowed(offset, width, WORD) => u64::from(self.typer()),
            offset::IIDR if width_allowed(offset, width, WORD) => u64::from(IIDR),
            offset::IGROUPR..offset::IPRIORITYR if width_allowed(offset, width, WORD) => {
                let Some((register, word)) = BitRegister::decode(offset) else {
                    return 0;
                };
                if self.private_in_redistributor(word * 32) {
                    return 0;
                }
                u64::from(self.read_bits(vcpu, register, word))
            }
            offset::IPRIORITYR..offset::ITARGETSR if width_allowed(offset, width, BYTE_OR_WORD) => {
                let first = (offset - offset::IPRIORITYR) as u32;
                if self.private_in_redistributor(first) {
                    return 0;
                }
                self.read_priorities(vcpu, first, u32::from(width.bytes()))
            }
            offset::ITARGETSR..offset::ICFGR
                if v2 && width_allowed(offset, width, BYTE_OR_WORD) =>
            {
                let first = (offset - offset::ITARGETSR) as u32;
                (0..u32::from(width.bytes())).fold(0, |value, lane| {
                    value | u64::from(self.read_target(vcpu, first + lane)) << (8 * lane)
                })
            }
            offset::ICFGR..offset::ICFGR_END if width_allowed(offset, width, WORD) => {
                let word = ((offset - offset::ICFGR) / 4) as u32;
                if self.private_in_redistributor(word * 16) {
                    return 0;
                }
                u64::from(self.read_config(vcpu, word))
            }
            offset::CPENDSGIR..0x0F30 if v2 && width_allowed(offset, width, BYTE_OR_WORD) => {
                // Both registers read the pending sources (§4.3.16/17).
                let first = (offset % 0x10) as usize;
                if !self.vcpu_in_range(vcpu) {
                    return 0;
                }
                let sources = &self.sgi_sources[vcpu.index()];
                // Aligned (checked above), so every lane is an SGI's.
                (0..usize::from(width.bytes())).fold(0, |value, lane| {
                    let lane_sources = sources.get(first + lane).copied().unwrap_or(0);
                    value | u64::from(lane_sources) << (8 * lane)
                })
            }
            offset::IROUTER..offset::IROUTER_END
                if !v2 && width_allowed(offset, width, WORD_OR_DOUBLEWORD) =>
            {
                let intid = ((offset - offset::IROUTER) / 8) as u32;
                let route = match spi_index(intid) {
                    Some(index) if self.owned.contains(intid) => u64::from(self.spi_routes[index]),
                    _ => 0,
                };
                // The high word holds Aff3, which is RES0 here.
                if offset % 8 == 4 { 0 } else { route }
            }
            0x0FD0..0x1000 if v2 && width_allowed(offset, width, WORD) => {
                u64::from(identification(self.version, offset::V2_PIDR2, offset))
            }
            0xFFD0..0x10000 if !v2 && width_allowed(offset, width, WORD) => {
                u64::from(identification(self.version, offset::V3_PIDR2, offset))
            }
            _ => 0,
        }
    }

    /// GICD_ITARGETSR byte for `intid` (GICv2). For SGIs and PPIs it is
    /// read-only and names the reading CPU (IHI 0048B §4.3.12).
    fn read_target(&self, vcpu: VcpuId, intid: u32) -> u8 {
        if (intid as usize) < PRIVATE_COUNT {
            return if self.vcpu_in_range(vcpu) {
                1 << vcpu.index()
            } else {
                0
            };
        }
        match spi_index(intid) {
            Some(index) if self.owned.contains(intid) => self.spi_targets[index],
            _ => 0,
        }
    }

    /// A write by `vcpu` of `value` to the distributor register at
    /// `offset`.
    pub fn distributor_write(
        &mut self,
        vcpu: VcpuId,
        offset: u64,
        width: AccessWidth,
        value: u64,
    ) -> Effects {
        let value = width.truncate(value);
        let v2 = self.version == GicVersion::V2;
        match offset {
            offset::CTLR if width_allowed(offset, width, WORD) => {
                let before = (self.enable_group0, self.enable_group1);
                self.enable_group0 = value as u32 & CTLR_ENABLE_GROUP0 != 0;
                self.enable_group1 = value as u32 & CTLR_ENABLE_GROUP1 != 0;
                if before == (self.enable_group0, self.enable_group1) {
                    Effects::NONE
                } else {
                    Effects {
                        reevaluate: self.all_vcpus(),
                        sgi: None,
                    }
                }
            }
            offset::IGROUPR..offset::IPRIORITYR if width_allowed(offset, width, WORD) => {
                let Some((register, word)) = BitRegister::decode(offset) else {
                    return Effects::NONE;
                };
                if self.private_in_redistributor(word * 32) {
                    return Effects::NONE;
                }
                self.write_bits(vcpu, register, word, value as u32)
            }
            offset::IPRIORITYR..offset::ITARGETSR if width_allowed(offset, width, BYTE_OR_WORD) => {
                let first = (offset - offset::IPRIORITYR) as u32;
                if self.private_in_redistributor(first) {
                    return Effects::NONE;
                }
                self.write_priorities(vcpu, first, u32::from(width.bytes()), value)
            }
            offset::ITARGETSR..offset::ICFGR
                if v2 && width_allowed(offset, width, BYTE_OR_WORD) =>
            {
                let first = (offset - offset::ITARGETSR) as u32;
                let mut effects = Effects::NONE;
                for lane in 0..u32::from(width.bytes()) {
                    let targets = (value >> (8 * lane)) as u8 & self.implemented_targets();
                    effects.merge(self.set_spi_delivery(first + lane, Delivery::Targets(targets)));
                }
                effects
            }
            offset::ICFGR..offset::ICFGR_END if width_allowed(offset, width, WORD) => {
                let word = ((offset - offset::ICFGR) / 4) as u32;
                if self.private_in_redistributor(word * 16) {
                    return Effects::NONE;
                }
                self.write_config(vcpu, word, value as u32)
            }
            offset::SGIR if v2 && width_allowed(offset, width, WORD) => {
                self.write_sgir(vcpu, value as u32)
            }
            offset::CPENDSGIR..0x0F30 if v2 && width_allowed(offset, width, BYTE_OR_WORD) => {
                let set = offset >= offset::SPENDSGIR;
                let first = (offset % 0x10) as usize;
                let mut effects = Effects::NONE;
                for lane in 0..usize::from(width.bytes()) {
                    let sources = (value >> (8 * lane)) as u8 & self.implemented_targets();
                    effects.merge(self.write_sgi_sources(vcpu, first + lane, sources, set));
                }
                effects
            }
            offset::IROUTER..offset::IROUTER_END
                if !v2 && width_allowed(offset, width, WORD_OR_DOUBLEWORD) =>
            {
                if offset % 8 == 4 {
                    // Aff3 only: RES0.
                    return Effects::NONE;
                }
                let intid = ((offset - offset::IROUTER) / 8) as u32;
                // Aff2.Aff1.Aff0; IRM (bit 31) and Aff3 are RAZ/WI.
                let route = value as u32 & 0x00FF_FFFF;
                self.set_spi_delivery(intid, Delivery::Route(route))
            }
            _ => Effects::NONE,
        }
    }

    /// Changes where owned SPI `intid` is delivered; the vCPUs it left and
    /// joined re-evaluate. One copy for both GIC versions (a closure for
    /// the change made one per register, the GICv2 one inlined).
    #[inline(never)]
    fn set_spi_delivery(&mut self, intid: u32, change: Delivery) -> Effects {
        let Some(index) = spi_index(intid) else {
            return Effects::NONE;
        };
        if !self.owned.contains(intid) {
            return Effects::NONE;
        }
        let before = self.spi_target(intid);
        match change {
            Delivery::Targets(targets) => self.spi_targets[index] = targets,
            Delivery::Route(route) => self.spi_routes[index] = route,
        }
        let after = self.spi_target(intid);
        let mut reevaluate = VcpuSet::EMPTY;
        if before != after {
            for vcpu in [before, after].into_iter().flatten() {
                reevaluate.insert(vcpu);
            }
        }
        Effects {
            reevaluate,
            sgi: None,
        }
    }

    /// GICD_SGIR (IHI 0048B §4.3.15): SGIINTID in [3:0], CPUTargetList in
    /// [23:16], TargetListFilter in [25:24] (0: the list, 1: all but the
    /// writer, 2: the writer only, 3: reserved, nothing is sent).
    fn write_sgir(&mut self, vcpu: VcpuId, value: u32) -> Effects {
        if !self.vcpu_in_range(vcpu) {
            return Effects::NONE;
        }
        let sgi = (value & 0xF) as u8;
        let list = (value >> 16) as u8;
        let mut targets = VcpuSet::EMPTY;
        match (value >> 24) & 0b11 {
            0 => {
                for target in VcpuId::all(self.vcpu_count) {
                    if list & (1 << target.index()) != 0 {
                        targets.insert(target);
                    }
                }
            }
            1 => {
                for target in VcpuId::all(self.vcpu_count).filter(|target| *target != vcpu) {
                    targets.insert(target);
                }
            }
            2 => targets.insert(vcpu),
            _ => {}
        }
        self.send_sgi(vcpu, sgi, targets)
    }

    /// GICv2 SPENDSGIR (`set`) or CPENDSGIR: sets or clears the pending
    /// sources of SGI `sgi` on `vcpu`.
    fn write_sgi_sources(&mut self, vcpu: VcpuId, sgi: usize, sources: u8, set: bool) -> Effects {
        if !self.vcpu_in_range(vcpu) || sgi >= SGI_COUNT {
            return Effects::NONE;
        }
        let current = &mut self.sgi_sources[vcpu.index()][sgi];
        let before = *current;
        if set {
            *current |= sources;
        } else {
            *current &= !sources;
        }
        let pending = *current != 0;
        let mut effects = self.update(vcpu, sgi as u32, |irq| irq.pending_latch = pending);
        if before != self.sgi_sources[vcpu.index()][sgi] {
            effects.reevaluate.insert(vcpu);
        }
        effects
    }

    /// A GICv3 guest's trapped write of `value` to ICC_SGI1R_EL1
    /// (`group1_register`) or ICC_SGI0R_EL1 (IHI 0069H §12.2): TargetList in
    /// [15:0] names Aff0 = RS * 16 + bit among the vCPUs whose
    /// Aff3.Aff2.Aff1 are [55:48].[39:32].[23:16]; IRM ([40]) sends to
    /// every vCPU but the writer instead. With one security state
    /// (GICD_CTLR.DS = 1) ICC_SGI0R_EL1 generates only SGIs its target
    /// configured as group 0, while ICC_SGI1R_EL1 generates either group.
    pub fn generate_sgi(&mut self, vcpu: VcpuId, value: u64, group1_register: bool) -> Effects {
        if self.version != GicVersion::V3 || !self.vcpu_in_range(vcpu) {
            return Effects::NONE;
        }
        let sgi = ((value >> 24) & 0xF) as u8;
        let mut targets = VcpuSet::EMPTY;
        let all_but_self = value & (1 << 40) != 0;
        let upper_affinity = (value >> 16) & 0xFF | (value >> 32) & 0xFF | (value >> 48) & 0xFF;
        let range_selector = ((value >> 44) & 0xF) as usize;
        let target_list = (value & 0xFFFF) as u32;
        for target in VcpuId::all(self.vcpu_count) {
            let named = if all_but_self {
                target != vcpu
            } else {
                // vCPU n has Aff0 = n and every higher level 0.
                let aff0 = target.index();
                upper_affinity == 0
                    && aff0 / 16 == range_selector
                    && target_list & (1 << (aff0 % 16)) != 0
            };
            let group1 = self.private[target.index()][sgi as usize].group1;
            if named && (group1_register || !group1) {
                targets.insert(target);
            }
        }
        self.send_sgi(vcpu, sgi, targets)
    }
}

#[cfg(test)]
mod tests {
    use super::super::state::tests::{owned, set_of, vcpu};
    use super::super::state::{IrqState, SPI_COUNT, SgiSent, SpiSet, VgicState};
    use super::*;

    const BYTE: AccessWidth = AccessWidth::Byte;
    const HALF: AccessWidth = AccessWidth::HalfWord;
    const WORD: AccessWidth = AccessWidth::Word;
    const DOUBLE: AccessWidth = AccessWidth::DoubleWord;

    fn v2() -> VgicState {
        VgicState::new(GicVersion::V2, 4, owned())
    }

    fn v3() -> VgicState {
        VgicState::new(GicVersion::V3, 4, owned())
    }

    /// Everything a guest could observe or that delivery depends on.
    fn snapshot(state: &VgicState) -> String {
        format!("{state:?}")
    }

    #[test]
    fn identification_registers() {
        let (v2, v3) = (v2(), v3());
        let cpu = vcpu(0);
        assert_eq!(v3.distributor_read(cpu, offset::CTLR, WORD), 0b101_0000);
        assert_eq!(v2.distributor_read(cpu, offset::CTLR, WORD), 0);
        // ITLinesNumber 7 (256 INTIDs), IDbits 9, No1N.
        assert_eq!(v3.distributor_read(cpu, offset::TYPER, WORD), 0x024_80007);
        // ITLinesNumber 7, CPUNumber 3 (four vCPUs).
        assert_eq!(v2.distributor_read(cpu, offset::TYPER, WORD), 0x67);
        assert_eq!(
            v3.distributor_read(cpu, offset::IIDR, WORD),
            u64::from(IIDR)
        );
        assert_eq!(
            v2.distributor_read(cpu, offset::IIDR, WORD),
            u64::from(IIDR)
        );
        assert_eq!(v3.distributor_read(cpu, offset::V3_PIDR2, WORD), 0x3B);
        assert_eq!(v2.distributor_read(cpu, offset::V2_PIDR2, WORD), 0x2B);
        let cidr: Vec<u64> = (0..4)
            .map(|i| v3.distributor_read(cpu, offset::V3_CIDR0 + 4 * i, WORD))
            .collect();
        assert_eq!(cidr, [0x0D, 0xF0, 0x05, 0xB1]);
        assert_eq!(v2.distributor_read(cpu, offset::V2_CIDR0 + 12, WORD), 0xB1);
        // Each frame's ID block is only where its version has it.
        assert_eq!(v2.distributor_read(cpu, offset::V3_PIDR2, WORD), 0);
        assert_eq!(v3.distributor_read(cpu, offset::V2_PIDR2, WORD), 0);
        // Identification registers ignore writes.
        let mut v3 = v3;
        let before = snapshot(&v3);
        for register in [offset::TYPER, offset::IIDR, offset::V3_PIDR2] {
            assert_eq!(v3.distributor_write(cpu, register, WORD, !0), Effects::NONE);
        }
        assert_eq!(snapshot(&v3), before);
    }

    #[test]
    fn ctlr_enables_groups_and_keeps_are_and_ds_set() {
        for (mut state, fixed) in [(v2(), 0), (v3(), 0b101_0000)] {
            let effects = state.distributor_write(vcpu(1), offset::CTLR, WORD, 0xFFFF_FFFF);
            assert_eq!(effects.reevaluate, set_of(&[0, 1, 2, 3]));
            assert_eq!(
                state.distributor_read(vcpu(0), offset::CTLR, WORD),
                fixed | 0b11
            );
            state.distributor_write(vcpu(1), offset::CTLR, WORD, 0b10);
            assert_eq!(
                state.distributor_read(vcpu(0), offset::CTLR, WORD),
                fixed | 0b10
            );
            // Other widths: RAZ/WI.
            assert_eq!(state.distributor_read(vcpu(0), offset::CTLR, BYTE), 0);
            state.distributor_write(vcpu(0), offset::CTLR, DOUBLE, 0);
            assert_eq!(
                state.distributor_read(vcpu(0), offset::CTLR, WORD),
                fixed | 0b10
            );
        }
    }

    /// Register base, and whether each word has set (S) and clear (C)
    /// forms.
    const SET_CLEAR: [(u64, u64); 3] = [
        (offset::ISENABLER, offset::ICENABLER),
        (offset::ISPENDR, offset::ICPENDR),
        (offset::ISACTIVER, offset::ICACTIVER),
    ];

    #[test]
    fn set_and_clear_registers_act_on_owned_spis_only() {
        for mut state in [v2(), v3()] {
            let cpu = vcpu(0);
            // Word 1 covers INTIDs 32-63: the VM owns 33 and 40.
            let owned_bits = (1 << 1) | (1 << 8);
            for (set, clear) in SET_CLEAR {
                state.distributor_write(cpu, set + 4, WORD, 0xFFFF_FFFF);
                assert_eq!(state.distributor_read(cpu, set + 4, WORD), owned_bits);
                assert_eq!(state.distributor_read(cpu, clear + 4, WORD), owned_bits);
                // Zeros change nothing.
                state.distributor_write(cpu, clear + 4, WORD, 0);
                assert_eq!(state.distributor_read(cpu, set + 4, WORD), owned_bits);
                state.distributor_write(cpu, clear + 4, WORD, 1 << 8);
                assert_eq!(state.distributor_read(cpu, set + 4, WORD), 1 << 1);
                // Only words: bytes and halfwords are RAZ/WI.
                assert_eq!(state.distributor_read(cpu, set + 4, BYTE), 0);
                assert_eq!(state.distributor_read(cpu, set + 4, HALF), 0);
                state.distributor_write(cpu, clear + 4, BYTE, 0xFF);
                assert_eq!(state.distributor_read(cpu, set + 4, WORD), 1 << 1);
                // Word 2 (INTIDs 64-95): nothing owned.
                state.distributor_write(cpu, set + 8, WORD, 0xFFFF_FFFF);
                assert_eq!(state.distributor_read(cpu, set + 8, WORD), 0);
            }
            state.distributor_write(cpu, offset::IGROUPR + 4, WORD, 0xFFFF_FFFF);
            assert_eq!(
                state.distributor_read(cpu, offset::IGROUPR + 4, WORD),
                owned_bits
            );
            state.distributor_write(cpu, offset::IGROUPR + 4, WORD, 1 << 8);
            assert_eq!(
                state.distributor_read(cpu, offset::IGROUPR + 4, WORD),
                1 << 8
            );
        }
    }

    #[test]
    fn gicv2_banks_sgis_and_ppis_per_vcpu_in_the_distributor() {
        let mut state = v2();
        state.distributor_write(vcpu(1), offset::ISENABLER, WORD, 0xFFFF_FFFF);
        assert_eq!(
            state.distributor_read(vcpu(1), offset::ISENABLER, WORD),
            0xFFFF_FFFF
        );
        assert_eq!(state.distributor_read(vcpu(0), offset::ISENABLER, WORD), 0);
        state.distributor_write(vcpu(1), offset::ISACTIVER, WORD, 1 << 27);
        assert_eq!(
            state.distributor_read(vcpu(1), offset::ICACTIVER, WORD),
            1 << 27
        );
        // A PPI can be made pending; an SGI only through SPENDSGIR.
        state.distributor_write(vcpu(1), offset::ISPENDR, WORD, 0xFFFF_FFFF);
        assert_eq!(
            state.distributor_read(vcpu(1), offset::ISPENDR, WORD),
            0xFFFF_0000
        );
        state.distributor_write(vcpu(1), offset::ICPENDR, WORD, 0xFFFF_FFFF);
        assert_eq!(state.distributor_read(vcpu(1), offset::ISPENDR, WORD), 0);
    }

    #[test]
    fn gicv3_leaves_sgis_and_ppis_to_the_redistributor() {
        let mut state = v3();
        let before = snapshot(&state);
        for register in [
            offset::IGROUPR,
            offset::ISENABLER,
            offset::ISPENDR,
            offset::ISACTIVER,
            offset::ICFGR,
            offset::ICFGR + 4,
            offset::IPRIORITYR,
            offset::IPRIORITYR + 28,
            offset::ITARGETSR + 32,
            offset::SGIR,
            offset::SPENDSGIR,
        ] {
            state.distributor_write(vcpu(0), register, WORD, 0xFFFF_FFFF);
            assert_eq!(
                state.distributor_read(vcpu(0), register, WORD),
                0,
                "{register:#x}"
            );
        }
        assert_eq!(snapshot(&state), before);
    }

    #[test]
    fn priorities_take_bytes_and_words() {
        for mut state in [v2(), v3()] {
            let cpu = vcpu(0);
            // INTIDs 32-35: only 33 is owned.
            state.distributor_write(cpu, offset::IPRIORITYR + 32, WORD, 0x4433_2211);
            assert_eq!(
                state.distributor_read(cpu, offset::IPRIORITYR + 32, WORD),
                0x2200
            );
            state.distributor_write(cpu, offset::IPRIORITYR + 40, BYTE, 0xA0);
            assert_eq!(
                state.distributor_read(cpu, offset::IPRIORITYR + 40, BYTE),
                0xA0
            );
            assert_eq!(
                state.distributor_read(cpu, offset::IPRIORITYR + 40, WORD),
                0xA0
            );
            assert_eq!(
                state.distributor_read(cpu, offset::IPRIORITYR + 33, BYTE),
                0x22
            );
            // Halfwords, and words not word-aligned: RAZ/WI.
            state.distributor_write(cpu, offset::IPRIORITYR + 40, HALF, 0xFFFF);
            state.distributor_write(cpu, offset::IPRIORITYR + 41, WORD, 0xFFFF_FFFF);
            assert_eq!(
                state.distributor_read(cpu, offset::IPRIORITYR + 40, HALF),
                0
            );
            assert_eq!(
                state.distributor_read(cpu, offset::IPRIORITYR + 40, WORD),
                0xA0
            );
        }
        let mut state = v2();
        state.distributor_write(vcpu(2), offset::IPRIORITYR + 27, BYTE, 0x30);
        assert_eq!(
            state.distributor_read(vcpu(2), offset::IPRIORITYR + 24, WORD),
            0x3000_0000
        );
        assert_eq!(
            state.distributor_read(vcpu(1), offset::IPRIORITYR + 24, WORD),
            0
        );
    }

    #[test]
    fn gicv2_targets_are_read_only_for_private_interrupts() {
        let mut state = v2();
        // Reads name the reader, for SGIs and PPIs alike.
        assert_eq!(
            state.distributor_read(vcpu(2), offset::ITARGETSR, WORD),
            0x0404_0404
        );
        assert_eq!(
            state.distributor_read(vcpu(1), offset::ITARGETSR + 31, BYTE),
            0x02
        );
        state.distributor_write(vcpu(2), offset::ITARGETSR + 28, WORD, 0x0101_0101);
        assert_eq!(
            state.distributor_read(vcpu(2), offset::ITARGETSR + 28, WORD),
            0x0404_0404
        );
        // SPIs: writable for owned ones, masked to the VM's four vCPUs.
        let effects = state.distributor_write(vcpu(0), offset::ITARGETSR + 40, BYTE, 0xF4);
        assert_eq!(effects.reevaluate, set_of(&[2]));
        assert_eq!(
            state.distributor_read(vcpu(0), offset::ITARGETSR + 40, BYTE),
            0x04
        );
        state.distributor_write(vcpu(0), offset::ITARGETSR + 32, WORD, 0x0808_0808);
        assert_eq!(
            state.distributor_read(vcpu(0), offset::ITARGETSR + 32, WORD),
            0x0800
        );
        assert_eq!(state.spi_target(33), Some(vcpu(3)));
        assert_eq!(state.spi_target(34), None, "not owned");
        state.distributor_write(vcpu(0), offset::ITARGETSR + 32, HALF, 0xFFFF);
        assert_eq!(
            state.distributor_read(vcpu(0), offset::ITARGETSR + 32, WORD),
            0x0800
        );
    }

    #[test]
    fn config_registers() {
        for mut state in [v2(), v3()] {
            let cpu = vcpu(0);
            // Word 2 covers INTIDs 32-47; 33 and 40 are owned.
            state.distributor_write(cpu, offset::ICFGR + 8, WORD, 0xFFFF_FFFF);
            assert_eq!(
                state.distributor_read(cpu, offset::ICFGR + 8, WORD),
                (0b10 << 2) | (0b10 << 16)
            );
            state.distributor_write(cpu, offset::ICFGR + 8, WORD, 0);
            assert_eq!(state.distributor_read(cpu, offset::ICFGR + 8, WORD), 0);
            state.distributor_write(cpu, offset::ICFGR + 8, BYTE, 0xFF);
            assert_eq!(state.distributor_read(cpu, offset::ICFGR + 8, WORD), 0);
        }
        let mut state = v2();
        // SGIs: always edge, read-only; PPIs reset level, programmable.
        assert_eq!(
            state.distributor_read(vcpu(0), offset::ICFGR, WORD),
            0xAAAA_AAAA
        );
        state.distributor_write(vcpu(0), offset::ICFGR, WORD, 0);
        assert_eq!(
            state.distributor_read(vcpu(0), offset::ICFGR, WORD),
            0xAAAA_AAAA
        );
        assert_eq!(state.distributor_read(vcpu(0), offset::ICFGR + 4, WORD), 0);
        state.distributor_write(vcpu(0), offset::ICFGR + 4, WORD, 0x8000_0000);
        assert_eq!(
            state.distributor_read(vcpu(0), offset::ICFGR + 4, WORD),
            0x8000_0000
        );
    }

    #[test]
    fn irouter_takes_doublewords_and_words() {
        let mut state = v3();
        let router = |intid: u64| offset::IROUTER + 8 * intid;
        let effects = state.distributor_write(vcpu(0), router(40), DOUBLE, 0xFF_8000_0002);
        assert_eq!(
            effects.reevaluate,
            set_of(&[0, 2]),
            "moved from vCPU 0 to 2"
        );
        // IRM and Aff3 are RAZ/WI.
        assert_eq!(state.distributor_read(vcpu(0), router(40), DOUBLE), 2);
        assert_eq!(state.spi_target(40), Some(vcpu(2)));
        state.distributor_write(vcpu(0), router(40), WORD, 0x0001_0003);
        assert_eq!(
            state.distributor_read(vcpu(0), router(40), WORD),
            0x0001_0003
        );
        assert_eq!(state.distributor_read(vcpu(0), router(40) + 4, WORD), 0);
        assert_eq!(state.spi_target(40), None, "Aff1 = 1 names no vCPU");
        state.distributor_write(vcpu(0), router(40), WORD, 1);
        // Not owned, private INTIDs, bytes and misaligned doublewords.
        state.distributor_write(vcpu(0), router(41), DOUBLE, 1);
        state.distributor_write(vcpu(0), router(0), DOUBLE, 1);
        state.distributor_write(vcpu(0), router(40), BYTE, 3);
        state.distributor_write(vcpu(0), router(40) + 4, DOUBLE, 3);
        assert_eq!(state.distributor_read(vcpu(0), router(41), DOUBLE), 0);
        assert_eq!(state.distributor_read(vcpu(0), router(0), DOUBLE), 0);
        assert_eq!(state.distributor_read(vcpu(0), router(40), DOUBLE), 1);
        assert_eq!(state.distributor_read(vcpu(0), router(40), BYTE), 0);
        // GICv2 has no IROUTER.
        let mut state = v2();
        state.distributor_write(vcpu(0), router(40), DOUBLE, 1);
        assert_eq!(state.distributor_read(vcpu(0), router(40), DOUBLE), 0);
    }

    #[test]
    fn sgir_target_list_filters() {
        let mut state = v2();
        let sgir = |filter: u32, list: u32, sgi: u32| u64::from(filter << 24 | list << 16 | sgi);
        // The list, with bits past the VM's four vCPUs ignored.
        let effects = state.distributor_write(vcpu(0), offset::SGIR, WORD, sgir(0, 0xF6, 3));
        let targets = set_of(&[1, 2]);
        assert_eq!(effects.sgi, Some(SgiSent { intid: 3, targets }));
        assert_eq!(effects.reevaluate, targets);
        // All but self.
        let effects = state.distributor_write(vcpu(2), offset::SGIR, WORD, sgir(1, 0, 4));
        assert_eq!(effects.sgi.unwrap().targets, set_of(&[0, 1, 3]));
        // Self.
        let effects = state.distributor_write(vcpu(3), offset::SGIR, WORD, sgir(2, 0xFF, 5));
        assert_eq!(effects.sgi.unwrap().targets, set_of(&[3]));
        // Reserved filter and empty lists send nothing.
        let before = snapshot(&state);
        assert_eq!(
            state.distributor_write(vcpu(3), offset::SGIR, WORD, sgir(3, 0xFF, 5)),
            Effects::NONE
        );
        assert_eq!(
            state.distributor_write(vcpu(3), offset::SGIR, WORD, sgir(0, 0, 5)),
            Effects::NONE
        );
        assert_eq!(
            state.distributor_write(vcpu(3), offset::SGIR, BYTE, sgir(2, 0, 5)),
            Effects::NONE
        );
        assert_eq!(snapshot(&state), before);
        // Write-only.
        assert_eq!(state.distributor_read(vcpu(3), offset::SGIR, WORD), 0);
        // Pending state per source: SGI 3 on vCPU 1 from vCPU 0, SGI 4
        // from vCPU 2.
        assert_eq!(
            state.distributor_read(vcpu(1), offset::SPENDSGIR, WORD),
            0x0100_0000
        );
        assert_eq!(
            state.distributor_read(vcpu(1), offset::SPENDSGIR + 4, WORD),
            0x04
        );
        assert_eq!(
            state.distributor_read(vcpu(1), offset::ISPENDR, WORD),
            0b1_1000
        );
        assert_eq!(
            state.distributor_read(vcpu(3), offset::CPENDSGIR + 5, BYTE),
            0x08
        );
    }

    #[test]
    fn sgi_pending_sources_set_and_clear_by_byte_and_word() {
        let mut state = v2();
        let cpu = vcpu(1);
        let effects = state.distributor_write(cpu, offset::SPENDSGIR + 6, BYTE, 0xFF);
        assert_eq!(effects.reevaluate, set_of(&[1]));
        assert_eq!(
            state.distributor_read(cpu, offset::SPENDSGIR + 4, WORD),
            0x000F_0000
        );
        assert_eq!(state.distributor_read(cpu, offset::ISPENDR, WORD), 1 << 6);
        state.distributor_write(cpu, offset::CPENDSGIR + 4, WORD, 0x0003_0000);
        assert_eq!(
            state.distributor_read(cpu, offset::CPENDSGIR + 6, BYTE),
            0x0C
        );
        state.distributor_write(cpu, offset::CPENDSGIR + 6, BYTE, 0x0C);
        assert_eq!(state.distributor_read(cpu, offset::ISPENDR, WORD), 0);
        assert_eq!(
            state.distributor_read(vcpu(0), offset::SPENDSGIR + 4, WORD),
            0,
            "banked"
        );
        state.distributor_write(cpu, offset::SPENDSGIR + 6, HALF, 0xFFFF);
        assert_eq!(state.distributor_read(cpu, offset::SPENDSGIR + 4, WORD), 0);
    }

    #[test]
    fn level_interrupts_stay_pending_through_icpendr_while_asserted() {
        let mut state = v3();
        state.set_line_level(vcpu(0), 33, true);
        assert_eq!(
            state.distributor_read(vcpu(0), offset::ISPENDR + 4, WORD),
            1 << 1
        );
        state.distributor_write(vcpu(0), offset::ICPENDR + 4, WORD, 1 << 1);
        assert_eq!(
            state.distributor_read(vcpu(0), offset::ISPENDR + 4, WORD),
            1 << 1
        );
        state.set_line_level(vcpu(0), 33, false);
        assert_eq!(
            state.distributor_read(vcpu(0), offset::ISPENDR + 4, WORD),
            0
        );
        // Set by ISPENDR, a level interrupt stays pending until cleared.
        state.distributor_write(vcpu(0), offset::ISPENDR + 4, WORD, 1 << 1);
        assert_eq!(
            state.distributor_read(vcpu(0), offset::ISPENDR + 4, WORD),
            1 << 1
        );
        // Edge: the latch alone.
        state.distributor_write(vcpu(0), offset::ICFGR + 8, WORD, 0b10 << 2);
        state.distributor_write(vcpu(0), offset::ICPENDR + 4, WORD, 1 << 1);
        state.set_line_level(vcpu(0), 33, true);
        state.distributor_write(vcpu(0), offset::ICPENDR + 4, WORD, 1 << 1);
        assert_eq!(
            state.distributor_read(vcpu(0), offset::ISPENDR + 4, WORD),
            0
        );
    }

    #[test]
    fn a_hostile_guest_changes_nothing_it_does_not_own() {
        // A VM owning SPIs 33 and 40 writes every offset of the frame at
        // every width with all-ones and with zeros: no other SPI changes,
        // and no vCPU past its two is touched.
        for version in [GicVersion::V2, GicVersion::V3] {
            let mut state = VgicState::new(version, 2, owned());
            let pristine = state.clone();
            for value in [0, u64::MAX] {
                for offset in 0..0x10000 {
                    for width in [BYTE, HALF, WORD, DOUBLE] {
                        state.distributor_write(vcpu(1), offset, width, value);
                    }
                }
            }
            let owned_index = |index: usize| index == 33 - 32 || index == 40 - 32;
            for index in (0..SPI_COUNT).filter(|index| !owned_index(*index)) {
                assert_eq!(
                    state.spis[index],
                    pristine.spis[index],
                    "SPI {}",
                    index + 32
                );
                assert_eq!(state.spi_targets[index], pristine.spi_targets[index]);
                assert_eq!(state.spi_routes[index], pristine.spi_routes[index]);
            }
            assert_ne!(
                state.spis[1], pristine.spis[1],
                "the owned SPI 33 was written"
            );
            assert_eq!(state.private[2..], pristine.private[2..]);
            assert_eq!(state.sgi_sources[2..], pristine.sgi_sources[2..]);
            // A vCPU the VM does not have reads nothing and writes nothing.
            assert_eq!(state.distributor_read(vcpu(5), offset::ISENABLER, WORD), 0);
            let before = format!("{state:?}");
            state.distributor_write(vcpu(5), offset::SGIR, WORD, 1 << 24);
            state.distributor_write(vcpu(5), offset::ISENABLER, WORD, !0);
            assert_eq!(format!("{state:?}"), before);
        }
    }

    #[test]
    fn unowned_spis_read_as_zero_whatever_their_state() {
        for mut state in [v2(), v3()] {
            // SPI 34 has state (as if left by a bug or a previous owner)
            // but the VM does not own it.
            state.spis[34 - 32] = IrqState {
                group1: true,
                enabled: true,
                pending_latch: true,
                line_level: true,
                active: true,
                edge: true,
                priority: 0xFF,
            };
            state.spi_targets[34 - 32] = 1;
            for register in [0x080, 0x100, 0x180, 0x200, 0x280, 0x300, 0x380] {
                assert_eq!(state.distributor_read(vcpu(0), register + 4, WORD), 0);
            }
            assert_eq!(
                state.distributor_read(vcpu(0), offset::IPRIORITYR + 34, BYTE),
                0
            );
            assert_eq!(
                state.distributor_read(vcpu(0), offset::ITARGETSR + 34, BYTE),
                0
            );
            assert_eq!(state.distributor_read(vcpu(0), offset::ICFGR + 8, WORD), 0);
            assert_eq!(state.spi_target(34), None);
        }
    }

    #[test]
    fn writes_name_the_vcpus_that_must_re_evaluate() {
        let mut state = v2();
        state.distributor_write(vcpu(0), offset::ITARGETSR + 40, BYTE, 0b0100);
        // SPI 40 is delivered to vCPU 2 whoever writes.
        let effects = state.distributor_write(vcpu(0), offset::ISENABLER + 4, WORD, 1 << 8);
        assert_eq!(
            effects,
            Effects {
                reevaluate: set_of(&[2]),
                sgi: None
            }
        );
        // Writing what is already there changes nothing.
        let effects = state.distributor_write(vcpu(3), offset::ISENABLER + 4, WORD, 1 << 8);
        assert_eq!(effects, Effects::NONE);
        // A PPI is the writer's own.
        let effects = state.distributor_write(vcpu(3), offset::IPRIORITYR + 27, BYTE, 0x40);
        assert_eq!(effects.reevaluate, set_of(&[3]));
        // An SPI owned but delivered nowhere (no target) names nobody.
        let effects = state.distributor_write(vcpu(0), offset::ISPENDR + 4, WORD, 1 << 1);
        assert_eq!(effects, Effects::NONE);
        assert_eq!(
            state.distributor_read(vcpu(0), offset::ISPENDR + 4, WORD),
            1 << 1
        );
    }

    #[test]
    fn reserved_offsets_read_as_zero() {
        let state = v3();
        for offset in [
            0x0C, 0x10, 0x40, 0x7C, 0xD00, 0xE00, 0x5FFC, 0x7FE0, 0xFFCC, 0x10000,
        ] {
            assert_eq!(
                state.distributor_read(vcpu(0), offset, WORD),
                0,
                "{offset:#x}"
            );
        }
        let state = v2();
        for offset in [
            0x0C, 0x40, 0xD00, 0xE00, 0xF04, 0xF30, 0x6100, 0xFCC, 0x1000,
        ] {
            assert_eq!(
                state.distributor_read(vcpu(0), offset, WORD),
                0,
                "{offset:#x}"
            );
        }
    }

    #[test]
    fn sgi1r_names_targets_by_affinity_and_respects_groups() {
        let mut state = VgicState::new(GicVersion::V3, 4, SpiSet::EMPTY);
        for index in 0..4 {
            state.private[index][7].group1 = true;
        }
        let sgi1r = |sgi: u64, list: u64| sgi << 24 | list;
        let effects = state.generate_sgi(vcpu(0), sgi1r(7, 0b1010), true);
        assert_eq!(effects.sgi.unwrap().targets, set_of(&[1, 3]));
        // All but self (IRM).
        let effects = state.generate_sgi(vcpu(2), sgi1r(7, 0) | 1 << 40, true);
        assert_eq!(effects.sgi.unwrap().targets, set_of(&[0, 1, 3]));
        // Another Aff1 or range selector names nobody here.
        assert_eq!(
            state.generate_sgi(vcpu(0), sgi1r(7, 1) | 1 << 16, true),
            Effects::NONE
        );
        assert_eq!(
            state.generate_sgi(vcpu(0), sgi1r(7, 1) | 1 << 44, true),
            Effects::NONE
        );
        // SGI 7 is group 1: ICC_SGI0R_EL1 does not make it pending; SGI 8
        // is group 0, which either register generates.
        let effects = state.generate_sgi(vcpu(0), sgi1r(8, 0b10), false);
        assert_eq!(effects.sgi.unwrap().targets, set_of(&[1]));
        let effects = state.generate_sgi(vcpu(0), sgi1r(8, 0b100), true);
        assert_eq!(effects.sgi.unwrap().targets, set_of(&[2]));
        assert_eq!(
            state.generate_sgi(vcpu(0), sgi1r(7, 1), false),
            Effects::NONE
        );
        assert!(state.private[1][7].pending_latch);
        assert!(state.private[0][7].pending_latch);
        assert!(!state.private[2][7].pending_latch, "the sender");
    }
}
