//! The state of every virtual interrupt of one VM, and the questions the
//! rest of the vGIC asks of it.
//!
//! This is the model both register files (the distributor in
//! `distributor.rs`, the GICv3 redistributor in `redistributor.rs`) read
//! and write, and the one the list-register allocation will read next: for
//! each interrupt its group, enable, pending, active, priority and
//! configuration (Arm IHI 0069H chapters 1 and 4, IHI 0048B chapters 1 and 3),
//! plus where an SPI is delivered (GICv2 CPU targets, GICv3 affinity
//! routing). SGIs and PPIs (INTIDs 0-31) are banked per vCPU; SPIs belong to
//! the VM. Nothing here allocates, and nothing is unsafe.
//!
//! Pending state keeps the two sources the architecture distinguishes
//! apart (IHI 0069H chapter 4, IHI 0048B chapter 3): a *latch*, set by an edge,
//! by a write to ISPENDR or by an SGI and cleared by ICPENDR or by the
//! acknowledge; and for level-sensitive interrupts the *line level*, which
//! keeps the interrupt pending for as long as the device holds it, whatever
//! the guest writes to ICPENDR. A level interrupt that is still asserted
//! after its handler's EOI is therefore pending again at once.

#![forbid(unsafe_code)]

use crate::MAX_CPUS;
use crate::vm::ids::{VcpuId, VcpuSet};

/// The most vCPUs one VM's vGIC serves. Eight is what a GICv2 can name (its
/// GICD_ITARGETSR and GICD_SGIR carry 8-bit CPU target lists, IHI 0048B
/// §4.3.12, §4.3.15) and what `MAX_CPUS` allows, with one vCPU per
/// physical CPU.
pub const MAX_VCPUS: usize = MAX_CPUS;
const _: () = assert!(MAX_VCPUS <= 8, "GICv2 target lists are 8 bits");

/// SGIs are INTIDs 0-15 and PPIs 16-31, banked per vCPU.
pub const PRIVATE_COUNT: usize = 32;
/// The number of SGIs (INTIDs 0-15).
pub const SGI_COUNT: usize = 16;
/// The first SPI.
pub const SPI_BASE: u32 = 32;
/// SPIs modelled: INTIDs 32-255. This covers every device interrupt a
/// guest can be given on the boards we run on: QEMU `virt` puts its
/// devices' SPIs (UART, RTC, virtio-mmio) below INTID 96, and the Raspberry
/// Pi 4's GIC-400 implements INTIDs up to 255, with peripherals (its UARTs
/// at INTID 153, for instance) high in that range. Going further would only
/// cost memory in every VM: a GIC-400 has no SPI past 255. The distributor
/// advertises exactly this many (GICD_TYPER.ITLinesNumber = 7).
pub const SPI_COUNT: usize = 224;
/// One past the highest INTID modelled.
pub const INTID_LIMIT: u32 = SPI_BASE + SPI_COUNT as u32;
const _: () = assert!(SPI_COUNT.is_multiple_of(32), "SPIs come in blocks of 32");
/// Words in a bitmap of all SPIs.
pub const SPI_WORDS: usize = SPI_COUNT / 32;

/// Which GIC architecture the guest is shown.
///
/// `repr(u8)` with GICv2 as 0, so an all-zero `VgicState` is a valid value
/// (see [`VgicState::ZERO`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum GicVersion {
    /// GICv2 (IHI 0048B): memory-mapped CPU interface, SGIs by GICD_SGIR,
    /// SPIs by CPU target lists.
    V2 = 0,
    /// GICv3 (IHI 0069H) with affinity routing always on, one security
    /// state (GICD_CTLR.DS = 1), no LPIs.
    V3,
}

/// The state of one interrupt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IrqState {
    /// Group 1 (IGROUPR bit set) rather than group 0.
    pub group1: bool,
    pub enabled: bool,
    /// Set by an edge, a write to ISPENDR or an SGI; cleared by ICPENDR or
    /// the acknowledge.
    pub pending_latch: bool,
    /// The level of the device's line; makes a level-sensitive interrupt
    /// pending while high.
    pub line_level: bool,
    pub active: bool,
    /// Edge-triggered (ICFGR Int_config = 0b1x) rather than level-sensitive.
    pub edge: bool,
    /// 0 is the highest priority.
    pub priority: u8,
}

impl IrqState {
    /// The reset state. SGIs are always edge-triggered; PPIs and SPIs reset
    /// level-sensitive, which is what the timers and most devices are.
    pub(super) const fn reset(edge: bool) -> Self {
        Self {
            group1: false,
            enabled: false,
            pending_latch: false,
            line_level: false,
            active: false,
            edge,
            priority: 0,
        }
    }

    /// Pending as the architecture defines it: the latch, or for a
    /// level-sensitive interrupt the line held high.
    #[must_use]
    pub const fn pending(&self) -> bool {
        self.pending_latch || (!self.edge && self.line_level)
    }
}

/// A set of SPIs, as a bitmap: which SPIs a VM owns.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SpiSet([u32; SPI_WORDS]);

impl SpiSet {
    pub const EMPTY: Self = Self([0; SPI_WORDS]);

    /// Adds the SPI with INTID `intid`; false if it is no SPI we model.
    pub const fn insert(&mut self, intid: u32) -> bool {
        match spi_index(intid) {
            Some(index) => {
                self.0[index / 32] |= 1 << (index % 32);
                true
            }
            None => false,
        }
    }

    #[must_use]
    pub const fn contains(&self, intid: u32) -> bool {
        match spi_index(intid) {
            Some(index) => self.0[index / 32] & (1 << (index % 32)) != 0,
            None => false,
        }
    }

    /// Bits 32w..32w+31 of the set (SPI index order), 0 past the end.
    #[must_use]
    pub const fn word(&self, word: usize) -> u32 {
        if word < SPI_WORDS { self.0[word] } else { 0 }
    }

    /// The INTIDs in the set, in order.
    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.0.iter().enumerate().flat_map(|(word, bits)| {
            set_bits(*bits).map(move |bit| SPI_BASE + word as u32 * 32 + bit)
        })
    }
}

/// The positions of the set bits of `word`, lowest first.
fn set_bits(word: u32) -> impl Iterator<Item = u32> {
    let mut rest = word;
    core::iter::from_fn(move || {
        (rest != 0).then(|| {
            let bit = rest.trailing_zeros();
            rest &= rest - 1;
            bit
        })
    })
}

/// The index of SPI `intid` in the SPI arrays, if it is one we model.
#[must_use]
pub const fn spi_index(intid: u32) -> Option<usize> {
    if intid >= SPI_BASE && intid < INTID_LIMIT {
        Some((intid - SPI_BASE) as usize)
    } else {
        None
    }
}

