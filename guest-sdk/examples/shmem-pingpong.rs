//! Ping-pong between two guests through one vdev-shmem region, every reply
//! sent from the interrupt handler.
//!
//! Both guests create-or-attach the region (so either may boot first; the
//! first creator's size wins and both print it). The ping side waits until
//! the peer is attached, writes round 1 to the region and notifies it; the
//! pong side's handler reads the round, checks it is the next one, writes
//! it back and notifies the sender; the ping side's handler checks the
//! echo and sends the next round, until `rounds`. A lost notification
//! stalls the chain until the time limit; data that arrives out of order
//! with its notify shows as a data error.
//!
//! Bootargs: `role=ping` or `role=pong` (required); optional `rounds=N`
//! (default 1000, the same on both), `pages=N` (the size asked for,
//! default 1), `name=REGION` (default `pingpong`), `delay_ms=N` (wait
//! before connecting, default 0), `timeout_ms=N` (default 60000).
//!
//! Output (ping; the pong side prints the same with `pong`):
//!
//! ```text
//! shmem-pingpong: ping: GICv3, vdev-shmem at 0x100000000, vector 40
//! shmem-pingpong: ping: region "pingpong" index 0, 1 pages (asked 1), control page 0x100010000
//! shmem-pingpong: ping: peer index 1, attached {0,1}
//! shmem-pingpong: ping: rounds 1000/1000, received 1000 from {1}, sent 1000, delivered {1}, data errors 0, other wake-ups 1
//! shmem-pingpong: ping: PASS rounds 1000
//! ```
//!
//! A failure ends with `shmem-pingpong: <role>: FAIL ...` and exit status 1.
#![cfg_attr(target_os = "none", no_std)]
#![no_main]

use core::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use spin::Once;
use tessera_guest_sdk::bootargs::{self, Bootargs};
use tessera_guest_sdk::device_tree::DeviceTree;
use tessera_guest_sdk::gic::{self, Interrupt};
use tessera_guest_sdk::shmem::{self, Connection, Factory, PeerSet};
use tessera_guest_sdk::time::{self, Deadline};
use tessera_guest_sdk::{entry, exit, exit_status, interrupts, println};

entry!(main);

const PRIORITY: u8 = 0x80;
/// Where the ping side writes the round, and where the pong side echoes it
/// (a cache line apart: each side writes its own).
const PING_WORD: usize = 0;
const PONG_WORD: usize = 64;

static CONNECTION: Once<Connection> = Once::new();
static IS_PING: AtomicBool = AtomicBool::new(false);
static ROUNDS: AtomicU32 = AtomicU32::new(0);
/// Ping: the round in flight. Pong: the last round echoed.
static ROUND: AtomicU32 = AtomicU32::new(0);
static RECEIVED: AtomicU32 = AtomicU32::new(0);
static SENT: AtomicU32 = AtomicU32::new(0);
static SENDERS_SEEN: AtomicU32 = AtomicU32::new(0);
static DATA_ERRORS: AtomicU32 = AtomicU32::new(0);
static OTHER_WAKEUPS: AtomicU32 = AtomicU32::new(0);
static DONE: AtomicBool = AtomicBool::new(false);

