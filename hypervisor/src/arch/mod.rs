//! The aarch64 layer: every `asm!`, system-register access, barrier and
//! cache-maintenance operation of the hypervisor sits here behind safe
//! functions, so the rest of the code reads as ordinary Rust.

pub mod entry;
pub mod guest;
pub mod vectors;

use core::arch::asm;
use tessera_hypervisor::MAX_CPUS;

use aarch64_cpu::registers::{
    CNTFRQ_EL0, CurrentEL, DAIF, HCR_EL2, ID_AA64MMFR0_EL1, MPIDR_EL1, Readable, TPIDR_EL2,
    Writeable,
};
use tessera_hypervisor::memory::page_table::MAIR_EL2_VALUE;

/// The exception level the CPU is executing at.
pub fn current_exception_level() -> u64 {
    CurrentEL.read(CurrentEL::EL)
}

/// The raw MPIDR_EL1: for reports, and for what the board pairs with a
/// core by its affinity (its PMU SPI).
pub fn current_mpidr() -> u64 {
    MPIDR_EL1.get()
}

/// Records this CPU's logical index where `cpu_index` can find it.
pub fn set_cpu_index(index: usize) {
    assert!(index < MAX_CPUS, "CPU index {index} out of range");
    TPIDR_EL2.set(index as u64);
}

const _: () = assert!(MAX_CPUS.is_power_of_two());

/// The logical index of the CPU this runs on (0 is the boot CPU), always
/// below `MAX_CPUS`: `set_cpu_index` checks it, and the mask tells the
/// compiler so, which spares every per-CPU array lookup (one on each guest
/// exit) its bounds check.
pub fn cpu_index() -> usize {
    TPIDR_EL2.get() as usize & (MAX_CPUS - 1)
}

/// The generic timer frequency in Hz.
pub fn counter_frequency() -> u64 {
    CNTFRQ_EL0.get()
}

/// Routes physical IRQs, FIQs and SErrors to EL2 and makes EL1 AArch64.
/// Without IMO/FMO the GIC's interrupts would target EL1 and never be taken
/// while the CPU runs at EL2.
pub fn configure_hypervisor_traps() {
    HCR_EL2.write(
        HCR_EL2::RW::EL1IsAarch64
            + HCR_EL2::IMO::EnableVirtualIRQ
            + HCR_EL2::FMO::EnableVirtualFIQ
            + HCR_EL2::AMO::SET,
    );
}

/// Unmasks SErrors at EL2, so that an asynchronous abort caused by the
/// hypervisor is reported as its own (a crash report) instead of surfacing
/// at the next guest entry and being charged to that guest.
pub fn enable_system_errors() {
    // SAFETY: clearing PSTATE.A only lets SErrors be taken; the vectors are
    // installed before this is called.
    unsafe { asm!("msr daifclr, #4", options(nomem, nostack, preserves_flags)) };
}

/// Unmasks IRQs at EL2. `DAIFClr` changes the I bit alone, in one
/// instruction, where a read-modify-write of DAIF takes three at each of
/// the places this is inlined.
pub fn enable_interrupts() {
    // SAFETY: clearing PSTATE.I only lets IRQs be taken at EL2, which the
    // callers want; no memory or other state is touched.
    unsafe { core::arch::asm!("msr daifclr, #2", options(nostack, preserves_flags)) };
}

/// Masks IRQs at EL2 and returns whether they were unmasked before: one
/// read of DAIF, then `DAIFSet` to set the I bit alone (as in
/// [`enable_interrupts`]).
pub fn disable_interrupts() -> bool {
    let was_unmasked = !DAIF.is_set(DAIF::I);
    // SAFETY: setting PSTATE.I only keeps IRQs from being taken at EL2;
    // no memory or other state is touched.
    unsafe { core::arch::asm!("msr daifset, #2", options(nostack, preserves_flags)) };
    was_unmasked
}

