//! The real processor interface, for guests running at EL1 (with the MMU
//! off, or on with an identity map: `crate::mmu`).

use core::arch::{asm, global_asm};
use core::mem::offset_of;
use core::ops::Range;
use core::sync::atomic::{AtomicU64, Ordering};

use super::{ProbeOutcome, ProbeSites, SCTLR_CLEAR_ON_ENABLE, TranslationRegisters, UART_BASE};

// PL011 register offsets: PL011 TRM, section 3.2.
const UART_DATA: usize = 0x00;
const UART_FLAGS: usize = 0x18;
/// FR.TXFF: the transmit FIFO is full.
const UART_FLAGS_TX_FULL: u32 = 1 << 5;

/// Issues `hvc #0` with the SMC Calling Convention: function ID in w0,
/// arguments in x1..x3, result in x0. x4..x17 are treated as clobbered,
/// as SMCCC 1.0 allows.
pub fn hvc(function: u32, arg1: u64, arg2: u64, arg3: u64) -> u64 {
    let result: u64;
    // SAFETY: an HVC traps to the hypervisor (or, natively, to QEMU's PSCI),
    // which follows SMCCC: it changes only the registers declared here and
    // does not touch this guest's memory except as the call documents (none
    // of the calls made through this function write guest memory).
    unsafe {
        asm!(
            "hvc #0",
            inout("x0") u64::from(function) => result,
            inout("x1") arg1 => _,
            inout("x2") arg2 => _,
            inout("x3") arg3 => _,
            out("x4") _, out("x5") _, out("x6") _, out("x7") _,
            out("x8") _, out("x9") _, out("x10") _, out("x11") _,
            out("x12") _, out("x13") _, out("x14") _, out("x15") _,
            out("x16") _, out("x17") _,
            options(nostack),
        );
    }
    result
}

/// Waits until the PL011's transmit FIFO has room, then writes `byte`.
pub fn console_write_byte(byte: u8) {
    let flags = (UART_BASE + UART_FLAGS) as *const u32;
    let data = (UART_BASE + UART_DATA) as *mut u32;
    // SAFETY: the PL011 is mapped at UART_BASE in every guest (guest
    // interface) and natively on QEMU virt; FR is a read-only register
    // without side effects.
    while unsafe { flags.read_volatile() } & UART_FLAGS_TX_FULL != 0 {
        core::hint::spin_loop();
    }
    // SAFETY: as above; writing DR queues one character.
    unsafe { data.write_volatile(u32::from(byte)) };
}

/// MPIDR_EL1 (under Tessera, the VMPIDR the hypervisor set: Aff0 = vCPU index).
pub fn mpidr() -> u64 {
    let value: u64;
    // SAFETY: reading MPIDR_EL1 at EL1 has no side effects.
    unsafe { asm!("mrs {}, mpidr_el1", out(reg) value, options(nomem, nostack, preserves_flags)) };
    value
}

/// ID_AA64ISAR0_EL1: the instruction-set features (FEAT_LSE in Atomic,
/// bits 23:20).
pub fn instruction_set_features() -> u64 {
    let value: u64;
    // SAFETY: reading an ID register at EL1 has no side effects.
    unsafe {
        asm!("mrs {}, id_aa64isar0_el1", out(reg) value, options(nomem, nostack, preserves_flags))
    };
    value
}

/// CNTVCT_EL0, after an ISB so the read is not hoisted above earlier code.
pub fn counter() -> u64 {
    let value: u64;
    // SAFETY: reading the virtual counter has no side effects; EL1 may always
    // read it.
    unsafe {
        asm!("isb", "mrs {}, cntvct_el0", out(reg) value, options(nomem, nostack, preserves_flags));
    }
    value
}

/// CNTPCT_EL0, after an ISB: the physical counter, which no hypervisor
/// offset applies to (Tessera lets EL1 read it without a trap).
pub fn physical_counter() -> u64 {
    let value: u64;
    // SAFETY: reading the physical counter has no side effects; Tessera sets
    // CNTHCTL_EL2.EL1PCTEN and natively EL1 may read it.
    unsafe {
        asm!("isb", "mrs {}, cntpct_el0", out(reg) value, options(nomem, nostack, preserves_flags));
    }
    value
}

