//! The guest's interrupt controller: a GICv3 or a GICv2, whichever the
//! device tree describes (docs/guest-interface.md, "Interrupts").
//!
//! Set-up, on the boot vCPU: [`init`] (or [`init_from_device_tree`]) finds
//! the GIC, sets up the distributor and this vCPU's CPU interface.
//! Secondary vCPUs started with [`crate::smp::start`] set up their own CPU
//! interface (and, on GICv3, wake their redistributor) before their entry
//! function runs; [`init_this_cpu`] does it by hand.
//!
//! Then: [`register_handler`] for an INTID, [`enable_interrupt`] (group,
//! priority, trigger, routing, enable), and unmask IRQs with
//! [`crate::interrupts::enable`]. The SDK's IRQ vector acknowledges the
//! highest-priority pending interrupt, runs its handler with the IRQ still
//! masked (no nesting), then ends it (EOI, which also deactivates it): one
//! interrupt per exception, so a level interrupt whose cause remains is
//! taken again as soon as the handler returns.
//!
//! Conventions, the same on both versions as far as the hardware allows:
//!
//! - **GICv3**: affinity routing (GICD_CTLR.ARE), every interrupt in
//!   Group 1 (non-secure), the CPU interface through the ICC_* system
//!   registers, EOImode 0.
//! - **GICv2**: every interrupt in Group 0, which GICC signals as IRQ
//!   (FIQEn clear). Group 0 rather than Group 1 because with
//!   GICC_CTLR.AckCtl clear a GICC_IAR read returns 1022 for a Group 1
//!   interrupt (IHI 0048B 4.4.4); Linux and KVM guests do the same.
//! - Priorities: 0 is the highest; implementations keep at least the top 4
//!   bits (GICv2 and the virtual interfaces keep 5), so use multiples of
//!   `0x10`. The priority mask lets every priority but `0xFF` through.
//! - vCPU n is MPIDR affinity n (see [`crate::cpu`]); on GICv2 the SDK
//!   learns each vCPU's CPU-interface number from its banked
//!   GICD_ITARGETSR0 when the vCPU sets up its interface.
//!
//! Handlers and the per-vCPU state are fixed-size tables: no heap.
//! Register layouts: Arm IHI 0069 (GICv3) chapter 12, IHI 0048B (GICv2)
//! chapter 4.

use core::fmt;
use core::ops::Range;
use core::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, AtomicUsize, Ordering};

use spin::Mutex;

use crate::arch;
use crate::cpu::{self, MAX_VCPUS};
use crate::device_tree::{DeviceTree, DeviceTreeError};

/// INTIDs below this are valid (1020..1023 are special).
pub const INTID_LIMIT: u32 = 1020;
/// SGIs are INTIDs 0..16, PPIs 16..32, SPIs from 32.
pub const SGI_COUNT: u32 = 16;
pub const SPI_BASE: u32 = 32;
/// The virtual timer's PPI (guest interface).
pub const VIRTUAL_TIMER_INTID: u32 = 27;
/// The EL1 physical timer's PPI (guest interface).
pub const PHYSICAL_TIMER_INTID: u32 = 30;
/// The PL011's interrupt: SPI `tessera_platform::guest::UART_SPI` (1), as
/// on QEMU `virt`.
pub const UART_INTID: u32 = SPI_BASE + 1;
/// The priority [`init`] gives every interrupt.
pub const DEFAULT_PRIORITY: u8 = 0xA0;
/// What an IAR read returns when nothing is pending.
const SPURIOUS: u32 = 1023;

/// Which GIC architecture the guest has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    V2,
    V3,
}

/// `GICv2` / `GICv3`
impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::V2 => "GICv2",
            Self::V3 => "GICv3",
        })
    }
}

/// Where the GIC's register frames are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    pub version: Version,
    pub distributor: u64,
    /// GICv2: the CPU interface (GICC). 0 on GICv3.
    pub cpu_interface: u64,
    /// GICv3: the redistributor region (one RD + SGI frame pair per CPU).
    /// Empty on GICv2.
    pub redistributors: Range<u64>,
}

/// The `compatible` strings of the GICv3 and GICv2 bindings that QEMU and
/// Tessera write (GICv2: QEMU's `arm,cortex-a15-gic`; real boards also use
/// `arm,gic-400`).
pub(crate) const GICV3_COMPATIBLE: &str = "arm,gic-v3";
pub(crate) const GICV2_COMPATIBLES: [&str; 3] =
    ["arm,cortex-a15-gic", "arm,gic-400", "arm,cortex-a7-gic"];

impl Layout {
    /// Reads the GIC node of `tree`.
    ///
    /// # Errors
    /// `NoGicNode`, or `IncompleteGicNode` when its `reg` lacks a frame.
    pub fn from_device_tree(tree: &DeviceTree<'_>) -> Result<Self, GicError> {
        if let Some(regs) = tree.compatible_regs(GICV3_COMPATIBLE) {
            let [Some(distributor), Some(redistributors), ..] = regs else {
                return Err(GicError::IncompleteGicNode);
            };
            return Ok(Self {
                version: Version::V3,
                distributor: distributor.start,
                cpu_interface: 0,
                redistributors,
            });
        }
        let regs = GICV2_COMPATIBLES
            .iter()
            .find_map(|compatible| tree.compatible_regs(compatible))
            .ok_or(GicError::NoGicNode)?;
        let [Some(distributor), Some(cpu_interface), ..] = regs else {
            return Err(GicError::IncompleteGicNode);
        };
        Ok(Self {
            version: Version::V2,
            distributor: distributor.start,
            cpu_interface: cpu_interface.start,
            redistributors: 0..0,
        })
    }
}

/// What went wrong setting up or using the GIC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GicError {
    /// No device tree to read the GIC from.
    DeviceTree(DeviceTreeError),
    /// The device tree has no GICv3 or GICv2 node.
    NoGicNode,
    /// The GIC node's `reg` lacks the distributor or the CPU interface /
    /// redistributor region.
    IncompleteGicNode,
    /// [`init`] has not run.
    NotInitialized,
    /// No redistributor in the region has this vCPU's affinity.
    NoRedistributor { mpidr: u64 },
    /// ICC_SRE_EL1.SRE stays 0: the system-register interface is disabled
    /// (by a higher EL), so a GICv3 cannot be driven from here.
    SystemRegistersDisabled,
    /// A GICv3 redistributor did not wake up (GICR_WAKER.ChildrenAsleep
    /// stayed set), or a register write did not complete (RWP stayed set).
    Timeout,
    /// Not an INTID this call takes (an SGI for `route_spi`, 1020 and above
    /// for anything).
    InvalidIntid(u32),
    /// A vCPU index the SDK has no slot for.
    InvalidVcpu(usize),
}

