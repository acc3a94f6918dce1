//! SGIs between the vCPUs of an SMP guest.
//!
//! Uses every vCPU the device tree lists (at least 2, at most the SDK's 8),
//! each started with `smp::start` so its GIC interface is set up.
//!
//! 1. Ping-pong: vCPU 0 sends SGI 1 to vCPU 1, whose handler answers with
//!    SGI 2 to vCPU 0, whose handler sends the next ping: `pings` round
//!    trips (default 1000). The chain stalls if one SGI is lost, so every
//!    ping and pong must arrive within the time limit.
//! 2. Targets: each vCPU in turn sends, `rounds` times (default 50), SGI 3
//!    to a target list — every other vCPU after itself: with 4 vCPUs, 0
//!    sends to {1, 3}, 1 to {2, 0}, 2 to {3, 1}, 3 to {0, 2} — and SGI 4
//!    to "all but self", waiting after each send until every target has
//!    taken it (an SGI sent again before its target took the first would
//!    legitimately merge with it). Each vCPU counts what it takes; the
//!    counts must be exactly what was meant for it, and nothing else may
//!    arrive. On GICv2 each SGI's source CPU must be the sender.
//!
//! Bootargs (optional): `pings=N`, `rounds=N`.
//!
//! Output (4 vCPUs):
//!
//! ```text
//! vgic-sgi: GICv3, 4 vCPUs
//! vgic-sgi: ping-pong: pings 1000, pongs 1000, lost 0
//! vgic-sgi: vCPU 0: target-list 100 (expected 100), all-but-self 150 (expected 150), wrong source 0
//! vgic-sgi: vCPU 1: target-list 100 (expected 100), all-but-self 150 (expected 150), wrong source 0
//! vgic-sgi: vCPU 2: target-list 100 (expected 100), all-but-self 150 (expected 150), wrong source 0
//! vgic-sgi: vCPU 3: target-list 100 (expected 100), all-but-self 150 (expected 150), wrong source 0
//! vgic-sgi: PASS
//! ```
//!
//! A failure: `vgic-sgi: FAIL: ...` and exit status 1.
#![cfg_attr(target_os = "none", no_std)]
#![no_main]

use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use tessera_guest_sdk::bootargs::{self, Bootargs};
use tessera_guest_sdk::cpu::{self, MAX_VCPUS};
use tessera_guest_sdk::device_tree::DeviceTree;
use tessera_guest_sdk::gic::{self, Config, Interrupt, SgiTarget, Version};
use tessera_guest_sdk::smp::{self, Vcpus};
use tessera_guest_sdk::time::Deadline;
use tessera_guest_sdk::{entry, exit, exit_status, interrupts, println};

entry!(main);

/// "Look at `TURN`": wakes a vCPU waiting in WFI.
const SGI_COMMAND: u32 = 0;
const SGI_PING: u32 = 1;
const SGI_PONG: u32 = 2;
const SGI_LIST: u32 = 3;
const SGI_ALL_BUT_SELF: u32 = 4;
const SGIS: [u32; 5] = [SGI_COMMAND, SGI_PING, SGI_PONG, SGI_LIST, SGI_ALL_BUT_SELF];
const START_TIMEOUT_MS: u64 = 2000;
const PING_PONG_TIMEOUT_MS: u64 = 20_000;
const DELIVERY_TIMEOUT_MS: u64 = 1000;
/// How long to watch for SGIs that should not come, at the end.
const QUIET_MS: u64 = 50;
const NOBODY: usize = usize::MAX;

static VCPUS: AtomicUsize = AtomicUsize::new(0);
static VERSION_IS_V2: AtomicBool = AtomicBool::new(false);
static READY: [AtomicBool; MAX_VCPUS] = [const { AtomicBool::new(false) }; MAX_VCPUS];
static PINGS_WANTED: AtomicU64 = AtomicU64::new(0);
static PINGS: AtomicU64 = AtomicU64::new(0);
static PONGS: AtomicU64 = AtomicU64::new(0);
static ROUNDS: AtomicU64 = AtomicU64::new(0);
/// The vCPU whose turn it is to send (phase 2), and which ones finished.
static TURN: AtomicUsize = AtomicUsize::new(NOBODY);
static DONE: [AtomicBool; MAX_VCPUS] = [const { AtomicBool::new(false) }; MAX_VCPUS];
/// Per vCPU: SGIs taken of each kind, and GICv2 sources that were wrong.
static LIST_TAKEN: [AtomicU64; MAX_VCPUS] = [const { AtomicU64::new(0) }; MAX_VCPUS];
static ALL_TAKEN: [AtomicU64; MAX_VCPUS] = [const { AtomicU64::new(0) }; MAX_VCPUS];
static WRONG_SOURCE: [AtomicU64; MAX_VCPUS] = [const { AtomicU64::new(0) }; MAX_VCPUS];
static OTHER_TAKEN: AtomicU64 = AtomicU64::new(0);

