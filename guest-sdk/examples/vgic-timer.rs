//! Periodic ticks of the virtual timer, then of the EL1 physical timer,
//! through the GIC: counts them and checks their spacing in virtual time.
//!
//! For each timer the guest asks for a tick every `period_ms` and takes
//! `ticks` of them. The spacing of two ticks is the difference of
//! CNTVCT_EL0 read at the start of the two handlers (the first is measured
//! from the moment the timer was armed). Each spacing must be at least the
//! period — the SDK re-arms a period after handling, so anything shorter
//! is an interrupt delivered before its deadline — and at most the period
//! plus `slack_ms`; no handler may run before its deadline (in the timer's
//! own counter). Then a one-shot deadline a period ahead: taken exactly
//! once, not before its deadline, at most `slack_ms` after it.
//!
//! Bootargs (all optional): `period_ms=N` (default 10), `ticks=N` (20),
//! `slack_ms=N` (100), `only=virtual` or `only=physical`.
//!
//! Output (numbers in counter ticks, decimal):
//!
//! ```text
//! vgic-timer: GICv3, counter 62500000 Hz, period 10 ms = 625000 ticks, slack 100 ms
//! vgic-timer: virtual timer: ticks 20, spacing min 625408 max 641232 mean 630112, early 0
//! vgic-timer: virtual timer: PASS
//! vgic-timer: virtual timer: one-shot taken 1 times, 8704 ticks after its deadline
//! vgic-timer: virtual timer: one-shot PASS
//! vgic-timer: physical timer: ticks 20, spacing min 625376 max 640912 mean 629872, early 0
//! vgic-timer: physical timer: PASS
//! vgic-timer: physical timer: one-shot taken 1 times, 9120 ticks after its deadline
//! vgic-timer: physical timer: one-shot PASS
//! vgic-timer: PASS
//! ```
//!
//! A failed check prints `vgic-timer: <timer> timer: FAIL: ...` and, at the
//! end, `vgic-timer: FAIL` with exit status 1.
#![cfg_attr(target_os = "none", no_std)]
#![no_main]

use core::sync::atomic::{AtomicU64, Ordering};

use tessera_guest_sdk::bootargs::{self, Bootargs};
use tessera_guest_sdk::device_tree::DeviceTree;
use tessera_guest_sdk::gic;
use tessera_guest_sdk::timer::{self, Tick, Timer};
use tessera_guest_sdk::{entry, exit, exit_status, interrupts, println, time};

entry!(main);

const PRIORITY: u8 = 0x80;

/// What the tick handler measures, for the timer being tested.
static COUNT: AtomicU64 = AtomicU64::new(0);
static LAST_ENTRY: AtomicU64 = AtomicU64::new(0);
static MIN_SPACING: AtomicU64 = AtomicU64::new(u64::MAX);
static MAX_SPACING: AtomicU64 = AtomicU64::new(0);
static EARLY: AtomicU64 = AtomicU64::new(0);
static WANTED: AtomicU64 = AtomicU64::new(0);
static ONE_SHOT_TAKEN: AtomicU64 = AtomicU64::new(0);
static ONE_SHOT_LATE: AtomicU64 = AtomicU64::new(0);

fn main(_device_tree: usize) -> ! {
    let tree =
        DeviceTree::boot().unwrap_or_else(|error| fail(format_args!("no device tree: {error}")));
    let args = Bootargs::new(tree.bootargs().unwrap_or(""));
    let number = |key: &str, default: u64| match args.get(key) {
        None => default,
        Some(text) => bootargs::parse_number(text)
            .unwrap_or_else(|error| fail(format_args!("bad {key}: {error}"))),
    };
    let period_ms = number("period_ms", 10).max(1);
    let ticks = number("ticks", 20).max(1);
    let slack_ms = number("slack_ms", 100);
    let only = args.get("only");

    let layout =
        gic::init_from_device_tree().unwrap_or_else(|error| fail(format_args!("GIC: {error}")));
    let frequency = time::frequency();
    let period = time::ms_to_ticks(period_ms, frequency);
    let limit = period + time::ms_to_ticks(slack_ms, frequency);
    println!(
        "vgic-timer: {}, counter {frequency} Hz, period {period_ms} ms = {period} ticks, slack {slack_ms} ms",
        layout.version
    );
    interrupts::enable();

    let mut passed = true;
    for timer in [Timer::Virtual, Timer::Physical] {
        if only.is_some_and(|name| name != timer_name(timer)) {
            continue;
        }
        passed &= run(timer, period, ticks, limit);
        passed &= one_shot(timer, period, limit);
    }
    let (unhandled, last) = gic::unhandled();
    if unhandled != 0 {
        println!(
            "vgic-timer: FAIL: {unhandled} interrupts without a handler (last INTID {last:?})"
        );
        passed = false;
    }
    if passed {
        println!("vgic-timer: PASS");
        exit(exit_status::SUCCESS)
    }
    println!("vgic-timer: FAIL");
    exit(exit_status::FAILURE)
}

