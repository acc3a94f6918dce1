//! The hypervisor console: a polled PL011 driver, the queue guests' lines
//! wait in (`console/queue.rs`), and the `log` backend.
//!
//! A VM's line is copied into the queue and the caller moves on; whoever
//! finds the UART free moves queued bytes into its FIFO without waiting
//! (after a guest line, on a virtual UART flag read that finds the VM's
//! share full, on every EL2 timer tick). So no vCPU ever waits for another
//! VM's output. The hypervisor's own messages are written at once, after
//! everything queued before them, so the console reads in the order things
//! happened. Lines never interleave mid-line. The crash path uses
//! `emergency_writer`, which skips the locks: a CPU that faults while
//! holding one must still be able to report.
//!
//! Locks: `UART` (whoever moves bytes into the UART), then `QUEUE`; a line
//! is queued under `QUEUE` alone, so it never waits for the UART.

use core::fmt::{self, Write};
use core::sync::atomic::{AtomicUsize, Ordering};

use tessera_hypervisor::boot::manifest::MAX_VMS;
use tessera_hypervisor::console::escape::Escaped;
use tessera_hypervisor::console::queue::{CAPACITY, ConsoleQueue, DrainStop};
use tessera_hypervisor::sync::Mutex;
use tock_registers::interfaces::{Readable, Writeable};
use tock_registers::register_bitfields;
use tock_registers::register_structs;
use tock_registers::registers::{ReadOnly, ReadWrite};

use crate::arch;

register_bitfields! {u32,
    /// UARTFR, PL011 TRM 3.3.3.
    Flags [
        TRANSMIT_FIFO_FULL OFFSET(5) NUMBITS(1) [],
        BUSY OFFSET(3) NUMBITS(1) [],
    ]
}

register_structs! {
    /// The PL011 registers the console uses (PL011 TRM table 3-1).
    Pl011Registers {
        (0x000 => data: ReadWrite<u32>),
        (0x004 => _reserved0),
        (0x018 => flags: ReadOnly<u32, Flags::Register>),
        (0x01C => _reserved1),
        (0x1000 => @END),
    }
}

/// A PL011 used for output only. The firmware (or QEMU) has already set the
/// baud rate and enabled the transmitter.
pub struct Pl011 {
    registers: *const Pl011Registers,
}

// SAFETY: the pointer names MMIO registers, which any CPU may access; all
// access to a shared `Pl011` goes through the console lock.
unsafe impl Send for Pl011 {}

impl Pl011 {
    /// # Safety
    /// `base` must be the address of a PL011's register block, mapped as
    /// device memory (or the MMU off), and not driven by anything else.
    pub const unsafe fn new(base: usize) -> Self {
        Self {
            registers: base as *const Pl011Registers,
        }
    }

    fn registers(&self) -> &Pl011Registers {
        // SAFETY: `new`'s contract makes the pointer valid for the whole run.
        unsafe { &*self.registers }
    }

    pub fn write_byte(&self, byte: u8) {
        while !self.try_write_byte(byte) {
            core::hint::spin_loop();
        }
    }

    /// Whether the transmit FIFO is full.
    pub fn transmit_full(&self) -> bool {
        self.registers().flags.is_set(Flags::TRANSMIT_FIFO_FULL)
    }

    /// Writes `byte` if the transmit FIFO has room; false if it is full.
    pub fn try_write_byte(&self, byte: u8) -> bool {
        let registers = self.registers();
        if registers.flags.is_set(Flags::TRANSMIT_FIFO_FULL) {
            return false;
        }
        registers.data.set(u32::from(byte));
        true
    }

    /// Waits until the last byte has left the shift register, so that a
    /// power-off right after does not cut the final line.
    pub fn flush(&self) {
        while self.registers().flags.is_set(Flags::BUSY) {
            core::hint::spin_loop();
        }
    }
}

impl Write for Pl011 {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        for byte in text.bytes() {
            if byte == b'\n' {
                self.write_byte(b'\r');
            }
            self.write_byte(byte);
        }
        Ok(())
    }
}

/// The UART, and the right to move bytes into it.
static UART: Mutex<Option<Pl011>> = Mutex::new(None);
/// Guests' lines waiting for the UART.
static QUEUE: Mutex<Option<ConsoleQueue<'static>>> = Mutex::new(None);
/// What each VM has queued, readable without the queue lock: a virtual
/// UART's flag register is read often, and must not wait on it.
static QUEUED_BY_VM: [AtomicUsize; MAX_VMS] = [const { AtomicUsize::new(0) }; MAX_VMS];

