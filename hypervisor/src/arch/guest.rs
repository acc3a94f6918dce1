//! Everything EL2 does to the hardware on behalf of a guest: stage-2 and
//! trap configuration, the EL1 register context, and exception injection.

use core::arch::asm;

use tessera_hypervisor::memory::address::PhysAddr;
use tessera_hypervisor::vm::set_way::VirtualMemoryRegister;
use tessera_hypervisor::vm::vcpu_state::El1Context;

/// HCR_EL2 while guests run. Chosen bit by bit (docs/ARCHITECTURE.md):
/// - VM: stage-2 translation on.
/// - SWIO: set/way invalidates act as clean+invalidate (guests cannot
///   discard data they do not own).
/// - FMO, IMO, AMO: physical FIQ/IRQ/SError go to EL2.
/// - FB, BSU=inner shareable: broadcast guest TLB/cache maintenance to the
///   inner-shareable domain, so a vCPU moving CPUs later stays coherent.
/// - TWE: trap WFE, so a guest spinning on WFE gives the CPU back to EL2.
///   WFI is not trapped: each vCPU has its CPU to itself, so a guest's WFI
///   may sleep the CPU, and it wakes for what should wake it — a virtual
///   interrupt in its list registers (which EL2 cannot wait for) or a
///   physical one, taken to EL2.
/// - TSC: trap SMC (guests reach firmware through the hypervisor only).
/// - TSW: trap data cache maintenance by set/way (it cannot work as written
///   under virtualization; `set_way` says what is done instead). TVM, the
///   other half of that, is turned on and off per vCPU at run time.
/// - TIDCP: trap implementation-defined system registers (read as zero,
///   writes ignored), so a guest cannot reach core-wide controls.
/// - RW: EL1 is AArch64.
pub const HCR_EL2_GUEST: u64 = (1 << 0)
    | (1 << 1)
    | (1 << 3)
    | (1 << 4)
    | (1 << 5)
    | (1 << 9)
    | (1 << 10)
    | (1 << 14)
    | (1 << 19)
    | (1 << 20)
    | (1 << 22)
    | (1 << 31);

/// CPTR_EL2 (non-VHE layout): TFP = 0 so guests use FP/SIMD without
/// trapping (the soft-float hypervisor never touches those registers, so no
/// save/restore is needed). The other low bits are RES1 on cores without SVE
/// and SME; on cores with them, bits 8 (TZ) and 12 (TSM) keep SVE and SME
/// trapped, which Tessera does not context-switch.
const CPTR_EL2_GUEST: u64 = 0x33FF;

/// ID_AA64DFR0_EL1: which debug, trace and performance monitor features
/// this CPU has.
fn debug_features() -> u64 {
    let value: u64;
    // SAFETY: reading ID_AA64DFR0_EL1 has no side effects.
    unsafe {
        asm!("mrs {}, id_aa64dfr0_el1", out(reg) value, options(nomem, nostack, preserves_flags));
    }
    value
}

/// The architectural PMU in `debug_features` (ID_AA64DFR0_EL1): its
/// PMUVer, or `None` when the CPU has none (0b0000) or only an
/// IMPLEMENTATION DEFINED one (0b1111), whose registers are not PMUv3's.
fn pmu_version(debug_features: u64) -> Option<u64> {
    match (debug_features >> 8) & 0xF {
        0 | 0xF => None,
        version => Some(version),
    }
}

/// ID_AA64DFR0_EL1.PMUVer of FEAT_PMUv3p1 (MDCR_EL2.HPMD) and of
/// FEAT_PMUv3p5 (MDCR_EL2.HCCD).
const PMU_V3P1: u64 = 0b0100;
const PMU_V3P5: u64 = 0b0110;

