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
//! `hop_every=N` (pong only, which then needs 2 vCPUs): the vector is
//! routed to vCPU 1 at first, and every N rounds the handler moves it to
//! the other vCPU (while the interrupt it is handling is still active),
//! before it replies; so rounds 1..N are handled on vCPU 1, N+1..2N on
//! vCPU 0, and so on, and the pong side also prints
//! `pong: handled on vCPU 0: A, vCPU 1: B, hops H`.
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
use tessera_guest_sdk::smp::{self, Vcpus};
use tessera_guest_sdk::time::{self, Deadline};
use tessera_guest_sdk::{cpu, entry, exit, exit_status, interrupts, println};

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
/// Pong with `hop_every`: the rounds between hops (0: no hops), the
/// vector, the rounds handled on each vCPU, the hops made, vCPU 1 up.
static HOP_EVERY: AtomicU32 = AtomicU32::new(0);
static VECTOR: AtomicU32 = AtomicU32::new(0);
static HANDLED_ON: [AtomicU32; 2] = [AtomicU32::new(0), AtomicU32::new(0)];
static HOPS: AtomicU32 = AtomicU32::new(0);
static SECONDARY_READY: AtomicBool = AtomicBool::new(false);

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
    let hop_every = number("hop_every", 0).min(u64::from(u32::MAX)) as u32;
    if hop_every != 0 && role != "pong" {
        fail(role, format_args!("hop_every is for the pong side"));
    }
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
    if hop_every != 0 {
        start_second_vcpu(&tree, device.intid());
        HOP_EVERY.store(hop_every, Ordering::Relaxed);
    }
    let mut factory =
        Factory::open(device).unwrap_or_else(|error| fail(role, format_args!("{error}")));
    time::delay_ms(delay_ms);
    let connection = factory
        .create(name.as_bytes(), pages)
        .unwrap_or_else(|error| fail(role, format_args!("create \"{name}\": {error}")));
    // Where the handler finds it at once: a peer may notify right away.
    let connection = CONNECTION.call_once(|| connection);
    println!(
        "shmem-pingpong: {role}: region \"{}\" index {}, {} pages (asked {pages}), control page {:#x}",
        connection.name(),
        connection.index(),
        connection.pages(),
        connection.control_address()
    );

    // Peers attached before this connection raised nothing here: look once
    // (with IRQs masked, as the handler runs), then let the handler work.
    // Not with hops: the vector already goes to vCPU 1, whose handler
    // takes whatever comes, and the two must not run `service` at once.
    if hop_every == 0 {
        service();
    }
    interrupts::enable();
    let deadline = Deadline::after_ms(timeout_ms);
    let attached = wait_until(hop_every != 0, deadline, || {
        connection.attached().len() >= 2
    })
    .map(|()| connection.attached())
    .unwrap_or_else(|()| fail(role, format_args!("the peer did not attach")));
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
    let finished = wait_until(hop_every != 0, deadline, || DONE.load(Ordering::Acquire)).is_ok();
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
    let hops = HOPS.load(Ordering::Relaxed);
    let handled = HANDLED_ON
        .each_ref()
        .map(|count| count.load(Ordering::Relaxed));
    if hop_every != 0 {
        println!(
            "shmem-pingpong: {role}: handled on vCPU 0: {}, vCPU 1: {}, hops {hops}",
            handled[0], handled[1]
        );
    }
    // Rounds 1..N on vCPU 1, the next N on vCPU 0, and so on.
    let expected_on = |vcpu: u32| {
        (1..=rounds)
            .filter(|round| ((round - 1) / hop_every.max(1)) % 2 == 1 - vcpu)
            .count() as u32
    };
    let problem = if !finished {
        Some("timed out: a notification was lost or the peer stopped")
    } else if errors != 0 {
        Some("data did not match its notification")
    } else if received != rounds || sent != rounds || round != rounds {
        Some("the counts are not the round count")
    } else if hop_every != 0 && (handled[0] != expected_on(0) || handled[1] != expected_on(1)) {
        Some("a round was handled on a vCPU the vector was not routed to")
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

/// Waits until `ready` or `deadline`. Asleep in WFI, woken by the
/// vector's interrupt, unless `hops`: the handler may then run on the
/// other vCPU, which wakes nobody here, so this vCPU checks without
/// sleeping.
fn wait_until(hops: bool, deadline: Deadline, mut ready: impl FnMut() -> bool) -> Result<(), ()> {
    if !hops {
        return shmem::wait_until(Some(deadline), ready).map_err(|_| ());
    }
    loop {
        if ready() {
            return Ok(());
        }
        if deadline.has_passed() {
            return Err(());
        }
        core::hint::spin_loop();
    }
}

/// Pong with `hop_every`: starts vCPU 1 and routes the vector there.
fn start_second_vcpu(tree: &DeviceTree<'_>, vector: u32) {
    let vcpus = Vcpus::from_device_tree(tree);
    if vcpus.count() < 2 || cpu::index() != 0 {
        fail(
            "pong",
            format_args!("hop_every needs 2 vCPUs, booting on vCPU 0"),
        );
    }
    VECTOR.store(vector, Ordering::Relaxed);
    for mpidr in vcpus.others().take(1) {
        if let Err(error) = smp::start(mpidr, secondary, 0) {
            fail("pong", format_args!("CPU_ON({mpidr:#x}) = {error}"));
        }
    }
    let deadline = Deadline::after_ms(2000);
    while !SECONDARY_READY.load(Ordering::Acquire) {
        if deadline.has_passed() {
            fail("pong", format_args!("vCPU 1 did not come up"));
        }
        core::hint::spin_loop();
    }
    gic::route_spi(vector, 1).unwrap_or_else(|error| fail("pong", format_args!("route: {error}")));
}

/// vCPU 1: its GIC interface is up (`smp::start`); it takes the vector
/// while it is routed here, until the run is done.
fn secondary(_: usize) -> ! {
    interrupts::enable();
    SECONDARY_READY.store(true, Ordering::Release);
    loop {
        interrupts::wait();
    }
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
        let hop_every = HOP_EVERY.load(Ordering::Relaxed);
        if hop_every != 0 {
            let me = cpu::index().min(1);
            HANDLED_ON[me].fetch_add(1, Ordering::Relaxed);
            // The last round of a stretch moves the vector to the other
            // vCPU before the reply, with this instance still active here.
            if round.is_multiple_of(hop_every) && round < rounds {
                let vector = VECTOR.load(Ordering::Relaxed);
                if gic::route_spi(vector, 1 - me).is_err() {
                    DATA_ERRORS.fetch_add(1, Ordering::Relaxed);
                }
                HOPS.fetch_add(1, Ordering::Relaxed);
            }
        }
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