/// An SGI a register write generated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SgiSent {
    pub intid: u8,
    /// The vCPUs it became pending on.
    pub targets: VcpuSet,
}

/// What a write changed that the core must act on, without a heap: the
/// vCPUs whose deliverable interrupts may have changed (to re-evaluate,
/// through their CPU's request queue when they run elsewhere), and the SGI
/// the write generated, if any.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Effects {
    pub reevaluate: VcpuSet,
    pub sgi: Option<SgiSent>,
}

impl Effects {
    pub const NONE: Self = Self {
        reevaluate: VcpuSet::EMPTY,
        sgi: None,
    };

    /// Adds the effects of `other`. Only one register write is ever merged,
    /// so at most one of the two carries an SGI.
    pub fn merge(&mut self, other: Self) {
        for vcpu in other.reevaluate.iter() {
            self.reevaluate.insert(vcpu);
        }
        if other.sgi.is_some() {
            self.sgi = other.sgi;
        }
    }
}

/// One deliverable interrupt for a vCPU, as the list-register allocation
/// needs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PendingIrq {
    pub intid: u32,
    pub priority: u8,
    pub group1: bool,
    /// Also active (active and pending): the guest is still handling an
    /// earlier instance.
    pub active: bool,
    /// Pending and forwarded to the vCPU. Always true in `pending_for`'s
    /// list; `active_for` also lists interrupts that are only active.
    pub deliverable: bool,
    /// For a GICv2 SGI, the vCPU that sent it (the guest reads it in
    /// GICC_IAR.CPUID); the lowest-numbered one when several did.
    pub source: Option<VcpuId>,
}

impl PendingIrq {
    /// A placeholder for unused entries of fixed-size lists.
    pub const NONE: Self = Self {
        intid: 0,
        priority: 0,
        group1: false,
        active: false,
        deliverable: false,
        source: None,
    };
}

/// The most entries `pending_for` returns: more than any GIC's list
/// registers (at most 16), so the allocation always sees the next
/// candidates too.
pub const PENDING_LIST_LEN: usize = 20;

/// A vCPU's deliverable interrupts, highest priority first, equal
/// priorities in INTID order.
#[derive(Clone, Copy, Debug)]
pub struct PendingList {
    entries: [PendingIrq; PENDING_LIST_LEN],
    len: usize,
}

impl PendingList {
    const fn new() -> Self {
        Self {
            entries: [PendingIrq::NONE; PENDING_LIST_LEN],
            len: 0,
        }
    }

    #[must_use]
    pub fn as_slice(&self) -> &[PendingIrq] {
        // `len` never passes the capacity; the `min` shows the compiler.
        &self.entries[..self.len.min(PENDING_LIST_LEN)]
    }

    /// Inserts `irq` in order, keeping the best `PENDING_LIST_LEN`. Callers
    /// offer INTIDs in ascending order, so placing `irq` after every entry
    /// of equal priority keeps equal priorities in INTID order.
    fn offer(&mut self, irq: PendingIrq) {
        let len = self.len.min(PENDING_LIST_LEN);
        let position = self.entries[..len]
            .iter()
            .position(|entry| entry.priority > irq.priority)
            .unwrap_or(len);
        if position >= PENDING_LIST_LEN {
            return;
        }
        // The entries from `position` move up one; a full list drops its
        // last. (A loop whose bounds the compiler sees: no panic path.)
        let mut index = len.min(PENDING_LIST_LEN - 1);
        while index > position {
            self.entries[index] = self.entries[index - 1];
            index -= 1;
        }
        self.entries[position] = irq;
        self.len = (len + 1).min(PENDING_LIST_LEN);
    }
}

/// Which physical interrupt raised a vCPU's hardware-linked PPI `ppi`
/// (`VgicState::linked_sources`); `ppi` 0 (an SGI, never linked) when
/// every linked PPI comes from the physical PPI of the same number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkedSource {
    ppi: u8,
    physical: u16,
}

impl LinkedSource {
    pub const SAME_NUMBER: Self = Self {
        ppi: 0,
        physical: 0,
    };
}

/// The whole interrupt state of one VM.
#[derive(Clone, Debug)]
pub struct VgicState {
    pub(super) version: GicVersion,
    pub(super) vcpu_count: usize,
    /// GICD_CTLR.EnableGrp0 and EnableGrp1: the distributor forwards an
    /// interrupt only when its group is enabled.
    pub(super) enable_group0: bool,
    pub(super) enable_group1: bool,
    pub(super) private: [[IrqState; PRIVATE_COUNT]; MAX_VCPUS],
    /// GICv2 only: for each vCPU and SGI, the vCPUs whose SGI is pending
    /// there (IHI 0048B chapter 3: an SGI is pending once per source). The
    /// SGI's `pending_latch` is kept equal to "this mask is not empty".
    pub(super) sgi_sources: [[u8; SGI_COUNT]; MAX_VCPUS],
    /// GICv2 only: for each vCPU and SGI, the sender of the instance the
    /// guest has active, plus one (0: none known). A list register showing
    /// it active must carry that CPUID, or the guest's EOI, which names it,
    /// would match nothing (IHI 0048B §5.3.11).
    pub(super) active_sources: [[u8; SGI_COUNT]; MAX_VCPUS],
    /// GICv3 GICR_WAKER.ProcessorSleep per vCPU (IHI 0069H §12.11).
    pub(super) processor_sleep: [bool; MAX_VCPUS],
    pub(super) spis: [IrqState; SPI_COUNT],
    /// GICv2 GICD_ITARGETSR: the CPU target list of each SPI.
    pub(super) spi_targets: [u8; SPI_COUNT],
    /// GICv3 GICD_IROUTER: Aff2.Aff1.Aff0 of each SPI's target (Aff3 is
    /// RES0 as GICD_TYPER.A3V is 0, IRM is RAZ/WI as No1N is 1).
    pub(super) spi_routes: [u32; SPI_COUNT],
    /// The vCPU an active SPI is active on, plus one (0: none): it stays
    /// there, whatever its routing says now, until the guest completes it
    /// on that vCPU.
    pub(super) spi_active_on: [u8; SPI_COUNT],
    /// The vCPU whose list registers hold the SPI (in any state, as the
    /// last write there left it), plus one (0: none). Until that vCPU's
    /// CPU folds the register back, only it may show the SPI: the guest
    /// may have taken it there since, which the model learns at the fold.
    pub(super) spi_resident_on: [u8; SPI_COUNT],
    pub(super) owned: SpiSet,
    /// PPIs linked to the physical PPI of the same number on the vCPU's
    /// CPU (its timers, its PMU): list registers carry them with the HW
    /// bit, so the guest's deactivation reaches the physical interrupt.
    pub(super) hardware_ppis: u32,
    /// SPIs linked to the physical SPI of the same number (passed-through
    /// devices'), in the list registers with the HW bit like the PPIs.
    pub(super) hardware_spis: SpiSet,
    /// Per vCPU, the physical interrupt that last raised one of its
    /// hardware-linked PPIs when that was not the physical PPI of the same
    /// number. The BCM2711 signals each core's PMU overflow on an SPI of
    /// its own, which the hypervisor links to the guest's PPI 23 beside
    /// the PPI itself (QEMU's `raspi4b` raises the PPI): a list register
    /// must name the physical INTID that fired, so that the guest's
    /// deactivation ends that one. A board raises one of the two, never
    /// both.
    pub(super) linked_sources: [LinkedSource; MAX_VCPUS],
    /// Per vCPU, the SGIs and PPIs that may be pending or active; for the
    /// VM, the SPIs that may be. Set whenever an interrupt becomes pending
    /// or active, pruned by [`prune_marks`](Self::prune_marks): the scans
    /// behind every list-register sync look at these bits, not at all 256
    /// interrupts.
    pub(super) private_marks: [u32; MAX_VCPUS],
    pub(super) spi_marks: [u32; SPI_WORDS],
    /// vCPUs a fold on another vCPU's CPU gave something to show: an SPI
    /// completed where it was active, routed to them meanwhile and still
    /// pending. Their CPUs are told by whoever folded
    /// ([`take_handoffs`](Self::take_handoffs)).
    pub(super) handoffs: VcpuSet,
}

