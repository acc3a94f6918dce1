//! The vdev-shmem benchmark guest of `make bench` (docs/benchmarks.md):
//! two of it, one VM each on two CPUs (bench/systems/shmem.toml), talking
//! through one region at the register level (the ABI,
//! ../shared/design/vdev-shmem-abi.md), with the SDK's GIC driver for the
//! interrupt. Only under Tessera: there is no native equivalent.
//!
//! Bootargs: `role=receiver|sender`, `name=NAME` (default `bench`).
//!
//! - The **receiver** sets up its handler for the device's vector, creates
//!   the region (create-or-attach, one page) and waits in WFI. Its handler reads the physical counter
//!   first thing, reads its status (which lowers the line), and for a
//!   notification writes that counter value into the region and notifies
//!   the senders back; the sender's mode word in the region says whether
//!   it also reads its CPU's exit count there, or ends.
//! - The **sender** attaches with `find`, so the receiver is always the
//!   creator and the sender its peer whichever boots first: while the
//!   region does not exist yet it waits 1 ms in WFI and asks again. Then,
//!   201 times: waits 20,000 ticks in WFI on
//!   its virtual timer (so that the receiver is back in WFI), reads the
//!   physical counter (after an ISB) and at once notifies the receiver,
//!   and waits in WFI for the reply; its handler reads the counter first
//!   thing too, then its status. `shmem.notify_oneway` is the receiver's
//!   handler entry less the sender's reading, `shmem.pingpong_roundtrip`
//!   the sender's handler entry less it. The physical counter because
//!   each VM's virtual counter has its own offset (CNTVOFF_EL2 is the
//!   physical count when the VM was built), while CNTPCT_EL0 is one clock
//!   for both CPUs.
//! - Where the hypervisor counts guest exits (the `exit-counting` image
//!   answers TESSERA_BENCH_EXIT_COUNT), 201 more round trips count them:
//!   the sender reads its CPU's count before its notify and after the
//!   reply, the receiver its own in each handler; each side's own call is
//!   taken off. `shmem.exits_per_roundtrip` is the sum of both sides.
//!
//! Output of the sender (under Tessera each line carries a `[vm] ` tag):
//!
//! ```text
//! bench: cntfrq=1000000000
//! bench: shmem.notify_oneway min=.. median=.. max=..
//! bench: shmem.pingpong_roundtrip min=.. median=.. max=..
//! bench: shmem.exits_per_roundtrip min=.. median=.. max=..   (exit-counting images)
//! bench: done
//! ```
//!
//! The receiver prints `bench: done` when told to end. Anything unexpected
//! prints `bench: FAIL: ...` and exits 1.
#![cfg_attr(target_os = "none", no_std)]
#![no_main]

use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tessera_guest_sdk::bench::Summary;
use tessera_guest_sdk::bootargs::Bootargs;
use tessera_guest_sdk::device_tree::DeviceTree;
use tessera_guest_sdk::gic::{self, Config, Interrupt, Trigger};
use tessera_guest_sdk::timer::Timer;
use tessera_guest_sdk::{entry, exit, exit_status, interrupts, println, tessera, time};

entry!(main);

/// Round trips timed, and round trips whose exits are counted.
const ROUNDS: usize = 201;
/// How long the sender waits before each round trip, in counter ticks
/// (instructions): far more than the receiver needs to get back to WFI.
const GAP_TICKS: u64 = 20_000;
const PAGE: u64 = 0x1000;

/// Factory page offsets and the signature ("QVMG2GSM").
const SIGNATURE: u64 = 0x4d53_4732_474d_5651;
const FACTORY_SHMEM: u64 = 0x08;
const FACTORY_VECTOR: u64 = 0x10;
const FACTORY_STATUS: u64 = 0x14;
const FACTORY_SIZE: u64 = 0x18;
const FACTORY_NAME: u64 = 0x1C;
const FACTORY_FIND: u64 = 0x3C;
const STATUS_OK: u32 = 0;
const STATUS_DOES_NOT_EXIST: u32 = 6;
/// How often the sender looks for the region, 1 ms apart, before it gives
/// up.
const FIND_ATTEMPTS: u32 = 1000;
/// Control page offsets.
const CONTROL_STATUS: u64 = 0x0;
const CONTROL_INDEX: u64 = 0x4;
const CONTROL_NOTIFY: u64 = 0x8;
/// Status: sender bits below, the attached set above.
const SENDER_BITS: u32 = 0xFFFF;

/// The region's first data page, as 64-bit words: what the sender asks,
/// and what the receiver answers besides its notification.
const DATA_MODE: u64 = 0x00;
const DATA_RECEIVER_STAMP: u64 = 0x08;
const DATA_RECEIVER_EXITS: u64 = 0x10;
/// Modes: reply; reply with the receiver's exit count; end.
const MODE_TIME: u64 = 1;
const MODE_COUNT: u64 = 2;
const MODE_END: u64 = 3;