/// Zeroes one 4 KiB-aligned page with 16-byte stores, 128 bytes a round:
/// about a fifth of the instructions of the generic `memset`, and safe
/// with the MMU off (aligned pairs are fine on Device memory, where DC ZVA
/// is not). Boot zeroes the EL2 page tables with it.
///
/// # Safety
/// `page` must be a 4 KiB-aligned page of RAM the caller owns.
pub unsafe fn zero_page(page: *mut u8) {
    let end = page as usize + 4096;
    // SAFETY: the caller owns the whole aligned page; the loop writes
    // exactly its 4096 bytes.
    unsafe {
        asm!(
            "1:",
            "stp xzr, xzr, [{address}]",
            "stp xzr, xzr, [{address}, #16]",
            "stp xzr, xzr, [{address}, #32]",
            "stp xzr, xzr, [{address}, #48]",
            "stp xzr, xzr, [{address}, #64]",
            "stp xzr, xzr, [{address}, #80]",
            "stp xzr, xzr, [{address}, #96]",
            "stp xzr, xzr, [{address}, #112]",
            "add {address}, {address}, #128",
            "cmp {address}, {end}",
            "b.lo 1b",
            address = inout(reg) page as usize => _,
            end = in(reg) end,
            options(nostack, preserves_flags)
        );
    }
}

/// Copies `length` bytes from `source` to `destination`, 32 bytes a round
/// with pairs of 64-bit loads and stores whatever either's alignment: EL2
/// runs with SCTLR_EL2.A clear (`SCTLR_EL2_VALUE`), so accesses to Normal
/// memory need no alignment, which the strict-align Rust target cannot
/// know. About a quarter of the instructions of a word copy between a
/// 4-byte-aligned package entry and 8-byte-aligned guest RAM (boot time).
/// The last `length % 32` bytes are left to the caller.
///
/// Returns how many bytes it copied.
///
/// # Safety
/// Both ranges must be Normal memory mapped at EL2, the destination the
/// caller's to write, and they must not overlap.
pub unsafe fn copy_blocks(destination: *mut u8, source: *const u8, length: usize) -> usize {
    let blocks = length & !31;
    if blocks == 0 {
        return 0;
    }
    // SAFETY: the caller vouches for both ranges; the loop touches exactly
    // their first `blocks` bytes.
    unsafe {
        asm!(
            "1:",
            "ldp {a}, {b}, [{source}], #16",
            "ldp {c}, {d}, [{source}], #16",
            "stp {a}, {b}, [{destination}], #16",
            "stp {c}, {d}, [{destination}], #16",
            "subs {left}, {left}, #32",
            "b.ne 1b",
            source = inout(reg) source => _,
            destination = inout(reg) destination => _,
            left = inout(reg) blocks => _,
            a = out(reg) _,
            b = out(reg) _,
            c = out(reg) _,
            d = out(reg) _,
            options(nostack)
        );
    }
    blocks
}

/// Makes earlier system-register writes take effect before what follows.
pub fn instruction_barrier() {
    // SAFETY: ISB only synchronises the instruction stream.
    unsafe { asm!("isb", options(nomem, nostack, preserves_flags)) };
}

/// Waits for an interrupt.
pub fn wait_for_interrupt() {
    // SAFETY: WFI only suspends execution until an interrupt or event.
    unsafe { asm!("wfi", options(nomem, nostack, preserves_flags)) };
}

/// Waits for an event (or interrupt).
pub fn wait_for_event() {
    // SAFETY: WFE only suspends execution until an event.
    unsafe { asm!("wfe", options(nomem, nostack, preserves_flags)) };
}

/// Wakes CPUs waiting in WFE, after making earlier stores visible.
pub fn send_event() {
    // SAFETY: DSB and SEV have no effect on memory safety.
    unsafe { asm!("dsb sy", "sev", options(nostack, preserves_flags)) };
}

/// Parks this CPU for good, with interrupts masked.
pub fn halt() -> ! {
    disable_interrupts();
    loop {
        wait_for_event();
    }
}

