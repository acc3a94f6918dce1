//! The hypervisor console: a polled PL011 driver and the `log` backend.
//!
//! Lines are written whole under one lock so output from different CPUs
//! never interleaves mid-line. The crash path uses `emergency_writer`,
//! which skips the lock: a CPU that faults while holding it must still be
//! able to report.

use core::fmt::{self, Write};

use spin::Mutex;
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
        let registers = self.registers();
        while registers.flags.is_set(Flags::TRANSMIT_FIFO_FULL) {
            core::hint::spin_loop();
        }
        registers.data.set(u32::from(byte));
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

static CONSOLE: Mutex<Option<Pl011>> = Mutex::new(None);

/// Takes the board's UART as the console.
pub fn init(uart_base: usize) {
    // SAFETY: the board description names this UART as the hypervisor
    // console; nothing else drives it, and it is mapped as device memory.
    *CONSOLE.lock() = Some(unsafe { Pl011::new(uart_base) });
}

/// Prints formatted text under the console lock, with IRQs masked so that an
/// interrupt handler on this CPU cannot deadlock on the lock.
pub fn print(arguments: fmt::Arguments<'_>) {
    let were_enabled = arch::disable_interrupts();
    if let Some(uart) = CONSOLE.lock().as_mut() {
        let _ = uart.write_fmt(arguments);
    }
    if were_enabled {
        arch::enable_interrupts();
    }
}

/// Waits for the console's last byte to go out.
pub fn flush() {
    if let Some(uart) = CONSOLE.lock().as_ref() {
        uart.flush();
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