/// PMCR_EL0.N: how many event counters the PMU has (read at EL2, where it
/// is not limited by MDCR_EL2.HPMN).
fn pmu_event_counters() -> u64 {
    let pmcr: u64;
    // SAFETY: reading PMCR_EL0 has no side effects; callers have checked
    // that the CPU has a PMUv3.
    unsafe { asm!("mrs {}, pmcr_el0", out(reg) pmcr, options(nomem, nostack, preserves_flags)) };
    (pmcr >> 11) & 0x1F
}

/// MDCR_EL2 while guests run. Each vCPU has its physical CPU to itself, so
/// on a CPU with an architectural PMU (PMUv3) the guest owns it: its
/// registers do not trap (TPM, TPMCR clear) and HPMN gives EL1 every event
/// counter (HPME clear: none is left for EL2). EL2 is kept out of what the
/// guest counts as far as the CPU allows: HPMD (FEAT_PMUv3p1) stops the
/// event counters at EL2 and HCCD (FEAT_PMUv3p5) the cycle counter. On an
/// older PMUv3, such as the Cortex-A72's, neither exists: counters skip
/// EL2 unless the guest sets the NSH bit of their filter (PMEVTYPER<n>_EL0,
/// PMCCFILTR_EL0), which `reset_guest_pmu` clears; a guest that sets it
/// counts the hypervisor's work on its behalf (its own traps) as well.
///
/// Without an architectural PMU (ID_AA64DFR0_EL1.PMUVer none or
/// IMPLEMENTATION DEFINED) the performance monitor registers trap (TPM,
/// TPMCR) and read as zero with writes ignored, HPMN is kept as it was, and
/// the guest device tree describes no PMU. The statistical profiling
/// registers (TPMS) trap on cores that have them (ID_AA64DFR0_EL1.PMSVer
/// != 0; the bit is RES0 elsewhere).
///
/// The debug registers are the guest's own, as on hardware: breakpoints,
/// watchpoints and single-step aimed at EL1 cannot fire at EL2, and a vCPU
/// starts with MDSCR_EL1 = 0 (`El1Context::reset`), so nothing armed by an
/// earlier run of the VM fires.
fn mdcr_el2_guest() -> u64 {
    const HPMN: u64 = 0x1F;
    const TPMCR: u64 = 1 << 5;
    const TPM: u64 = 1 << 6;
    const TPMS: u64 = 1 << 14;
    const HPMD: u64 = 1 << 17;
    const HCCD: u64 = 1 << 23;
    let mdcr: u64;
    // SAFETY: reading MDCR_EL2 has no side effects.
    unsafe { asm!("mrs {}, mdcr_el2", out(reg) mdcr, options(nomem, nostack, preserves_flags)) };
    let debug_features = debug_features();
    let statistical_profiling = (debug_features >> 32) & 0xF != 0;
    let profiling = if statistical_profiling { TPMS } else { 0 };
    let Some(version) = pmu_version(debug_features) else {
        return (mdcr & HPMN) | TPMCR | TPM | profiling;
    };
    // HPMN = 0 is CONSTRAINED UNPREDICTABLE before FEAT_HPMN0; a PMU
    // without event counters keeps the value it had.
    let counters = match pmu_event_counters() {
        0 => mdcr & HPMN,
        counters => counters,
    };
    let event_counters_off_at_el2 = if version >= PMU_V3P1 { HPMD } else { 0 };
    let cycle_counter_off_at_el2 = if version >= PMU_V3P5 { HCCD } else { 0 };
    counters | event_counters_off_at_el2 | cycle_counter_off_at_el2 | profiling
}

