//! More interrupts pending at once than a GIC has list registers: every one
//! must arrive, highest priority first, equal priorities in INTID order.
//!
//! With IRQs masked the guest makes 11 interrupts pending on its own vCPU:
//! SGIs 0..7 (sent to itself), the virtual and the EL1 physical timer
//! (armed to fire at once) and the PL011's TX interrupt (UARTIMSC.TXIM set
//! while the transmit FIFO has room), at priorities with ties:
//!
//! | priority | INTIDs |
//! |---|---|
//! | 0x20 | 3 |
//! | 0x40 | 1, 5, 30 |
//! | 0x60 | 6, 27 |
//! | 0x80 | 0, 2, 7, 33 |
//! | 0xA0 | 4 |
//!
//! It checks they are all pending (GICD/GICR_ISPENDR), unmasks IRQs, and
//! records the order its handlers run in. Each handler removes its cause
//! (timer stopped, TXIM cleared) so each interrupt is taken once.
//!
//! Bootargs: `uart=off` leaves the UART out (10 interrupts).
//!
//! Output:
//!
//! ```text
//! vgic-overload: GICv3, 11 interrupts
//! vgic-overload: pending while masked: 11 of 11
//! vgic-overload: taken:    3 1 5 30 6 27 0 2 7 33 4
//! vgic-overload: expected: 3 1 5 30 6 27 0 2 7 33 4
//! vgic-overload: PASS: 11 of 11 taken once each, in priority order
//! ```
//!
//! Otherwise `vgic-overload: FAIL: ...` and exit status 1.
#![cfg_attr(target_os = "none", no_std)]
#![no_main]

use core::fmt::Write;
use core::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

use tessera_guest_sdk::console::uart_interrupts;
use tessera_guest_sdk::device_tree::DeviceTree;
use tessera_guest_sdk::gic::{self, Config, Interrupt, SgiTarget, Trigger};
use tessera_guest_sdk::timer::Timer;
use tessera_guest_sdk::{bootargs::Bootargs, entry, exit, exit_status, interrupts, println, time};

entry!(main);

/// (INTID, priority).
const SOURCES: [(u32, u8); 11] = [
    (0, 0x80),
    (1, 0x40),
    (2, 0x80),
    (3, 0x20),
    (4, 0xA0),
    (5, 0x40),
    (6, 0x60),
    (7, 0x80),
    (gic::VIRTUAL_TIMER_INTID, 0x60),
    (gic::PHYSICAL_TIMER_INTID, 0x40),
    (gic::UART_INTID, 0x80),
];
const MAX: usize = SOURCES.len();

/// How long to let everything become pending, and to take it all.
const SETTLE_MS: u64 = 20;

static TAKEN: [AtomicU32; 2 * MAX] = [const { AtomicU32::new(u32::MAX) }; 2 * MAX];
static TAKEN_COUNT: AtomicUsize = AtomicUsize::new(0);