/// The queue's storage. It needs no zeroing (bytes are written before they
/// are read), so it stays out of the BSS that boot clears.
#[unsafe(link_section = ".bss.noinit.console_queue")]
static mut QUEUE_STORAGE: [u8; CAPACITY] = [0; CAPACITY];

/// Bytes moved per hold of the queue lock: about one UART FIFO, so a VM
/// queueing a line never waits long for the lock, even where the UART
/// takes bytes as fast as they come (QEMU).
const BYTES_PER_HOLD: usize = 32;

/// Takes the board's UART as the console.
pub fn init(uart_base: usize) {
    let storage = &raw mut QUEUE_STORAGE;
    // SAFETY: called once, on the boot CPU, before anything else uses the
    // console; the storage is referred to by the queue alone from here on.
    *QUEUE.lock() = Some(ConsoleQueue::new(unsafe { &mut *storage }));
    // SAFETY: the board description names this UART as the hypervisor
    // console; nothing else drives it, and it is mapped as device memory.
    *UART.lock() = Some(unsafe { Pl011::new(uart_base) });
}

/// Runs `body` with IRQs masked, so that an interrupt handler on this CPU
/// (which drains the queue on every tick) cannot deadlock on a console lock
/// this CPU holds.
fn with_interrupts_masked<T>(body: impl FnOnce() -> T) -> T {
    let were_enabled = arch::disable_interrupts();
    let result = body();
    if were_enabled {
        arch::enable_interrupts();
    }
    result
}

/// How long a caller keeps draining.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Drain {
    /// While the UART's FIFO has room.
    WhileRoom,
    /// Until the queue is empty, waiting for the FIFO as needed — but no
    /// more than one queue's worth, so a VM that keeps queueing cannot keep
    /// a hypervisor message from going out.
    UntilEmpty,
}

/// Moves queued bytes into the UART as `how` says, about a FIFO's worth
/// per hold of the queue lock (a line is always finished once started).
/// Returns what stopped it (`Limit` for a spent budget, always between
/// lines).
fn drain(uart: &Pl011, how: Drain) -> DrainStop {
    let mut budget = CAPACITY;
    loop {
        let stop = {
            let mut queue = QUEUE.lock();
            let Some(queue) = queue.as_mut() else {
                return DrainStop::Empty;
            };
            if queue.is_empty() {
                return DrainStop::Empty;
            }
            let mut moved = 0;
            let stop = queue.drain(BYTES_PER_HOLD.min(budget), |byte| {
                let taken = uart.try_write_byte(byte);
                moved += usize::from(taken);
                taken
            });
            budget = budget.saturating_sub(moved);
            for (vm, queued) in QUEUED_BY_VM.iter().enumerate() {
                queued.store(queue.queued(vm), Ordering::Release);
            }
            stop
        };
        match (stop, how) {
            (DrainStop::Empty, _) => return DrainStop::Empty,
            (DrainStop::Limit, _) if budget == 0 => return DrainStop::Limit,
            (DrainStop::Limit, _) => {}
            (DrainStop::WriterFull, Drain::WhileRoom) => return DrainStop::WriterFull,
            // Wait for room without holding the queue, so VMs can go on
            // queueing; a line started is finished even past the budget.
            (DrainStop::WriterFull, Drain::UntilEmpty) => {
                while uart.transmit_full() {
                    core::hint::spin_loop();
                }
            }
        }
    }
}

fn queue_is_empty() -> bool {
    QUEUE.lock().as_ref().is_none_or(ConsoleQueue::is_empty)
}

/// Moves queued output into the UART if no other CPU is doing so, without
/// waiting for its FIFO.
pub fn try_drain() {
    with_interrupts_masked(|| {
        // Twice at most: this CPU is not everyone's console writer.
        for _ in 0..2 {
            let Some(guard) = UART.try_lock() else {
                // The holder looks at the queue again after it lets go.
                return;
            };
            let Some(uart) = guard.as_ref() else {
                return;
            };
            let stop = drain(uart, Drain::WhileRoom);
            drop(guard);
            // A line queued while this CPU held the UART, by a CPU whose
            // own try found it taken, would otherwise wait for a tick.
            if stop != DrainStop::Empty || queue_is_empty() {
                return;
            }
        }
    });
}

/// Prints a hypervisor message: after the guest output queued before it
/// (up to one queue's worth, waiting for the UART as needed), and whole.
pub fn print(arguments: fmt::Arguments<'_>) {
    with_interrupts_masked(|| {
        if let Some(uart) = UART.lock().as_mut() {
            drain(uart, Drain::UntilEmpty);
            let _ = uart.write_fmt(arguments);
        }
    });
    // See `try_drain`: lines queued meanwhile go out now, not at a tick.
    if !queue_is_empty() {
        try_drain();
    }
}

