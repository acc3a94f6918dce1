//! The runtime that bare-metal Tessera guests link.
//!
//! Guests see a machine shaped like QEMU `virt` (docs/guest-interface.md).
//! This crate gives them what every guest needs, so that a test guest is a
//! few lines of logic:
//!
//! - the arm64 Image header, the entry code and per-vCPU stacks ([`entry!`]),
//! - EL1 exception vectors that report anything unexpected and stop the VM
//!   with a failure status ([`exception`]), plus [`probe`] for the accesses a
//!   test *expects* to abort,
//! - interrupts: the GIC (v2 or v3, from the device tree) with handler
//!   registration and SGIs ([`gic`]), IRQ masking ([`interrupts`]), the
//!   EL1 timers with periodic and one-shot ticks ([`timer`]) and
//!   secondary vCPUs that come up with their interrupts set up ([`smp`]),
//! - a polled PL011 console ([`print!`], [`println!`]),
//! - PSCI and Tessera's own hypercalls over HVC ([`psci`], [`exit`]),
//! - device-tree and bootargs helpers ([`device_tree`], [`bootargs`]), the
//!   generic counter ([`time`]), secondary vCPU start-up ([`cpu`]), the
//!   guest's memory layout ([`memory`]), an optional stage-1 identity map
//!   with the caches on ([`mmu`]) and timed sequences for the benchmarks
//!   ([`bench`](mod@bench)),
//! - the vdev-shmem client: named shared regions with selective signalling,
//!   and a message channel on top ([`shmem`]).
//!
//! A guest:
//!
//! ```ignore
//! #![cfg_attr(target_os = "none", no_std)]
//! #![no_main]
//!
//! use tessera_guest_sdk::{entry, exit, println};
//!
//! entry!(main);
//!
//! fn main(_device_tree: usize) -> ! {
//!     println!("hello");
//!     exit(0)
//! }
//! ```
//!
//! Guests are linked by `linker/guest.ld` (passed to the examples by
//! `build.rs`) at `0x4008_0000`: the Image header asks for text_offset
//! `0x80000`, so the VM's `ram-base` must be the default `0x4000_0000`
//! (the entry code stops the VM with a message otherwise). Build and run
//! one natively on QEMU (where PSCI is HVC too):
//!
//! ```text
//! cargo build --release -p tessera-guest-sdk --examples --target aarch64-unknown-none
//! llvm-objcopy -O binary target/aarch64-unknown-none/release/examples/hello hello.bin
//! qemu-system-aarch64 -M virt -cpu cortex-a72 -smp 2 -m 256M -nographic -kernel hello.bin
//! ```
//!
//! Guests start with the MMU and caches off, and most stay so: every
//! access is then a Device access, so unaligned accesses fault (the
//! `aarch64-unknown-none` target turns on `strict-align`, so the compiler
//! emits none), and the spin locks rely on exclusive accesses working on
//! such memory (they do under QEMU). Turning the MMU on is optional:
//! [`mmu`] builds an identity map (RAM as cacheable Normal memory, devices
//! as Device-nGnRE) and enables it on every vCPU; the target stays
//! `strict-align`, so unaligned accesses then happen only through
//! [`mmu`]'s explicit helpers.
//!
//! Everything that touches the hardware sits in `arch`, which has a host
//! stand-in: the portable logic (syndrome decoding, reports, bootargs,
//! device-tree lookups) is unit-tested with `cargo test` on the host, and the
//! examples compile there (their `main` refuses to run).
#![no_std]
#![deny(clippy::undocumented_unsafe_blocks)]
#![cfg_attr(
    not(all(target_arch = "aarch64", target_os = "none")),
    allow(
        dead_code,
        reason = "the runtime (entry, vectors) that uses some items exists on bare-metal aarch64 \
                  only; the target build is linted too and catches real dead code"
    )
)]

mod arch;
pub mod bench;
pub mod bootargs;
pub mod console;
pub mod cpu;
pub mod device_tree;
pub mod exception;
pub mod gic;
pub mod interrupts;
pub mod memory;
pub mod mmu;
pub mod probe;
pub mod psci;
#[cfg(all(target_arch = "aarch64", target_os = "none"))]
mod rt;
pub mod shmem;
pub mod smp;
pub mod tessera;
pub mod time;
pub mod timer;

pub use probe::{Abort, probe_read, probe_write};
pub use tessera::{exit, exit_status};

/// Declares the guest's main function: `fn(device_tree: usize) -> !`, called
/// on vCPU 0 with the device-tree address the loader passed in `x0`, after
/// the runtime has set up the stack, the BSS, FP/SIMD and the exception
/// vectors.
///
/// Guest crates are `#![no_main]`, and `#![no_std]` on the bare-metal
/// target. On the host, where the examples are only compiled (for tests and
/// lints), this defines a C `main` that refuses to run.
#[macro_export]
macro_rules! entry {
    ($main:path) => {
        /// The symbol the SDK's entry code calls.
        #[cfg(target_os = "none")]
        #[unsafe(no_mangle)]
        extern "C" fn tessera_guest_main(device_tree: usize) -> ! {
            let main: fn(usize) -> ! = $main;
            main(device_tree)
        }

        /// The host stand-in: a guest cannot run as a host program.
        #[cfg(not(target_os = "none"))]
        #[unsafe(export_name = "main")]
        extern "C" fn tessera_host_main(_argc: i32, _argv: *const *const u8) -> i32 {
            let _guest_main: fn(usize) -> ! = $main;
            ::std::eprintln!(
                "this program is a Tessera guest: build it for aarch64-unknown-none and boot it"
            );
            2
        }
    };
}

/// Prints to the guest console (the PL011), holding the console lock so
/// lines from different vCPUs do not interleave.
#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => {
        $crate::console::print_args(format_args!($($arg)*))
    };
}

/// Prints a line to the guest console; see [`print!`]. The whole line,
/// newline included, is written under one hold of the console lock.
#[macro_export]
macro_rules! println {
    () => {
        $crate::console::print_args(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::console::print_args(format_args!("{}\n", format_args!($($arg)*)))
    };
}
