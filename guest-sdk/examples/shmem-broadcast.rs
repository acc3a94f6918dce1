//! Selective signalling among three guests on one vdev-shmem region.
//!
//! Each guest (`role=0`, `1` or `2`) attaches to the region, writes its
//! connection index into it and waits until all three are attached. Then:
//!
//! 1. Guest 0 notifies guest 1's index only and prints the notify
//!    read-back, which must be exactly guest 1. Guest 1 must see sender bit
//!    guest 0.
//! 2. Once guest 1 has acknowledged (through the region), guest 0 asks
//!    guest 2 (through the region, which raises no interrupt) to look:
//!    guest 2's vector must not be pending and its status must hold no
//!    sender bit: it saw nothing of step 1.
//! 3. Guest 0 notifies all but itself (`0xffffffff`); the read-back must be
//!    guests 1 and 2, and each must see sender bit guest 0.
//!
//! The receivers wait in WFI with IRQs masked ([`Connection::wait`] polls
//! the status); nothing but the region passes between the guests besides
//! the notifies under test.
//!
//! Bootargs: `role=N` (required); optional `name=REGION` (default
//! `broadcast`), `timeout_ms=N` (default 30000).
//!
//! Output (indices depend on the order the guests attached):
//!
//! ```text
//! shmem-broadcast: guest 0: index 0, attached {0,1,2}; guest 1 is index 1, guest 2 is index 2
//! shmem-broadcast: guest 0: notified guest 1 only: read-back {1}
//! shmem-broadcast: guest 1: sender bits {0} (from guest 0)
//! shmem-broadcast: guest 2: before the broadcast: vector pending no, sender bits {}: saw nothing
//! shmem-broadcast: guest 0: notified all but me: read-back {1,2}
//! shmem-broadcast: guest 1: sender bits {0} (broadcast)
//! shmem-broadcast: guest 2: sender bits {0} (broadcast)
//! shmem-broadcast: guest 1: PASS
//! shmem-broadcast: guest 2: PASS
//! shmem-broadcast: guest 0: PASS
//! ```
//!
//! A failure prints `shmem-broadcast: guest N: FAIL: ...` and exits with 1.
#![cfg_attr(target_os = "none", no_std)]
#![no_main]

use tessera_guest_sdk::bootargs::{self, Bootargs};
use tessera_guest_sdk::device_tree::DeviceTree;
use tessera_guest_sdk::gic::{self, Interrupt};
use tessera_guest_sdk::shmem::{self, Connection, Data, Factory, PeerSet};
use tessera_guest_sdk::time::Deadline;
use tessera_guest_sdk::{entry, exit, exit_status, println};

entry!(main);

const GUESTS: usize = 3;
const PRIORITY: u8 = 0x80;

/// Region layout: per guest, its index + 1 (0 = not yet), then "ready"
/// (it saw all three attached and cleared its status), "acknowledged"
/// (the step it finished); guest 0's phase.
const INDEX_OF: usize = 0x00;
const READY: usize = 0x40;
const ACKNOWLEDGED: usize = 0x80;
const PHASE: usize = 0xC0;

const PHASE_SELECTIVE: u32 = 1;
const PHASE_LOOK: u32 = 2;
const PHASE_BROADCAST: u32 = 3;

