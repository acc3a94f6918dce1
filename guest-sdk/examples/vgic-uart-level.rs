//! Level semantics with the virtual PL011's TX interrupt: taken again after
//! each EOI while its cause stays, never again once the cause is gone.
//!
//! The guest enables the TX interrupt (UARTIMSC.TXIM) while the transmit
//! FIFO has room, so the line is asserted and stays asserted. Its handler
//! leaves the cause alone the first `repeats - 1` times (default 5): after
//! each EOI the interrupt must be taken again at once. The last time it
//! clears the cause (TXIM cleared, then TXIC written to UARTICR); from
//! then on the interrupt must not be taken, nor be pending, for 100 ms.
//! Each take must see the cause in UARTMIS.
//!
//! Bootargs: `repeats=N`.
//!
//! Output:
//!
//! ```text
//! vgic-uart-level: GICv3, UART interrupt INTID 33
//! vgic-uart-level: taken 5 times while asserted (expected 5), cause seen 5 times
//! vgic-uart-level: taken 0 times after the cause was cleared, pending false
//! vgic-uart-level: PASS
//! ```
//!
//! Otherwise `vgic-uart-level: FAIL: ...` and exit status 1.
#![cfg_attr(target_os = "none", no_std)]
#![no_main]

use core::sync::atomic::{AtomicU64, Ordering};

use tessera_guest_sdk::bootargs::{self, Bootargs};
use tessera_guest_sdk::console::uart_interrupts;
use tessera_guest_sdk::device_tree::DeviceTree;
use tessera_guest_sdk::gic::{self, Config, Interrupt, Trigger};
use tessera_guest_sdk::{entry, exit, exit_status, interrupts, println, time};

entry!(main);

const PRIORITY: u8 = 0x80;
/// Time for the repeated takes, and then for any that should not come.
const SETTLE_MS: u64 = 20;
const QUIET_MS: u64 = 100;

static REPEATS: AtomicU64 = AtomicU64::new(5);
static TAKEN: AtomicU64 = AtomicU64::new(0);
static CAUSE_SEEN: AtomicU64 = AtomicU64::new(0);

fn main(_device_tree: usize) -> ! {
    let tree =
        DeviceTree::boot().unwrap_or_else(|error| fail(format_args!("no device tree: {error}")));
    if let Some(text) = Bootargs::new(tree.bootargs().unwrap_or("")).get("repeats") {
        let repeats = bootargs::parse_number(text)
            .unwrap_or_else(|error| fail(format_args!("bad repeats: {error}")));
        REPEATS.store(repeats.max(1), Ordering::Relaxed);
    }
    let repeats = REPEATS.load(Ordering::Relaxed);
    let layout =
        gic::init_from_device_tree().unwrap_or_else(|error| fail(format_args!("GIC: {error}")));
    println!(
        "vgic-uart-level: {}, UART interrupt INTID {}",
        layout.version,
        gic::UART_INTID
    );
    let config = Config {
        priority: PRIORITY,
        trigger: Some(Trigger::Level),
    };
    if let Err(error) = gic::register_handler(gic::UART_INTID, on_uart)
        .and_then(|()| gic::enable_interrupt(gic::UART_INTID, config))
    {
        fail(format_args!("{error}"));
    }

    // Asserted from here on: the FIFO has room (nothing is being printed).
    uart_interrupts::set_enabled(uart_interrupts::enabled() | uart_interrupts::TX);
    interrupts::enable();
    time::delay_ms(SETTLE_MS);
    let taken = TAKEN.load(Ordering::Acquire);
    let cause_seen = CAUSE_SEEN.load(Ordering::Acquire);
    time::delay_ms(QUIET_MS);
    interrupts::disable();
    let after = TAKEN.load(Ordering::Acquire) - taken;
    let pending = gic::is_pending(gic::UART_INTID);

    println!(
        "vgic-uart-level: taken {taken} times while asserted (expected {repeats}), cause seen {cause_seen} times"
    );
    println!(
        "vgic-uart-level: taken {after} times after the cause was cleared, pending {}",
        pending.unwrap_or(true)
    );
    if taken != repeats || cause_seen != repeats {
        fail(format_args!(
            "the level interrupt was not taken again after each EOI while its cause stayed"
        ));
    }
    if after != 0 || pending != Ok(false) {
        fail(format_args!(
            "the interrupt came back after its cause was cleared"
        ));
    }
    println!("vgic-uart-level: PASS");
    exit(exit_status::SUCCESS)
}

fn on_uart(_: Interrupt) {
    if uart_interrupts::masked_status() & uart_interrupts::TX != 0 {
        CAUSE_SEEN.fetch_add(1, Ordering::Relaxed);
    }
    let taken = TAKEN.fetch_add(1, Ordering::AcqRel) + 1;
    if taken >= REPEATS.load(Ordering::Relaxed) {
        uart_interrupts::set_enabled(uart_interrupts::enabled() & !uart_interrupts::TX);
        uart_interrupts::clear(uart_interrupts::TX);
    }
}

fn fail(message: core::fmt::Arguments<'_>) -> ! {
    println!("vgic-uart-level: FAIL: {message}");
    exit(exit_status::FAILURE)
}