/// Takes `ticks` ticks of `timer` every `period`; true if every spacing is
/// within period..=limit and none came early.
fn run(timer: Timer, period: u64, ticks: u64, limit: u64) -> bool {
    let name = timer_name(timer);
    COUNT.store(0, Ordering::Relaxed);
    MIN_SPACING.store(u64::MAX, Ordering::Relaxed);
    MAX_SPACING.store(0, Ordering::Relaxed);
    EARLY.store(0, Ordering::Relaxed);
    WANTED.store(ticks, Ordering::Relaxed);
    let sum_start = time::ticks();
    LAST_ENTRY.store(sum_start, Ordering::Release);
    if let Err(error) = timer::start_periodic(timer, period, PRIORITY, on_tick) {
        println!("vgic-timer: {name} timer: FAIL: cannot start: {error}");
        return false;
    }
    // Generous: every tick may be late by the whole slack, plus a second.
    let deadline = time::Deadline::after_ms(
        time::ticks_to_ms(ticks.saturating_mul(limit), time::frequency()) + 1000,
    );
    while COUNT.load(Ordering::Acquire) < ticks && !deadline.has_passed() {
        interrupts::wait();
    }
    let count = COUNT.load(Ordering::Acquire);
    let min = MIN_SPACING.load(Ordering::Relaxed);
    let max = MAX_SPACING.load(Ordering::Relaxed);
    let early = EARLY.load(Ordering::Relaxed);
    let mean = (LAST_ENTRY.load(Ordering::Acquire) - sum_start) / count.max(1);
    println!(
        "vgic-timer: {name} timer: ticks {count}, spacing min {min} max {max} mean {mean}, early {early}"
    );
    let problem = if count < ticks {
        Some("too few ticks")
    } else if early != 0 {
        Some("a tick ran before its deadline")
    } else if min < period {
        Some("two ticks closer than the period")
    } else if max > limit {
        Some("a tick later than the period plus the slack")
    } else {
        None
    };
    match problem {
        Some(problem) => {
            println!("vgic-timer: {name} timer: FAIL: {problem} (period {period}, limit {limit})");
            false
        }
        None => {
            println!("vgic-timer: {name} timer: PASS");
            true
        }
    }
}

/// Arms `timer` once, a period from now: its handler must run exactly
/// once, not before the deadline and at most `limit` after arming.
fn one_shot(timer: Timer, period: u64, limit: u64) -> bool {
    let name = timer_name(timer);
    ONE_SHOT_TAKEN.store(0, Ordering::Relaxed);
    ONE_SHOT_LATE.store(u64::MAX, Ordering::Relaxed);
    let deadline = timer.now() + period;
    if let Err(error) = timer::start_one_shot(timer, deadline, PRIORITY, on_one_shot) {
        println!("vgic-timer: {name} timer: FAIL: cannot arm a one-shot: {error}");
        return false;
    }
    // Wait for it, then as long again for a second one that must not come.
    time::delay_ms(2 * time::ticks_to_ms(limit, time::frequency()));
    let taken = ONE_SHOT_TAKEN.load(Ordering::Acquire);
    let late = ONE_SHOT_LATE.load(Ordering::Acquire);
    println!(
        "vgic-timer: {name} timer: one-shot taken {taken} times, {} ticks after its deadline",
        late as i64
    );
    if taken != 1 || late > limit - period {
        println!("vgic-timer: {name} timer: FAIL: one-shot not taken exactly once, in time");
        return false;
    }
    println!("vgic-timer: {name} timer: one-shot PASS");
    true
}

fn on_one_shot(tick: Tick) {
    ONE_SHOT_TAKEN.fetch_add(1, Ordering::AcqRel);
    // Negative (wrapped, hence huge) if it ran before its deadline.
    ONE_SHOT_LATE.store(tick.now.wrapping_sub(tick.deadline), Ordering::Release);
}

fn on_tick(tick: Tick) {
    if tick.now < tick.deadline {
        EARLY.fetch_add(1, Ordering::Relaxed);
    }
    let previous = LAST_ENTRY.swap(tick.virtual_now, Ordering::AcqRel);
    let spacing = tick.virtual_now.wrapping_sub(previous);
    MIN_SPACING.fetch_min(spacing, Ordering::Relaxed);
    MAX_SPACING.fetch_max(spacing, Ordering::Relaxed);
    let count = COUNT.fetch_add(1, Ordering::AcqRel) + 1;
    if count >= WANTED.load(Ordering::Relaxed) {
        timer::stop(tick.timer);
    }
}

const fn timer_name(timer: Timer) -> &'static str {
    match timer {
        Timer::Virtual => "virtual",
        Timer::Physical => "physical",
    }
}

fn fail(message: core::fmt::Arguments<'_>) -> ! {
    println!("vgic-timer: FAIL: {message}");
    exit(exit_status::FAILURE)
}