impl fmt::Display for GicError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::DeviceTree(error) => write!(f, "no device tree: {error}"),
            Self::NoGicNode => f.write_str("the device tree has no GICv2 or GICv3 node"),
            Self::IncompleteGicNode => f.write_str("the GIC node's reg lacks a frame"),
            Self::NotInitialized => f.write_str("the GIC is not set up (gic::init)"),
            Self::NoRedistributor { mpidr } => {
                write!(f, "no redistributor for MPIDR {mpidr:#x}")
            }
            Self::SystemRegistersDisabled => {
                f.write_str("ICC_SRE_EL1.SRE is stuck at 0 (GICv3 system registers disabled)")
            }
            Self::Timeout => f.write_str("the GIC did not complete a register write in time"),
            Self::InvalidIntid(intid) => write!(f, "INTID {intid} is not valid here"),
            Self::InvalidVcpu(index) => write!(f, "no vCPU {index}"),
        }
    }
}

/// Register offsets (IHI 0069 12.9, IHI 0048B 4.3). The GICv3 SGI frame
/// repeats the distributor's layout for INTIDs 0..32, so one set of
/// offsets serves both for the per-interrupt registers.
mod reg {
    pub const CTLR: usize = 0x0000;
    pub const TYPER: usize = 0x0004;
    pub const IGROUPR: usize = 0x0080;
    pub const ISENABLER: usize = 0x0100;
    pub const ICENABLER: usize = 0x0180;
    pub const ISPENDR: usize = 0x0200;
    pub const ICPENDR: usize = 0x0280;
    pub const ISACTIVER: usize = 0x0300;
    pub const ICACTIVER: usize = 0x0380;
    pub const IPRIORITYR: usize = 0x0400;
    pub const ITARGETSR: usize = 0x0800;
    pub const ICFGR: usize = 0x0C00;
    pub const SGIR: usize = 0x0F00;
    pub const IROUTER: usize = 0x6000;

    /// GICD_CTLR (GICv3, the non-secure view, and GICv2's EnableGrp0).
    pub const CTLR_ENABLE_GROUP0_OR_1: u32 = 1 << 0;
    pub const CTLR_ENABLE_GROUP1A: u32 = 1 << 1;
    pub const CTLR_AFFINITY_ROUTING: u32 = 1 << 4;
    pub const CTLR_REGISTER_WRITE_PENDING: u32 = 1 << 31;

    /// GICR frames: RD_base, then SGI_base 64 KiB above.
    pub const GICR_TYPER: usize = 0x0008;
    pub const GICR_WAKER: usize = 0x0014;
    pub const GICR_SGI_FRAME: usize = 0x1_0000;
    pub const WAKER_PROCESSOR_SLEEP: u32 = 1 << 1;
    pub const WAKER_CHILDREN_ASLEEP: u32 = 1 << 2;
    /// GICR_TYPER.VLPIS: the redistributor has the two extra GICv4 frames.
    pub const TYPER_VLPIS: u64 = 1 << 1;
    pub const TYPER_LAST: u64 = 1 << 4;
    pub const FRAME_PAIR: u64 = 0x2_0000;
    pub const FRAME_QUAD: u64 = 0x4_0000;

    /// GICC (GICv2).
    pub const GICC_CTLR: usize = 0x0000;
    pub const GICC_PMR: usize = 0x0004;
    pub const GICC_BPR: usize = 0x0008;
    pub const GICC_IAR: usize = 0x000C;
    pub const GICC_EOIR: usize = 0x0010;
    pub const GICC_CTLR_ENABLE_GROUP0: u32 = 1 << 0;
}

/// ICC_SRE_EL1.SRE.
const SRE: u64 = 1 << 0;
/// ICC_CTLR_EL1.EOImode: 0 = EOI also deactivates.
const ICC_CTLR_EOI_MODE: u64 = 1 << 1;
/// The priority mask: everything but priority 0xFF passes.
const PRIORITY_MASK_OPEN: u8 = 0xFF;
/// How often a register poll (RWP, ChildrenAsleep) is retried.
const POLL_ATTEMPTS: u32 = 1_000_000;

/// Edge or level.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    Level,
    Edge,
}

/// How [`enable_interrupt`] sets an interrupt up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    pub priority: u8,
    /// `None` leaves the configuration as it is (SGIs are always edge; the
    /// timer PPIs are level and often fixed).
    pub trigger: Option<Trigger>,
}

impl Config {
    pub const DEFAULT: Self = Self {
        priority: DEFAULT_PRIORITY,
        trigger: None,
    };

    #[must_use]
    pub const fn priority(priority: u8) -> Self {
        Self {
            priority,
            trigger: None,
        }
    }
}

/// An interrupt being handled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Interrupt {
    pub intid: u32,
    /// For an SGI on GICv2: the vCPU that sent it (GICC_IAR.CPUID, mapped
    /// to a vCPU index). `None` otherwise (GICv3 does not say).
    pub source: Option<usize>,
}

/// What runs for an interrupt, on the vCPU that took it, with IRQs masked.
pub type Handler = fn(Interrupt);

/// Who an SGI goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SgiTarget {
    /// The vCPUs whose indices are set in the mask (bit n = vCPU n).
    List(u16),
    /// Every vCPU but the sender.
    AllButSelf,
    /// The sender only.
    ToSelf,
}

// The GIC the SDK drives, set once by `init` (0 = not set up).
static VERSION: AtomicU8 = AtomicU8::new(0);
static DISTRIBUTOR: AtomicUsize = AtomicUsize::new(0);
static CPU_INTERFACE: AtomicUsize = AtomicUsize::new(0);
static REDISTRIBUTORS_START: AtomicU64 = AtomicU64::new(0);
static REDISTRIBUTORS_END: AtomicU64 = AtomicU64::new(0);
/// Per vCPU: its redistributor's RD_base (GICv3), found by its own
/// `init_this_cpu`.
static REDISTRIBUTOR_OF: [AtomicUsize; MAX_VCPUS] = [const { AtomicUsize::new(0) }; MAX_VCPUS];
/// Per vCPU: its GICv2 CPU-interface bit (GICD_ITARGETSR0), 0 until known.
static INTERFACE_MASK_OF: [AtomicU8; MAX_VCPUS] = [const { AtomicU8::new(0) }; MAX_VCPUS];
/// The handlers, as `Handler` pointers cast to `usize` (0 = none).
static HANDLERS: [AtomicUsize; INTID_LIMIT as usize] =
    [const { AtomicUsize::new(0) }; INTID_LIMIT as usize];
