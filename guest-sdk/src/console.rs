//! The guest console: the PL011 at `0x0900_0000`, polled, output only.
//!
//! [`crate::print!`] and [`crate::println!`] format straight to the UART
//! while holding one lock (with IRQs masked), so a line printed by one
//! vCPU is never split by another's, and interrupt handlers may print. Newlines go out as CR LF, as a terminal expects.

use core::fmt::{self, Write};

use spin::Mutex;

use crate::arch;

/// Serialises output between vCPUs. It guards no data: the UART itself is
/// the shared resource.
static CONSOLE_LOCK: Mutex<()> = Mutex::new(());

/// How often the exception and panic reports try for the lock before they
/// write without it (the vCPU they interrupt may be the one holding it).
const EMERGENCY_LOCK_ATTEMPTS: u32 = 1_000_000;

/// Writes to the UART; holds no state.
struct Uart;

impl Write for Uart {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        write_translated(text, arch::console_write_byte);
        Ok(())
    }
}

/// Sends `text` to `put` byte by byte, with each `\n` preceded by `\r`.
fn write_translated(text: &str, mut put: impl FnMut(u8)) {
    for byte in text.bytes() {
        if byte == b'\n' {
            put(b'\r');
        }
        put(byte);
    }
}

/// What [`crate::print!`] calls. IRQs are masked while the lock is held,
/// so an interrupt handler that prints cannot wait for a lock its own vCPU
/// holds.
pub fn print_args(args: fmt::Arguments<'_>) {
    crate::interrupts::without(|| {
        let _guard = CONSOLE_LOCK.lock();
        // Writing to the UART cannot fail; only a Display impl can, and
        // then there is nothing better to do than to carry on.
        let _ = Uart.write_fmt(args);
    });
}

/// Prints even if the console lock cannot be had: for the exception and
/// panic reports, which may interrupt the lock's holder on this vCPU.
pub(crate) fn print_args_emergency(args: fmt::Arguments<'_>) {
    let _guard = (0..EMERGENCY_LOCK_ATTEMPTS).find_map(|_| CONSOLE_LOCK.try_lock());
    let _ = Uart.write_fmt(args);
}

/// The PL011's interrupt registers (PL011 TRM 3.3.10..3.3.13), for guests
/// that test the UART's interrupt (`gic::UART_INTID`). The console itself
/// stays polled: it never needs these.
pub mod uart_interrupts {
    use crate::arch;

    /// The PL011 of the guest interface (and of QEMU `virt`).
    const BASE: usize = 0x0900_0000;
    const IMSC: usize = 0x38;
    const RIS: usize = 0x3C;
    const MIS: usize = 0x40;
    const ICR: usize = 0x44;

    /// The receive interrupt (RXIM/RXRIS/RXMIS/RXIC).
    pub const RX: u32 = 1 << 4;
    /// The transmit interrupt (TXIM/...): asserted while the transmit FIFO
    /// is below its trigger level (Tessera: while it is not full).
    pub const TX: u32 = 1 << 5;

    fn read(offset: usize) -> u32 {
        // SAFETY: a 32-bit register of the guest's PL011; reading the mask
        // and status registers has no side effects.
        unsafe { arch::mmio_read32(BASE + offset) }
    }

    fn write(offset: usize, value: u32) {
        // SAFETY: IMSC and ICR of the guest's PL011: writing them changes
        // which causes interrupt, nothing else.
        unsafe { arch::mmio_write32(BASE + offset, value) }
    }

    /// UARTIMSC: the causes that raise the interrupt.
    #[must_use]
    pub fn enabled() -> u32 {
        read(IMSC)
    }

    /// Sets UARTIMSC to `causes`.
    pub fn set_enabled(causes: u32) {
        write(IMSC, causes);
    }

    /// UARTRIS: the causes present, enabled or not.
    #[must_use]
    pub fn raw_status() -> u32 {
        read(RIS)
    }

    /// UARTMIS: the causes present and enabled (what drives the line).
    #[must_use]
    pub fn masked_status() -> u32 {
        read(MIS)
    }

    /// UARTICR: clears `causes` (those that stay true come back).
    pub fn clear(causes: u32) {
        write(ICR, causes);
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::vec::Vec;

    use super::*;

    fn translated(text: &str) -> Vec<u8> {
        let mut out = Vec::new();
        write_translated(text, |byte| out.push(byte));
        out
    }

    #[test]
    fn newlines_become_crlf() {
        assert_eq!(translated("a\nb\n"), b"a\r\nb\r\n");
        assert_eq!(translated("no newline"), b"no newline");
        assert_eq!(translated(""), b"");
    }
}
