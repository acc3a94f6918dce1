//! The first instructions: the arm64 Image header, the boot CPU's entry and
//! the secondary CPUs' entry. Everything here runs with the MMU off.
//!
//! The boot CPU copies the data to its page, zeroes the BSS, takes the
//! first boot stack and calls `boot::primary_entry`, which checks the
//! exception level and load address before anything else. Secondary CPUs find their logical index by looking
//! their MPIDR up in `SECONDARY_BOOT` (written and cleaned to memory by the
//! boot CPU), turn on the MMU with the boot CPU's tables before touching
//! their stack, and call `boot::secondary_entry`.

use core::arch::global_asm;
use core::mem::offset_of;

use tessera_hypervisor::MAX_CPUS;

use crate::boot::board::BOARD;

/// Bytes of stack per CPU.
pub const STACK_SIZE: usize = 32 * 1024;

/// One stack per CPU, in the `.noinit` section, which boot does not zero:
/// only the assembly uses this memory, as raw stack space.
#[repr(C, align(4096))]
pub struct BootStacks(pub [[u8; STACK_SIZE]; MAX_CPUS]);

#[unsafe(no_mangle)]
#[unsafe(link_section = ".bss.stacks")]
pub static mut BOOT_STACKS: BootStacks = BootStacks([[0; STACK_SIZE]; MAX_CPUS]);

/// The top of CPU `cpu`'s boot stack (stacks grow down).
pub fn boot_stack_top(cpu: usize) -> u64 {
    (&raw const BOOT_STACKS) as u64 + ((cpu + 1) * STACK_SIZE) as u64
}

/// What a secondary CPU needs before it can run Rust: the CPU list (to find
/// its index) and the boot CPU's MMU settings. Written by the boot CPU and
/// cleaned to the point of coherency before any secondary starts.
#[repr(C)]
pub struct SecondaryBoot {
    pub affinities: [u64; MAX_CPUS],
    pub cpu_count: u64,
    pub mair: u64,
    pub tcr: u64,
    pub translation_table: u64,
    pub sctlr: u64,
}

#[unsafe(no_mangle)]
pub static mut SECONDARY_BOOT: SecondaryBoot = SecondaryBoot {
    affinities: [0; MAX_CPUS],
    cpu_count: 0,
    mair: 0,
    tcr: 0,
    translation_table: 0,
    sctlr: 0,
};

/// What [`DATA_COPY_PROOF`] holds once the data is in place: a value that
/// neither zeroed nor unwritten memory is likely to hold.
const DATA_COPY_MARK: u64 = 0x7465_7373_6572_6121;

/// A word of the data (its section is named so that it cannot move to the
/// read-only data) that proves the boot CPU's first instructions copied
/// the data from where the file carries it to its own page (see the
/// linker script). Only the entry assembly reads it.
#[unsafe(link_section = ".data.tessera_copy_proof")]
static mut DATA_COPY_PROOF: u64 = DATA_COPY_MARK;

/// The boot CPU's entry found no proof of the data copy: stop with a
/// message instead of running on stale memory.
extern "C" fn data_not_copied() -> ! {
    crate::boot::bring_up::early_message(
        "tessera: refusing to start: the image's data was not copied to its page\n",
    );
    crate::boot::power::fail_stop()
}

unsafe extern "C" {
    /// The secondary CPUs' entry point, handed to PSCI CPU_ON or the spin table.
    pub fn secondary_entry();
}