/// Interrupts taken without a handler (each is then disabled).
static UNHANDLED: AtomicU32 = AtomicU32::new(0);
static LAST_UNHANDLED: AtomicU32 = AtomicU32::new(SPURIOUS);
/// Serialises read-modify-write of registers shared between vCPUs
/// (IGROUPR, ICFGR words of SPIs). Never taken in interrupt context.
static SHARED_REGISTERS: Mutex<()> = Mutex::new(());

/// The GIC version [`init`] found; `None` before.
#[must_use]
pub fn version() -> Option<Version> {
    match VERSION.load(Ordering::Acquire) {
        2 => Some(Version::V2),
        3 => Some(Version::V3),
        _ => None,
    }
}

fn require_version() -> Result<Version, GicError> {
    version().ok_or(GicError::NotInitialized)
}

/// Reads the GIC from the boot device tree and calls [`init`].
///
/// # Errors
/// As [`Layout::from_device_tree`] and [`init`].
pub fn init_from_device_tree() -> Result<Layout, GicError> {
    let tree = DeviceTree::boot().map_err(GicError::DeviceTree)?;
    let layout = Layout::from_device_tree(&tree)?;
    init(&layout)?;
    Ok(layout)
}

/// Sets up the GIC at `layout` on the calling vCPU (the boot one): the
/// distributor — disabled while every SPI is put in the SDK's group,
/// disabled, cleared and given [`DEFAULT_PRIORITY`], then enabled (with
/// affinity routing on GICv3) — and this vCPU's interface
/// ([`init_this_cpu`]). IRQs stay masked.
///
/// # Errors
/// As [`init_this_cpu`]; `Timeout` if GICD_CTLR writes do not complete.
pub fn init(layout: &Layout) -> Result<(), GicError> {
    #[cfg(target_os = "none")]
    crate::rt::set_interrupt_hooks(dispatch_irq, || {
        init_this_cpu().map_err(report_setup_error).is_ok()
    });
    DISTRIBUTOR.store(layout.distributor as usize, Ordering::Relaxed);
    CPU_INTERFACE.store(layout.cpu_interface as usize, Ordering::Relaxed);
    REDISTRIBUTORS_START.store(layout.redistributors.start, Ordering::Relaxed);
    REDISTRIBUTORS_END.store(layout.redistributors.end, Ordering::Relaxed);
    let version_number = match layout.version {
        Version::V2 => 2,
        Version::V3 => 3,
    };
    VERSION.store(version_number, Ordering::Release);

    let distributor = layout.distributor as usize;
    write32(distributor + reg::CTLR, 0);
    wait_for_distributor_writes(layout.version)?;
    let interrupt_lines = interrupt_lines(read32(distributor + reg::TYPER));
    for first in (SPI_BASE..interrupt_lines).step_by(32) {
        let word = (first / 32) as usize * 4;
        if layout.version == Version::V3 {
            write32(distributor + reg::IGROUPR + word, u32::MAX);
        }
        write32(distributor + reg::ICENABLER + word, u32::MAX);
        write32(distributor + reg::ICPENDR + word, u32::MAX);
        write32(distributor + reg::ICACTIVER + word, u32::MAX);
    }
    for intid in SPI_BASE..interrupt_lines {
        write8(
            distributor + reg::IPRIORITYR + intid as usize,
            DEFAULT_PRIORITY,
        );
    }
    match layout.version {
        Version::V3 => {
            // ARE first, then the groups: the spec wants ARE changed only
            // while the groups are off.
            write32(distributor + reg::CTLR, reg::CTLR_AFFINITY_ROUTING);
            wait_for_distributor_writes(layout.version)?;
            write32(
                distributor + reg::CTLR,
                reg::CTLR_AFFINITY_ROUTING
                    | reg::CTLR_ENABLE_GROUP1A
                    | reg::CTLR_ENABLE_GROUP0_OR_1,
            );
            wait_for_distributor_writes(layout.version)?;
        }
        Version::V2 => write32(distributor + reg::CTLR, reg::CTLR_ENABLE_GROUP0_OR_1),
    }
    init_this_cpu()
}

/// Turns the distributor back on as [`init`] left it (GICv3: affinity
/// routing and both Group 1 enables; GICv2: Group 0), without touching any
/// interrupt's settings.
///
/// # Errors
/// `NotInitialized`; `Timeout` if the write does not complete.
pub fn enable_distributor() -> Result<(), GicError> {
    let version = require_version()?;
    let ctlr = DISTRIBUTOR.load(Ordering::Relaxed) + reg::CTLR;
    match version {
        Version::V3 => {
            write32(
                ctlr,
                reg::CTLR_AFFINITY_ROUTING
                    | reg::CTLR_ENABLE_GROUP1A
                    | reg::CTLR_ENABLE_GROUP0_OR_1,
            );
            wait_for_distributor_writes(version)
        }
        Version::V2 => {
            write32(ctlr, reg::CTLR_ENABLE_GROUP0_OR_1);
            Ok(())
        }
    }
}

/// GICD_TYPER.ITLinesNumber as a count of INTIDs (capped at 1020).
#[must_use]
pub const fn interrupt_lines(typer: u32) -> u32 {
    let lines = ((typer & 0x1F) + 1) * 32;
    if lines > INTID_LIMIT {
        INTID_LIMIT
    } else {
        lines
    }
}

/// The number of INTIDs the distributor implements (GICD_TYPER).
///
/// # Errors
/// `NotInitialized`.
pub fn distributor_lines() -> Result<u32, GicError> {
    require_version()?;
    Ok(interrupt_lines(read32(
        DISTRIBUTOR.load(Ordering::Relaxed) + reg::TYPER,
    )))
}

fn wait_for_distributor_writes(version: Version) -> Result<(), GicError> {
    if version == Version::V2 {
        return Ok(());
    }
    let ctlr = DISTRIBUTOR.load(Ordering::Relaxed) + reg::CTLR;
    poll(|| read32(ctlr) & reg::CTLR_REGISTER_WRITE_PENDING == 0)
}

fn poll(mut done: impl FnMut() -> bool) -> Result<(), GicError> {
    if (0..POLL_ATTEMPTS).any(|_| done()) {
        Ok(())
    } else {
        Err(GicError::Timeout)
    }
}