/// Puts this CPU's PMU in a quiet state as a vCPU starts or leaves, so
/// nothing an earlier run counted (or armed to interrupt) reaches the
/// guest: counting and overflow interrupts off, every counter zero, no
/// overflow flag set, EL0 access denied, every filter and event type 0
/// (EL0 and EL1 counted, EL2 not), PMSELR_EL0 = 0. Nothing to do on a CPU
/// without an architectural PMU.
pub fn reset_guest_pmu() {
    if pmu_version(debug_features()).is_none() {
        return;
    }
    const RESET_EVENT_COUNTERS: u64 = 1 << 1;
    const RESET_CYCLE_COUNTER: u64 = 1 << 2;
    // SAFETY: the PMU belongs to the vCPU on this CPU, which is starting or
    // leaving; EL2 does not use it. The CPU has a PMUv3, so these
    // registers exist.
    unsafe {
        asm!(
            "msr pmcr_el0, {reset}",
            "msr pmcntenclr_el0, {all}",
            "msr pmintenclr_el1, {all}",
            "msr pmovsclr_el0, {all}",
            "msr pmuserenr_el0, xzr",
            "msr pmccfiltr_el0, xzr",
            reset = in(reg) RESET_EVENT_COUNTERS | RESET_CYCLE_COUNTER,
            all = in(reg) u64::MAX,
            options(nomem, nostack, preserves_flags)
        );
    }
    for counter in 0..pmu_event_counters() {
        // SAFETY: as above; `counter` is below PMCR_EL0.N, so PMSELR_EL0
        // selects an event counter that exists.
        unsafe {
            asm!(
                "msr pmselr_el0, {counter}",
                "isb",
                "msr pmxevtyper_el0, xzr",
                counter = in(reg) counter,
                options(nomem, nostack, preserves_flags)
            );
        }
    }
    // SAFETY: as above.
    unsafe {
        asm!(
            "msr pmselr_el0, xzr",
            "isb",
            options(nomem, nostack, preserves_flags)
        )
    };
}

/// CNTHCTL_EL2: EL1PCTEN | EL1PCEN: guests may read the physical counter
/// and use the EL1 physical timer, as they do on bare metal.
const CNTHCTL_EL2_GUEST: u64 = 0b11;

/// VTCR_EL2 for the stage-2 regime of `page_table::Regime::Stage2`: 39-bit
/// IPA (T0SZ = 25), start at level 1 (SL0 = 1), 4 KiB granule, write-back
/// inner-shareable walks, output size = the CPU's physical range, 8-bit VMID.
pub fn vtcr_el2_value() -> u64 {
    const T0SZ: u64 = 25;
    const SL0_LEVEL1: u64 = 0b01 << 6;
    const IRGN0_WRITE_BACK: u64 = 0b01 << 8;
    const ORGN0_WRITE_BACK: u64 = 0b01 << 10;
    const SH0_INNER: u64 = 0b11 << 12;
    const RES1: u64 = 1 << 31;
    let physical_range = super::physical_address_range().min(0b101);
    T0SZ | SL0_LEVEL1
        | IRGN0_WRITE_BACK
        | ORGN0_WRITE_BACK
        | SH0_INNER
        | (physical_range << 16)
        | RES1
}

/// Loads a VM's stage-2 tables and VMID, and the guest trap configuration.
pub fn activate_vm(vmid: u8, stage2_root: u64, counter_offset: u64) {
    let vttbr = (u64::from(vmid) << 48) | stage2_root;
    // SAFETY: these registers configure how *guests* are translated and
    // trapped; EL2's own translation and execution are unaffected.
    unsafe {
        asm!(
            "msr vtcr_el2, {vtcr}",
            "msr vttbr_el2, {vttbr}",
            "msr hcr_el2, {hcr}",
            "msr cptr_el2, {cptr}",
            "msr mdcr_el2, {mdcr}",
            // IMPLEMENTATION DEFINED controls EL1 must not reach (on the
            // A72: CPUECTLR, L2CTLR, L2ACTLR writes): all denied.
            "msr actlr_el2, xzr",
            "msr cnthctl_el2, {cnthctl}",
            "msr cntvoff_el2, {cntvoff}",
            "mrs {scratch}, midr_el1",
            "msr vpidr_el2, {scratch}",
            "isb",
            vtcr = in(reg) vtcr_el2_value(),
            vttbr = in(reg) vttbr,
            hcr = in(reg) HCR_EL2_GUEST,
            cptr = in(reg) CPTR_EL2_GUEST,
            mdcr = in(reg) mdcr_el2_guest(),
            cnthctl = in(reg) CNTHCTL_EL2_GUEST,
            cntvoff = in(reg) counter_offset,
            scratch = out(reg) _,
            options(nostack, preserves_flags)
        );
    }
}