/// Queues a line of VM `vm` (named `name`) as `[name] text`, both escaped
/// (`escape`). `text` must hold no line breaks. Returns false, dropping it, when the VM's share of
/// the queue is full; the loss is reported before the VM's next line, or
/// when it stops ([`report_dropped_output`]).
pub fn queue_guest_line(vm: usize, name: &str, text: &[u8]) -> bool {
    let queued = with_interrupts_masked(|| {
        let mut queue = QUEUE.lock();
        let Some(queue) = queue.as_mut() else {
            return false;
        };
        let queued = queue.push_guest_line(vm, name, text);
        if let Some(mirror) = QUEUED_BY_VM.get(vm) {
            mirror.store(queue.queued(vm), Ordering::Release);
        }
        queued
    });
    try_drain();
    queued
}

/// Reports output VM `vm` lost and has not been told of yet (when it stops,
/// there is no next line to put the report before).
pub fn report_dropped_output(vm: usize, name: &str) {
    let dropped = with_interrupts_masked(|| {
        QUEUE
            .lock()
            .as_mut()
            .map_or(0, |queue| queue.take_dropped(vm))
    });
    if dropped > 0 {
        print(format_args!(
            "tessera: vm {}: {dropped} bytes of its output dropped (sent while the console was full)\n",
            Escaped::str(name)
        ));
    }
}

/// Whether a VM has room for one more line, given its counter from
/// [`guest_output_counter`] and its threshold from
/// `console::queue::ready_threshold`. This runs on every read of a virtual
/// UART's flag register, so it is one load; only when the VM is over its
/// threshold does it try to make room by draining, so a guest that polls
/// its UART's flags waits only as long as the console needs.
#[inline(always)]
pub fn guest_output_ready(queued: &AtomicUsize, threshold: usize) -> bool {
    if queued.load(Ordering::Acquire) <= threshold {
        return true;
    }
    drain_for_waiting_guest();
    queued.load(Ordering::Acquire) <= threshold
}

/// The counter of VM `vm`'s queued output that [`guest_output_ready`]
/// reads (a counter that stays 0 for an index past the last VM).
pub const fn guest_output_counter(vm: usize) -> &'static AtomicUsize {
    static NO_VM: AtomicUsize = AtomicUsize::new(0);
    if vm < MAX_VMS {
        &QUEUED_BY_VM[vm]
    } else {
        &NO_VM
    }
}

#[cold]
#[inline(never)]
fn drain_for_waiting_guest() {
    try_drain();
}

/// Writes out everything queued and waits for the UART's last byte to go
/// out (before power-off).
pub fn flush() {
    with_interrupts_masked(|| {
        if let Some(uart) = UART.lock().as_ref() {
            drain(uart, Drain::UntilEmpty);
            uart.flush();
        }
    });
}

/// On the crash path, after the report: writes out what guests had queued,
/// through `writer`, if no other CPU holds the queue (the crash path must
/// not wait on a lock). A corrupt queue is dropped, not followed.
pub fn drain_for_crash(writer: &Pl011) {
    if let Some(mut queue) = QUEUE.try_lock()
        && let Some(queue) = queue.as_mut()
    {
        queue.drain(CAPACITY, |byte| {
            writer.write_byte(byte);
            true
        });
    }
}

/// A writer for the crash path that does not take the console lock.
pub fn emergency_writer(uart_base: usize) -> Pl011 {
    // SAFETY: on the crash path this CPU is about to stop the machine; if it
    // interleaves with a line another CPU is printing, that is acceptable.
    unsafe { Pl011::new(uart_base) }
}

/// `println!` for the hypervisor console.
#[macro_export]
macro_rules! println {
    ($($argument:tt)*) => {
        $crate::console::print(format_args!("{}\n", format_args!($($argument)*)))
    };
}

/// The `log` backend: one line per record, prefixed with the CPU.
struct ConsoleLogger;

impl log::Log for ConsoleLogger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let cpu = arch::cpu_index();
        match record.level() {
            log::Level::Info => print(format_args!("tessera[cpu{cpu}]: {}\n", record.args())),
            level => print(format_args!(
                "tessera[cpu{cpu}] {level}: {}\n",
                record.args()
            )),
        }
    }

    fn flush(&self) {}
}

static LOGGER: ConsoleLogger = ConsoleLogger;

/// Routes `log` records to the console. Debug records (guest misbehaviour)
/// are off unless the image is built with `debug_assertions`.
pub fn init_logging() {
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(if cfg!(debug_assertions) {
        log::LevelFilter::Debug
    } else {
        log::LevelFilter::Info
    });
}