global_asm!(
    r#"
    .section .text.image_header, "ax"
    .global _start
_start:
    b       primary_entry_asm           // code0
    .word   0                           // code1
    .quad   {text_offset}               // text_offset
    .quad   __image_size                // image_size, BSS included
    .quad   0x2                         // flags: little-endian, 4 KiB pages, near RAM base
    .quad   0, 0, 0                     // reserved
    .word   0x644d5241                  // "ARM\x64"
    .word   0                           // reserved

    .section .text.boot, "ax"
primary_entry_asm:
    msr     daifset, #0xf
    mov     x19, x0                     // the device tree, from the boot loader
    // The data, from where the file carries it (just after the read-only
    // data) to its own page (linker script). The page is above, and the
    // two may overlap when the read-only data ends near a page boundary,
    // so the copy runs downwards, 16 bytes a round (16-aligned bounds).
    adrp    x1, __data_load_start
    add     x1, x1, :lo12:__data_load_start
    adrp    x2, __data_start
    add     x2, x2, :lo12:__data_start
    adrp    x3, __data_end
    add     x3, x3, :lo12:__data_end
    // First discard what the data cache holds for the data's page: these
    // stores go straight to memory (MMU and caches off), and a dirty line
    // that firmware or a boot loader left there could otherwise be
    // written back over them later. The loaded file, which the source may
    // share a line with, is clean to the point of coherency by the boot
    // protocol, so dropping its lines loses nothing.
    mrs     x4, ctr_el0
    ubfx    x4, x4, #16, #4             // DminLine: log2 of the line in words
    mov     x5, #4
    lsl     x5, x5, x4
    mov     x6, x2
7:  cmp     x6, x3
    b.hs    8f
    dc      ivac, x6
    add     x6, x6, x5
    b       7b
8:  dsb     sy
    sub     x4, x3, x2
    add     x1, x1, x4
    cmp     x3, x2
    b.ls    2f
1:  ldp     x4, x5, [x1, #-16]!
    stp     x4, x5, [x3, #-16]!
    cmp     x3, x2
    b.hi    1b
2:  adrp    x1, __bss_start
    add     x1, x1, :lo12:__bss_start
    adrp    x2, __bss_end
    add     x2, x2, :lo12:__bss_end
    // 64-byte aligned bounds (linker script): a block per round, so
    // zeroing costs six instructions per 64 bytes of statics.
    cmp     x1, x2
    b.hs    4f
3:  stp     xzr, xzr, [x1], #16
    stp     xzr, xzr, [x1], #16
    stp     xzr, xzr, [x1], #16
    stp     xzr, xzr, [x1], #16
    cmp     x1, x2
    b.lo    3b
4:  adrp    x1, BOOT_STACKS
    add     x1, x1, :lo12:BOOT_STACKS
    mov     x2, #{stack_size}
    add     sp, x1, x2
    // Proof that the data copy above worked, before anything relies on it.
    adrp    x1, {copy_proof}
    ldr     x1, [x1, :lo12:{copy_proof}]
    movz    x2, #{mark_0}
    movk    x2, #{mark_1}, lsl #16
    movk    x2, #{mark_2}, lsl #32
    movk    x2, #{mark_3}, lsl #48
    cmp     x1, x2
    b.ne    {data_not_copied}
    mov     x0, x19
    adr     x1, _start                  // where the image really runs
    bl      {primary_entry}
5:  wfe
    b       5b

    .global secondary_entry
secondary_entry:
    msr     daifset, #0xf
    mrs     x1, mpidr_el1               // keep Aff3..Aff0; bit 31, U and MT are not identity
    movz    x2, #0xffff
    movk    x2, #0x00ff, lsl #16
    movk    x2, #0x00ff, lsl #32
    and     x1, x1, x2
    adrp    x3, SECONDARY_BOOT
    add     x3, x3, :lo12:SECONDARY_BOOT
    ldr     x4, [x3, #{count_offset}]
    mov     x0, #0
4:  cmp     x0, x4
    b.hs    6f                          // not in the list: stay parked
    ldr     x5, [x3, x0, lsl #3]
    cmp     x5, x1
    b.eq    5f
    add     x0, x0, #1
    b       4b
5:  ldr     x5, [x3, #{mair_offset}]
    msr     mair_el2, x5
    ldr     x5, [x3, #{tcr_offset}]
    msr     tcr_el2, x5
    ldr     x5, [x3, #{table_offset}]
    msr     ttbr0_el2, x5
    isb
    tlbi    alle2
    dsb     nsh
    isb
    ldr     x5, [x3, #{sctlr_offset}]
    msr     sctlr_el2, x5
    isb
    adrp    x1, BOOT_STACKS
    add     x1, x1, :lo12:BOOT_STACKS
    add     x2, x0, #1
    mov     x3, #{stack_size}
    madd    x1, x2, x3, x1
    mov     sp, x1
    bl      {secondary_entry}
6:  wfe
    b       6b
    "#,
    text_offset = const BOARD.image_text_offset,
    stack_size = const STACK_SIZE,
    count_offset = const offset_of!(SecondaryBoot, cpu_count),
    mair_offset = const offset_of!(SecondaryBoot, mair),
    tcr_offset = const offset_of!(SecondaryBoot, tcr),
    table_offset = const offset_of!(SecondaryBoot, translation_table),
    sctlr_offset = const offset_of!(SecondaryBoot, sctlr),
    copy_proof = sym DATA_COPY_PROOF,
    mark_0 = const DATA_COPY_MARK & 0xffff,
    mark_1 = const (DATA_COPY_MARK >> 16) & 0xffff,
    mark_2 = const (DATA_COPY_MARK >> 32) & 0xffff,
    mark_3 = const DATA_COPY_MARK >> 48,
    data_not_copied = sym data_not_copied,
    primary_entry = sym crate::boot::bring_up::primary_entry,
    secondary_entry = sym crate::boot::bring_up::secondary_entry,
);