impl VgicState {
    /// All zero bytes: no vCPU, nothing owned, every interrupt disabled
    /// and idle. Not a usable state until [`reset_in_place`] gives it a
    /// version and vCPUs; it exists because every field is an integer, a
    /// bool, an array of them, or `GicVersion` (`repr(u8)`, GICv2 = 0), so
    /// the hypervisor can build the state in zeroed memory, in place,
    /// without a multi-kilobyte copy (boot time, `boot.hypervisor_insns`).
    ///
    /// [`reset_in_place`]: Self::reset_in_place
    pub const ZERO: Self = Self {
        version: GicVersion::V2,
        vcpu_count: 0,
        enable_group0: false,
        enable_group1: false,
        private: [[IrqState::reset(false); PRIVATE_COUNT]; MAX_VCPUS],
        sgi_sources: [[0; SGI_COUNT]; MAX_VCPUS],
        active_sources: [[0; SGI_COUNT]; MAX_VCPUS],
        processor_sleep: [false; MAX_VCPUS],
        spis: [IrqState::reset(false); SPI_COUNT],
        spi_targets: [0; SPI_COUNT],
        spi_routes: [0; SPI_COUNT],
        spi_active_on: [0; SPI_COUNT],
        spi_resident_on: [0; SPI_COUNT],
        owned: SpiSet::EMPTY,
        hardware_ppis: 0,
        hardware_spis: SpiSet::EMPTY,
        linked_sources: [LinkedSource::SAME_NUMBER; MAX_VCPUS],
        private_marks: [0; MAX_VCPUS],
        spi_marks: [0; SPI_WORDS],
        handoffs: VcpuSet::EMPTY,
    };

    /// The reset state of a VM with `vcpu_count` vCPUs (clamped to 1 ..=
    /// `MAX_VCPUS`) that owns the SPIs in `owned`: its emulated devices'
    /// and those its configuration passes through.
    #[must_use]
    pub fn new(version: GicVersion, vcpu_count: usize, owned: SpiSet) -> Self {
        let mut state = Self::ZERO;
        state.initialise_zeroed(version, vcpu_count, owned);
        state
    }

    /// Turns [`ZERO`](Self::ZERO) into the reset state [`new`](Self::new)
    /// describes, writing only what is not zero in it (the SGIs'
    /// edge-triggering, the redistributors' sleep). Only for a state that
    /// is all zero: anything else keeps what it held. The hypervisor builds
    /// a VM's state in zeroed memory and calls this once.
    pub fn initialise_zeroed(&mut self, version: GicVersion, vcpu_count: usize, owned: SpiSet) {
        self.version = version;
        self.vcpu_count = vcpu_count.clamp(1, MAX_VCPUS);
        for bank in &mut self.private {
            for sgi in &mut bank[..SGI_COUNT] {
                sgi.edge = true;
            }
        }
        self.processor_sleep = [true; MAX_VCPUS];
        self.owned = owned;
    }

    /// Puts this state in the reset state [`new`](Self::new) describes,
    /// writing every field where it is. The hardware-linked PPIs are kept.
    pub fn reset_in_place(&mut self, version: GicVersion, vcpu_count: usize, owned: SpiSet) {
        self.version = version;
        self.vcpu_count = vcpu_count.clamp(1, MAX_VCPUS);
        self.enable_group0 = false;
        self.enable_group1 = false;
        // Whole-array stores of the all-zero level-sensitive reset state
        // compile to memset; then the SGIs become edge-triggered.
        self.private = [[IrqState::reset(false); PRIVATE_COUNT]; MAX_VCPUS];
        for bank in &mut self.private {
            for sgi in &mut bank[..SGI_COUNT] {
                sgi.edge = true;
            }
        }
        self.sgi_sources = [[0; SGI_COUNT]; MAX_VCPUS];
        self.active_sources = [[0; SGI_COUNT]; MAX_VCPUS];
        self.processor_sleep = [true; MAX_VCPUS];
        self.spis = [IrqState::reset(false); SPI_COUNT];
        self.spi_targets = [0; SPI_COUNT];
        self.spi_routes = [0; SPI_COUNT];
        self.spi_active_on = [0; SPI_COUNT];
        self.spi_resident_on = [0; SPI_COUNT];
        self.owned = owned;
        self.linked_sources = [LinkedSource::SAME_NUMBER; MAX_VCPUS];
        self.private_marks = [0; MAX_VCPUS];
        self.spi_marks = [0; SPI_WORDS];
        self.handoffs = VcpuSet::EMPTY;
    }

    /// The vCPUs folds since the last call gave something to show (see
    /// `handoffs`), now forgotten: the caller asks their CPUs to sync.
    pub fn take_handoffs(&mut self) -> VcpuSet {
        core::mem::replace(&mut self.handoffs, VcpuSet::EMPTY)
    }

    /// Links the PPIs in the bitmask `ppis` to the physical PPIs of the same
    /// number on each vCPU's CPU.
    pub fn set_hardware_ppis(&mut self, ppis: u32) {
        self.hardware_ppis = ppis & 0xFFFF_0000;
    }

    /// Links the SPIs in `spis` (those the VM owns) to the physical SPIs of
    /// the same number.
    pub fn set_hardware_spis(&mut self, spis: SpiSet) {
        let mut linked = SpiSet::EMPTY;
        for word in 0..SPI_WORDS {
            linked.0[word] = spis.0[word] & self.owned.0[word];
        }
        self.hardware_spis = linked;
    }