/// The priority of both interrupts (one at a time: the handlers never
/// nest).
const PRIORITY: u8 = 0x80;

/// This guest's control page, for the handlers.
static CONTROL: AtomicU64 = AtomicU64::new(0);
/// The sender: the counter at its handler's entry for the last reply, 0
/// until one came.
static REPLIED_AT: AtomicU64 = AtomicU64::new(0);
/// The sender: its timer fired.
static GAP_OVER: AtomicBool = AtomicBool::new(false);
/// The receiver: the sender said to end.
static TOLD_TO_END: AtomicBool = AtomicBool::new(false);

fn read32(address: u64) -> u32 {
    // SAFETY: a vdev-shmem factory or control page of this VM, or its
    // region's data, at an address from its device tree or the factory's
    // answer; aligned.
    unsafe { (address as *const u32).read_volatile() }
}

fn read64(address: u64) -> u64 {
    // SAFETY: as in `read32`.
    unsafe { (address as *const u64).read_volatile() }
}

fn write32(address: u64, value: u32) {
    // SAFETY: as in `read32`.
    unsafe { (address as *mut u32).write_volatile(value) };
}

fn write64(address: u64, value: u64) {
    // SAFETY: as in `read32`.
    unsafe { (address as *mut u64).write_volatile(value) };
}

fn fail(what: core::fmt::Arguments<'_>) -> ! {
    println!("bench: FAIL: {what}");
    exit(exit_status::FAILURE)
}

fn main(_device_tree: usize) -> ! {
    let tree =
        DeviceTree::boot().unwrap_or_else(|error| fail(format_args!("device tree: {error}")));
    let args = Bootargs::new(tree.bootargs().unwrap_or(""));
    let sender = match args.get("role") {
        Some("sender") => true,
        Some("receiver") => false,
        other => fail(format_args!("role {other:?}: expected sender or receiver")),
    };
    let name = args.get("name").unwrap_or("bench");
    let factory = tree
        .compatible_regs("qvm,guest_shm")
        .and_then(|regs| regs[0].clone())
        .unwrap_or_else(|| fail(format_args!("no qvm,guest_shm node")))
        .start;
    if read64(factory) != SIGNATURE {
        fail(format_args!("factory signature {:#x}", read64(factory)));
    }

    // The handlers first: the region's first connection may be signalled
    // as soon as it exists.
    let vector = read32(factory + FACTORY_VECTOR);
    gic::init_from_device_tree().unwrap_or_else(|error| fail(format_args!("GIC: {error}")));
    let level = Config {
        priority: PRIORITY,
        trigger: Some(Trigger::Level),
    };
    let handler = if sender { on_reply } else { on_request };
    if let Err(error) =
        gic::register_handler(vector, handler).and_then(|()| gic::enable_interrupt(vector, level))
    {
        fail(format_args!("vector {vector}: {error}"));
    }
    if sender
        && let Err(error) =
            gic::register_handler(gic::VIRTUAL_TIMER_INTID, on_gap_over).and_then(|()| {
                gic::enable_interrupt(gic::VIRTUAL_TIMER_INTID, Config::priority(PRIORITY))
            })
    {
        fail(format_args!("virtual timer: {error}"));
    }

    let control = connect(factory, name, sender);
    CONTROL.store(control, Ordering::Release);
    if sender {
        run_sender(control);
    }
    wait_for(|| TOLD_TO_END.load(Ordering::Acquire));
    println!("bench: done");
    exit(exit_status::SUCCESS)
}

/// The receiver creates (or attaches to) the one-page region `name`
/// through the factory page, the sender finds it, waiting for it to exist;
/// returns the connection's control page.
fn connect(factory: u64, name: &str, sender: bool) -> u64 {
    let mut field = [0_u8; 32];
    if name.is_empty() || name.len() >= field.len() {
        fail(format_args!("name {name}: 1 to 31 bytes"));
    }
    field[..name.len()].copy_from_slice(name.as_bytes());
    // A word at a time: the guest runs with its MMU off (aligned accesses
    // only).
    for (index, word) in field.chunks_exact(4).enumerate() {
        let value = u32::from_le_bytes([word[0], word[1], word[2], word[3]]);
        write32(factory + FACTORY_NAME + 4 * index as u64, value);
    }
    let mut attempts = 0;
    loop {
        if sender {
            write32(factory + FACTORY_FIND, 1);
        } else {
            write32(factory + FACTORY_SIZE, 1);
        }
        match read32(factory + FACTORY_STATUS) {
            STATUS_OK => return read64(factory + FACTORY_SHMEM),
            STATUS_DOES_NOT_EXIST if sender && attempts < FIND_ATTEMPTS => {
                attempts += 1;
                wait_ticks(time::ms_to_ticks(1, time::frequency()));
            }
            status => fail(format_args!("request for {name}: status {status}")),
        }
    }
}