/// Sets up the calling vCPU's part of the GIC: on GICv3 wakes its
/// redistributor and turns on the system-register interface; puts its SGIs
/// and PPIs in the SDK's group, disabled, inactive, not pending, at
/// [`DEFAULT_PRIORITY`]; opens the priority mask and enables the CPU
/// interface. IRQs stay masked.
///
/// # Errors
/// `NotInitialized` before [`init`]; `NoRedistributor`,
/// `SystemRegistersDisabled` or `Timeout` on GICv3.
pub fn init_this_cpu() -> Result<(), GicError> {
    let version = require_version()?;
    let index = cpu::index();
    if index >= MAX_VCPUS {
        return Err(GicError::InvalidVcpu(index));
    }
    let block = match version {
        Version::V3 => {
            let mpidr = cpu::mpidr();
            let region = REDISTRIBUTORS_START.load(Ordering::Relaxed)
                ..REDISTRIBUTORS_END.load(Ordering::Relaxed);
            let rd_base =
                find_redistributor(region, mpidr, |address| read64_split(address as usize))
                    .ok_or(GicError::NoRedistributor { mpidr })? as usize;
            REDISTRIBUTOR_OF[index].store(rd_base, Ordering::Release);
            let waker = rd_base + reg::GICR_WAKER;
            write32(waker, read32(waker) & !reg::WAKER_PROCESSOR_SLEEP);
            poll(|| read32(waker) & reg::WAKER_CHILDREN_ASLEEP == 0)?;
            rd_base + reg::GICR_SGI_FRAME
        }
        Version::V2 => DISTRIBUTOR.load(Ordering::Relaxed),
    };
    if version == Version::V3 {
        write32(block + reg::IGROUPR, u32::MAX);
    }
    write32(block + reg::ICENABLER, u32::MAX);
    write32(block + reg::ICPENDR, u32::MAX);
    write32(block + reg::ICACTIVER, u32::MAX);
    for intid in 0..SPI_BASE {
        write8(block + reg::IPRIORITYR + intid as usize, DEFAULT_PRIORITY);
    }
    match version {
        Version::V3 => {
            arch::icc_sre_write(arch::icc_sre_read() | SRE);
            if arch::icc_sre_read() & SRE == 0 {
                return Err(GicError::SystemRegistersDisabled);
            }
            arch::icc_pmr_write(u64::from(PRIORITY_MASK_OPEN));
            arch::icc_bpr1_write(0);
            arch::icc_ctlr_write(arch::icc_ctlr_read() & !ICC_CTLR_EOI_MODE);
            arch::icc_igrpen1_write(1);
        }
        Version::V2 => {
            // Byte 0 of the banked GICD_ITARGETSR0 is this CPU's own bit
            // (0 on a uniprocessor GIC, where targets do not matter).
            let own = read32(block + reg::ITARGETSR) as u8;
            let own = if own == 0 { 1 << index } else { own };
            INTERFACE_MASK_OF[index].store(own, Ordering::Release);
            let gicc = CPU_INTERFACE.load(Ordering::Relaxed);
            write32(gicc + reg::GICC_PMR, u32::from(PRIORITY_MASK_OPEN));
            write32(gicc + reg::GICC_BPR, 0);
            write32(gicc + reg::GICC_CTLR, reg::GICC_CTLR_ENABLE_GROUP0);
        }
    }
    Ok(())
}

/// The RD_base of the redistributor in `region` whose GICR_TYPER affinity
/// is `mpidr`'s, reading GICR_TYPER with `read_typer(address)`. Walks the
/// frames until GICR_TYPER.Last or the end of the region.
pub fn find_redistributor(
    region: Range<u64>,
    mpidr: u64,
    mut read_typer: impl FnMut(u64) -> u64,
) -> Option<u64> {
    let wanted = affinity_value(mpidr);
    let mut frame = region.start;
    while frame < region.end {
        let typer = read_typer(frame + reg::GICR_TYPER as u64);
        if typer >> 32 == u64::from(wanted) {
            return Some(frame);
        }
        if typer & reg::TYPER_LAST != 0 {
            return None;
        }
        frame += if typer & reg::TYPER_VLPIS != 0 {
            reg::FRAME_QUAD
        } else {
            reg::FRAME_PAIR
        };
    }
    None
}

/// MPIDR's affinity as GICR_TYPER.Affinity_Value and the SGI registers
/// pack it: Aff3.Aff2.Aff1.Aff0 in one 32-bit value.
#[must_use]
pub const fn affinity_value(mpidr: u64) -> u32 {
    ((mpidr & 0xFF_FFFF) | ((mpidr >> 8) & 0xFF00_0000)) as u32
}

/// The register block that holds `intid`'s per-interrupt registers on this
/// vCPU: the distributor, or on GICv3 for SGIs and PPIs this vCPU's SGI
/// frame.
fn block_for(intid: u32) -> Result<usize, GicError> {
    let version = require_version()?;
    if intid >= INTID_LIMIT {
        return Err(GicError::InvalidIntid(intid));
    }
    if version == Version::V3 && intid < SPI_BASE {
        let index = cpu::index();
        let rd_base = REDISTRIBUTOR_OF
            .get(index)
            .map_or(0, |slot| slot.load(Ordering::Acquire));
        if rd_base == 0 {
            return Err(GicError::NotInitialized);
        }
        Ok(rd_base + reg::GICR_SGI_FRAME)
    } else {
        Ok(DISTRIBUTOR.load(Ordering::Relaxed))
    }
}

/// The word offset and bit of `intid` in a one-bit-per-interrupt register
/// array at `base` (IGROUPR, ISENABLER, ...).
#[must_use]
pub const fn bit_position(base: usize, intid: u32) -> (usize, u32) {
    (base + (intid / 32) as usize * 4, 1 << (intid % 32))
}

/// The word offset and shift of `intid`'s two bits in ICFGR.
#[must_use]
pub const fn config_position(intid: u32) -> (usize, u32) {
    (reg::ICFGR + (intid / 16) as usize * 4, (intid % 16) * 2)
}

fn write_bit(base: usize, intid: u32) -> Result<(), GicError> {
    let (offset, bit) = bit_position(base, intid);
    write32(block_for(intid)? + offset, bit);
    Ok(())
}

/// Enables `intid` (GICD/GICR_ISENABLER).
///
/// # Errors
/// `NotInitialized`, `InvalidIntid`.
pub fn enable(intid: u32) -> Result<(), GicError> {
    write_bit(reg::ISENABLER, intid)
}

/// Disables `intid` (GICD/GICR_ICENABLER). Safe to call from a handler.
///
/// # Errors
/// `NotInitialized`, `InvalidIntid`.
pub fn disable(intid: u32) -> Result<(), GicError> {
    write_bit(reg::ICENABLER, intid)
}