    /// Whether `intid` of `vcpu` is linked to a physical interrupt.
    #[must_use]
    pub const fn is_hardware_linked(&self, _vcpu: VcpuId, intid: u32) -> bool {
        if intid < 32 {
            self.hardware_ppis & (1 << intid) != 0
        } else {
            self.hardware_spis.contains(intid)
        }
    }

    /// The physical INTID a list register links `intid` of `vcpu` to, if
    /// it is hardware-linked: the one that last raised it (see
    /// `linked_sources`), else the interrupt of the same number.
    #[must_use]
    pub fn linked_physical(&self, vcpu: VcpuId, intid: u32) -> Option<u32> {
        if !self.is_hardware_linked(vcpu, intid) {
            return None;
        }
        match self.linked_sources.get(vcpu.index()) {
            Some(source) if u32::from(source.ppi) == intid => Some(u32::from(source.physical)),
            _ => Some(intid),
        }
    }

    /// The physical interrupt `physical` raised the hardware-linked PPI
    /// `intid` of `vcpu` and was left active: as
    /// [`hardware_fired`](Self::hardware_fired), and list registers now
    /// name `physical` for it (see `linked_sources`). Only that PPI's
    /// record changes: another linked PPI firing (a timer) leaves the
    /// PMU's SPI in place.
    pub fn linked_fired_from(&mut self, vcpu: VcpuId, intid: u32, physical: u32) -> Effects {
        if intid >= 32 || !self.is_hardware_linked(vcpu, intid) {
            return Effects::NONE;
        }
        if let Some(source) = self.linked_sources.get_mut(vcpu.index()) {
            match u16::try_from(physical) {
                Ok(physical) if u32::from(physical) != intid => {
                    *source = LinkedSource {
                        ppi: intid as u8,
                        physical,
                    };
                }
                // The PPI of the same number: this PPI's record, if it has
                // one, goes.
                _ if u32::from(source.ppi) == intid => *source = LinkedSource::SAME_NUMBER,
                _ => {}
            }
        }
        self.hardware_fired(vcpu, intid)
    }

    /// The SPIs linked to physical ones.
    #[must_use]
    pub const fn hardware_spis(&self) -> SpiSet {
        self.hardware_spis
    }

    /// The physical interrupt linked to `intid` of `vcpu` fired, and the
    /// hypervisor left it active: one pending instance, whatever the
    /// configured trigger (the physical interrupt cannot fire again until
    /// the guest deactivates this one).
    pub fn hardware_fired(&mut self, vcpu: VcpuId, intid: u32) -> Effects {
        if !self.is_hardware_linked(vcpu, intid) {
            return Effects::NONE;
        }
        self.update(vcpu, intid, |irq| irq.pending_latch = true)
    }

    /// Whether `intid` is an SGI whose pending state is kept per source
    /// (GICv2).
    pub(super) const fn is_v2_sgi(&self, intid: u32) -> bool {
        matches!(self.version, GicVersion::V2) && (intid as usize) < SGI_COUNT
    }

    /// A GICv2 SGI from `source` moved into a list register: that source's
    /// instance is no longer pending in the model.
    pub(super) fn clear_sgi_source(&mut self, vcpu: VcpuId, intid: u32, source: VcpuId) {
        if !self.is_v2_sgi(intid) || !self.vcpu_in_range(vcpu) {
            return;
        }
        let sources = &mut self.sgi_sources[vcpu.index()][intid as usize];
        *sources &= !(1 << source.index());
        let still_pending = *sources != 0;
        self.private[vcpu.index()][intid as usize].pending_latch = still_pending;
    }

    /// A GICv2 SGI from `source` came back from a list register still
    /// pending.
    pub(super) fn restore_sgi_source(&mut self, vcpu: VcpuId, intid: u32, source: VcpuId) {
        if !self.is_v2_sgi(intid) || !self.vcpu_in_range(vcpu) {
            return;
        }
        self.sgi_sources[vcpu.index()][intid as usize] |= 1 << source.index();
        self.private[vcpu.index()][intid as usize].pending_latch = true;
        self.mark(vcpu, intid);
    }

    /// Notes that `intid` (banked to `vcpu` if private) may be pending or
    /// active, for the scans. Out of line: each change of state marks, and
    /// every register handler had a copy.
    #[inline(never)]
    pub(super) fn mark(&mut self, vcpu: VcpuId, intid: u32) {
        if (intid as usize) < PRIVATE_COUNT {
            if let Some(marks) = self.private_marks.get_mut(vcpu.index()) {
                *marks |= 1 << intid;
            }
        } else if let Some(index) = spi_index(intid) {
            self.spi_marks[index / 32] |= 1 << (index % 32);
        }
    }

    /// Drops the marks of `vcpu`'s private interrupts and of the SPIs that
    /// are neither pending nor active any more.
    pub fn prune_marks(&mut self, vcpu: VcpuId) {
        // 32 at a time, private first, as `active_and_pending_for` walks.
        for block in 0..SPI_WORDS + 1 {
            let (marks, states) = if block == 0 {
                if !self.vcpu_in_range(vcpu) {
                    continue;
                }
                let index = vcpu.index();
                (&mut self.private_marks[index], &self.private[index][..])
            } else {
                (
                    &mut self.spi_marks[block - 1],
                    &self.spis[(block - 1) * 32..][..32],
                )
            };
            let mut rest = *marks;
            while rest != 0 {
                let bit = rest.trailing_zeros();
                rest &= rest - 1;
                let irq = &states[bit as usize];
                if !irq.pending() && !irq.active {
                    *marks &= !(1 << bit);
                }
            }
        }
    }

    #[must_use]
    pub const fn version(&self) -> GicVersion {
        self.version
    }

    #[must_use]
    pub const fn vcpu_count(&self) -> usize {
        self.vcpu_count
    }

    /// Every vCPU of this VM.
    #[must_use]
    pub fn all_vcpus(&self) -> VcpuSet {
        let mut set = VcpuSet::EMPTY;
        for vcpu in VcpuId::all(self.vcpu_count) {
            set.insert(vcpu);
        }
        set
    }

    /// The bits of a GICv2 CPU target list that name a vCPU of this VM.
    pub(super) const fn implemented_targets(&self) -> u8 {
        ((1u16 << self.vcpu_count) - 1) as u8
    }

    /// The vCPU `vcpu` if this VM has it.
    pub(super) fn vcpu_in_range(&self, vcpu: VcpuId) -> bool {
        vcpu.index() < self.vcpu_count
    }