/// Virtual-counter ticks from one read of the counter to the next, with
/// nothing between them but the ISB that orders the second read: the
/// overhead that [`ticks_around_read32`] includes besides its load.
pub fn ticks_around_nothing() -> u64 {
    let (start, end): (u64, u64);
    // SAFETY: two counter reads; nothing else is touched.
    unsafe {
        asm!(
            "isb",
            "mrs {start}, cntvct_el0",
            "isb",
            "mrs {end}, cntvct_el0",
            start = out(reg) start,
            end = out(reg) end,
            options(nomem, nostack, preserves_flags),
        );
    }
    end.wrapping_sub(start)
}

/// Virtual-counter ticks around one 32-bit load (`ldr w`) from `address`:
/// the same sequence as [`ticks_around_nothing`] with the load between the
/// two reads.
///
/// # Safety
/// `address` must be 4-byte aligned and safe to read: RAM, or a device
/// register whose read has no side effects.
pub unsafe fn ticks_around_read32(address: usize) -> u64 {
    let (start, end): (u64, u64);
    // SAFETY: the caller vouches for the load; the counter reads have no side
    // effects.
    unsafe {
        asm!(
            "isb",
            "mrs {start}, cntvct_el0",
            "ldr {value:w}, [{address}]",
            "isb",
            "mrs {end}, cntvct_el0",
            start = out(reg) start,
            end = out(reg) end,
            value = out(reg) _,
            address = in(reg) address,
            options(readonly, nostack, preserves_flags),
        );
    }
    end.wrapping_sub(start)
}

/// CNTFRQ_EL0: counter ticks per second.
pub fn counter_frequency() -> u64 {
    let value: u64;
    // SAFETY: reading CNTFRQ_EL0 has no side effects.
    unsafe { asm!("mrs {}, cntfrq_el0", out(reg) value, options(nomem, nostack, preserves_flags)) };
    value
}

/// Stops this vCPU for good (it only wakes to go back to sleep).
pub fn park() -> ! {
    loop {
        // SAFETY: WFE only waits; it has no effect on memory or registers.
        unsafe { asm!("wfe", options(nomem, nostack, preserves_flags)) };
    }
}

/// Points VBAR_EL1 at `address`.
///
/// # Safety
/// From now on every exception on this vCPU is taken at `address`: the
/// caller must make sure that is what it wants (a valid vector table, or a
/// test that expects the hypervisor to stop the VM).
pub unsafe fn set_vector_base(address: u64) {
    // SAFETY: the caller vouches for the new vector base.
    unsafe { asm!("msr vbar_el1, {}", "isb", in(reg) address, options(nostack, preserves_flags)) };
}

// Stage-1 translation (`crate::mmu`): the registers, the cache and TLB
// maintenance around turning the MMU on, and the hand-over to vCPUs that
// start later.

/// The translation registers the first vCPU to turn its MMU on published,
/// where a vCPU started later finds them before its first store
/// (`tessera_enable_published_translation`, called by the secondary entry
/// code in `rt.rs`). `sctlr_set` is written last: 0 means nothing is
/// published. Aligned to a cache line, so one clean publishes all of it.
#[repr(C, align(64))]
struct PublishedTranslation {
    sctlr_set: AtomicU64,
    mair: AtomicU64,
    tcr: AtomicU64,
    ttbr0: AtomicU64,
}

static PUBLISHED_TRANSLATION: PublishedTranslation = PublishedTranslation {
    sctlr_set: AtomicU64::new(0),
    mair: AtomicU64::new(0),
    tcr: AtomicU64::new(0),
    ttbr0: AtomicU64::new(0),
};