/// Makes `intid` pending (GICD/GICR_ISPENDR).
///
/// # Errors
/// `NotInitialized`, `InvalidIntid`.
pub fn set_pending(intid: u32) -> Result<(), GicError> {
    write_bit(reg::ISPENDR, intid)
}

/// Clears `intid`'s pending state (GICD/GICR_ICPENDR).
///
/// # Errors
/// `NotInitialized`, `InvalidIntid`.
pub fn clear_pending(intid: u32) -> Result<(), GicError> {
    write_bit(reg::ICPENDR, intid)
}

/// Whether `intid` is pending (GICD/GICR_ISPENDR), as the distributor
/// sees it: a level interrupt is pending while its line is asserted.
///
/// # Errors
/// `NotInitialized`, `InvalidIntid`.
pub fn is_pending(intid: u32) -> Result<bool, GicError> {
    let (offset, bit) = bit_position(reg::ISPENDR, intid);
    Ok(read32(block_for(intid)? + offset) & bit != 0)
}

/// Whether `intid` is active (GICD/GICR_ISACTIVER).
///
/// # Errors
/// `NotInitialized`, `InvalidIntid`.
pub fn is_active(intid: u32) -> Result<bool, GicError> {
    let (offset, bit) = bit_position(reg::ISACTIVER, intid);
    Ok(read32(block_for(intid)? + offset) & bit != 0)
}

/// Whether `intid` is enabled (GICD/GICR_ISENABLER).
///
/// # Errors
/// `NotInitialized`, `InvalidIntid`.
pub fn is_enabled(intid: u32) -> Result<bool, GicError> {
    let (offset, bit) = bit_position(reg::ISENABLER, intid);
    Ok(read32(block_for(intid)? + offset) & bit != 0)
}

/// Sets `intid`'s priority (0 highest; one byte write to IPRIORITYR).
///
/// # Errors
/// `NotInitialized`, `InvalidIntid`.
pub fn set_priority(intid: u32, priority: u8) -> Result<(), GicError> {
    write8(
        block_for(intid)? + reg::IPRIORITYR + intid as usize,
        priority,
    );
    Ok(())
}

/// Sets `intid` edge- or level-triggered (ICFGR). SGIs are always edge
/// (the register ignores the write); some PPIs are fixed.
///
/// # Errors
/// `NotInitialized`, `InvalidIntid`.
pub fn set_trigger(intid: u32, trigger: Trigger) -> Result<(), GicError> {
    let block = block_for(intid)?;
    let (offset, shift) = config_position(intid);
    let edge_bit = 0b10 << shift;
    let _guard = SHARED_REGISTERS.lock();
    let word = read32(block + offset);
    let word = match trigger {
        Trigger::Edge => word | edge_bit,
        Trigger::Level => word & !edge_bit,
    };
    write32(block + offset, word);
    Ok(())
}

/// Puts `intid` in the SDK's group (Group 1 on GICv3; on GICv2 the
/// registers are left at Group 0, see the module notes).
fn set_group(intid: u32) -> Result<(), GicError> {
    if require_version()? == Version::V2 {
        return Ok(());
    }
    let block = block_for(intid)?;
    let (offset, bit) = bit_position(reg::IGROUPR, intid);
    let _guard = SHARED_REGISTERS.lock();
    write32(block + offset, read32(block + offset) | bit);
    Ok(())
}

/// Routes SPI `intid` to vCPU `index` (GICv2 ITARGETSR byte, GICv3
/// IROUTER with the vCPU's affinity).
///
/// # Errors
/// `NotInitialized`; `InvalidIntid` for an SGI or PPI (they are per vCPU);
/// `InvalidVcpu`.
pub fn route_spi(intid: u32, index: usize) -> Result<(), GicError> {
    let version = require_version()?;
    if !(SPI_BASE..INTID_LIMIT).contains(&intid) {
        return Err(GicError::InvalidIntid(intid));
    }
    if index >= MAX_VCPUS {
        return Err(GicError::InvalidVcpu(index));
    }
    let distributor = DISTRIBUTOR.load(Ordering::Relaxed);
    match version {
        Version::V3 => write64(
            distributor + reg::IROUTER + intid as usize * 8,
            u64::from(affinity_value(index as u64)),
        ),
        Version::V2 => write8(
            distributor + reg::ITARGETSR + intid as usize,
            interface_mask(index),
        ),
    }
    Ok(())
}

/// The GICv2 CPU-interface bit of vCPU `index`: learnt at its set-up, else
/// assumed to be bit `index` (QEMU and Tessera number them so).
fn interface_mask(index: usize) -> u8 {
    match INTERFACE_MASK_OF
        .get(index)
        .map(|slot| slot.load(Ordering::Acquire))
    {
        Some(0) | None => 1 << (index % 8),
        Some(mask) => mask,
    }
}

/// The vCPU whose GICv2 CPU-interface number is `number`.
fn vcpu_of_interface(number: u32) -> usize {
    let bit = 1_u8 << (number & 7);
    (0..MAX_VCPUS)
        .find(|&index| INTERFACE_MASK_OF[index].load(Ordering::Acquire) == bit)
        .unwrap_or(number as usize)
}

/// Sets `intid` up and enables it on this vCPU (SPIs: routed to this
/// vCPU): group, priority, trigger (if given), routing, then enable.
///
/// # Errors
/// `NotInitialized`, `InvalidIntid`.
pub fn enable_interrupt(intid: u32, config: Config) -> Result<(), GicError> {
    set_group(intid)?;
    set_priority(intid, config.priority)?;
    if let Some(trigger) = config.trigger {
        set_trigger(intid, trigger)?;
    }
    if intid >= SPI_BASE {
        route_spi(intid, cpu::index())?;
    }
    enable(intid)
}

/// Registers `handler` for `intid` (replacing any earlier one). It runs on
/// whichever vCPU takes the interrupt.
///
/// # Errors
/// `InvalidIntid` for 1020 and above.
pub fn register_handler(intid: u32, handler: Handler) -> Result<(), GicError> {
    let slot = HANDLERS
        .get(intid as usize)
        .ok_or(GicError::InvalidIntid(intid))?;
    slot.store(handler as usize, Ordering::Release);
    Ok(())
}

/// Removes `intid`'s handler: a later interrupt counts as unhandled.
///
/// # Errors
/// `InvalidIntid` for 1020 and above.
pub fn unregister_handler(intid: u32) -> Result<(), GicError> {
    let slot = HANDLERS
        .get(intid as usize)
        .ok_or(GicError::InvalidIntid(intid))?;
    slot.store(0, Ordering::Release);
    Ok(())
}