/// Waits `ticks` in WFI, on the virtual timer.
fn wait_ticks(ticks: u64) {
    GAP_OVER.store(false, Ordering::Relaxed);
    Timer::Virtual.arm_after(ticks);
    wait_for(|| GAP_OVER.load(Ordering::Acquire));
}

/// Sleeps in WFI until `done`. IRQs stay masked while `done` is checked,
/// so an interrupt cannot slip in between the check and the WFI (a WFI
/// wakes for a pending interrupt even while it is masked); each wake-up
/// unmasks them for the interrupt to be taken.
fn wait_for(done: impl Fn() -> bool) {
    while !done() {
        interrupts::wait();
        interrupts::enable();
        interrupts::disable();
    }
}

/// The sender's side of everything, up to telling the receiver to end.
fn run_sender(control: u64) -> ! {
    println!("bench: cntfrq={}", time::frequency());
    let index = read32(control + CONTROL_INDEX);
    // Reading the status also takes any change it had unread.
    let attached = read_status(control) >> 16;
    let peers = attached & !(1 << index);
    if peers.count_ones() != 1 {
        fail(format_args!(
            "attached set {attached:#x}, index {index}: one peer expected"
        ));
    }
    let data = control + PAGE;

    let mut oneway = [0_u64; ROUNDS];
    let mut roundtrip = [0_u64; ROUNDS];
    for round in 0..ROUNDS {
        let (sent, replied) = round_trip(control, peers, MODE_TIME);
        let received = read64(data + DATA_RECEIVER_STAMP);
        match (received.checked_sub(sent), replied.checked_sub(received)) {
            (Some(there), Some(_)) => {
                oneway[round] = there;
                roundtrip[round] = replied - sent;
            }
            _ => fail(format_args!(
                "round {round}: sent at {sent}, received at {received}, reply at {replied}"
            )),
        }
    }
    let delivered = read32(control + CONTROL_NOTIFY);
    if delivered != peers {
        fail(format_args!(
            "notify read back {delivered:#x}, expected {peers:#x}"
        ));
    }
    println!("bench: shmem.notify_oneway {}", summarise(&mut oneway));
    println!(
        "bench: shmem.pingpong_roundtrip {}",
        summarise(&mut roundtrip)
    );

    if tessera::bench_exit_count().is_ok() {
        let mut exits = count_exits(control, peers);
        println!("bench: shmem.exits_per_roundtrip {}", summarise(&mut exits));
    }

    write64(data + DATA_MODE, MODE_END);
    notify(control, peers);
    println!("bench: done");
    exit(exit_status::SUCCESS)
}

/// One round trip in `mode`, after the gap: the counter just before the
/// notify, and at the sender's handler entry for the reply.
fn round_trip(control: u64, peers: u32, mode: u64) -> (u64, u64) {
    wait_ticks(GAP_TICKS);
    REPLIED_AT.store(0, Ordering::Relaxed);
    write64(control + PAGE + DATA_MODE, mode);
    let sent = stamp_and_notify(control + CONTROL_NOTIFY, peers);
    wait_for(|| REPLIED_AT.load(Ordering::Acquire) != 0);
    (sent, REPLIED_AT.load(Ordering::Acquire))
}

/// Guest exits of both sides per round trip: this CPU's before the notify
/// and after the reply (less the second reading's own call), plus the
/// receiver's from one handler's reading to the next (less its own call).
/// One round more than the samples, for the receiver's last difference.
fn count_exits(control: u64, peers: u32) -> [u64; ROUNDS] {
    let read_count = || {
        tessera::bench_exit_count()
            .unwrap_or_else(|error| fail(format_args!("exit count: {error:?}")))
    };
    let mut own = [0_u64; ROUNDS];
    let mut receiver = [0_u64; ROUNDS + 1];
    for (round, receiver_count) in receiver.iter_mut().enumerate() {
        wait_ticks(GAP_TICKS);
        REPLIED_AT.store(0, Ordering::Relaxed);
        write64(control + PAGE + DATA_MODE, MODE_COUNT);
        let before = read_count();
        notify(control, peers);
        wait_for(|| REPLIED_AT.load(Ordering::Acquire) != 0);
        let after = read_count();
        if let Some(slot) = own.get_mut(round) {
            *slot = after.saturating_sub(before).saturating_sub(1);
        }
        *receiver_count = read64(control + PAGE + DATA_RECEIVER_EXITS);
    }
    let mut exits = [0_u64; ROUNDS];
    for ((sample, own), readings) in exits.iter_mut().zip(own).zip(receiver.windows(2)) {
        let Some(theirs) = readings[1]
            .checked_sub(readings[0])
            .and_then(|count| count.checked_sub(1))
        else {
            fail(format_args!(
                "the receiver's exit count went from {} to {}",
                readings[0], readings[1]
            ));
        };
        *sample = own + theirs;
    }
    exits
}