    /// The state of `intid` as `vcpu` sees it, if the VM owns it: `vcpu`'s
    /// own SGI or PPI, or an owned SPI. Every register access and device
    /// signal goes through here, so nothing reaches an interrupt the VM
    /// does not own.
    ///
    /// Out of line, as [`slot_mut`](Self::slot_mut): every register handler
    /// and line change had its own copy of the check.
    #[inline(never)]
    pub(super) fn slot(&self, vcpu: VcpuId, intid: u32) -> Option<&IrqState> {
        if (intid as usize) < PRIVATE_COUNT {
            return self
                .vcpu_in_range(vcpu)
                .then(|| &self.private[vcpu.index()][intid as usize]);
        }
        let index = spi_index(intid)?;
        self.owned.contains(intid).then(|| &self.spis[index])
    }

    /// [`slot`](Self::slot), to change the state.
    #[inline(never)]
    pub(super) fn slot_mut(&mut self, vcpu: VcpuId, intid: u32) -> Option<&mut IrqState> {
        if (intid as usize) < PRIVATE_COUNT {
            return if self.vcpu_in_range(vcpu) {
                Some(&mut self.private[vcpu.index()][intid as usize])
            } else {
                None
            };
        }
        let index = spi_index(intid)?;
        if self.owned.contains(intid) {
            Some(&mut self.spis[index])
        } else {
            None
        }
    }

    /// The vCPU an owned SPI is delivered to, if any. GICv2: the
    /// lowest-numbered vCPU in its target list (the architecture lets any
    /// one of them take it, IHI 0048B chapter 3; always the same one keeps the
    /// interrupt in one list register). GICv3: the vCPU whose affinity
    /// IROUTER names (vCPU n has Aff0 = n, higher levels 0); one that names
    /// no vCPU is not forwarded (IHI 0069H §12.9).
    ///
    /// Out of line: syncs, folds, routing changes and the doorbell's
    /// forwarding each had a copy; the measured raise reads the published
    /// target instead (`SignalledLines::target`).
    #[must_use]
    #[inline(never)]
    pub fn spi_target(&self, intid: u32) -> Option<VcpuId> {
        let index = spi_index(intid)?;
        if !self.owned.contains(intid) {
            return None;
        }
        self.route_of(index)
    }

    /// The vCPU the routing of the SPI at `index` names (see
    /// [`spi_target`](Self::spi_target)), ownership not checked.
    #[inline]
    fn route_of(&self, index: usize) -> Option<VcpuId> {
        match self.version {
            GicVersion::V2 => {
                let targets = self.spi_targets[index] & self.implemented_targets();
                (targets != 0)
                    .then(|| VcpuId::new(targets.trailing_zeros() as usize))
                    .flatten()
            }
            GicVersion::V3 => {
                let route = self.spi_routes[index];
                let aff0 = (route & 0xFF) as usize;
                (route >> 8 == 0 && aff0 < self.vcpu_count)
                    .then(|| VcpuId::new(aff0))
                    .flatten()
            }
        }
    }

    /// The vCPU that shows SPI `intid`: the one whose list registers hold
    /// it until its CPU folds them, else the one it is active on while it
    /// is active there, else the one its routing names.
    #[must_use]
    pub fn spi_vcpu(&self, intid: u32) -> Option<VcpuId> {
        let index = spi_index(intid)?;
        if !self.owned.contains(intid) {
            return None;
        }
        self.shown_on(index)
    }

    /// [`spi_vcpu`](Self::spi_vcpu) of the SPI at `index`, ownership not
    /// checked.
    #[inline]
    fn shown_on(&self, index: usize) -> Option<VcpuId> {
        let resident_on = usize::from(self.spi_resident_on[index]);
        if resident_on != 0 {
            return VcpuId::new(resident_on - 1);
        }
        let active_on = usize::from(self.spi_active_on[index]);
        if self.spis[index].active && active_on != 0 {
            return VcpuId::new(active_on - 1);
        }
        self.route_of(index)
    }

    /// Records that SPI `intid` was written into (`held`) or folded out of
    /// a list register of `vcpu` (see `spi_resident_on`); anything else is
    /// left alone.
    pub(super) fn note_resident(&mut self, vcpu: VcpuId, intid: u32, held: bool) {
        let Some(index) = spi_index(intid) else {
            return;
        };
        let slot = &mut self.spi_resident_on[index];
        if held {
            *slot = vcpu.index() as u8 + 1;
        } else if usize::from(*slot) == vcpu.index() + 1 {
            *slot = 0;
        }
    }

    /// The recorded sender of the GICv2 SGI `intid` active on `vcpu`.
    #[must_use]
    pub fn active_source(&self, vcpu: VcpuId, intid: u32) -> Option<VcpuId> {
        if !self.is_v2_sgi(intid) || !self.vcpu_in_range(vcpu) {
            return None;
        }
        let source = usize::from(self.active_sources[vcpu.index()][intid as usize]);
        VcpuId::new(source.checked_sub(1)?)
    }

    /// Records what a list register showed about `intid` on `vcpu` being
    /// active: a GICv2 SGI's sender, an SPI's vCPU.
    pub(super) fn note_active(
        &mut self,
        vcpu: VcpuId,
        intid: u32,
        active: bool,
        source: Option<VcpuId>,
    ) {
        if !self.vcpu_in_range(vcpu) {
            return;
        }
        if self.is_v2_sgi(intid) {
            let slot = &mut self.active_sources[vcpu.index()][intid as usize];
            *slot = match (active, source) {
                (true, Some(source)) => source.index() as u8 + 1,
                (true, None) => *slot,
                (false, _) => 0,
            };
        } else if let Some(index) = spi_index(intid) {
            let slot = &mut self.spi_active_on[index];
            if active {
                *slot = vcpu.index() as u8 + 1;
            } else if usize::from(*slot) == vcpu.index() + 1 {
                *slot = 0;
            }
        }
    }

    /// The vCPUs to re-evaluate after `intid` (banked to `vcpu` if
    /// private) changed.
    pub(super) fn affected(&self, vcpu: VcpuId, intid: u32) -> VcpuSet {
        let mut set = VcpuSet::EMPTY;
        if (intid as usize) < PRIVATE_COUNT {
            if self.vcpu_in_range(vcpu) {
                set.insert(vcpu);
            }
        } else {
            if let Some(target) = self.spi_target(intid) {
                set.insert(target);
            }
            if let Some(shown_on) = self.spi_vcpu(intid) {
                set.insert(shown_on);
            }
        }
        set
    }

    /// The vCPUs a change to SPI `intid` concerns: the one it is routed
    /// to and the one that shows it (see [`affected`](Self::affected)).
    #[must_use]
    pub fn spi_concerns(&self, intid: u32) -> VcpuSet {
        self.affected(VcpuId::FIRST, intid)
    }