/// Programs the EL2 physical timer (CNTHP) to fire in `ticks` counter ticks
/// and enables it, unmasked.
pub fn start_hypervisor_timer(ticks: u64) {
    // SAFETY: writing the EL2 timer's compare value and control only affects
    // when the timer interrupt fires.
    unsafe {
        asm!(
            "msr cnthp_tval_el2, {ticks}",
            "msr cnthp_ctl_el2, {enable}",
            "isb",
            ticks = in(reg) ticks,
            enable = in(reg) 1u64,
            options(nomem, nostack, preserves_flags)
        );
    }
}

/// Cleans and invalidates the data cache lines covering `[start, start+len)`
/// to the point of coherency, so that a CPU running with its MMU and caches
/// off (a secondary CPU at entry, firmware polling the spin table) sees it.
pub fn clean_to_point_of_coherency(start: usize, length: usize) {
    let line = data_cache_line_bytes();
    let mut address = start & !(line - 1);
    while address < start + length {
        // SAFETY: DC CIVAC only writes back and invalidates a cache line; it
        // does not change memory contents as seen by this CPU.
        unsafe { asm!("dc civac, {}", in(reg) address, options(nostack, preserves_flags)) };
        address += line;
    }
    // SAFETY: a barrier has no memory-safety effect.
    unsafe { asm!("dsb sy", options(nostack, preserves_flags)) };
}

/// Discards the data and unified cache lines of `[start, start + length)`
/// to the point of coherency without writing them back (DC IVAC).
///
/// # Safety
/// Nothing in the lines may exist only in a cache: dirty data there is
/// lost. With the MMU off nothing this program wrote is cached, which is
/// where this is used.
pub unsafe fn invalidate_data_cache(start: usize, length: usize) {
    if length == 0 {
        return;
    }
    let line = data_cache_line_bytes();
    let end = start + length;
    let mut address = start & !(line - 1);
    // Four lines a round while four fit, so the loop costs little more
    // than the DCs; then line by line.
    while address + 4 * line <= end {
        // SAFETY: the caller vouches that dropping these lines loses
        // nothing; DC IVAC has no other effect.
        unsafe {
            asm!(
                "dc ivac, {a}",
                "add {a}, {a}, {line}",
                "dc ivac, {a}",
                "add {a}, {a}, {line}",
                "dc ivac, {a}",
                "add {a}, {a}, {line}",
                "dc ivac, {a}",
                "add {a}, {a}, {line}",
                a = inout(reg) address,
                line = in(reg) line,
                options(nostack, preserves_flags)
            );
        }
    }
    while address < end {
        // SAFETY: as above.
        unsafe { asm!("dc ivac, {}", in(reg) address, options(nostack, preserves_flags)) };
        address += line;
    }
    // SAFETY: a barrier has no memory-safety effect.
    unsafe { asm!("dsb sy", options(nostack, preserves_flags)) };
}

/// The smallest data cache line in the system (CTR_EL0.DminLine), the
/// stride for cache maintenance by address.
pub fn data_cache_line_bytes() -> usize {
    let ctr: u64;
    // SAFETY: reading CTR_EL0 has no side effects.
    unsafe { asm!("mrs {}, ctr_el0", out(reg) ctr, options(nomem, nostack, preserves_flags)) };
    4 << ((ctr >> 16) & 0xF)
}

/// SCTLR_EL2 with the MMU, data and instruction caches, stack alignment
/// checks and write-implies-execute-never on; the remaining bits are the
/// RES1 bits of the non-VHE layout.
pub const SCTLR_EL2_VALUE: u64 = {
    const RES1: u64 = (1 << 4)
        | (1 << 5)
        | (1 << 11)
        | (1 << 16)
        | (1 << 18)
        | (1 << 22)
        | (1 << 23)
        | (1 << 28)
        | (1 << 29);
    const M: u64 = 1 << 0;
    const C: u64 = 1 << 2;
    const SA: u64 = 1 << 3;
    const I: u64 = 1 << 12;
    const WXN: u64 = 1 << 19;
    RES1 | M | C | SA | I | WXN
};