// The control-page accesses of the round trips keep their data in x2, a
// caller-saved register: the hypervisor serves a trapped access through
// x0..x18 on its device fast path, and one through x19..x29 (which the
// compiler may pick for a value live across calls) on the full path,
// about 100 instructions longer. Pinning the register measures the path
// a device access is meant to take, whatever the compiler chose.

/// The physical counter after an ISB, and at once the notify store: the
/// instruction after the reading is the one that traps.
#[cfg(target_arch = "aarch64")]
fn stamp_and_notify(notify: u64, peers: u32) -> u64 {
    let stamp: u64;
    // SAFETY: `notify` is this guest's control page's notify register (a
    // trapped device access, no memory of this program); reading the
    // counter has no side effects (Tessera lets EL1 read CNTPCT_EL0).
    unsafe {
        core::arch::asm!(
            "isb",
            "mrs {stamp}, cntpct_el0",
            "str w2, [{notify}]",
            stamp = out(reg) stamp,
            notify = in(reg) notify,
            in("x2") u64::from(peers),
            options(nostack, preserves_flags),
        );
    }
    stamp
}

/// A notify store, the value in x2.
#[cfg(target_arch = "aarch64")]
fn notify(control: u64, peers: u32) {
    // SAFETY: the notify register of this guest's control page (a trapped
    // device access, no memory of this program).
    unsafe {
        core::arch::asm!(
            "str w2, [{notify}]",
            notify = in(reg) control + CONTROL_NOTIFY,
            in("x2") u64::from(peers),
            options(nostack, preserves_flags),
        );
    }
}

/// A status load into x2 (which takes the sender bits it returns).
#[cfg(target_arch = "aarch64")]
fn read_status(control: u64) -> u32 {
    let status: u64;
    // SAFETY: the status register of this guest's control page (a trapped
    // device access, no memory of this program).
    unsafe {
        core::arch::asm!(
            "ldr w2, [{status}]",
            status = in(reg) control + CONTROL_STATUS,
            out("x2") status,
            options(nostack, preserves_flags),
        );
    }
    status as u32
}

/// Host builds only compile the example.
#[cfg(not(target_arch = "aarch64"))]
fn stamp_and_notify(notify: u64, peers: u32) -> u64 {
    write32(notify, peers);
    time::physical_ticks()
}

#[cfg(not(target_arch = "aarch64"))]
fn notify(control: u64, peers: u32) {
    write32(control + CONTROL_NOTIFY, peers);
}

#[cfg(not(target_arch = "aarch64"))]
fn read_status(control: u64) -> u32 {
    read32(control + CONTROL_STATUS)
}

/// The receiver's handler: counter first, then status; answers a
/// notification as the sender's mode word asks.
fn on_request(_interrupt: Interrupt) {
    // The counter first, the rest in a tail call: nothing of a frame comes
    // before the reading (the figure ends at the handler's first
    // instruction).
    handle_request(time::physical_ticks());
}

#[inline(never)]
fn handle_request(entered: u64) {
    let control = CONTROL.load(Ordering::Acquire);
    let senders = read_status(control) & SENDER_BITS;
    if senders == 0 {
        // A peer attached or detached.
        return;
    }
    let data = control + PAGE;
    match read64(data + DATA_MODE) {
        MODE_END => {
            TOLD_TO_END.store(true, Ordering::Release);
            return;
        }
        MODE_COUNT => {
            let count = tessera::bench_exit_count().unwrap_or(0);
            write64(data + DATA_RECEIVER_EXITS, count);
        }
        _ => {}
    }
    write64(data + DATA_RECEIVER_STAMP, entered);
    // The hypervisor orders the data before the signal (a `dsb ish` on the
    // notify path), as the ABI promises.
    notify(control, senders);
}

/// The sender's handler for the reply: counter first, then status.
fn on_reply(_interrupt: Interrupt) {
    // As `on_request`: the counter first.
    handle_reply(time::physical_ticks());
}

#[inline(never)]
fn handle_reply(entered: u64) {
    let control = CONTROL.load(Ordering::Acquire);
    if read_status(control) & SENDER_BITS != 0 {
        REPLIED_AT.store(entered, Ordering::Release);
    }
}

/// The sender's timer: stopped (its level line drops before the EOI).
fn on_gap_over(_interrupt: Interrupt) {
    Timer::Virtual.stop();
    GAP_OVER.store(true, Ordering::Release);
}

fn summarise(samples: &mut [u64]) -> Summary {
    Summary::of(samples).unwrap_or_else(|| fail(format_args!("no samples")))
}