fn handler_for(intid: u32) -> Option<Handler> {
    let raw = HANDLERS.get(intid as usize)?.load(Ordering::Acquire);
    if raw == 0 {
        return None;
    }
    // SAFETY: the only non-zero values stored in HANDLERS are `Handler`
    // function pointers cast to usize (`register_handler`), and a function
    // pointer has the size of a usize on every target this crate builds
    // for; casting it back yields the same function pointer.
    Some(unsafe { core::mem::transmute::<usize, Handler>(raw) })
}

/// How many interrupts were taken without a handler (each was disabled
/// and ended), and the INTID of the last one.
#[must_use]
pub fn unhandled() -> (u32, Option<u32>) {
    let last = LAST_UNHANDLED.load(Ordering::Relaxed);
    (
        UNHANDLED.load(Ordering::Relaxed),
        (last != SPURIOUS).then_some(last),
    )
}

/// Sends SGI `intid` (0..16) to `target`.
///
/// # Errors
/// `NotInitialized`; `InvalidIntid` for a non-SGI.
pub fn send_sgi(intid: u32, target: SgiTarget) -> Result<(), GicError> {
    let version = require_version()?;
    if intid >= SGI_COUNT {
        return Err(GicError::InvalidIntid(intid));
    }
    match version {
        Version::V3 => {
            let value = match target {
                SgiTarget::List(mask) => sgi1r_value(intid, 0, mask, false),
                SgiTarget::AllButSelf => sgi1r_value(intid, 0, 0, true),
                SgiTarget::ToSelf => sgi1r_value(intid, 0, 1 << cpu::index(), false),
            };
            arch::icc_sgi1r_write(value);
        }
        Version::V2 => {
            let value = match target {
                SgiTarget::List(mask) => {
                    let interfaces = (0..MAX_VCPUS)
                        .filter(|&index| mask & (1 << index) != 0)
                        .fold(0, |all, index| all | interface_mask(index));
                    sgir_value(intid, SgirFilter::List, interfaces)
                }
                SgiTarget::AllButSelf => sgir_value(intid, SgirFilter::AllButSelf, 0),
                SgiTarget::ToSelf => sgir_value(intid, SgirFilter::ToSelf, 0),
            };
            // The DSB makes this vCPU's earlier writes visible before the
            // SGI can reach its target (GICv3's write does the same).
            arch::data_barrier();
            write32(DISTRIBUTOR.load(Ordering::Relaxed) + reg::SGIR, value);
        }
    }
    Ok(())
}

/// ICC_SGI1R_EL1 for SGI `intid` to the vCPUs in `target_list` (Aff0
/// values 0..16) of the cluster `aff3.aff2.aff1` (packed as in
/// [`affinity_value`] with Aff0 ignored), or with `all_but_self` (IRM) to
/// every PE but the sender. IHI 0069, "ICC_SGI1R_EL1": TargetList
/// 15:0, Aff1 23:16, INTID 27:24, Aff2 39:32, IRM 40, Aff3 55:48.
#[must_use]
pub const fn sgi1r_value(intid: u32, cluster: u32, target_list: u16, all_but_self: bool) -> u64 {
    let aff1 = ((cluster >> 8) & 0xFF) as u64;
    let aff2 = ((cluster >> 16) & 0xFF) as u64;
    let aff3 = ((cluster >> 24) & 0xFF) as u64;
    let mut value = ((intid as u64 & 0xF) << 24) | (aff1 << 16) | (aff2 << 32) | (aff3 << 48);
    if all_but_self {
        value |= 1 << 40;
    } else {
        value |= target_list as u64;
    }
    value
}

/// GICD_SGIR.TargetListFilter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SgirFilter {
    List = 0,
    AllButSelf = 1,
    ToSelf = 2,
}

/// GICD_SGIR for SGI `intid`: TargetListFilter 25:24, CPUTargetList 23:16,
/// NSATT 15 (0), SGIINTID 3:0 (IHI 0048B 4.3.15).
#[must_use]
pub const fn sgir_value(intid: u32, filter: SgirFilter, interfaces: u8) -> u32 {
    ((filter as u32) << 24) | ((interfaces as u32) << 16) | (intid & 0xF)
}

/// An acknowledged interrupt, decoded from the IAR value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Acknowledged {
    pub intid: u32,
    /// GICv2 SGIs: the sending CPU interface's number.
    pub source_interface: Option<u32>,
}

/// Decodes an IAR value: GICv3 INTID in 23:0; GICv2 INTID in 9:0 and, for
/// SGIs, the source CPU in 12:10. `None` for the special INTIDs
/// (1020..1023: nothing to handle).
#[must_use]
pub const fn decode_iar(version: Version, iar: u32) -> Option<Acknowledged> {
    let (intid, source_interface) = match version {
        Version::V3 => (iar & 0xFF_FFFF, None),
        Version::V2 => {
            let intid = iar & 0x3FF;
            let source = if intid < SGI_COUNT {
                Some((iar >> 10) & 0x7)
            } else {
                None
            };
            (intid, source)
        }
    };
    if intid >= INTID_LIMIT {
        None
    } else {
        Some(Acknowledged {
            intid,
            source_interface,
        })
    }
}

/// Sets the CPU interface's priority mask: only interrupts of a priority
/// strictly higher (numerically lower) than `mask` are signalled.
///
/// # Errors
/// `NotInitialized`.
pub fn set_priority_mask(mask: u8) -> Result<(), GicError> {
    match require_version()? {
        Version::V3 => arch::icc_pmr_write(u64::from(mask)),
        Version::V2 => write32(
            CPU_INTERFACE.load(Ordering::Relaxed) + reg::GICC_PMR,
            u32::from(mask),
        ),
    }
    Ok(())
}

/// A secondary vCPU's interface set-up failed: said on the console before
/// the runtime stops the VM.
#[cfg(target_os = "none")]
fn report_setup_error(error: GicError) -> GicError {
    crate::console::print_args_emergency(format_args!(
        "tessera-guest-sdk: GIC interface set-up: {error}\n"
    ));
    error
}

/// The IRQ entry's dispatcher (`rt::set_interrupt_hooks`): one interrupt,
/// as [`handle_irq`].
#[cfg(target_os = "none")]
extern "C" fn dispatch_irq() -> bool {
    handle_irq()
}