fn main(_device_tree: usize) -> ! {
    let tree =
        DeviceTree::boot().unwrap_or_else(|error| fail(format_args!("no device tree: {error}")));
    let args = Bootargs::new(tree.bootargs().unwrap_or(""));
    let number = |key: &str, default: u64| match args.get(key) {
        None => default,
        Some(text) => bootargs::parse_number(text)
            .unwrap_or_else(|error| fail(format_args!("bad {key}: {error}"))),
    };
    PINGS_WANTED.store(number("pings", 1000).max(1), Ordering::Relaxed);
    ROUNDS.store(number("rounds", 50).max(1), Ordering::Relaxed);

    let layout =
        gic::init_from_device_tree().unwrap_or_else(|error| fail(format_args!("GIC: {error}")));
    VERSION_IS_V2.store(layout.version == Version::V2, Ordering::Relaxed);
    let vcpus = Vcpus::from_device_tree(&tree);
    let count = vcpus.count();
    println!("vgic-sgi: {}, {count} vCPUs", layout.version);
    if count < 2 {
        fail(format_args!(
            "needs at least 2 vCPUs, the device tree lists {count}"
        ));
    }
    if cpu::index() != 0 {
        fail(format_args!(
            "expected to boot on vCPU 0, not {}",
            cpu::index()
        ));
    }
    VCPUS.store(count, Ordering::Release);
    for sgi in SGIS {
        gic::register_handler(sgi, on_sgi).unwrap_or_else(|error| fail(format_args!("{error}")));
    }
    enable_sgis();
    for mpidr in vcpus.others() {
        if let Err(error) = smp::start(mpidr, secondary, 0) {
            fail(format_args!("CPU_ON({mpidr:#x}) = {error}"));
        }
    }
    for (index, ready) in READY.iter().enumerate().take(count).skip(1) {
        if !wait_until(START_TIMEOUT_MS, || ready.load(Ordering::Acquire)) {
            fail(format_args!("vCPU {index} did not come up"));
        }
    }
    interrupts::enable();

    // 1. Ping-pong between vCPUs 0 and 1.
    let wanted = PINGS_WANTED.load(Ordering::Relaxed);
    send(SGI_PING, SgiTarget::List(1 << 1));
    wait_until(PING_PONG_TIMEOUT_MS, || {
        PONGS.load(Ordering::Acquire) >= wanted
    });
    let (pings, pongs) = (PINGS.load(Ordering::Acquire), PONGS.load(Ordering::Acquire));
    println!(
        "vgic-sgi: ping-pong: pings {pings}, pongs {pongs}, lost {}",
        (2 * wanted).saturating_sub(pings + pongs)
    );
    let mut passed = pings == wanted && pongs == wanted;

    // 2. Every vCPU sends to its target list and to all but itself.
    for (sender, done) in DONE.iter().enumerate().take(count) {
        TURN.store(sender, Ordering::Release);
        if sender == 0 {
            if let Err(problem) = send_rounds() {
                fail(format_args!("vCPU 0 as sender: {problem}"));
            }
        } else {
            send(SGI_COMMAND, SgiTarget::List(1 << sender));
            if !wait_until(
                DELIVERY_TIMEOUT_MS * ROUNDS.load(Ordering::Relaxed) * 2,
                || done.load(Ordering::Acquire),
            ) {
                fail(format_args!("vCPU {sender} did not finish sending"));
            }
        }
    }
    TURN.store(NOBODY, Ordering::Release);
    wait_until(QUIET_MS, || false);

    let rounds = ROUNDS.load(Ordering::Relaxed);
    for index in 0..count {
        let list_expected = rounds
            * (0..count)
                .filter(|&sender| in_list(sender, index, count))
                .count() as u64;
        let all_expected = rounds * (count as u64 - 1);
        let list = LIST_TAKEN[index].load(Ordering::Acquire);
        let all = ALL_TAKEN[index].load(Ordering::Acquire);
        let wrong = WRONG_SOURCE[index].load(Ordering::Acquire);
        println!(
            "vgic-sgi: vCPU {index}: target-list {list} (expected {list_expected}), all-but-self {all} (expected {all_expected}), wrong source {wrong}"
        );
        passed &= list == list_expected && all == all_expected && wrong == 0;
    }
    let other = OTHER_TAKEN.load(Ordering::Acquire);
    let (unhandled, last) = gic::unhandled();
    if other != 0 || unhandled != 0 {
        println!(
            "vgic-sgi: FAIL: {other} unexpected SGIs, {unhandled} unhandled interrupts (last {last:?})"
        );
        passed = false;
    }
    if passed {
        println!("vgic-sgi: PASS");
        exit(exit_status::SUCCESS)
    }
    println!("vgic-sgi: FAIL");
    exit(exit_status::FAILURE)
}

/// Whether `sender`'s target list holds vCPU `index`: every other vCPU
/// after the sender, (sender + 1), (sender + 3), ... modulo `count`.
fn in_list(sender: usize, index: usize, count: usize) -> bool {
    let distance = (index + count - sender) % count;
    distance % 2 == 1
}

