//! Takes an interrupt of a physical device passed through to this VM on the
//! Raspberry Pi 4: the BCM2711 auxiliary block at 0xFE21_5000 with its mini
//! UART (its registers mapped into the VM's stage 2 at their own address,
//! its SPI 93, INTID 125, linked to the VM's virtual GIC). With the mini
//! UART enabled and its transmit interrupt unmasked, the line is asserted
//! while the transmit FIFO is empty, which it is: the interrupt must reach
//! this VM's handler, which sees the cause in AUX_IRQ and masks it, after
//! which it must not come again.
//!
//! Output: `passthrough-aux: mini UART interrupt INTID 125 taken 1 time(s),
//! cause seen, masked`, and exit status 0; otherwise `passthrough-aux:
//! FAIL: ...` and status 1.
#![cfg_attr(target_os = "none", no_std)]
#![no_main]

use core::sync::atomic::{AtomicU32, Ordering};

use tessera_guest_sdk::gic::{self, Config, Interrupt};
use tessera_guest_sdk::{entry, exit, exit_status, interrupts, println, time};

entry!(main);

/// The auxiliary block: AUX_IRQ (pending bits), AUX_ENABLES, and the mini
/// UART's interrupt-enable register (AUX_MU_IER_REG).
const AUX: u64 = 0xFE21_5000;
const AUX_IRQ: u64 = 0x00;
const AUX_ENABLES: u64 = 0x04;
const MU_IER: u64 = 0x44;
/// AUX_IRQ/AUX_ENABLES bit 0: the mini UART.
const MINI_UART: u32 = 1;
/// AUX_MU_IER_REG bit 1: interrupt while the transmit FIFO is empty (the
/// layout QEMU and the BCM2835 errata give).
const TRANSMIT_EMPTY: u32 = 1 << 1;
/// SPI 93.
const AUX_INTID: u32 = 125;

static TAKEN: AtomicU32 = AtomicU32::new(0);
static CAUSE_SEEN: AtomicU32 = AtomicU32::new(0);

fn read(offset: u64) -> u32 {
    // SAFETY: the auxiliary block is passed through to this VM at this
    // address (its configuration says so); these reads have no side effect.
    unsafe { ((AUX + offset) as *const u32).read_volatile() }
}

fn write(offset: u64, value: u32) {
    // SAFETY: as in `read`; the mini UART's enables are this VM's.
    unsafe { ((AUX + offset) as *mut u32).write_volatile(value) };
}

fn on_aux(_interrupt: Interrupt) {
    if read(AUX_IRQ) & MINI_UART != 0 {
        CAUSE_SEEN.fetch_add(1, Ordering::Relaxed);
    }
    write(MU_IER, 0);
    TAKEN.fetch_add(1, Ordering::Relaxed);
}

fn fail(message: core::fmt::Arguments) -> ! {
    println!("passthrough-aux: FAIL: {message}");
    exit(exit_status::FAILURE)
}

fn main(_device_tree: usize) -> ! {
    if let Err(error) = gic::init_from_device_tree()
        .map(|_| ())
        .and_then(|()| gic::register_handler(AUX_INTID, on_aux))
        .and_then(|()| {
            gic::enable_interrupt(
                AUX_INTID,
                Config {
                    priority: 0x80,
                    trigger: None,
                },
            )
        })
    {
        fail(format_args!("cannot set up INTID {AUX_INTID}: {error}"));
    }
    write(AUX_ENABLES, read(AUX_ENABLES) | MINI_UART);
    write(MU_IER, TRANSMIT_EMPTY);
    interrupts::enable();
    let until = time::ticks() + time::frequency() / 5;
    while time::ticks() < until {
        core::hint::spin_loop();
    }
    interrupts::disable();
    let (taken, seen) = (
        TAKEN.load(Ordering::Relaxed),
        CAUSE_SEEN.load(Ordering::Relaxed),
    );
    if taken != 1 || seen != 1 {
        fail(format_args!(
            "mini UART interrupt taken {taken} time(s), cause seen {seen} (expected 1 and 1)"
        ));
    }
    println!(
        "passthrough-aux: mini UART interrupt INTID {AUX_INTID} taken {taken} time(s), cause seen, masked"
    );
    exit(exit_status::SUCCESS)
}