fn main(_device_tree: usize) -> ! {
    let tree =
        DeviceTree::boot().unwrap_or_else(|error| fail(9, format_args!("no device tree: {error}")));
    let args = Bootargs::new(tree.bootargs().unwrap_or(""));
    let role = match args.get("role").map(bootargs::parse_number) {
        Some(Ok(role)) if (role as usize) < GUESTS => role as usize,
        _ => fail(9, format_args!("bootargs need role=0, 1 or 2")),
    };
    let timeout_ms = args
        .get("timeout_ms")
        .map_or(Ok(30_000), bootargs::parse_number)
        .unwrap_or_else(|error| fail(role, format_args!("bad timeout_ms: {error}")));
    let name = args.get("name").unwrap_or("broadcast");
    let deadline = Deadline::after_ms(timeout_ms);

    gic::init_from_device_tree().unwrap_or_else(|error| fail(role, format_args!("GIC: {error}")));
    let device =
        shmem::first_device(&tree).unwrap_or_else(|error| fail(role, format_args!("{error}")));
    // IRQs stay masked: the vector only wakes WFI; the handler never runs.
    device
        .enable_interrupt(never_taken, PRIORITY)
        .unwrap_or_else(|error| fail(role, format_args!("vector: {error}")));
    let vector = device.intid();
    let mut factory =
        Factory::open(device).unwrap_or_else(|error| fail(role, format_args!("{error}")));
    let connection = factory
        .create(name.as_bytes(), 1)
        .unwrap_or_else(|error| fail(role, format_args!("create \"{name}\": {error}")));
    let data = connection.data();
    write(
        role,
        &data,
        INDEX_OF + 4 * role,
        u32::from(connection.index()) + 1,
    );

    // Everyone attached, every attach change read: from here on a guest's
    // line is low and its status empty until someone notifies it.
    let attached = connection
        .wait_for_attached(GUESTS as u32, Some(deadline))
        .unwrap_or_else(|_| fail(role, format_args!("the others did not attach")));
    let _ = connection.take_signals();
    let mut index_of = [0_u8; GUESTS];
    for (guest, index) in index_of.iter_mut().enumerate() {
        let value = wait_for_word(role, &data, INDEX_OF + 4 * guest, deadline, |value| {
            value != 0
        });
        *index = (value - 1) as u8;
    }
    write(role, &data, READY + 4 * role, 1);
    if role == 0 {
        println!(
            "shmem-broadcast: guest 0: index {}, attached {attached}; guest 1 is index {}, guest 2 is index {}",
            index_of[0], index_of[1], index_of[2]
        );
    }

    match role {
        0 => guest_zero(&connection, &data, &index_of, deadline),
        _ => receiver(role, &connection, &data, index_of[0], vector, deadline),
    }
}

fn guest_zero(
    connection: &Connection,
    data: &Data<'_>,
    index_of: &[u8; GUESTS],
    deadline: Deadline,
) -> ! {
    for guest in 1..GUESTS {
        wait_for_word(0, data, READY + 4 * guest, deadline, |value| value == 1);
    }
    let mut passed = true;

    write(0, data, PHASE, PHASE_SELECTIVE);
    connection.notify(PeerSet::of(index_of[1]));
    let delivered = connection.delivered();
    println!("shmem-broadcast: guest 0: notified guest 1 only: read-back {delivered}");
    if delivered != PeerSet::of(index_of[1]) {
        println!(
            "shmem-broadcast: guest 0: FAIL: the read-back should be {{{}}}",
            index_of[1]
        );
        passed = false;
    }
    wait_for_word(0, data, ACKNOWLEDGED + 4, deadline, |value| {
        value == PHASE_SELECTIVE
    });

    write(0, data, PHASE, PHASE_LOOK);
    wait_for_word(0, data, ACKNOWLEDGED + 8, deadline, |value| {
        value == PHASE_LOOK
    });

    write(0, data, PHASE, PHASE_BROADCAST);
    connection.notify_all_but_me();
    let delivered = connection.delivered();
    println!("shmem-broadcast: guest 0: notified all but me: read-back {delivered}");
    let others = PeerSet::of(index_of[1]).with(index_of[2]);
    if delivered != others {
        println!("shmem-broadcast: guest 0: FAIL: the read-back should be {others}");
        passed = false;
    }
    for guest in 1..GUESTS {
        wait_for_word(0, data, ACKNOWLEDGED + 4 * guest, deadline, |value| {
            value == PHASE_BROADCAST
        });
    }
    finish(0, passed)
}