/// TCR_EL2 for a 48-bit, 4 KiB-granule, write-back inner-shareable walk,
/// with the physical address size the CPU reports (capped at 48 bits).
pub fn tcr_el2_value() -> u64 {
    const T0SZ_48_BIT: u64 = 16;
    const IRGN0_WRITE_BACK: u64 = 0b01 << 8;
    const ORGN0_WRITE_BACK: u64 = 0b01 << 10;
    const SH0_INNER: u64 = 0b11 << 12;
    const RES1: u64 = (1 << 23) | (1 << 31);
    let physical_range = physical_address_range().min(0b101);
    T0SZ_48_BIT | IRGN0_WRITE_BACK | ORGN0_WRITE_BACK | SH0_INNER | (physical_range << 16) | RES1
}

/// ID_AA64MMFR0_EL1.PARange: the CPU's physical address size, encoded.
pub fn physical_address_range() -> u64 {
    ID_AA64MMFR0_EL1.read(ID_AA64MMFR0_EL1::PARange)
}

/// The MAIR_EL2 value matching the page-table attribute indices.
pub const fn mair_el2_value() -> u64 {
    MAIR_EL2_VALUE
}

/// Turns on the EL2 MMU with the given root table.
///
/// # Safety
/// `root` must be a complete identity map of everything this CPU touches
/// from here on (code, stack, data, devices), with the attribute indices of
/// `MAIR_EL2_VALUE`. The MMU must be off and `stack_top` the top of the
/// stack in use: its lines from SP up are discarded, so nothing there may
/// exist only in a cache (with the MMU off, nothing does).
pub unsafe fn enable_mmu(root: u64, stack_top: u64) {
    let tcr = tcr_el2_value();
    // SAFETY: the caller guarantees the tables identity-map all live memory,
    // so execution continues at the same addresses once translation is on.
    // The stack from SP up was written with the cache off: its lines are
    // discarded (see `memory::written_with_mmu_off`) in this same block, so
    // nothing is pushed between that and the MMU going on.
    unsafe {
        asm!(
            "mov {line_address}, sp",
            "sub {mask}, {line}, #1",
            "bic {line_address}, {line_address}, {mask}",
            "1:",
            "dc ivac, {line_address}",
            "add {line_address}, {line_address}, {line}",
            "cmp {line_address}, {stack_top}",
            "b.lo 1b",
            "dsb sy",
            "msr mair_el2, {mair}",
            "msr tcr_el2, {tcr}",
            "msr ttbr0_el2, {root}",
            "isb",
            "tlbi alle2",
            "dsb nsh",
            "isb",
            "msr sctlr_el2, {sctlr}",
            "isb",
            line_address = out(reg) _,
            mask = out(reg) _,
            line = in(reg) data_cache_line_bytes(),
            stack_top = in(reg) stack_top,
            mair = in(reg) MAIR_EL2_VALUE,
            tcr = in(reg) tcr,
            root = in(reg) root,
            sctlr = in(reg) SCTLR_EL2_VALUE,
            options(nostack)
        );
    }
}

/// Calls firmware through SMC with the SMC Calling Convention and returns x0.
pub fn smc_call(function: u32, arg1: u64, arg2: u64, arg3: u64) -> i64 {
    let result: i64;
    // SAFETY: an SMC to PSCI firmware only affects CPU power state as the
    // function asks; it does not touch this program's memory.
    unsafe {
        asm!(
            "smc #0",
            inout("x0") u64::from(function) => result,
            inout("x1") arg1 => _,
            inout("x2") arg2 => _,
            inout("x3") arg3 => _,
            options(nostack)
        );
    }
    result
}