    /// Applies `change` to `intid` (banked to `vcpu`), if owned, and
    /// reports the vCPUs to re-evaluate when anything changed.
    pub(super) fn update(
        &mut self,
        vcpu: VcpuId,
        intid: u32,
        change: impl FnOnce(&mut IrqState),
    ) -> Effects {
        let Some(slot) = self.slot_mut(vcpu, intid) else {
            return Effects::NONE;
        };
        let before = *slot;
        change(slot);
        if *slot == before {
            return Effects::NONE;
        }
        if slot.pending() || slot.active {
            self.mark(vcpu, intid);
        }
        Effects {
            reevaluate: self.affected(vcpu, intid),
            sgi: None,
        }
    }

    /// A device drives the line of `intid` (banked to `vcpu` for a PPI) to
    /// `level`. On an edge-triggered interrupt a rising edge latches it
    /// pending; on a level-sensitive one the level itself is the pending
    /// source. SGIs have no line.
    pub fn set_line_level(&mut self, vcpu: VcpuId, intid: u32, level: bool) -> Effects {
        if (intid as usize) < SGI_COUNT {
            return Effects::NONE;
        }
        self.update(vcpu, intid, |irq| {
            if irq.edge && level && !irq.line_level {
                irq.pending_latch = true;
            }
            irq.line_level = level;
        })
    }

    /// [`set_line_level`](Self::set_line_level) for an SPI, the way a
    /// vdev-shmem vector is driven from any CPU: the same change and the
    /// same effects, without the generic path (one routing lookup, no
    /// closure). Host-tested against `set_line_level`.
    #[inline]
    pub fn set_spi_line(&mut self, intid: u32, level: bool) -> Effects {
        let Some(index) = spi_index(intid) else {
            return Effects::NONE;
        };
        if !self.owned.contains(intid) {
            return Effects::NONE;
        }
        let irq = &mut self.spis[index];
        // Only the line and the edge latch move, and the latch only with
        // a rising line: nothing changes unless the line does.
        if irq.line_level == level {
            return Effects::NONE;
        }
        if irq.edge && level {
            irq.pending_latch = true;
        }
        irq.line_level = level;
        let (pending, active) = (irq.pending(), irq.active);
        if pending || active {
            self.spi_marks[index / 32] |= 1 << (index % 32);
        }
        // As `affected`: the routing target, and the vCPU that shows it
        // (`shown_on`, with the target looked up once).
        let mut reevaluate = VcpuSet::EMPTY;
        if let Some(target) = self.route_of(index) {
            reevaluate.insert(target);
        }
        let resident_on = usize::from(self.spi_resident_on[index]);
        let active_on = usize::from(self.spi_active_on[index]);
        let shown = if resident_on != 0 {
            resident_on
        } else if active {
            active_on
        } else {
            0
        };
        if let Some(vcpu) = shown.checked_sub(1).and_then(VcpuId::new) {
            reevaluate.insert(vcpu);
        }
        Effects {
            reevaluate,
            sgi: None,
        }
    }

    /// A device signals one edge on `intid` (banked to `vcpu` for a PPI).
    pub fn pulse(&mut self, vcpu: VcpuId, intid: u32) -> Effects {
        if (intid as usize) < SGI_COUNT {
            return Effects::NONE;
        }
        self.update(vcpu, intid, |irq| irq.pending_latch = true)
    }

    /// Marks SGI `sgi` pending on every vCPU in `targets`, sent by
    /// `source`. Targets that are not vCPUs of this VM are left out.
    pub(super) fn send_sgi(&mut self, source: VcpuId, sgi: u8, targets: VcpuSet) -> Effects {
        let sgi = sgi % SGI_COUNT as u8;
        let mut sent = VcpuSet::EMPTY;
        let count = self.vcpu_count;
        for target in targets.iter().filter(|vcpu| vcpu.index() < count) {
            if self.version == GicVersion::V2 {
                self.sgi_sources[target.index()][sgi as usize] |= 1 << source.index();
            }
            self.private[target.index()][sgi as usize].pending_latch = true;
            self.private_marks[target.index()] |= 1 << sgi;
            sent.insert(target);
        }
        if sent.is_empty() {
            return Effects::NONE;
        }
        Effects {
            reevaluate: sent,
            sgi: Some(SgiSent {
                intid: sgi,
                targets: sent,
            }),
        }
    }

    /// The guest acknowledged `intid` on `vcpu` (for a GICv2 SGI, the
    /// instance from `source`): pending becomes active. A level interrupt
    /// whose line is still high stays pending too.
    pub fn acknowledge(&mut self, vcpu: VcpuId, intid: u32, source: Option<VcpuId>) -> Effects {
        let is_v2_sgi = self.version == GicVersion::V2 && (intid as usize) < SGI_COUNT;
        if is_v2_sgi && self.vcpu_in_range(vcpu) {
            let sources = &mut self.sgi_sources[vcpu.index()][intid as usize];
            if let Some(source) = source {
                *sources &= !(1 << source.index());
            }
            let still_pending = *sources != 0;
            return self.update(vcpu, intid, |irq| {
                irq.pending_latch = still_pending;
                irq.active = true;
            });
        }
        self.update(vcpu, intid, |irq| {
            irq.pending_latch = false;
            irq.active = true;
        })
    }

    /// The guest deactivated `intid` on `vcpu`.
    pub fn deactivate(&mut self, vcpu: VcpuId, intid: u32) -> Effects {
        self.update(vcpu, intid, |irq| irq.active = false)
    }

    /// Whether the distributor forwards interrupts of this group.
    pub(super) const fn group_enabled(&self, group1: bool) -> bool {
        if group1 {
            self.enable_group1
        } else {
            self.enable_group0
        }
    }

    /// The interrupts the distributor forwards to `vcpu`: pending, enabled,
    /// their group enabled, and delivered to `vcpu`; highest priority
    /// first, equal priorities in INTID order (IHI 0069H chapter 4, IHI 0048B
    /// chapter 3). The best `PENDING_LIST_LEN` are returned. This is the input
    /// of the list-register allocation.
    #[must_use]
    pub fn pending_for(&self, vcpu: VcpuId) -> PendingList {
        self.active_and_pending_for(vcpu).1
    }

    /// SPI `intid` as [`Self::pending_for`] would list it for `vcpu`:
    /// deliverable there, pending, and neither active nor hardware-linked
    /// (those take the whole sync); `None` otherwise.
    #[must_use]
    pub fn pending_spi_for(&self, vcpu: VcpuId, intid: u32) -> Option<PendingIrq> {
        if intid < SPI_BASE || self.is_hardware_linked(vcpu, intid) {
            return None;
        }
        let irq = self.slot(vcpu, intid)?;
        let deliverable = irq.pending() && irq.enabled && self.group_enabled(irq.group1);
        (deliverable && !irq.active && self.spi_vcpu(intid) == Some(vcpu)).then_some(PendingIrq {
            intid,
            priority: irq.priority,
            group1: irq.group1,
            active: false,
            deliverable: true,
            source: None,
        })
    }