fn main(_device_tree: usize) -> ! {
    let tree =
        DeviceTree::boot().unwrap_or_else(|error| fail(format_args!("no device tree: {error}")));
    let with_uart = Bootargs::new(tree.bootargs().unwrap_or("")).get("uart") != Some("off");
    let layout =
        gic::init_from_device_tree().unwrap_or_else(|error| fail(format_args!("GIC: {error}")));
    let sources = if with_uart {
        &SOURCES[..]
    } else {
        &SOURCES[..MAX - 1]
    };
    println!(
        "vgic-overload: {}, {} interrupts",
        layout.version,
        sources.len()
    );

    // IRQs are masked from entry on.
    for &(intid, priority) in sources {
        let trigger = (intid == gic::UART_INTID).then_some(Trigger::Level);
        let config = Config { priority, trigger };
        let set_up = gic::register_handler(intid, on_interrupt)
            .and_then(|()| gic::enable_interrupt(intid, config));
        if let Err(error) = set_up {
            fail(format_args!("INTID {intid}: {error}"));
        }
    }
    for &(intid, _) in sources.iter().filter(|&&(intid, _)| intid < gic::SGI_COUNT) {
        if let Err(error) = gic::send_sgi(intid, SgiTarget::ToSelf) {
            fail(format_args!("SGI {intid}: {error}"));
        }
    }
    Timer::Virtual.arm_at(Timer::Virtual.now());
    Timer::Physical.arm_at(Timer::Physical.now());
    if with_uart {
        set_tx_interrupt(true);
    }
    time::delay_ms(SETTLE_MS);

    let pending = sources
        .iter()
        .filter(|&&(intid, _)| gic::is_pending(intid) == Ok(true))
        .count();
    let mut missing = Line::new();
    for &(intid, _) in sources
        .iter()
        .filter(|&&(intid, _)| gic::is_pending(intid) != Ok(true))
    {
        let _ = write!(missing, " {intid}");
    }
    println!(
        "vgic-overload: pending while masked: {pending} of {}{}{}",
        sources.len(),
        if pending == sources.len() {
            ""
        } else {
            ", not pending:"
        },
        missing.as_str()
    );

    interrupts::enable();
    time::delay_ms(SETTLE_MS);
    interrupts::disable();

    let count = TAKEN_COUNT.load(Ordering::Acquire);
    let mut taken = Line::new();
    for slot in TAKEN.iter().take(count.min(TAKEN.len())) {
        let _ = write!(taken, " {}", slot.load(Ordering::Acquire));
    }
    let mut sorted: [(u8, u32); MAX] = [(0, 0); MAX];
    for (slot, &(intid, priority)) in sorted.iter_mut().zip(sources) {
        *slot = (priority, intid);
    }
    let sorted = &mut sorted[..sources.len()];
    sorted.sort_unstable();
    let mut expected = Line::new();
    for &(_, intid) in sorted.iter() {
        let _ = write!(expected, " {intid}");
    }
    println!("vgic-overload: taken:   {}", taken.as_str());
    println!("vgic-overload: expected:{}", expected.as_str());

    let in_order = count == sorted.len()
        && sorted
            .iter()
            .zip(&TAKEN)
            .all(|(&(_, intid), slot)| slot.load(Ordering::Acquire) == intid);
    let (unhandled, last) = gic::unhandled();
    if pending != sources.len() {
        fail(format_args!(
            "only {pending} of {} were pending at once",
            sources.len()
        ));
    }
    if unhandled != 0 {
        fail(format_args!(
            "{unhandled} interrupts without a handler (last {last:?})"
        ));
    }
    if !in_order {
        fail(format_args!(
            "{count} taken, {} expected, or not in priority order",
            sorted.len()
        ));
    }
    println!(
        "vgic-overload: PASS: {count} of {} taken once each, in priority order",
        sources.len()
    );
    exit(exit_status::SUCCESS)
}

/// Records the INTID, and removes the cause of the level ones.
fn on_interrupt(interrupt: Interrupt) {
    match interrupt.intid {
        gic::VIRTUAL_TIMER_INTID => Timer::Virtual.stop(),
        gic::PHYSICAL_TIMER_INTID => Timer::Physical.stop(),
        gic::UART_INTID => set_tx_interrupt(false),
        _ => {}
    }
    let slot = TAKEN_COUNT.fetch_add(1, Ordering::AcqRel);
    if let Some(entry) = TAKEN.get(slot) {
        entry.store(interrupt.intid, Ordering::Release);
    }
}

fn set_tx_interrupt(on: bool) {
    let enabled = uart_interrupts::enabled();
    uart_interrupts::set_enabled(if on {
        enabled | uart_interrupts::TX
    } else {
        enabled & !uart_interrupts::TX
    });
}

/// A short line of text built without a heap.
struct Line {
    bytes: [u8; 128],
    len: usize,
}

impl Line {
    const fn new() -> Self {
        Self {
            bytes: [0; 128],
            len: 0,
        }
    }

    fn as_str(&self) -> &str {
        core::str::from_utf8(&self.bytes[..self.len]).unwrap_or("?")
    }
}

impl Write for Line {
    fn write_str(&mut self, text: &str) -> core::fmt::Result {
        let end = self.len + text.len();
        let slot = self.bytes.get_mut(self.len..end).ok_or(core::fmt::Error)?;
        slot.copy_from_slice(text.as_bytes());
        self.len = end;
        Ok(())
    }
}

fn fail(message: core::fmt::Arguments<'_>) -> ! {
    println!("vgic-overload: FAIL: {message}");
    exit(exit_status::FAILURE)
}