/// Ends the QEMU run with `status` through the semihosting SYS_EXIT call.
#[cfg(feature = "semihosting")]
pub fn semihosting_exit(status: u32) -> ! {
    const SYS_EXIT: u64 = 0x18;
    const APPLICATION_EXIT: u64 = 0x2_0026;
    let block: [u64; 2] = [APPLICATION_EXIT, u64::from(status)];
    // SAFETY: `hlt #0xf000` is the semihosting trap; QEMU (run with
    // -semihosting) reads the two-word block and exits. Test builds only.
    unsafe {
        asm!("hlt #0xf000", in("x0") SYS_EXIT, in("x1") block.as_ptr(), options(nostack));
    }
    halt()
}

/// Zeroes `[start, start + length)` and cleans it to the point of
/// coherency, sixteen 64-byte blocks per iteration with DC ZVA and DC CIVAC.
/// For guest RAM, which the guest first reads with its caches off.
///
/// # Safety
/// The range must be normal, writable memory that nothing else uses, and
/// `start` and `length` multiples of 1024. Cores whose DC ZVA block or
/// smallest cache line is not 64 bytes take a slower, generic path.
pub unsafe fn zero_and_clean(start: usize, length: usize) {
    let dczid: u64;
    // SAFETY: reading DCZID_EL0 has no side effects.
    unsafe { asm!("mrs {}, dczid_el0", out(reg) dczid, options(nomem, nostack, preserves_flags)) };
    let zva_allowed = dczid & (1 << 4) == 0;
    let block_bytes = 4usize << (dczid & 0xF);
    // The unrolled loop steps by 64 bytes for both DC ZVA and DC CIVAC.
    if !zva_allowed || block_bytes != 64 || data_cache_line_bytes() != 64 {
        // SAFETY: the caller owns the range.
        unsafe { core::ptr::write_bytes(start as *mut u8, 0, length) };
        clean_to_point_of_coherency(start, length);
        return;
    }
    let end = start + length;
    // SAFETY: the caller owns the range and it is normal memory; DC ZVA and
    // DC CIVAC touch exactly the 64-byte blocks of the range.
    unsafe {
        asm!(
            "1:",
            "dc zva, {address}",
            "dc civac, {address}",
            "add {second}, {address}, #64",
            "dc zva, {second}",
            "dc civac, {second}",
            "add {second}, {address}, #128",
            "dc zva, {second}",
            "dc civac, {second}",
            "add {second}, {address}, #192",
            "dc zva, {second}",
            "dc civac, {second}",
            "add {second}, {address}, #256",
            "dc zva, {second}",
            "dc civac, {second}",
            "add {second}, {address}, #320",
            "dc zva, {second}",
            "dc civac, {second}",
            "add {second}, {address}, #384",
            "dc zva, {second}",
            "dc civac, {second}",
            "add {second}, {address}, #448",
            "dc zva, {second}",
            "dc civac, {second}",
            "add {second}, {address}, #512",
            "dc zva, {second}",
            "dc civac, {second}",
            "add {second}, {address}, #576",
            "dc zva, {second}",
            "dc civac, {second}",
            "add {second}, {address}, #640",
            "dc zva, {second}",
            "dc civac, {second}",
            "add {second}, {address}, #704",
            "dc zva, {second}",
            "dc civac, {second}",
            "add {second}, {address}, #768",
            "dc zva, {second}",
            "dc civac, {second}",
            "add {second}, {address}, #832",
            "dc zva, {second}",
            "dc civac, {second}",
            "add {second}, {address}, #896",
            "dc zva, {second}",
            "dc civac, {second}",
            "add {second}, {address}, #960",
            "dc zva, {second}",
            "dc civac, {second}",
            "add {address}, {address}, #1024",
            "cmp {address}, {end}",
            "b.lo 1b",
            "dsb sy",
            address = inout(reg) start => _,
            second = out(reg) _,
            end = in(reg) end,
            options(nostack)
        );
    }
}
