//! An SPI routed to another vCPU while the first one handles it goes to
//! the new target, as the distributor forwards a deactivated interrupt to
//! its current target (IHI 0069H §4.5, IHI 0048B §3.1).
//!
//! The virtual PL011's TX interrupt, level-sensitive, is asserted and
//! stays asserted while the transmit FIFO has room and UARTIMSC.TXIM is
//! set. vCPU 0 takes it first; its handler leaves the cause alone, routes
//! the SPI to vCPU 1 (GICD_IROUTER on GICv3, GICD_ITARGETSR on GICv2) and
//! keeps it active a further 10 ms (so vCPU 1's side has seen the route
//! change) before its EOI. The interrupt, still asserted, must then be
//! taken by vCPU 1, not again by vCPU 0. vCPU 1's handler clears the
//! cause; from then on nobody takes it, and it is not pending.
//!
//! Output:
//!
//! ```text
//! vgic-spi-reroute: GICv3, 2 vCPUs, UART interrupt INTID 33
//! vgic-spi-reroute: taken by vCPU 0: 1 (expected 1), by vCPU 1: 1 (expected 1), cause seen 2 times
//! vgic-spi-reroute: taken 0 times after the cause was cleared, pending false
//! vgic-spi-reroute: PASS
//! ```
//!
//! Otherwise `vgic-spi-reroute: FAIL: ...` and exit status 1.
#![cfg_attr(target_os = "none", no_std)]
#![no_main]

use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tessera_guest_sdk::console::uart_interrupts;
use tessera_guest_sdk::cpu;
use tessera_guest_sdk::gic::{self, Config, Interrupt, Trigger};
use tessera_guest_sdk::smp::{self, Vcpus};
use tessera_guest_sdk::time::{self, Deadline};
use tessera_guest_sdk::{entry, exit, exit_status, interrupts, println};

entry!(main);

const PRIORITY: u8 = 0x80;
const START_TIMEOUT_MS: u64 = 2000;
/// How long vCPU 1 may take to get the interrupt.
const TAKE_TIMEOUT_MS: u64 = 2000;
/// How long vCPU 0's handler keeps the interrupt active after rerouting
/// it: long enough for vCPU 1's CPU to act on the route change first, so
/// that the interrupt reaches vCPU 1 through vCPU 0's completion.
const HOLD_MS: u64 = 10;
/// Time after vCPU 1's take for any take that should not come, and then
/// for any after the cause was cleared.
const SETTLE_MS: u64 = 20;
const QUIET_MS: u64 = 100;

static READY: AtomicBool = AtomicBool::new(false);
/// Takes per vCPU (0 and 1).
static TAKEN: [AtomicU64; 2] = [AtomicU64::new(0), AtomicU64::new(0)];
static CAUSE_SEEN: AtomicU64 = AtomicU64::new(0);
/// A take on a vCPU other than 0 or 1, or a routing the GIC refused.
static PROBLEMS: AtomicU64 = AtomicU64::new(0);