/// Stops this CPU's EL1 timers (virtual and physical), as when a vCPU
/// starts or leaves: nothing armed by an earlier run fires.
pub fn stop_guest_timers() {
    // SAFETY: the EL1 timers belong to the vCPU on this CPU, which is
    // starting or leaving; turning them off affects nothing else.
    unsafe {
        asm!(
            "msr cntv_ctl_el0, xzr",
            "msr cntp_ctl_el0, xzr",
            "isb",
            options(nomem, nostack, preserves_flags)
        );
    }
}

/// Sets the MPIDR the running vCPU reads.
pub fn set_virtual_mpidr(mpidr: u64) {
    // SAFETY: VMPIDR_EL2 only changes what EL1 reads from MPIDR_EL1.
    unsafe { asm!("msr vmpidr_el2, {}", in(reg) mpidr, options(nomem, nostack, preserves_flags)) };
}

/// Drops every stage-1 and stage-2 TLB entry of the VMID currently in
/// VTTBR_EL2, on all CPUs of the inner-shareable domain.
pub fn invalidate_guest_tlbs() {
    // SAFETY: TLB invalidation has no effect on memory contents.
    unsafe {
        asm!(
            "dsb ishst",
            "tlbi vmalls12e1is",
            "dsb ish",
            "isb",
            options(nostack, preserves_flags)
        )
    };
}

/// Invalidates all instruction caches to the point of unification, so that
/// code just copied into guest RAM is fetched fresh.
pub fn invalidate_instruction_caches() {
    // SAFETY: I-cache invalidation has no effect on memory contents.
    unsafe {
        asm!(
            "dsb ish",
            "ic ialluis",
            "dsb ish",
            "isb",
            options(nostack, preserves_flags)
        )
    };
}

/// The physical counter, for the per-VM virtual counter offset.
pub fn physical_counter() -> u64 {
    let value: u64;
    // SAFETY: reading the counter has no side effects.
    unsafe {
        asm!("isb", "mrs {}, cntpct_el0", out(reg) value, options(nomem, nostack, preserves_flags))
    };
    value
}

/// HPFAR_EL2: the faulting guest-physical page of a stage-2 abort.
pub fn faulting_guest_page() -> u64 {
    let value: u64;
    // SAFETY: reading HPFAR_EL2 has no side effects.
    unsafe { asm!("mrs {}, hpfar_el2", out(reg) value, options(nomem, nostack, preserves_flags)) };
    value
}

/// Which of the running vCPU's stage-1 regimes an address translation
/// asks about: the exception level the guest was at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestLevel {
    El0,
    El1,
}

/// The guest-physical address the running vCPU's stage 1 gives `virtual`
/// for a read at `level` (AT S1E0R / S1E1R), or `None` when its stage 1
/// faults. With the guest's MMU off that is `virtual` itself. PAR_EL1,
/// which the translation reports through, is the guest's: it is put back.
pub fn guest_intermediate_address(virtual_address: u64, level: GuestLevel) -> Option<u64> {
    macro_rules! translate {
        ($operation:literal) => {{
            let result: u64;
            // SAFETY: an address translation only writes PAR_EL1, which is
            // saved first and restored after; it reads the guest's tables
            // through stage 2 and changes no memory.
            unsafe {
                asm!(
                    "mrs {saved}, par_el1",
                    concat!("at ", $operation, ", {address}"),
                    "isb",
                    "mrs {result}, par_el1",
                    "msr par_el1, {saved}",
                    saved = out(reg) _,
                    result = out(reg) result,
                    address = in(reg) virtual_address,
                    options(nostack, preserves_flags)
                )
            };
            result
        }};
    }
    let result = match level {
        GuestLevel::El0 => translate!("s1e0r"),
        GuestLevel::El1 => translate!("s1e1r"),
    };
    // PAR_EL1.F (bit 0) set: the translation faulted. Else PA[47:12].
    (result & 1 == 0).then_some((result & 0x0000_FFFF_FFFF_F000) | (virtual_address & 0xFFF))
}