/// The IRQ vector's work: acknowledges one interrupt, runs its handler,
/// ends it. An interrupt without a handler is disabled and counted (see
/// [`unhandled`]) so a level one cannot storm. Returns false when the GIC
/// is not set up (the IRQ is then a real surprise).
#[inline(always)]
pub(crate) fn handle_irq() -> bool {
    // GICv3 with one test (the notify path's receiver); the rest apart.
    if VERSION.load(Ordering::Relaxed) != 3 {
        return handle_irq_unless_v3();
    }
    handle_irq_of(Version::V3)
}

/// [`handle_irq`] on GICv2, or before the GIC support is set up.
#[cold]
#[inline(never)]
fn handle_irq_unless_v3() -> bool {
    match version() {
        Some(version) => handle_irq_of(version),
        None => false,
    }
}

/// [`handle_irq`] on a GIC of `version`.
#[inline(always)]
fn handle_irq_of(version: Version) -> bool {
    let iar = match version {
        Version::V3 => arch::icc_iar1_read() as u32,
        Version::V2 => read32(CPU_INTERFACE.load(Ordering::Relaxed) + reg::GICC_IAR),
    };
    let Some(acknowledged) = decode_iar(version, iar) else {
        // Spurious: the interrupt went away, or another vCPU took it.
        return true;
    };
    let interrupt = Interrupt {
        intid: acknowledged.intid,
        source: acknowledged.source_interface.map(vcpu_of_interface),
    };
    match handler_for(interrupt.intid) {
        Some(handler) => handler(interrupt),
        None => {
            let _ = disable(interrupt.intid);
            UNHANDLED.fetch_add(1, Ordering::Relaxed);
            LAST_UNHANDLED.store(interrupt.intid, Ordering::Relaxed);
        }
    }
    end_of_interrupt(version, iar);
    true
}

/// Drops the running priority and (EOImode 0) deactivates: the exact IAR
/// value goes back, as both specs require.
fn end_of_interrupt(version: Version, iar: u32) {
    match version {
        Version::V3 => arch::icc_eoir1_write(u64::from(iar)),
        Version::V2 => write32(CPU_INTERFACE.load(Ordering::Relaxed) + reg::GICC_EOIR, iar),
    }
}

/// Deactivates `intid` through ICC_DIR_EL1 (GICv3): only meaningful with
/// EOImode 1, which the SDK does not use; there for guests that set it.
pub fn deactivate_v3(intid: u32) {
    arch::icc_dir_write(u64::from(intid));
}

// The GIC's registers, through the arch accessors. The addresses come
// from the device tree the guest booted with: the guest interface puts
// the GIC there (and QEMU `virt` natively), and nothing else of this
// program lives at them.

fn read32(address: usize) -> u32 {
    // SAFETY: `address` is a register of the GIC frames [`init`] recorded
    // from the device tree (4-byte aligned by construction); reading GIC
    // registers other than the IARs has no side effects, and the IARs are
    // read only by the dispatcher, which ends what it acknowledges.
    unsafe { arch::mmio_read32(address) }
}

fn write32(address: usize, value: u32) {
    // SAFETY: as `read32`; the writes the SDK makes configure interrupts
    // and never touch memory.
    unsafe { arch::mmio_write32(address, value) }
}

fn write8(address: usize, value: u8) {
    // SAFETY: as `write32`, for the byte-accessible IPRIORITYR/ITARGETSR.
    unsafe { arch::mmio_write8(address, value) }
}

fn write64(address: usize, value: u64) {
    // SAFETY: as `write32`, for the 64-bit GICD_IROUTER (8-byte aligned).
    unsafe { arch::mmio_write64(address, value) }
}

/// A 64-bit register read as two 32-bit halves (low first), which every
/// GIC allows and every trap emulation decodes.
fn read64_split(address: usize) -> u64 {
    u64::from(read32(address)) | (u64::from(read32(address + 4)) << 32)
}

/// The GIC frame addresses [`init`] recorded: for tests that poke at the
/// registers themselves (`vgic-hostile`).
#[must_use]
pub fn frames() -> Option<Layout> {
    let version = version()?;
    Some(Layout {
        version,
        distributor: DISTRIBUTOR.load(Ordering::Relaxed) as u64,
        cpu_interface: CPU_INTERFACE.load(Ordering::Relaxed) as u64,
        redistributors: REDISTRIBUTORS_START.load(Ordering::Relaxed)
            ..REDISTRIBUTORS_END.load(Ordering::Relaxed),
    })
}