fn main(_device_tree: usize) -> ! {
    let vcpus = Vcpus::boot().unwrap_or_else(|error| fail(format_args!("no device tree: {error}")));
    let layout =
        gic::init_from_device_tree().unwrap_or_else(|error| fail(format_args!("GIC: {error}")));
    let count = vcpus.count();
    println!(
        "vgic-spi-reroute: {}, {count} vCPUs, UART interrupt INTID {}",
        layout.version,
        gic::UART_INTID
    );
    if count < 2 || cpu::index() != 0 {
        fail(format_args!(
            "needs 2 vCPUs and to boot on vCPU 0 ({count} vCPUs, on vCPU {})",
            cpu::index()
        ));
    }
    let config = Config {
        priority: PRIORITY,
        trigger: Some(Trigger::Level),
    };
    // Enabled here, so routed to vCPU 0.
    if let Err(error) = gic::register_handler(gic::UART_INTID, on_uart)
        .and_then(|()| gic::enable_interrupt(gic::UART_INTID, config))
    {
        fail(format_args!("{error}"));
    }
    for mpidr in vcpus.others() {
        if let Err(error) = smp::start(mpidr, secondary, 0) {
            fail(format_args!("CPU_ON({mpidr:#x}) = {error}"));
        }
    }
    let deadline = Deadline::after_ms(START_TIMEOUT_MS);
    while !READY.load(Ordering::Acquire) {
        if deadline.has_passed() {
            fail(format_args!("vCPU 1 did not come up"));
        }
        core::hint::spin_loop();
    }

    // Asserted from here on: the FIFO has room (nothing is being printed).
    uart_interrupts::set_enabled(uart_interrupts::enabled() | uart_interrupts::TX);
    interrupts::enable();
    // Until vCPU 1 took it (or the deadline), then a little longer for
    // any take that should not come.
    let deadline = Deadline::after_ms(TAKE_TIMEOUT_MS);
    while TAKEN[1].load(Ordering::Acquire) == 0 && !deadline.has_passed() {
        core::hint::spin_loop();
    }
    time::delay_ms(SETTLE_MS);
    let taken = [0, 1].map(|index| TAKEN[index].load(Ordering::Acquire));
    let cause_seen = CAUSE_SEEN.load(Ordering::Acquire);
    time::delay_ms(QUIET_MS);
    interrupts::disable();
    let after =
        TAKEN[0].load(Ordering::Acquire) + TAKEN[1].load(Ordering::Acquire) - taken[0] - taken[1];
    let pending = gic::is_pending(gic::UART_INTID);

    println!(
        "vgic-spi-reroute: taken by vCPU 0: {} (expected 1), by vCPU 1: {} (expected 1), cause seen {cause_seen} times",
        taken[0], taken[1]
    );
    println!(
        "vgic-spi-reroute: taken {after} times after the cause was cleared, pending {}",
        pending.unwrap_or(true)
    );
    if PROBLEMS.load(Ordering::Acquire) != 0 {
        fail(format_args!(
            "taken on another vCPU, or the routing was refused"
        ));
    }
    if taken != [1, 1] || cause_seen != 2 {
        fail(format_args!(
            "the rerouted interrupt was not taken once by each vCPU, with its cause"
        ));
    }
    if after != 0 || pending != Ok(false) {
        fail(format_args!(
            "the interrupt came back after its cause was cleared"
        ));
    }
    println!("vgic-spi-reroute: PASS");
    exit(exit_status::SUCCESS)
}

/// vCPU 1: its GIC interface is up (`smp::start`); it waits for the
/// interrupt with IRQs unmasked.
fn secondary(_: usize) -> ! {
    interrupts::enable();
    READY.store(true, Ordering::Release);
    loop {
        interrupts::wait();
    }
}

/// On vCPU 0: route the SPI to vCPU 1 and leave the cause. On vCPU 1:
/// clear the cause.
fn on_uart(_: Interrupt) {
    if uart_interrupts::masked_status() & uart_interrupts::TX != 0 {
        CAUSE_SEEN.fetch_add(1, Ordering::Relaxed);
    }
    let me = cpu::index();
    let Some(taken) = TAKEN.get(me) else {
        PROBLEMS.fetch_add(1, Ordering::Relaxed);
        return;
    };
    taken.fetch_add(1, Ordering::AcqRel);
    if me == 0 {
        if gic::route_spi(gic::UART_INTID, 1).is_err() {
            PROBLEMS.fetch_add(1, Ordering::Relaxed);
        }
        time::delay_ms(HOLD_MS);
    } else {
        uart_interrupts::set_enabled(uart_interrupts::enabled() & !uart_interrupts::TX);
        uart_interrupts::clear(uart_interrupts::TX);
    }
}

fn fail(message: core::fmt::Arguments<'_>) -> ! {
    println!("vgic-spi-reroute: FAIL: {message}");
    exit(exit_status::FAILURE)
}