    /// Whether `intid` of `vcpu` is neither pending nor active (or not the
    /// VM's).
    #[must_use]
    pub fn is_idle(&self, vcpu: VcpuId, intid: u32) -> bool {
        self.slot(vcpu, intid)
            .is_none_or(|irq| !irq.pending() && !irq.active)
    }

    /// The guest completed `intid` of `vcpu` through a list register the
    /// model was not told of yet: it is no longer active.
    pub(super) fn clear_active(&mut self, vcpu: VcpuId, intid: u32) {
        if let Some(irq) = self.slot_mut(vcpu, intid) {
            irq.active = false;
        }
    }

    /// A list-register entry for `intid` of `vcpu` (its priority and
    /// group), if the distributor forwards it (enabled, group enabled),
    /// pending or not.
    #[must_use]
    pub fn forwarded_entry(
        &self,
        vcpu: VcpuId,
        intid: u32,
    ) -> Option<super::list_registers::ListEntry> {
        let irq = self.slot(vcpu, intid)?;
        (irq.enabled && self.group_enabled(irq.group1)).then_some(
            super::list_registers::ListEntry {
                intid,
                priority: irq.priority,
                group1: irq.group1,
                ..super::list_registers::ListEntry::EMPTY
            },
        )
    }

    /// For a GICv2 SGI pending on `vcpu`, the lowest-numbered vCPU it is
    /// pending from.
    fn first_sgi_source(&self, vcpu: VcpuId, intid: u32) -> Option<VcpuId> {
        if !self.is_v2_sgi(intid) {
            return None;
        }
        let sources = self.sgi_sources[vcpu.index()][intid as usize];
        VcpuId::new(sources.trailing_zeros() as usize)
    }

    /// The interrupts `vcpu` has active, by priority then INTID: each must
    /// keep a list register, or the guest's EOI of it would find nothing
    /// (the list-register policy in `list_registers.rs`). `deliverable`
    /// says whether one is also pending and forwarded.
    #[must_use]
    pub fn active_for(&self, vcpu: VcpuId) -> PendingList {
        self.active_and_pending_for(vcpu).0
    }