/// This vCPU's redistributor RD_base (GICv3, after its set-up).
#[must_use]
pub fn this_redistributor() -> Option<u64> {
    let rd_base = REDISTRIBUTOR_OF.get(cpu::index())?.load(Ordering::Acquire);
    (rd_base != 0).then_some(rd_base as u64)
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::vec::Vec;

    use super::*;

    #[test]
    fn iar_values_decode_per_version() {
        assert_eq!(
            decode_iar(Version::V3, 27),
            Some(Acknowledged {
                intid: 27,
                source_interface: None
            })
        );
        assert_eq!(decode_iar(Version::V3, 1023), None);
        assert_eq!(decode_iar(Version::V3, 1020), None);
        // GICv2: SGI 3 from CPU 2.
        assert_eq!(
            decode_iar(Version::V2, (2 << 10) | 3),
            Some(Acknowledged {
                intid: 3,
                source_interface: Some(2)
            })
        );
        // The CPUID field means nothing for a PPI or SPI.
        assert_eq!(
            decode_iar(Version::V2, (5 << 10) | 33),
            Some(Acknowledged {
                intid: 33,
                source_interface: None
            })
        );
        assert_eq!(decode_iar(Version::V2, 1022), None);
        assert_eq!(decode_iar(Version::V2, 0x3FF), None);
    }

    #[test]
    fn sgi_register_values() {
        // SGI 5 to vCPUs 1 and 3 of cluster 0.
        assert_eq!(sgi1r_value(5, 0, 0b1010, false), 0x0500_000A);
        // All but self: IRM, no target list.
        assert_eq!(sgi1r_value(1, 0, 0xFFFF, true), (1 << 40) | (1 << 24));
        // Aff3.Aff2.Aff1 = 4.3.2.
        assert_eq!(
            sgi1r_value(15, affinity_value(0x04_0003_0200), 1, false),
            (4 << 48) | (3 << 32) | (2 << 16) | (15 << 24) | 1
        );
        assert_eq!(sgir_value(3, SgirFilter::List, 0b0110), 0x0006_0003);
        assert_eq!(sgir_value(15, SgirFilter::AllButSelf, 0), 0x0100_000F);
        assert_eq!(sgir_value(0, SgirFilter::ToSelf, 0xFF), 0x02FF_0000);
    }

    #[test]
    fn affinity_values_pack_all_four_levels() {
        assert_eq!(affinity_value(0x8000_0003), 3);
        assert_eq!(affinity_value(0x0000_0000_0001_0200), 0x0001_0200);
        assert_eq!(affinity_value(0x0000_00AB_0000_0000), 0xAB00_0000);
        // U, MT and bit 31 are not affinity.
        assert_eq!(affinity_value(0xC100_0001), 1);
    }

    #[test]
    fn register_positions() {
        assert_eq!(bit_position(reg::ISENABLER, 0), (0x100, 1));
        assert_eq!(bit_position(reg::ISENABLER, 33), (0x104, 2));
        assert_eq!(bit_position(reg::ICPENDR, 63), (0x284, 1 << 31));
        assert_eq!(config_position(27), (0xC04, 22));
        assert_eq!(config_position(33), (0xC08, 2));
        assert_eq!(interrupt_lines(0), 32);
        assert_eq!(interrupt_lines(8), 288);
        assert_eq!(interrupt_lines(31), INTID_LIMIT);
    }

    /// Redistributor frames with the given (affinity, VLPIS) pairs, the
    /// last one marked Last; returns GICR_TYPER by address.
    fn frames_typer(frames: &[(u32, bool)], base: u64) -> impl Fn(u64) -> u64 + '_ {
        move |address| {
            let mut frame = base;
            for (position, &(affinity, vlpis)) in frames.iter().enumerate() {
                if address == frame + reg::GICR_TYPER as u64 {
                    let mut typer = u64::from(affinity) << 32;
                    if vlpis {
                        typer |= reg::TYPER_VLPIS;
                    }
                    if position + 1 == frames.len() {
                        typer |= reg::TYPER_LAST;
                    }
                    return typer;
                }
                frame += if vlpis {
                    reg::FRAME_QUAD
                } else {
                    reg::FRAME_PAIR
                };
            }
            panic!("read outside the frames at {address:#x}")
        }
    }

    #[test]
    fn redistributors_are_found_by_affinity() {
        let base = 0x080A_0000;
        let frames = [(0, false), (1, false), (2, false), (3, false)];
        let region = base..base + 4 * reg::FRAME_PAIR;
        let typer = frames_typer(&frames, base);
        let found: Vec<_> = (0..4)
            .map(|mpidr| find_redistributor(region.clone(), 0x8000_0000 | mpidr, &typer))
            .collect();
        assert_eq!(
            found,
            [
                Some(base),
                Some(base + 0x2_0000),
                Some(base + 0x4_0000),
                Some(base + 0x6_0000)
            ]
        );
        // Not there: the walk stops at Last, not at the region's end.
        assert_eq!(find_redistributor(base..base + 0x100_0000, 4, &typer), None);
        // Nor past a region that ends early.
        assert_eq!(find_redistributor(base..base + 0x2_0000, 1, &typer), None);
    }

    #[test]
    fn gicv4_frames_are_four_frames_long() {
        let base = 0x080A_0000;
        let frames = [(0, true), (1, true)];
        let typer = frames_typer(&frames, base);
        assert_eq!(
            find_redistributor(base..base + 0x8_0000, 1, &typer),
            Some(base + 0x4_0000)
        );
    }

    #[test]
    fn nothing_works_before_init() {
        // The host never runs `init`.
        assert_eq!(version(), None);
        assert_eq!(enable(27), Err(GicError::NotInitialized));
        assert_eq!(
            send_sgi(1, SgiTarget::AllButSelf),
            Err(GicError::NotInitialized)
        );
        assert!(!handle_irq());
        assert!(frames().is_none());
    }

    fn first(_: Interrupt) {}
    fn second(_: Interrupt) {}

    #[test]
    fn handlers_register_and_unregister() {
        // INTID 500 is used by this test only.
        assert!(handler_for(500).is_none());
        register_handler(500, first).unwrap();
        assert_eq!(
            handler_for(500).map(|h| h as usize),
            Some(first as Handler as usize)
        );
        register_handler(500, second).unwrap();
        assert_eq!(
            handler_for(500).map(|h| h as usize),
            Some(second as Handler as usize)
        );
        unregister_handler(500).unwrap();
        assert!(handler_for(500).is_none());
        assert_eq!(
            register_handler(1020, first),
            Err(GicError::InvalidIntid(1020))
        );
    }

    #[test]
    fn layouts_come_from_either_binding() {
        use vm_fdt::FdtWriter;
        fn tree(compatible: &str, reg: &[u64]) -> Vec<u8> {
            let mut fdt = FdtWriter::new().unwrap();
            let root = fdt.begin_node("").unwrap();
            fdt.property_u32("#address-cells", 2).unwrap();
            fdt.property_u32("#size-cells", 2).unwrap();
            let gic = fdt.begin_node("intc@8000000").unwrap();
            fdt.property_string("compatible", compatible).unwrap();
            fdt.property_array_u64("reg", reg).unwrap();
            fdt.end_node(gic).unwrap();
            fdt.end_node(root).unwrap();
            fdt.finish().unwrap()
        }
        let v3 = tree("arm,gic-v3", &[0x800_0000, 0x1_0000, 0x80A_0000, 0x8_0000]);
        assert_eq!(
            Layout::from_device_tree(&DeviceTree::from_bytes(&v3).unwrap()),
            Ok(Layout {
                version: Version::V3,
                distributor: 0x800_0000,
                cpu_interface: 0,
                redistributors: 0x80A_0000..0x812_0000,
            })
        );
        let v2 = tree(
            "arm,cortex-a15-gic",
            &[0x800_0000, 0x1_0000, 0x801_0000, 0x1_0000],
        );
        assert_eq!(
            Layout::from_device_tree(&DeviceTree::from_bytes(&v2).unwrap()),
            Ok(Layout {
                version: Version::V2,
                distributor: 0x800_0000,
                cpu_interface: 0x801_0000,
                redistributors: 0..0,
            })
        );
        let short = tree("arm,gic-400", &[0x800_0000, 0x1_0000]);
        assert_eq!(
            Layout::from_device_tree(&DeviceTree::from_bytes(&short).unwrap()),
            Err(GicError::IncompleteGicNode)
        );
        let none = tree("arm,pl011", &[0x900_0000, 0x1000]);
        assert_eq!(
            Layout::from_device_tree(&DeviceTree::from_bytes(&none).unwrap()),
            Err(GicError::NoGicNode)
        );
    }
}
