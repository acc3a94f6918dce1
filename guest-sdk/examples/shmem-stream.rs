//! A stream of bytes from one guest to another through the SDK's message
//! channel in a vdev-shmem region, with a checksum on both ends.
//!
//! The producer sends `bytes` pseudo-random bytes (xorshift64*, a fixed
//! seed) in messages as large as a slot holds, then closes the channel; the
//! consumer receives until the channel is closed, compares every byte with
//! the same generator and counts the differences. Both print the FNV-1a
//! (64-bit) checksum of what they sent or received, which must match. Both
//! wait in WFI with IRQs masked whenever the ring is full or empty.
//!
//! Bootargs: `role=producer` or `role=consumer` (required); optional
//! `bytes=N` (a number, `K` or `M` suffix allowed; default 16M),
//! `pages=N` (region size, default 64), `slot=N` (slot bytes, a multiple of
//! 8, default 4096; the same on both ends), `name=REGION` (default
//! `stream`), `timeout_ms=N` (longest wait for the other side, default
//! 60000).
//!
//! Output:
//!
//! ```text
//! shmem-stream: producer: region "stream" index 0, 64 pages, 63 slots of 4088 bytes
//! shmem-stream: producer: sent 16777216 bytes in 4105 messages, checksum 0x1f0b3c5d2e4a6978, 5123 ms
//! shmem-stream: producer: PASS
//! shmem-stream: consumer: region "stream" index 1, 64 pages, 63 slots of 4088 bytes
//! shmem-stream: consumer: received 16777216 bytes in 4105 messages, checksum 0x1f0b3c5d2e4a6978, wrong bytes 0, 5130 ms
//! shmem-stream: consumer: PASS
//! ```
//!
//! A failure prints `shmem-stream: <role>: FAIL: ...` and exits with 1.
#![cfg_attr(target_os = "none", no_std)]
#![no_main]

use tessera_guest_sdk::bootargs::{self, Bootargs};
use tessera_guest_sdk::device_tree::DeviceTree;
use tessera_guest_sdk::gic::{self, Interrupt};
use tessera_guest_sdk::shmem::channel::{ChannelError, Receiver, Sender};
use tessera_guest_sdk::shmem::{self, Factory};
use tessera_guest_sdk::time::{self, Deadline};
use tessera_guest_sdk::{entry, exit, exit_status, println};

entry!(main);

const PRIORITY: u8 = 0x80;
/// The largest slot the message buffer takes.
const MAX_SLOT: usize = 16 * 1024;
/// The message buffer: in BSS, as the vCPU's stack is only 16 KiB.
static BUFFER: spin::Mutex<[u8; MAX_SLOT]> = spin::Mutex::new([0; MAX_SLOT]);
const SEED: u64 = 0x9E37_79B9_7F4A_7C15;
const FNV_START: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0100_0000_01b3;

/// xorshift64*, eight bytes per step, lowest byte first.
struct Stream {
    state: u64,
    word: u64,
    left: u32,
}

impl Stream {
    const fn new() -> Self {
        Self {
            state: SEED,
            word: 0,
            left: 0,
        }
    }

    fn next_byte(&mut self) -> u8 {
        if self.left == 0 {
            self.state ^= self.state >> 12;
            self.state ^= self.state << 25;
            self.state ^= self.state >> 27;
            self.word = self.state.wrapping_mul(0x2545_F491_4F6C_DD1D);
            self.left = 8;
        }
        let byte = self.word as u8;
        self.word >>= 8;
        self.left -= 1;
        byte
    }
}

fn fnv(hash: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(hash, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(FNV_PRIME)
    })
}