    /// [`active_for`](Self::active_for) and
    /// [`pending_for`](Self::pending_for) together, from one walk of the
    /// marked interrupts: a sync needs both, and each walk is a sizeable
    /// loop.
    #[must_use]
    pub fn active_and_pending_for(&self, vcpu: VcpuId) -> (PendingList, PendingList) {
        let mut actives = PendingList::new();
        let mut pending = PendingList::new();
        if !self.vcpu_in_range(vcpu) {
            return (actives, pending);
        }
        // The marked interrupts in INTID order, 32 at a time: `vcpu`'s own
        // SGIs and PPIs, then the SPIs (whose vCPU is checked). One loop
        // body for both kinds, which an iterator chain would expand twice.
        for block in 0..SPI_WORDS + 1 {
            let (mut marks, states) = if block == 0 {
                let index = vcpu.index();
                (self.private_marks[index], &self.private[index][..])
            } else {
                (
                    self.spi_marks[block - 1],
                    &self.spis[(block - 1) * 32..][..32],
                )
            };
            while marks != 0 {
                let bit = marks.trailing_zeros();
                marks &= marks - 1;
                let intid = block as u32 * 32 + bit;
                let irq = &states[bit as usize];
                if intid >= SPI_BASE && self.spi_vcpu(intid) != Some(vcpu) {
                    continue;
                }
                let deliverable = irq.pending() && irq.enabled && self.group_enabled(irq.group1);
                let entry = PendingIrq {
                    intid,
                    priority: irq.priority,
                    group1: irq.group1,
                    active: irq.active,
                    deliverable,
                    source: None,
                };
                if irq.active {
                    actives.offer(PendingIrq {
                        source: self.active_source(vcpu, intid),
                        ..entry
                    });
                }
                if deliverable {
                    pending.offer(PendingIrq {
                        source: self.first_sgi_source(vcpu, intid),
                        ..entry
                    });
                }
            }
        }
        (actives, pending)
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    pub fn vcpu(index: usize) -> VcpuId {
        VcpuId::new(index).unwrap()
    }

    pub fn set_of(indices: &[usize]) -> VcpuSet {
        let mut set = VcpuSet::EMPTY;
        for &index in indices {
            set.insert(vcpu(index));
        }
        set
    }

    /// A VM owning SPIs 33 and 40 (and no other).
    pub fn owned() -> SpiSet {
        let mut owned = SpiSet::EMPTY;
        assert!(owned.insert(33));
        assert!(owned.insert(40));
        owned
    }

    fn enabled_state(version: GicVersion) -> VgicState {
        let mut state = VgicState::new(version, 2, owned());
        state.enable_group0 = true;
        state.enable_group1 = true;
        for intid in [5, 20, 27, 30, 33, 40] {
            for index in 0..2 {
                state.update(vcpu(index), intid, |irq| irq.enabled = true);
            }
        }
        state
    }

    fn intids(list: &PendingList) -> Vec<u32> {
        list.as_slice().iter().map(|irq| irq.intid).collect()
    }

    #[test]
    fn setting_an_spi_line_directly_is_the_generic_line_change() {
        // Every combination of trigger, routing, active vCPU, register
        // residency and level history, for an owned SPI and one the VM does
        // not own.
        for version in [GicVersion::V2, GicVersion::V3] {
            for intid in [33, 34, 40] {
                for case in 0..128u32 {
                    let mut state = enabled_state(version);
                    let _ = state.update(vcpu(0), intid, |irq| {
                        irq.edge = case & 1 != 0;
                        irq.line_level = case & 2 != 0;
                        irq.pending_latch = case & 4 != 0;
                        irq.active = case & 8 != 0;
                    });
                    if let Some(index) = spi_index(intid) {
                        state.spi_routes[index] = (case >> 4) & 1;
                        state.spi_targets[index] = 1 << ((case >> 4) & 1);
                        state.spi_active_on[index] = if case & 32 != 0 { 2 } else { 0 };
                        state.spi_resident_on[index] = if case & 64 != 0 { 1 } else { 0 };
                    }
                    for level in [false, true] {
                        let mut generic = state.clone();
                        let mut direct = state.clone();
                        assert_eq!(
                            direct.set_spi_line(intid, level),
                            generic.set_line_level(vcpu(0), intid, level),
                            "{version:?} {intid} case {case} level {level}"
                        );
                        assert_eq!(direct.spis, generic.spis);
                        assert_eq!(direct.spi_marks, generic.spi_marks);
                    }
                }
            }
        }
    }

    #[test]
    fn a_state_reset_in_place_is_a_fresh_one() {
        for version in [GicVersion::V2, GicVersion::V3] {
            let fresh = VgicState::new(version, 2, owned());
            let mut used = enabled_state(version);
            used.pulse(vcpu(0), 20);
            used.send_sgi(vcpu(1), 3, set_of(&[0, 1]));
            used.acknowledge(vcpu(1), 3, Some(vcpu(1)));
            used.set_line_level(vcpu(0), 33, true);
            used.spi_routes[1] = 1;
            used.spi_targets[1] = 2;
            used.processor_sleep[0] = false;
            used.reset_in_place(version, 2, owned());
            assert!(
                format!("{used:?}") == format!("{fresh:?}"),
                "a reset in place differs from a fresh state"
            );
        }
    }

    #[test]
    fn only_owned_spis_can_be_hardware_linked() {
        let mut state = VgicState::new(GicVersion::V3, 1, owned());
        let mut wanted = SpiSet::EMPTY;
        for intid in [33, 34, 40] {
            assert!(wanted.insert(intid));
        }
        state.set_hardware_spis(wanted);
        assert!(state.is_hardware_linked(vcpu(0), 33));
        assert!(state.is_hardware_linked(vcpu(0), 40));
        assert!(!state.is_hardware_linked(vcpu(0), 34), "not the VM's");
        assert_eq!(state.hardware_spis().iter().collect::<Vec<_>>(), [33, 40]);
    }

    #[test]
    fn an_spi_set_holds_only_modelled_spis() {
        let mut set = SpiSet::EMPTY;
        assert!(!set.insert(31), "a PPI is no SPI");
        assert!(!set.insert(INTID_LIMIT));
        assert!(set.insert(INTID_LIMIT - 1));
        assert!(set.contains(INTID_LIMIT - 1));
        assert!(!set.contains(32));
    }

    #[test]
    fn an_edge_latches_and_stays_pending_after_the_line_falls() {
        let mut state = enabled_state(GicVersion::V3);
        state.update(vcpu(0), 40, |irq| irq.edge = true);
        state.spi_routes[40 - 32] = 0;
        let effects = state.set_line_level(vcpu(0), 40, true);
        assert_eq!(effects.reevaluate, set_of(&[0]));
        state.set_line_level(vcpu(0), 40, false);
        assert!(state.slot(vcpu(0), 40).unwrap().pending());
        state.acknowledge(vcpu(0), 40, None);
        let irq = state.slot(vcpu(0), 40).unwrap();
        assert!(!irq.pending() && irq.active);
    }

    #[test]
    fn a_level_interrupt_follows_its_line_and_is_pending_again_after_eoi() {
        let mut state = enabled_state(GicVersion::V3);
        state.set_line_level(vcpu(1), 27, true);
        assert_eq!(intids(&state.pending_for(vcpu(1))), [27]);
        assert!(
            intids(&state.pending_for(vcpu(0))).is_empty(),
            "PPIs are banked"
        );
        state.acknowledge(vcpu(1), 27, None);
        state.deactivate(vcpu(1), 27);
        let irq = state.slot(vcpu(1), 27).unwrap();
        assert!(irq.pending() && !irq.active, "the line is still high");
        state.set_line_level(vcpu(1), 27, false);
        assert!(!state.slot(vcpu(1), 27).unwrap().pending());
    }

    #[test]
    fn pending_interrupts_come_in_priority_then_intid_order() {
        let mut state = enabled_state(GicVersion::V3);
        for (intid, priority) in [(5, 0x80), (20, 0x40), (27, 0x80), (30, 0x10), (33, 0x40)] {
            state.update(vcpu(0), intid, |irq| {
                irq.priority = priority;
                irq.pending_latch = true;
            });
        }
        // SPI 40 routed to vCPU 1 is not vCPU 0's.
        state.spi_routes[40 - 32] = 1;
        state.pulse(vcpu(0), 40);
        assert_eq!(intids(&state.pending_for(vcpu(0))), [30, 20, 33, 5, 27]);
        assert_eq!(intids(&state.pending_for(vcpu(1))), [40]);
    }

    #[test]
    fn disabled_interrupts_and_disabled_groups_are_not_forwarded() {
        let mut state = enabled_state(GicVersion::V3);
        state.pulse(vcpu(0), 20);
        state.pulse(vcpu(0), 21);
        assert_eq!(intids(&state.pending_for(vcpu(0))), [20], "21 is disabled");
        state.enable_group0 = false;
        assert!(intids(&state.pending_for(vcpu(0))).is_empty());
        state.update(vcpu(0), 20, |irq| irq.group1 = true);
        assert_eq!(intids(&state.pending_for(vcpu(0))), [20]);
    }

    #[test]
    fn the_pending_list_keeps_the_best_entries_when_full() {
        let mut state = VgicState::new(GicVersion::V3, 1, SpiSet::EMPTY);
        state.enable_group0 = true;
        for intid in 0..32 {
            state.update(vcpu(0), intid, |irq| {
                irq.enabled = true;
                irq.pending_latch = true;
                // Later INTIDs get better priorities.
                irq.priority = 0xF8 - intid as u8 * 4;
            });
        }
        let list = state.pending_for(vcpu(0));
        let expected: Vec<u32> = (32 - PENDING_LIST_LEN as u32..32).rev().collect();
        assert_eq!(intids(&list), expected);
    }

    #[test]
    fn signals_to_unowned_interrupts_change_nothing() {
        let mut state = enabled_state(GicVersion::V3);
        let before = state.clone();
        assert_eq!(state.pulse(vcpu(0), 34), Effects::NONE);
        assert_eq!(state.set_line_level(vcpu(0), 200, true), Effects::NONE);
        assert_eq!(state.pulse(vcpu(5), 20), Effects::NONE, "no such vCPU");
        assert_eq!(state.spis, before.spis);
        assert_eq!(state.private, before.private);
    }

    #[test]
    fn gicv2_sgis_are_pending_once_per_source() {
        let mut state = enabled_state(GicVersion::V2);
        state.send_sgi(vcpu(0), 5, set_of(&[1]));
        state.send_sgi(vcpu(1), 5, set_of(&[1]));
        let first = state.pending_for(vcpu(1)).as_slice()[0];
        assert_eq!((first.intid, first.source), (5, Some(vcpu(0))));
        state.acknowledge(vcpu(1), 5, Some(vcpu(0)));
        let second = state.pending_for(vcpu(1)).as_slice()[0];
        assert_eq!((second.source, second.active), (Some(vcpu(1)), true));
        state.acknowledge(vcpu(1), 5, Some(vcpu(1)));
        assert!(state.pending_for(vcpu(1)).as_slice().is_empty());
    }
}