/// The running vCPU's stack pointer at `level` (SP_EL0 or SP_EL1).
pub fn guest_stack_pointer(level: GuestLevel) -> u64 {
    let value: u64;
    match level {
        // SAFETY: reading the guest's stack pointer from EL2 has no side
        // effects.
        GuestLevel::El0 => unsafe {
            asm!("mrs {}, sp_el0", out(reg) value, options(nomem, nostack, preserves_flags));
        },
        // SAFETY: as above.
        GuestLevel::El1 => unsafe {
            asm!("mrs {}, sp_el1", out(reg) value, options(nomem, nostack, preserves_flags));
        },
    }
    value
}

/// Sets the running vCPU's stack pointer at `level`, as a writeback to SP
/// by its trapped instruction would have.
pub fn set_guest_stack_pointer(level: GuestLevel, value: u64) {
    match level {
        // SAFETY: the guest's stack pointers only affect the guest; EL2
        // runs on SP_EL2.
        GuestLevel::El0 => unsafe {
            asm!("msr sp_el0, {}", in(reg) value, options(nomem, nostack, preserves_flags));
        },
        // SAFETY: as above.
        GuestLevel::El1 => unsafe {
            asm!("msr sp_el1, {}", in(reg) value, options(nomem, nostack, preserves_flags));
        },
    }
}

/// Orders the sending guest's earlier stores to shared memory before a
/// signal to another CPU (vdev-shmem's notify): the trap does not order
/// them, and a peer woken by the signal must see them.
#[inline(always)]
pub fn order_stores_before_signal() {
    // SAFETY: a barrier has no memory-safety effect.
    unsafe { asm!("dsb ish", options(nostack, preserves_flags)) };
}

/// VBAR_EL1 of the running vCPU.
pub fn guest_vector_base() -> u64 {
    let value: u64;
    // SAFETY: reading VBAR_EL1 has no side effects.
    unsafe { asm!("mrs {}, vbar_el1", out(reg) value, options(nomem, nostack, preserves_flags)) };
    value
}

/// HCR_EL2.TVM: trap the running vCPU's writes to its virtual-memory
/// control registers (see `set_way`).
const HCR_EL2_TVM: u64 = 1 << 26;

/// Starts or stops trapping the running vCPU's writes to its virtual-memory
/// control registers.
pub fn trap_virtual_memory_registers(trap: bool) {
    // SAFETY: TVM only changes which EL1 register writes trap to EL2; the
    // rest of HCR_EL2 is kept as it is.
    unsafe {
        asm!(
            "mrs {hcr}, hcr_el2",
            "bic {hcr}, {hcr}, {tvm}",
            "orr {hcr}, {hcr}, {set}",
            "msr hcr_el2, {hcr}",
            "isb",
            hcr = out(reg) _,
            tvm = in(reg) HCR_EL2_TVM,
            set = in(reg) if trap { HCR_EL2_TVM } else { 0 },
            options(nomem, nostack, preserves_flags)
        );
    }
}

/// Whether the running vCPU's writes to its virtual-memory control
/// registers trap (HCR_EL2.TVM), as the hardware has it.
pub fn virtual_memory_registers_trapped() -> bool {
    let hcr: u64;
    // SAFETY: reading HCR_EL2 has no side effects.
    unsafe { asm!("mrs {}, hcr_el2", out(reg) hcr, options(nomem, nostack, preserves_flags)) };
    hcr & HCR_EL2_TVM != 0
}