fn receiver(
    role: usize,
    connection: &Connection,
    data: &Data<'_>,
    sender: u8,
    vector: u32,
    deadline: Deadline,
) -> ! {
    let mut passed = true;
    if role == 1 {
        let senders = wait_for_senders(role, connection, deadline);
        println!("shmem-broadcast: guest 1: sender bits {senders} (from guest 0)");
        passed &= check(role, senders, sender);
        write(role, data, ACKNOWLEDGED + 4 * role, PHASE_SELECTIVE);
    } else {
        wait_for_word(role, data, PHASE, deadline, |phase| phase == PHASE_LOOK);
        let pending = gic::is_pending(vector).unwrap_or(true);
        let status = connection.poll();
        let signals = connection.take_signals();
        let senders = signals.senders;
        let saw_nothing = !pending && senders.is_empty();
        println!(
            "shmem-broadcast: guest 2: before the broadcast: vector pending {}, sender bits {senders}: {}",
            if pending { "yes" } else { "no" },
            if saw_nothing {
                "saw nothing"
            } else {
                "saw something"
            }
        );
        if !saw_nothing {
            println!(
                "shmem-broadcast: guest 2: FAIL: the selective notify reached guest 2 ({status})"
            );
            passed = false;
        }
        write(role, data, ACKNOWLEDGED + 4 * role, PHASE_LOOK);
    }
    let senders = wait_for_senders(role, connection, deadline);
    println!("shmem-broadcast: guest {role}: sender bits {senders} (broadcast)");
    passed &= check(role, senders, sender);
    write(role, data, ACKNOWLEDGED + 4 * role, PHASE_BROADCAST);
    finish(role, passed)
}

/// Waits (WFI, polling the status) for a notify; attach changes (a guest
/// that finished and stopped) are not one.
fn wait_for_senders(role: usize, connection: &Connection, deadline: Deadline) -> PeerSet {
    loop {
        match connection.wait(Some(deadline)) {
            Ok(signals) if !signals.senders.is_empty() => return signals.senders,
            Ok(_) => {}
            Err(_) => fail(role, format_args!("no notify came")),
        }
    }
}

fn check(role: usize, senders: PeerSet, sender: u8) -> bool {
    if senders == PeerSet::of(sender) {
        return true;
    }
    println!("shmem-broadcast: guest {role}: FAIL: the sender bits should be {{{sender}}}");
    false
}

/// Spins until the word at `offset` satisfies `done` (peers' writes to the
/// region raise no interrupt); returns it.
fn wait_for_word(
    role: usize,
    data: &Data<'_>,
    offset: usize,
    deadline: Deadline,
    done: impl Fn(u32) -> bool,
) -> u32 {
    loop {
        let value = data
            .read_u32(offset)
            .unwrap_or_else(|error| fail(role, format_args!("{error}")));
        if done(value) {
            return value;
        }
        if deadline.has_passed() {
            fail(
                role,
                format_args!("timed out waiting on the word at {offset:#x}"),
            );
        }
        core::hint::spin_loop();
    }
}

fn write(role: usize, data: &Data<'_>, offset: usize, value: u32) {
    data.write_u32(offset, value)
        .unwrap_or_else(|error| fail(role, format_args!("{error}")));
}

fn finish(role: usize, passed: bool) -> ! {
    if passed {
        println!("shmem-broadcast: guest {role}: PASS");
        exit(exit_status::SUCCESS)
    }
    println!("shmem-broadcast: guest {role}: FAIL");
    exit(exit_status::FAILURE)
}

fn never_taken(_: Interrupt) {
    fail(9, format_args!("the vector was taken with IRQs masked"));
}

fn fail(role: usize, message: core::fmt::Arguments<'_>) -> ! {
    println!("shmem-broadcast: guest {role}: FAIL: {message}");
    exit(exit_status::FAILURE)
}