// Turns this vCPU's MMU and caches on with the published registers, if
// any; returns at once otherwise. A leaf that uses only x0..x3 and reads no
// memory but the published block, so a vCPU can call it before it has
// written anything with its caches off (a store that went to memory past a
// cache line that still holds the address would be hidden once the cache
// is on). The published block was cleaned to memory, where a vCPU with its
// caches off reads.
global_asm!(
    r#"
    .section .text.tessera_translation, "ax"
    .balign 4
    .global tessera_enable_published_translation
tessera_enable_published_translation:
    adrp    x0, {published}
    add     x0, x0, :lo12:{published}
    ldr     x1, [x0, #{sctlr_set}]
    cbz     x1, 1f
    ldr     x2, [x0, #{mair}]
    msr     mair_el1, x2
    ldr     x2, [x0, #{tcr}]
    msr     tcr_el1, x2
    ldr     x2, [x0, #{ttbr0}]
    msr     ttbr0_el1, x2
    isb
    // No translation or instruction this vCPU cached before may count.
    tlbi    vmalle1
    ic      iallu
    dsb     ish
    isb
    mrs     x2, sctlr_el1
    bic     x2, x2, #{clear_alignment_check}
    bic     x2, x2, #{clear_write_implies_never_execute}
    orr     x2, x2, x1
    msr     sctlr_el1, x2
    isb
1:  ret
    "#,
    published = sym PUBLISHED_TRANSLATION,
    sctlr_set = const offset_of!(PublishedTranslation, sctlr_set),
    mair = const offset_of!(PublishedTranslation, mair),
    tcr = const offset_of!(PublishedTranslation, tcr),
    ttbr0 = const offset_of!(PublishedTranslation, ttbr0),
    clear_alignment_check = const SCTLR_CLEAR_ON_ENABLE[0],
    clear_write_implies_never_execute = const SCTLR_CLEAR_ON_ENABLE[1],
);

/// Publishes `registers` for the vCPUs that turn their MMU on later, and
/// cleans them to the point of coherency, where a vCPU with its caches off
/// reads them.
pub fn publish_translation(registers: TranslationRegisters) {
    let published = &PUBLISHED_TRANSLATION;
    published.mair.store(registers.mair, Ordering::Relaxed);
    published.tcr.store(registers.tcr, Ordering::Relaxed);
    published.ttbr0.store(registers.ttbr0, Ordering::Relaxed);
    published
        .sctlr_set
        .store(registers.sctlr_set, Ordering::Release);
    let start = core::ptr::from_ref(published) as u64;
    clean_data_cache(start..start + size_of::<PublishedTranslation>() as u64);
}

/// What [`publish_translation`] published, if anything.
pub fn published_translation() -> Option<TranslationRegisters> {
    let published = &PUBLISHED_TRANSLATION;
    let sctlr_set = published.sctlr_set.load(Ordering::Acquire);
    (sctlr_set != 0).then(|| TranslationRegisters {
        mair: published.mair.load(Ordering::Relaxed),
        tcr: published.tcr.load(Ordering::Relaxed),
        ttbr0: published.ttbr0.load(Ordering::Relaxed),
        sctlr_set,
    })
}

/// Turns this vCPU's MMU and caches on with the published registers; does
/// nothing if none are published.
///
/// # Safety
/// The published tables must map everything this program touches from here
/// on (its code, data and stacks at their own addresses), and memory this
/// vCPU wrote with its caches off must not be hidden by stale cache lines.
pub unsafe fn enable_published_translation() {
    // SAFETY: the routine above changes only x0..x3 (caller-saved) and the
    // translation state, which the caller vouches for.
    unsafe { tessera_enable_published_translation() };
}

/// SCTLR_EL1.
pub fn system_control() -> u64 {
    let value: u64;
    // SAFETY: reading SCTLR_EL1 has no side effects.
    unsafe { asm!("mrs {}, sctlr_el1", out(reg) value, options(nomem, nostack, preserves_flags)) };
    value
}

/// ID_AA64MMFR0_EL1.PARange: the physical address size this CPU supports.
pub fn physical_address_range() -> u64 {
    let value: u64;
    // SAFETY: reading an ID register has no side effects (a hypervisor that
    // traps it answers the read).
    unsafe {
        asm!("mrs {}, id_aa64mmfr0_el1", out(reg) value, options(nomem, nostack, preserves_flags))
    };
    value & 0xF
}

/// The smallest data cache line size (CTR_EL0.DminLine, log2 of words).
fn data_cache_line_size() -> u64 {
    let value: u64;
    // SAFETY: reading CTR_EL0 has no side effects.
    unsafe { asm!("mrs {}, ctr_el0", out(reg) value, options(nomem, nostack, preserves_flags)) };
    4 << ((value >> 16) & 0xF)
}

/// Cleans the data cache lines of `range` to the point of coherency, then
/// waits for that with a DSB.
pub fn clean_data_cache(range: Range<u64>) {
    let line = data_cache_line_size();
    let mut address = range.start & !(line - 1);
    while address < range.end {
        // SAFETY: a clean writes dirty data back and changes nothing the
        // program sees.
        unsafe { asm!("dc cvac, {}", in(reg) address, options(nostack, preserves_flags)) };
        address += line;
    }
    // SAFETY: a barrier only orders accesses.
    unsafe { asm!("dsb sy", options(nostack, preserves_flags)) };
}

/// Invalidates the data cache lines of `range` (under a hypervisor, which
/// sets HCR_EL2.VM, a clean and invalidate), then waits for that with a DSB.
///
/// # Safety
/// No data of `range` may exist only in a cache: the range was written with
/// this vCPU's caches off and nobody wrote it with caches on.
pub unsafe fn invalidate_data_cache(range: Range<u64>) {
    let line = data_cache_line_size();
    let mut address = range.start & !(line - 1);
    while address < range.end {
        // SAFETY: the caller vouches that memory holds the range's data.
        unsafe { asm!("dc ivac, {}", in(reg) address, options(nostack, preserves_flags)) };
        address += line;
    }
    // SAFETY: a barrier only orders accesses.
    unsafe { asm!("dsb sy", options(nostack, preserves_flags)) };
}

/// Makes descriptors just written (invalid ones made valid) visible to the
/// table walks of every vCPU, and to this vCPU's next instruction. Entries
/// that were invalid are never held by a TLB, so no invalidation is needed.
pub fn translation_tables_written() {
    // SAFETY: barriers only order accesses.
    unsafe { asm!("dsb ishst", "isb", options(nostack, preserves_flags)) };
}

/// Invalidates every EL1&0 translation of this VM on every vCPU (TLBI
/// VMALLE1IS), after making earlier table writes visible.
pub fn invalidate_translations() {
    // SAFETY: dropping cached translations changes no memory; the tables
    // are walked again as needed.
    unsafe {
        asm!(
            "dsb ishst",
            "tlbi vmalle1is",
            "dsb ish",
            "isb",
            options(nostack, preserves_flags)
        )
    };
}

/// AT S1E1R: translates `address` as an EL1 read through the current
/// stage-1 tables; returns PAR_EL1.
pub fn translate_read(address: u64) -> u64 {
    let value: u64;
    // SAFETY: an address translation instruction only writes PAR_EL1.
    unsafe {
        asm!("at s1e1r, {address}", "isb", "mrs {value}, par_el1", address = in(reg) address,
             value = out(reg) value, options(nomem, nostack, preserves_flags))
    };
    value
}

// Accesses a compiler for a strict-align target never emits for an
// unaligned address: one `ldr`/`str` or `ldp`/`stp`, whatever the
// alignment.

/// One 64-bit load (`ldr x`) from `address`, aligned or not.
///
/// # Safety
/// The 8 bytes at `address` must be readable; unaligned, they must be
/// Normal memory (a Device access faults).
pub unsafe fn load_u64_unaligned(address: usize) -> u64 {
    let value: u64;
    // SAFETY: the caller vouches for the load.
    unsafe {
        asm!("ldr {value}, [{address}]", value = out(reg) value, address = in(reg) address,
             options(readonly, nostack, preserves_flags));
    }
    value
}

/// One 64-bit store (`str x`) to `address`, aligned or not.
///
/// # Safety
/// As [`load_u64_unaligned`], and the store must be what the caller means.
pub unsafe fn store_u64_unaligned(address: usize, value: u64) {
    // SAFETY: the caller vouches for the store.
    unsafe {
        asm!("str {value}, [{address}]", value = in(reg) value, address = in(reg) address,
             options(nostack, preserves_flags));
    }
}

/// One load pair (`ldp x, x`) of the 16 bytes at `address`.
///
/// # Safety
/// As [`load_u64_unaligned`], for 16 bytes.
pub unsafe fn load_pair_u64(address: usize) -> (u64, u64) {
    let (first, second): (u64, u64);
    // SAFETY: the caller vouches for the load.
    unsafe {
        asm!("ldp {first}, {second}, [{address}]", first = out(reg) first,
             second = out(reg) second, address = in(reg) address,
             options(readonly, nostack, preserves_flags));
    }
    (first, second)
}

/// One store pair (`stp x, x`) of `first` then `second` to the 16 bytes at
/// `address`.
///
/// # Safety
/// As [`store_u64_unaligned`], for 16 bytes.
pub unsafe fn store_pair_u64(address: usize, first: u64, second: u64) {
    // SAFETY: the caller vouches for the store.
    unsafe {
        asm!("stp {first}, {second}, [{address}]", first = in(reg) first,
             second = in(reg) second, address = in(reg) address,
             options(nostack, preserves_flags));
    }
}

unsafe extern "C" {
    fn tessera_probe_read(address: u64, outcome: *mut ProbeOutcome);
    fn tessera_probe_write(address: u64, outcome: *mut ProbeOutcome, value: u64);
    /// The load in `tessera_probe_read` (only its address is used).
    fn tessera_probe_read_access();
    /// The store in `tessera_probe_write` (only its address is used).
    fn tessera_probe_write_access();
    fn tessera_probe_read32(address: u64, outcome: *mut ProbeOutcome);
    fn tessera_probe_write32(address: u64, outcome: *mut ProbeOutcome, value: u64);
    /// The 32-bit load in `tessera_probe_read32` (only its address is used).
    fn tessera_probe_read32_access();
    /// The 32-bit store in `tessera_probe_write32` (only its address is used).
    fn tessera_probe_write32_access();
    fn tessera_probe_write8(address: u64, outcome: *mut ProbeOutcome, value: u64);
    /// The byte store in `tessera_probe_write8` (only its address is used).
    fn tessera_probe_write8_access();
    fn tessera_probe_load_exclusive(address: u64, outcome: *mut ProbeOutcome);
    /// The LDXR in `tessera_probe_load_exclusive` (only its address is used).
    fn tessera_probe_load_exclusive_access();
    fn tessera_probe_atomic_add(address: u64, outcome: *mut ProbeOutcome, value: u64);
    /// The LDADD in `tessera_probe_atomic_add` (only its address is used).
    fn tessera_probe_atomic_add_access();
    /// The PSCI CPU_ON entry point, in `rt.rs` (only its address is used).
    fn tessera_secondary_entry();
    /// Defined above.
    fn tessera_enable_published_translation();
    static __guest_image_start: u8;
    static __guest_image_end: u8;
}

// The probe accessors. One load or store each, at a known address, and the
// exception handler's promise: if exactly that instruction takes a data
// abort, it writes ESR_EL1 to x2 and FAR_EL1 to x3 and resumes after it.
// Every other register comes back as it was.
global_asm!(
    r#"
    .section .text.tessera_probe, "ax"
    .balign 4
    .global tessera_probe_read
tessera_probe_read:                 // x0 = address, x1 = outcome
    mov     x2, #0                  // ESR: stays 0 unless the load aborts
    mov     x3, #0                  // FAR
    mov     x4, #0                  // the value of an aborted read
    .global tessera_probe_read_access
tessera_probe_read_access:
    ldr     x4, [x0]
    str     x4, [x1, #{value}]
    str     x2, [x1, #{esr}]
    str     x3, [x1, #{far}]
    ret

    .global tessera_probe_write
tessera_probe_write:                // x0 = address, x1 = outcome, x2 = value
    mov     x4, x2
    mov     x2, #0
    mov     x3, #0
    .global tessera_probe_write_access
tessera_probe_write_access:
    str     x4, [x0]
    str     xzr, [x1, #{value}]
    str     x2, [x1, #{esr}]
    str     x3, [x1, #{far}]
    ret

    .global tessera_probe_read32
tessera_probe_read32:               // as tessera_probe_read, 32 bits
    mov     x2, #0
    mov     x3, #0
    mov     x4, #0
    .global tessera_probe_read32_access
tessera_probe_read32_access:
    ldr     w4, [x0]
    str     x4, [x1, #{value}]
    str     x2, [x1, #{esr}]
    str     x3, [x1, #{far}]
    ret

    .global tessera_probe_write32
tessera_probe_write32:              // as tessera_probe_write, 32 bits
    mov     x4, x2
    mov     x2, #0
    mov     x3, #0
    .global tessera_probe_write32_access
tessera_probe_write32_access:
    str     w4, [x0]
    str     xzr, [x1, #{value}]
    str     x2, [x1, #{esr}]
    str     x3, [x1, #{far}]
    ret

    .global tessera_probe_write8
tessera_probe_write8:               // as tessera_probe_write, one byte
    mov     x4, x2
    mov     x2, #0
    mov     x3, #0
    .global tessera_probe_write8_access
tessera_probe_write8_access:
    strb    w4, [x0]
    str     xzr, [x1, #{value}]
    str     x2, [x1, #{esr}]
    str     x3, [x1, #{far}]
    ret

    .global tessera_probe_load_exclusive
tessera_probe_load_exclusive:       // as tessera_probe_read, exclusive
    mov     x2, #0
    mov     x3, #0
    mov     x4, #0
    .global tessera_probe_load_exclusive_access
tessera_probe_load_exclusive_access:
    ldxr    x4, [x0]
    clrex
    str     x4, [x1, #{value}]
    str     x2, [x1, #{esr}]
    str     x3, [x1, #{far}]
    ret

    // FEAT_LSE: only for a CPU that has it (an UNDEFINED instruction
    // otherwise, which no probe recovers from).
    .arch_extension lse
    .global tessera_probe_atomic_add
tessera_probe_atomic_add:           // x0 = address, x1 = outcome, x2 = value
    mov     x5, x2
    mov     x2, #0
    mov     x3, #0
    mov     x4, #0
    .global tessera_probe_atomic_add_access
tessera_probe_atomic_add_access:
    ldadd   x5, x4, [x0]
    str     x4, [x1, #{value}]
    str     x2, [x1, #{esr}]
    str     x3, [x1, #{far}]
    ret
    "#,
    value = const offset_of!(ProbeOutcome, value),
    esr = const offset_of!(ProbeOutcome, esr),
    far = const offset_of!(ProbeOutcome, far),
);

/// A 64-bit load from `address` that survives a data abort.
pub fn probe_read(address: u64) -> ProbeOutcome {
    let mut outcome = ProbeOutcome::default();
    // SAFETY: the accessor loads from `address` through a raw register, which
    // cannot invalidate any Rust reference, and writes only `outcome`. If the
    // load aborts, the exception handler resumes it (see above).
    unsafe { tessera_probe_read(address, &raw mut outcome) };
    outcome
}

/// A 64-bit store of `value` to `address` that survives a data abort.
///
/// # Safety
/// `address` must not be memory this program uses (or any 8 bytes the
/// store would change must be fine to change).
pub unsafe fn probe_write(address: u64, value: u64) -> ProbeOutcome {
    let mut outcome = ProbeOutcome::default();
    // SAFETY: the caller vouches for the store; the accessor writes nothing
    // else but `outcome`, and an abort is resumed by the exception handler.
    unsafe { tessera_probe_write(address, &raw mut outcome, value) };
    outcome
}

/// A 32-bit load from `address` that survives a data abort.
pub fn probe_read32(address: u64) -> ProbeOutcome {
    let mut outcome = ProbeOutcome::default();
    // SAFETY: as `probe_read`, with a 32-bit load.
    unsafe { tessera_probe_read32(address, &raw mut outcome) };
    outcome
}

/// A 32-bit store of `value` to `address` that survives a data abort.
///
/// # Safety
/// As [`probe_write`], for the 4 bytes at `address`.
pub unsafe fn probe_write32(address: u64, value: u32) -> ProbeOutcome {
    let mut outcome = ProbeOutcome::default();
    // SAFETY: the caller vouches for the store; as `probe_write` otherwise.
    unsafe { tessera_probe_write32(address, &raw mut outcome, u64::from(value)) };
    outcome
}

/// A byte store of `value` to `address` that survives a data abort.
///
/// # Safety
/// As [`probe_write`], for the byte at `address`.
pub unsafe fn probe_write8(address: u64, value: u8) -> ProbeOutcome {
    let mut outcome = ProbeOutcome::default();
    // SAFETY: the caller vouches for the store; as `probe_write` otherwise.
    unsafe { tessera_probe_write8(address, &raw mut outcome, u64::from(value)) };
    outcome
}

/// A 64-bit load-exclusive (LDXR) from `address` that survives a data
/// abort; the exclusive monitor is cleared after it.
pub fn probe_load_exclusive(address: u64) -> ProbeOutcome {
    let mut outcome = ProbeOutcome::default();
    // SAFETY: as `probe_read`, with an exclusive load (and CLREX).
    unsafe { tessera_probe_load_exclusive(address, &raw mut outcome) };
    outcome
}

/// A 64-bit atomic add (LDADD, FEAT_LSE) of `value` at `address` that
/// survives a data abort; the old value.
///
/// # Safety
/// As [`probe_write`]; and the CPU must have FEAT_LSE
/// (ID_AA64ISAR0_EL1.Atomic), or the instruction is undefined.
pub unsafe fn probe_atomic_add(address: u64, value: u64) -> ProbeOutcome {
    let mut outcome = ProbeOutcome::default();
    // SAFETY: the caller vouches for the access and the CPU feature; as
    // `probe_write` otherwise.
    unsafe { tessera_probe_atomic_add(address, &raw mut outcome, value) };
    outcome
}

pub fn probe_sites() -> ProbeSites {
    ProbeSites {
        read: tessera_probe_read_access as *const () as u64,
        write: tessera_probe_write_access as *const () as u64,
        read32: tessera_probe_read32_access as *const () as u64,
        write32: tessera_probe_write32_access as *const () as u64,
        write8: tessera_probe_write8_access as *const () as u64,
        load_exclusive: tessera_probe_load_exclusive_access as *const () as u64,
        atomic_add: tessera_probe_atomic_add_access as *const () as u64,
    }
}

/// Where PSCI CPU_ON should start secondary vCPUs (MMU off, or on with an
/// identity map: the physical address is the link address).
pub fn secondary_entry_address() -> u64 {
    tessera_secondary_entry as *const () as u64
}

/// The memory the image occupies from its first byte to the end of its BSS
/// (stacks included).
pub fn image_range() -> Range<u64> {
    (&raw const __guest_image_start) as u64..(&raw const __guest_image_end) as u64
}

// Device registers. Each access is one `ldr`/`str` with a plain base
// register, written out in assembly: a volatile pointer access lets the
// compiler pick post-indexed or paired forms in a loop, which carry no
// syndrome a hypervisor can emulate (it answers them with an external
// abort, docs/guest-interface.md).

/// One 32-bit load from a device register.
///
/// # Safety
/// `address` must be 4-byte aligned and a device register (or RAM) this
/// guest may read; a read with side effects is the caller's business.
pub unsafe fn mmio_read32(address: usize) -> u32 {
    let value: u32;
    // SAFETY: the caller vouches for the address; the load touches nothing else.
    unsafe {
        asm!("ldr {value:w}, [{address}]", value = out(reg) value, address = in(reg) address,
             options(nostack, preserves_flags));
    }
    value
}

/// One 32-bit store to a device register.
///
/// # Safety
/// `address` must be 4-byte aligned and a device register this guest may
/// write, where the write does what the caller intends.
pub unsafe fn mmio_write32(address: usize, value: u32) {
    // SAFETY: the caller vouches for the address and the effect of the store.
    unsafe {
        asm!("str {value:w}, [{address}]", value = in(reg) value, address = in(reg) address,
             options(nostack, preserves_flags));
    }
}

/// One 8-bit store to a device register.
///
/// # Safety
/// As [`mmio_write32`], for a byte-accessible register.
pub unsafe fn mmio_write8(address: usize, value: u8) {
    // SAFETY: the caller vouches for the address and the effect of the store.
    unsafe {
        asm!("strb {value:w}, [{address}]", value = in(reg) u32::from(value), address = in(reg) address,
             options(nostack, preserves_flags));
    }
}

/// One 64-bit store to a device register.
///
/// # Safety
/// As [`mmio_write32`], 8-byte aligned, for a register that takes 64-bit
/// accesses.
pub unsafe fn mmio_write64(address: usize, value: u64) {
    // SAFETY: the caller vouches for the address and the effect of the store.
    unsafe {
        asm!("str {value}, [{address}]", value = in(reg) value, address = in(reg) address,
             options(nostack, preserves_flags));
    }
}

/// Defines a reader of a system register the guest owns at EL1 (the GIC
/// CPU interface, the generic timers).
macro_rules! read_system_register {
    ($read:ident, $name:literal) => {
        #[doc = concat!("Reads ", $name, ".")]
        pub fn $read() -> u64 {
            let value: u64;
            // SAFETY: reading this register at EL1 has no side effects on
            // memory; the ones with side effects on the GIC (the IARs) are
            // read through their own functions.
            unsafe { asm!(concat!("mrs {}, ", $name), out(reg) value, options(nomem, nostack, preserves_flags)) };
            value
        }
    };
}

/// Defines a writer of such a register. It ends with an ISB, so the effect
/// is in place when it returns (a timer's new deadline, a new priority
/// mask).
macro_rules! write_system_register {
    ($write:ident, $name:literal) => {
        #[doc = concat!("Writes ", $name, ", then an ISB.")]
        pub fn $write(value: u64) {
            // SAFETY: the register belongs to this vCPU's EL1 state (its
            // GIC CPU interface or timers); writing it changes no memory.
            unsafe { asm!(concat!("msr ", $name, ", {}"), "isb", in(reg) value, options(nostack, preserves_flags)) };
        }
    };
}

read_system_register!(icc_sre_read, "icc_sre_el1");
write_system_register!(icc_sre_write, "icc_sre_el1");
write_system_register!(icc_pmr_write, "icc_pmr_el1");
write_system_register!(icc_bpr1_write, "icc_bpr1_el1");
read_system_register!(icc_ctlr_read, "icc_ctlr_el1");
write_system_register!(icc_ctlr_write, "icc_ctlr_el1");
write_system_register!(icc_igrpen1_write, "icc_igrpen1_el1");
read_system_register!(cntv_ctl_read, "cntv_ctl_el0");
write_system_register!(cntv_ctl_write, "cntv_ctl_el0");
read_system_register!(cntv_cval_read, "cntv_cval_el0");
write_system_register!(cntv_cval_write, "cntv_cval_el0");
read_system_register!(cntp_ctl_read, "cntp_ctl_el0");
write_system_register!(cntp_ctl_write, "cntp_ctl_el0");
read_system_register!(cntp_cval_read, "cntp_cval_el0");
write_system_register!(cntp_cval_write, "cntp_cval_el0");

/// Reads ICC_IAR1_EL1: acknowledges the highest-priority pending Group 1
/// interrupt (it becomes active).
pub fn icc_iar1_read() -> u64 {
    let value: u64;
    // SAFETY: acknowledging changes the GIC's state, not memory; the
    // dispatcher that calls this completes every acknowledged interrupt.
    unsafe {
        asm!("mrs {}, icc_iar1_el1", out(reg) value, options(nomem, nostack, preserves_flags))
    };
    value
}

/// Writes ICC_EOIR1_EL1 (priority drop, and deactivation in EOImode 0).
pub fn icc_eoir1_write(value: u64) {
    // SAFETY: changes the GIC's state only.
    unsafe {
        asm!("msr icc_eoir1_el1, {}", "isb", in(reg) value, options(nostack, preserves_flags))
    };
}

/// Writes ICC_DIR_EL1 (deactivation, for EOImode 1).
pub fn icc_dir_write(value: u64) {
    // SAFETY: changes the GIC's state only.
    unsafe { asm!("msr icc_dir_el1, {}", "isb", in(reg) value, options(nostack, preserves_flags)) };
}

/// Writes ICC_SGI1R_EL1 after a DSB, so that what this vCPU wrote before
/// is visible to the vCPUs the SGI reaches before their handlers run.
pub fn icc_sgi1r_write(value: u64) {
    // SAFETY: sends an SGI; changes no memory.
    unsafe {
        asm!("dsb sy", "msr icc_sgi1r_el1, {}", "isb", in(reg) value, options(nostack, preserves_flags))
    };
}

/// A full-system DSB: earlier memory accesses complete before later ones
/// (an SGI sent by a device-register write after it, for one).
pub fn data_barrier() {
    // SAFETY: a barrier only orders accesses.
    unsafe { asm!("dsb sy", options(nostack, preserves_flags)) };
}

/// `dmb ish`: this vCPU's memory accesses before it are observed by every
/// CPU of the inner shareable domain (all of them) before those after it.
/// Orders data accesses against each other; does not wait for them.
pub fn memory_barrier() {
    // SAFETY: a barrier only orders accesses. Not `nomem`: the compiler must
    // not move memory accesses across it either.
    unsafe { asm!("dmb ish", options(nostack, preserves_flags)) };
}

/// `dsb ish`: every memory access before it has completed (is visible to
/// every CPU of the inner shareable domain) before any instruction after it
/// executes, including one that traps to the hypervisor.
pub fn completion_barrier() {
    // SAFETY: a barrier only orders accesses; not `nomem`, as above.
    unsafe { asm!("dsb ish", options(nostack, preserves_flags)) };
}

/// DAIF.
pub fn daif() -> u64 {
    let value: u64;
    // SAFETY: reading DAIF has no side effects.
    unsafe { asm!("mrs {}, daif", out(reg) value, options(nomem, nostack, preserves_flags)) };
    value
}

/// Sets PSTATE.I: IRQs are no longer taken.
pub fn irq_mask() {
    // SAFETY: masking IRQs changes no memory. Not `nomem`: the compiler
    // must not move memory accesses out of the masked section.
    unsafe { asm!("msr daifset, #2", options(nostack, preserves_flags)) };
}

/// Clears PSTATE.I: pending IRQs are taken from here on.
/// Whether an IRQ handler of the SDK is running on this vCPU (the IRQ
/// path keeps TPIDR_EL1 non-zero meanwhile: the lazy FP/SIMD save's frame).
#[must_use]
pub fn in_irq_handler() -> bool {
    let value: u64;
    // SAFETY: reading TPIDR_EL1 has no side effects.
    unsafe {
        asm!("mrs {v}, tpidr_el1", v = out(reg) value, options(nomem, nostack, preserves_flags))
    };
    value != 0
}

pub fn irq_unmask() {
    // SAFETY: unmasking runs the SDK's IRQ handler, which saves and
    // restores everything it touches. Not `nomem`: memory the handler
    // writes must be re-read after this point.
    unsafe { asm!("msr daifclr, #2", "isb", options(nostack, preserves_flags)) };
}

/// Waits for an interrupt (or returns at once if one is pending, masked or
/// not).
pub fn wait_for_interrupt() {
    // SAFETY: WFI only waits. Not `nomem`: a handler may have written memory.
    unsafe { asm!("dsb sy", "wfi", options(nostack, preserves_flags)) };
}