/// SCTLR_EL1 of the running vCPU.
pub fn guest_system_control() -> u64 {
    let value: u64;
    // SAFETY: reading SCTLR_EL1 has no side effects.
    unsafe { asm!("mrs {}, sctlr_el1", out(reg) value, options(nomem, nostack, preserves_flags)) };
    value
}

/// Carries out a trapped write by the running vCPU to one of its own
/// virtual-memory control registers, as the MSR would have.
pub fn write_virtual_memory_register(register: VirtualMemoryRegister, value: u64) {
    macro_rules! write {
        ($name:literal) => {
            // SAFETY: the register belongs to the vCPU that asked to write
            // it, with the value it gave; EL2's own state is unaffected.
            unsafe {
                asm!(
                    concat!("msr ", $name, ", {}"),
                    "isb",
                    in(reg) value,
                    options(nomem, nostack, preserves_flags)
                )
            }
        };
    }
    match register {
        VirtualMemoryRegister::SystemControl => write!("sctlr_el1"),
        VirtualMemoryRegister::TranslationTableBase0 => write!("ttbr0_el1"),
        VirtualMemoryRegister::TranslationTableBase1 => write!("ttbr1_el1"),
        VirtualMemoryRegister::TranslationControl => write!("tcr_el1"),
        VirtualMemoryRegister::AuxiliaryFaultStatus0 => write!("afsr0_el1"),
        VirtualMemoryRegister::AuxiliaryFaultStatus1 => write!("afsr1_el1"),
        VirtualMemoryRegister::ExceptionSyndrome => write!("esr_el1"),
        VirtualMemoryRegister::FaultAddress => write!("far_el1"),
        VirtualMemoryRegister::MemoryAttributeIndirection => write!("mair_el1"),
        VirtualMemoryRegister::AuxiliaryMemoryAttributeIndirection => write!("amair_el1"),
        VirtualMemoryRegister::ContextId => write!("contextidr_el1"),
    }
}

/// SCTLR_EL1.M of the running vCPU: whether its stage-1 MMU is on.
pub fn guest_translation_enabled() -> bool {
    guest_system_control() & 1 != 0
}

/// Writes the EL1 exception registers for an exception EL2 injects.
pub fn set_guest_exception_registers(esr: u64, far: u64, elr: u64, spsr: u64) {
    // SAFETY: these are the running vCPU's EL1 registers; writing them is
    // what taking an exception to EL1 would do.
    unsafe {
        asm!(
            "msr esr_el1, {esr}",
            "msr far_el1, {far}",
            "msr elr_el1, {elr}",
            "msr spsr_el1, {spsr}",
            esr = in(reg) esr,
            far = in(reg) far,
            elr = in(reg) elr,
            spsr = in(reg) spsr,
            options(nomem, nostack, preserves_flags)
        );
    }
}

macro_rules! el1_registers {
    ($($field:ident => $register:literal),* $(,)?) => {
        /// Copies the running vCPU's EL1 registers into `context`.
        pub fn save_el1(context: &mut El1Context) {
            $(
                // SAFETY: reading an EL1 system register from EL2 has no side effects.
                unsafe { asm!(concat!("mrs {}, ", $register), out(reg) context.$field, options(nomem, nostack, preserves_flags)) };
            )*
        }

        /// Loads `context` into the EL1 registers, for the vCPU about to run.
        pub fn restore_el1(context: &El1Context) {
            $(
                // SAFETY: EL1 registers only affect the guest, which is not running.
                unsafe { asm!(concat!("msr ", $register, ", {}"), in(reg) context.$field, options(nomem, nostack, preserves_flags)) };
            )*
            // SAFETY: a barrier has no memory-safety effect.
            unsafe { asm!("isb", options(nomem, nostack, preserves_flags)) };
        }
    };
}

