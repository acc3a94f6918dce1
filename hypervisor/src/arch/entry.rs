//! The first instructions: the arm64 Image header, the boot CPU's entry and
//! the secondary CPUs' entry. Everything here runs with the MMU off.
//!
//! The boot CPU zeroes the BSS, takes the first boot stack and calls
//! `boot::primary_entry`, which checks the exception level and load address
//! before anything else. Secondary CPUs find their logical index by looking
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
    adrp    x1, __bss_start
    add     x1, x1, :lo12:__bss_start
    adrp    x2, __bss_end
    add     x2, x2, :lo12:__bss_end
    // 64-byte aligned bounds (linker script): a block per round, so
    // zeroing costs six instructions per 64 bytes of statics.
    cmp     x1, x2
    b.hs    2f
1:  stp     xzr, xzr, [x1], #16
    stp     xzr, xzr, [x1], #16
    stp     xzr, xzr, [x1], #16
    stp     xzr, xzr, [x1], #16
    cmp     x1, x2
    b.lo    1b
2:  adrp    x1, BOOT_STACKS
    add     x1, x1, :lo12:BOOT_STACKS
    mov     x2, #{stack_size}
    add     sp, x1, x2
    mov     x0, x19
    adr     x1, _start                  // where the image really runs
    bl      {primary_entry}
3:  wfe
    b       3b

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
    primary_entry = sym crate::boot::bring_up::primary_entry,
    secondary_entry = sym crate::boot::bring_up::secondary_entry,
);
