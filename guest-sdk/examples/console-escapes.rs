//! A hostile console: prints carriage returns, escape sequences (colours,
//! cursor moves, erase line), backspaces, a C1 control and lines imitating
//! the hypervisor and another VM, then exits with success. The hypervisor
//! must show every byte of it escaped, under this VM's tag
//! (`tests/guests/console-escapes.toml` checks the serial output).
#![cfg_attr(target_os = "none", no_std)]
#![no_main]

use tessera_guest_sdk::{entry, exit, exit_status, print, println};

entry!(main);

fn main(_device_tree: usize) -> ! {
    // A carriage return, then what the hypervisor prints when a VM stops.
    println!("\rtessera: vm other: stopped cleanly");
    // Another VM's tag over this one's.
    println!("\r[other] forged");
    // Erase the line (with the tag on it), back to its start, and forge.
    println!("\x1b[2K\r[other] erased and forged");
    // Colour codes.
    println!("\x1b[31mred\x1b[0m forged colour");
    // Cursor up and left, over the line before.
    println!("up\x1b[1A\x1b[9Dforged over the line above");
    // Backspaces over the tag's width, then a hypervisor message.
    println!("forged\x08\x08\x08\x08\x08\x08tessera: vm other: exited with status 0");
    // A line feed inside one print: two lines, each tagged.
    print!("split\ntessera: vm other: stopped cleanly\n");
    // A tab, a literal backslash sequence and the 8-bit CSI (U+009B).
    println!("tab\tand literal \\x1b and \u{9b}2K forged");
    // A line longer than the line buffer, all escapes: it arrives as two
    // lines, each escaped to four times its length.
    for _ in 0..300 {
        print!("\x1b");
    }
    println!();
    exit(exit_status::SUCCESS)
}
