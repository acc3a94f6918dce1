//! The guest console: the PL011 at `0x0900_0000`, polled, output only.
//!
//! [`crate::print!`] and [`crate::println!`] format straight to the UART
//! while holding one lock, so a line printed by one vCPU is never split by
//! another's. Newlines go out as CR LF, as a terminal expects.

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

/// What [`crate::print!`] calls.
pub fn print_args(args: fmt::Arguments<'_>) {
    let _guard = CONSOLE_LOCK.lock();
    // Writing to the UART cannot fail; only a Display impl can, and then
    // there is nothing better to do than to carry on.
    let _ = Uart.write_fmt(args);
}

/// Prints even if the console lock cannot be had: for the exception and
/// panic reports, which may interrupt the lock's holder on this vCPU.
pub(crate) fn print_args_emergency(args: fmt::Arguments<'_>) {
    let _guard = (0..EMERGENCY_LOCK_ATTEMPTS).find_map(|_| CONSOLE_LOCK.try_lock());
    let _ = Uart.write_fmt(args);
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