fn main(_device_tree: usize) -> ! {
    let tree = DeviceTree::boot()
        .unwrap_or_else(|error| fail("?", format_args!("no device tree: {error}")));
    let args = Bootargs::new(tree.bootargs().unwrap_or(""));
    let role = match args.get("role") {
        Some("ping") => "ping",
        Some("pong") => "pong",
        _ => fail("?", format_args!("bootargs need role=ping or role=pong")),
    };
    let number = |key: &str, default: u64| match args.get(key) {
        None => default,
        Some(text) => bootargs::parse_number(text)
            .unwrap_or_else(|error| fail(role, format_args!("bad {key}: {error}"))),
    };
    let rounds = number("rounds", 1000).clamp(1, u64::from(u32::MAX)) as u32;
    let pages = number("pages", 1).clamp(1, u64::from(u32::MAX)) as u32;
    let delay_ms = number("delay_ms", 0);
    let timeout_ms = number("timeout_ms", 60_000);
    let name = args.get("name").unwrap_or("pingpong");
    IS_PING.store(role == "ping", Ordering::Relaxed);
    ROUNDS.store(rounds, Ordering::Relaxed);

    let layout = gic::init_from_device_tree()
        .unwrap_or_else(|error| fail(role, format_args!("GIC: {error}")));
    let device =
        shmem::first_device(&tree).unwrap_or_else(|error| fail(role, format_args!("{error}")));
    println!(
        "shmem-pingpong: {role}: {}, vdev-shmem at {:#x}, vector {}",
        layout.version,
        device.factory_address(),
        device.intid()
    );
    device
        .enable_interrupt(on_vector, PRIORITY)
        .unwrap_or_else(|error| fail(role, format_args!("vector: {error}")));
    let mut factory =
        Factory::open(device).unwrap_or_else(|error| fail(role, format_args!("{error}")));
    time::delay_ms(delay_ms);
    let connection = factory
        .create(name.as_bytes(), pages)
        .unwrap_or_else(|error| fail(role, format_args!("create \"{name}\": {error}")));
    println!(
        "shmem-pingpong: {role}: region \"{}\" index {}, {} pages (asked {pages}), control page {:#x}",
        connection.name(),
        connection.index(),
        connection.pages(),
        connection.control_address()
    );
    let connection = CONNECTION.call_once(|| connection);

    // Peers attached before this connection raised nothing here: look once
    // (with IRQs masked, as the handler runs), then let the handler work.
    service();
    interrupts::enable();
    let deadline = Deadline::after_ms(timeout_ms);
    let attached = shmem::wait_until(Some(deadline), || connection.attached().len() >= 2)
        .map(|()| connection.attached())
        .unwrap_or_else(|_| fail(role, format_args!("the peer did not attach")));
    let peer = attached.without(connection.index());
    println!(
        "shmem-pingpong: {role}: peer index {}, attached {attached}",
        peer.first().unwrap_or(0)
    );

    if role == "ping" {
        interrupts::without(|| {
            ROUND.store(1, Ordering::Relaxed);
            send(connection, 1, peer);
        });
    }
    let finished = shmem::wait_until(Some(deadline), || DONE.load(Ordering::Acquire)).is_ok();
    interrupts::disable();

    let round = ROUND.load(Ordering::Relaxed);
    let received = RECEIVED.load(Ordering::Relaxed);
    let sent = SENT.load(Ordering::Relaxed);
    let errors = DATA_ERRORS.load(Ordering::Relaxed);
    println!(
        "shmem-pingpong: {role}: rounds {round}/{rounds}, received {received} from {}, sent {sent}, delivered {}, data errors {errors}, other wake-ups {}",
        PeerSet::from_bits(SENDERS_SEEN.load(Ordering::Relaxed) as u16),
        connection.delivered(),
        OTHER_WAKEUPS.load(Ordering::Relaxed)
    );
    let problem = if !finished {
        Some("timed out: a notification was lost or the peer stopped")
    } else if errors != 0 {
        Some("data did not match its notification")
    } else if received != rounds || sent != rounds || round != rounds {
        Some("the counts are not the round count")
    } else {
        None
    };
    match problem {
        None => {
            println!("shmem-pingpong: {role}: PASS rounds {rounds}");
            exit(exit_status::SUCCESS)
        }
        Some(problem) => {
            println!("shmem-pingpong: {role}: FAIL rounds {round}/{rounds}: {problem}");
            exit(exit_status::FAILURE)
        }
    }
}

/// The vector's handler: reading the status lowers the line.
fn on_vector(_: Interrupt) {
    service();
}

/// Reads the status and answers the peer's notify, if there is one. Runs
/// with IRQs masked (in the handler, or once from `main`).
fn service() {
    let Some(connection) = CONNECTION.get() else {
        return;
    };
    connection.poll();
    let signals = connection.take_signals();
    let senders = signals.senders.without(connection.index());
    if senders.is_empty() {
        OTHER_WAKEUPS.fetch_add(1, Ordering::Relaxed);
        return;
    }
    SENDERS_SEEN.fetch_or(u32::from(senders.bits()), Ordering::Relaxed);
    RECEIVED.fetch_add(1, Ordering::Relaxed);
    let data = connection.data();
    let rounds = ROUNDS.load(Ordering::Relaxed);
    if IS_PING.load(Ordering::Relaxed) {
        let round = ROUND.load(Ordering::Relaxed);
        if data.read_u32(PONG_WORD) != Ok(round) {
            DATA_ERRORS.fetch_add(1, Ordering::Relaxed);
        }
        if round < rounds {
            ROUND.store(round + 1, Ordering::Relaxed);
            send(connection, round + 1, senders);
        } else {
            DONE.store(true, Ordering::Release);
        }
    } else {
        let expected = ROUND.load(Ordering::Relaxed) + 1;
        let round = data.read_u32(PING_WORD).unwrap_or(0);
        if round != expected {
            DATA_ERRORS.fetch_add(1, Ordering::Relaxed);
        }
        ROUND.store(round, Ordering::Relaxed);
        let _ = data.write_u32(PONG_WORD, round);
        SENT.fetch_add(1, Ordering::Relaxed);
        connection.notify(senders);
        if round >= rounds {
            DONE.store(true, Ordering::Release);
        }
    }
}

/// Ping: writes `round` and notifies `peer`.
fn send(connection: &Connection, round: u32, peer: PeerSet) {
    let _ = connection.data().write_u32(PING_WORD, round);
    SENT.fetch_add(1, Ordering::Relaxed);
    connection.notify(peer);
}

fn fail(role: &str, message: core::fmt::Arguments<'_>) -> ! {
    println!("shmem-pingpong: {role}: FAIL: {message}");
    exit(exit_status::FAILURE)
}