fn list_mask(sender: usize, count: usize) -> u16 {
    (0..count)
        .filter(|&index| in_list(sender, index, count))
        .fold(0, |mask, index| mask | (1 << index))
}

fn enable_sgis() {
    for sgi in SGIS {
        if let Err(error) = gic::enable_interrupt(sgi, Config::DEFAULT) {
            fail(format_args!("enable SGI {sgi}: {error}"));
        }
    }
}

/// A vCPU other than 0: its GIC interface is up (smp::start); enable its
/// SGIs, say it is ready, and send when it is its turn.
fn secondary(_: usize) -> ! {
    let me = cpu::index();
    enable_sgis();
    interrupts::enable();
    READY[me].store(true, Ordering::Release);
    loop {
        if TURN.load(Ordering::Acquire) == me && !DONE[me].load(Ordering::Acquire) {
            if let Err(problem) = send_rounds() {
                fail(format_args!("vCPU {me} as sender: {problem}"));
            }
            DONE[me].store(true, Ordering::Release);
        }
        interrupts::wait();
    }
}

/// This vCPU's turn: `rounds` times its target list, then `rounds` times
/// all-but-self, each time waiting until every target took it.
fn send_rounds() -> Result<(), &'static str> {
    let me = cpu::index();
    let count = VCPUS.load(Ordering::Acquire);
    let mask = list_mask(me, count);
    for _ in 0..ROUNDS.load(Ordering::Relaxed) {
        let before: [u64; MAX_VCPUS] =
            core::array::from_fn(|index| LIST_TAKEN[index].load(Ordering::Acquire));
        send(SGI_LIST, SgiTarget::List(mask));
        let arrived = wait_until(DELIVERY_TIMEOUT_MS, || {
            (0..count)
                .filter(|&index| mask & (1 << index) != 0)
                .all(|index| LIST_TAKEN[index].load(Ordering::Acquire) > before[index])
        });
        if !arrived {
            return Err("a target-list SGI did not arrive");
        }
    }
    for _ in 0..ROUNDS.load(Ordering::Relaxed) {
        let before: [u64; MAX_VCPUS] =
            core::array::from_fn(|index| ALL_TAKEN[index].load(Ordering::Acquire));
        send(SGI_ALL_BUT_SELF, SgiTarget::AllButSelf);
        let arrived = wait_until(DELIVERY_TIMEOUT_MS, || {
            (0..count)
                .filter(|&index| index != me)
                .all(|index| ALL_TAKEN[index].load(Ordering::Acquire) > before[index])
        });
        if !arrived {
            return Err("an all-but-self SGI did not arrive");
        }
    }
    Ok(())
}

fn send(sgi: u32, target: SgiTarget) {
    if let Err(error) = gic::send_sgi(sgi, target) {
        fail(format_args!("send SGI {sgi}: {error}"));
    }
}

/// Every SGI of the test, on whichever vCPU takes it.
fn on_sgi(interrupt: Interrupt) {
    let me = cpu::index();
    let expected_source = |source: usize| {
        if VERSION_IS_V2.load(Ordering::Relaxed) && interrupt.source != Some(source) {
            WRONG_SOURCE[me].fetch_add(1, Ordering::Relaxed);
        }
    };
    match interrupt.intid {
        SGI_COMMAND => {}
        SGI_PING if me == 1 => {
            expected_source(0);
            PINGS.fetch_add(1, Ordering::AcqRel);
            send(SGI_PONG, SgiTarget::List(1 << 0));
        }
        SGI_PONG if me == 0 => {
            expected_source(1);
            let pongs = PONGS.fetch_add(1, Ordering::AcqRel) + 1;
            if pongs < PINGS_WANTED.load(Ordering::Relaxed) {
                send(SGI_PING, SgiTarget::List(1 << 1));
            }
        }
        SGI_LIST | SGI_ALL_BUT_SELF => {
            let sender = TURN.load(Ordering::Acquire);
            let count = VCPUS.load(Ordering::Acquire);
            let meant = sender != NOBODY
                && sender != me
                && (interrupt.intid == SGI_ALL_BUT_SELF || in_list(sender, me, count));
            if !meant {
                OTHER_TAKEN.fetch_add(1, Ordering::Relaxed);
                return;
            }
            expected_source(sender);
            if interrupt.intid == SGI_LIST {
                LIST_TAKEN[me].fetch_add(1, Ordering::AcqRel);
            } else {
                ALL_TAKEN[me].fetch_add(1, Ordering::AcqRel);
            }
        }
        _ => {
            OTHER_TAKEN.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Polls `condition` (waiting for interrupts in between when they are
/// unmasked) until it holds or `timeout_ms` passes.
fn wait_until(timeout_ms: u64, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Deadline::after_ms(timeout_ms);
    loop {
        if condition() {
            return true;
        }
        if deadline.has_passed() {
            return false;
        }
        core::hint::spin_loop();
    }
}

fn fail(message: core::fmt::Arguments<'_>) -> ! {
    println!("vgic-sgi: FAIL: {message}");
    exit(exit_status::FAILURE)
}