el1_registers! {
    sctlr => "sctlr_el1",
    actlr => "actlr_el1",
    cpacr => "cpacr_el1",
    ttbr0 => "ttbr0_el1",
    ttbr1 => "ttbr1_el1",
    tcr => "tcr_el1",
    mair => "mair_el1",
    amair => "amair_el1",
    vbar => "vbar_el1",
    contextidr => "contextidr_el1",
    tpidr_el0 => "tpidr_el0",
    tpidrro_el0 => "tpidrro_el0",
    tpidr_el1 => "tpidr_el1",
    sp_el0 => "sp_el0",
    sp_el1 => "sp_el1",
    elr => "elr_el1",
    spsr => "spsr_el1",
    esr => "esr_el1",
    far => "far_el1",
    afsr0 => "afsr0_el1",
    afsr1 => "afsr1_el1",
    par => "par_el1",
    csselr => "csselr_el1",
    cntkctl => "cntkctl_el1",
    cntv_ctl => "cntv_ctl_el0",
    cntv_cval => "cntv_cval_el0",
    mdscr => "mdscr_el1",
}

/// Makes stage-2 table writes visible to every CPU's table walker (the
/// `publish` step of `TlbMaintenance`).
pub fn publish_table_writes() {
    // SAFETY: a barrier has no memory-safety effect.
    unsafe { asm!("dsb ishst", options(nostack, preserves_flags)) };
}

/// Above this many pages one whole-VMID invalidation is cheaper than one
/// by IPA per page (and it covers a block cached as smaller entries).
const INVALIDATE_BY_IPA_PAGES: u64 = 16;

/// Drops every cached translation of guest-physical `[input, input + span)`
/// for VMID `vmid` (whose stage-2 root is `root`) on every CPU of the
/// inner-shareable domain, and waits for that to complete. The stage-2
/// entry must already be invalid and published.
///
/// TLBI by IPA works on the VMID in VTTBR_EL2, so when another VM is loaded
/// on this CPU, `vmid` is loaded for the duration and the other restored.
/// An IPA-based TLBI does not reach combined stage 1+2 entries, so a
/// stage-1 invalidation of the VMID follows it.
pub fn invalidate_guest_translations(vmid: u8, root: PhysAddr, input: u64, span: u64) {
    const PAGE: u64 = 4096;
    let target = (u64::from(vmid) << 48) | root.0;
    let loaded: u64;
    // SAFETY: reading VTTBR_EL2 has no side effects.
    unsafe { asm!("mrs {}, vttbr_el2", out(reg) loaded, options(nomem, nostack, preserves_flags)) };
    let switch = loaded != target;
    if switch {
        // SAFETY: VTTBR_EL2 only selects guest translation; EL2 runs on
        // its own tables, and no guest runs on this CPU until it returns.
        unsafe {
            asm!("msr vttbr_el2, {}", "isb", in(reg) target, options(nostack, preserves_flags));
        }
    }
    if span / PAGE <= INVALIDATE_BY_IPA_PAGES {
        let mut page = input;
        while page < input + span {
            // SAFETY: TLB invalidation has no effect on memory contents.
            unsafe {
                asm!("tlbi ipas2e1is, {}", in(reg) page >> 12, options(nostack, preserves_flags));
            }
            page += PAGE;
        }
        // SAFETY: as above.
        unsafe {
            asm!(
                "dsb ish",
                "tlbi vmalle1is",
                "dsb ish",
                "isb",
                options(nostack, preserves_flags)
            );
        }
    } else {
        // SAFETY: as above.
        unsafe {
            asm!(
                "tlbi vmalls12e1is",
                "dsb ish",
                "isb",
                options(nostack, preserves_flags)
            );
        }
    }
    if switch {
        // SAFETY: restores the VM that was loaded, as above.
        unsafe {
            asm!("msr vttbr_el2, {}", "isb", in(reg) loaded, options(nostack, preserves_flags));
        }
    }
}