fn main(_device_tree: usize) -> ! {
    let tree = DeviceTree::boot()
        .unwrap_or_else(|error| fail("?", format_args!("no device tree: {error}")));
    let args = Bootargs::new(tree.bootargs().unwrap_or(""));
    let role = match args.get("role") {
        Some("producer") => "producer",
        Some("consumer") => "consumer",
        _ => fail(
            "?",
            format_args!("bootargs need role=producer or role=consumer"),
        ),
    };
    let number = |key: &str, default: u64| match args.get(key) {
        None => default,
        Some(text) => {
            size(text).unwrap_or_else(|| fail(role, format_args!("bad {key}: \"{text}\"")))
        }
    };
    let bytes = number("bytes", 16 << 20);
    let pages = number("pages", 64).clamp(1, u64::from(u32::MAX)) as u32;
    let slot = number("slot", 4096) as usize;
    let timeout_ms = number("timeout_ms", 60_000);
    let name = args.get("name").unwrap_or("stream");
    if slot > MAX_SLOT {
        fail(role, format_args!("slot is at most {MAX_SLOT}"));
    }

    gic::init_from_device_tree().unwrap_or_else(|error| fail(role, format_args!("GIC: {error}")));
    let device =
        shmem::first_device(&tree).unwrap_or_else(|error| fail(role, format_args!("{error}")));
    // IRQs stay masked: the vector only wakes WFI; the channel polls.
    device
        .enable_interrupt(never_taken, PRIORITY)
        .unwrap_or_else(|error| fail(role, format_args!("vector: {error}")));
    let mut factory =
        Factory::open(device).unwrap_or_else(|error| fail(role, format_args!("{error}")));
    let connection = factory
        .create(name.as_bytes(), pages)
        .unwrap_or_else(|error| fail(role, format_args!("create \"{name}\": {error}")));
    let mut buffer = BUFFER.lock();
    let buffer = &mut *buffer;
    let start = time::ticks();
    let elapsed_ms = || time::ticks_to_ms(time::ticks() - start, time::frequency());

    if role == "producer" {
        let mut sender = Sender::new(&connection, slot)
            .unwrap_or_else(|error| fail(role, format_args!("channel: {error}")));
        report_layout(role, &connection, sender.layout());
        let mut stream = Stream::new();
        let mut hash = FNV_START;
        let mut sent = 0_u64;
        let max = sender.layout().max_message() as u64;
        while sent < bytes {
            let length = (bytes - sent).min(max) as usize;
            for byte in &mut buffer[..length] {
                *byte = stream.next_byte();
            }
            sender
                .send(&buffer[..length], Some(Deadline::after_ms(timeout_ms)))
                .unwrap_or_else(|error| fail(role, format_args!("send at byte {sent}: {error}")));
            hash = fnv(hash, &buffer[..length]);
            sent += length as u64;
        }
        let messages = sender.sent();
        sender
            .close()
            .unwrap_or_else(|error| fail(role, format_args!("close: {error}")));
        println!(
            "shmem-stream: producer: sent {sent} bytes in {messages} messages, checksum {hash:#018x}, {} ms",
            elapsed_ms()
        );
        println!("shmem-stream: producer: PASS");
        exit(exit_status::SUCCESS)
    }

    let mut receiver = Receiver::new(&connection, slot)
        .unwrap_or_else(|error| fail(role, format_args!("channel: {error}")));
    report_layout(role, &connection, receiver.layout());
    let mut stream = Stream::new();
    let mut hash = FNV_START;
    let mut received = 0_u64;
    let mut wrong = 0_u64;
    loop {
        match receiver.receive(buffer, Some(Deadline::after_ms(timeout_ms))) {
            Ok(length) => {
                for &byte in &buffer[..length] {
                    if byte != stream.next_byte() {
                        wrong += 1;
                    }
                }
                hash = fnv(hash, &buffer[..length]);
                received += length as u64;
            }
            Err(ChannelError::Closed) => break,
            Err(error) => fail(role, format_args!("receive at byte {received}: {error}")),
        }
    }
    println!(
        "shmem-stream: consumer: received {received} bytes in {} messages, checksum {hash:#018x}, wrong bytes {wrong}, {} ms",
        receiver.received(),
        elapsed_ms()
    );
    if received != bytes || wrong != 0 {
        fail(role, format_args!("expected {bytes} bytes, all as sent"));
    }
    println!("shmem-stream: consumer: PASS");
    exit(exit_status::SUCCESS)
}

fn report_layout(role: &str, connection: &shmem::Connection, layout: shmem::channel::Layout) {
    println!(
        "shmem-stream: {role}: region \"{}\" index {}, {} pages, {} slots of {} bytes",
        connection.name(),
        connection.index(),
        connection.pages(),
        layout.slots(),
        layout.max_message()
    );
}

/// A number with an optional `K` or `M` suffix.
fn size(text: &str) -> Option<u64> {
    let (digits, scale) = match text.as_bytes().last() {
        Some(b'K' | b'k') => (&text[..text.len() - 1], 1 << 10),
        Some(b'M' | b'm') => (&text[..text.len() - 1], 1 << 20),
        _ => (text, 1),
    };
    bootargs::parse_number(digits).ok()?.checked_mul(scale)
}

fn never_taken(_: Interrupt) {
    fail("?", format_args!("the vector was taken with IRQs masked"));
}

fn fail(role: &str, message: core::fmt::Arguments<'_>) -> ! {
    println!("shmem-stream: {role}: FAIL: {message}");
    exit(exit_status::FAILURE)
}
