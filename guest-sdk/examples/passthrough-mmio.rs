//! Reads a physical device passed through to this VM: the PL031 real-time
//! clock of QEMU `virt` at 0x0901_0000, mapped into its stage 2 at its own
//! address (docs/system-image.md, "Passthrough"). The device's
//! identification registers must read as the PL031's, and its data
//! register (seconds since the epoch QEMU's RTC counts from) must not be
//! zero: the accesses reached the device, not an emulation.
//!
//! Then its interrupt: with the match register set to the current count
//! and the match interrupt unmasked, the RTC raises SPI 2 (INTID 34, as the
//! board's device tree says), which must reach this VM's handler exactly
//! once; the handler clears the cause (RTCICR).
//!
//! Output: `passthrough-mmio: PL031 at 0x9010000: PeriphID 0x31 0x10,
//! PCellID 0x0d 0xf0 0x05 0xb1, data register nonzero`, then
//! `passthrough-mmio: RTC interrupt INTID 34 taken 1 time(s), cause
//! cleared`, and the VM exits with status 0; otherwise
//! `passthrough-mmio: FAIL: ...` and status 1. A VM that was not given the
//! device takes an external abort at the first read (use `isolation` to
//! probe that).
//!
//! With the bootarg `role=listener` it touches no device: it enables INTID
//! 34 (or the `intid=N` of its bootargs) in its own GIC, waits while the owner's RTC fires, and reports that
//! the enable did not stick (the SPI is not its own) and that nothing
//! arrived: `passthrough-mmio: listener: INTID 34 enabled false, taken 0
//! time(s)`.
#![cfg_attr(target_os = "none", no_std)]
#![no_main]

use core::sync::atomic::{AtomicU32, Ordering};

use tessera_guest_sdk::bootargs::Bootargs;
use tessera_guest_sdk::device_tree::DeviceTree;
use tessera_guest_sdk::gic::{self, Config, Interrupt};
use tessera_guest_sdk::{entry, exit, exit_status, interrupts, println, time};

entry!(main);

/// QEMU virt's PL031.
const RTC: u64 = 0x0901_0000;
/// RTCDR, the data register: the current count.
const DATA: u64 = 0x000;
/// RTCPeriphID0 and 1, then RTCPCellID0..3 (PL031 TRM, section 3.3).
const PERIPH_ID: [u64; 2] = [0xFE0, 0xFE4];
const PCELL_ID: [u64; 4] = [0xFF0, 0xFF4, 0xFF8, 0xFFC];
const PL031_PERIPH_ID: [u32; 2] = [0x31, 0x10];
const PRIMECELL_ID: [u32; 4] = [0x0D, 0xF0, 0x05, 0xB1];

/// RTCMR, RTCIMSC, RTCMIS and RTCICR (PL031 TRM, section 3.3).
const MATCH: u64 = 0x004;
const INTERRUPT_MASK: u64 = 0x010;
const MASKED_STATUS: u64 = 0x018;
const INTERRUPT_CLEAR: u64 = 0x01C;
/// The PL031's SPI on QEMU `virt`: SPI 2.
const RTC_INTID: u32 = 34;

static TAKEN: AtomicU32 = AtomicU32::new(0);
static CAUSE_SEEN: AtomicU32 = AtomicU32::new(0);

fn write(offset: u64, value: u32) {
    let address = (RTC + offset) as *mut u32;
    // SAFETY: as in `read`; the RTC's match and interrupt registers are
    // this VM's to program.
    unsafe { address.write_volatile(value) };
}

fn on_rtc(_interrupt: Interrupt) {
    if read(MASKED_STATUS) & 1 != 0 {
        CAUSE_SEEN.fetch_add(1, Ordering::Relaxed);
    }
    write(INTERRUPT_MASK, 0);
    write(INTERRUPT_CLEAR, 1);
    TAKEN.fetch_add(1, Ordering::Relaxed);
}

fn set_up_interrupt(intid: u32) {
    if let Err(error) = gic::init_from_device_tree()
        .map(|_| ())
        .and_then(|()| gic::register_handler(intid, on_rtc))
        .and_then(|()| {
            gic::enable_interrupt(
                intid,
                Config {
                    priority: 0x80,
                    trigger: None,
                },
            )
        })
    {
        println!("passthrough-mmio: FAIL: cannot set up INTID {intid}: {error}");
        exit(exit_status::FAILURE)
    }
}

/// Waits `milliseconds` with IRQs unmasked.
fn wait_with_interrupts(milliseconds: u64) {
    interrupts::enable();
    let until = time::ticks() + time::frequency() / 1000 * milliseconds;
    while time::ticks() < until {
        core::hint::spin_loop();
    }
    interrupts::disable();
}

fn listener(intid: u32) -> ! {
    set_up_interrupt(intid);
    let enabled = gic::is_enabled(intid).unwrap_or(true);
    wait_with_interrupts(300);
    let taken = TAKEN.load(Ordering::Relaxed);
    println!("passthrough-mmio: listener: INTID {intid} enabled {enabled}, taken {taken} time(s)");
    if enabled || taken != 0 {
        println!("passthrough-mmio: FAIL: another VM's device interrupt reached this one");
        exit(exit_status::FAILURE)
    }
    exit(exit_status::SUCCESS)
}

fn read(offset: u64) -> u32 {
    let address = (RTC + offset) as *const u32;
    // SAFETY: the PL031's registers are passed through to this VM at this
    // address (its system configuration says so), and a 32-bit read of
    // these has no side effect.
    unsafe { address.read_volatile() }
}

fn main(_device_tree: usize) -> ! {
    let tree = DeviceTree::boot().ok();
    let bootargs = Bootargs::new(tree.as_ref().and_then(|tree| tree.bootargs()).unwrap_or(""));
    if bootargs.get("role") == Some("listener") {
        let intid = bootargs
            .get("intid")
            .and_then(|text| text.parse().ok())
            .unwrap_or(RTC_INTID);
        listener(intid)
    }
    let periph = PERIPH_ID.map(read);
    let pcell = PCELL_ID.map(read);
    let data = read(DATA);
    if periph != PL031_PERIPH_ID || pcell != PRIMECELL_ID {
        println!(
            "passthrough-mmio: FAIL: identification {periph:#04x?} {pcell:#04x?}, not the PL031's"
        );
        exit(exit_status::FAILURE)
    }
    if data == 0 {
        println!("passthrough-mmio: FAIL: the data register reads 0");
        exit(exit_status::FAILURE)
    }
    println!(
        "passthrough-mmio: PL031 at {RTC:#x}: PeriphID {:#04x} {:#04x}, PCellID {:#04x} {:#04x} \
         {:#04x} {:#04x}, data register nonzero",
        periph[0], periph[1], pcell[0], pcell[1], pcell[2], pcell[3]
    );
    set_up_interrupt(RTC_INTID);
    // A match at the current count: the RTC raises its interrupt at once.
    write(INTERRUPT_MASK, 1);
    write(MATCH, read(DATA));
    wait_with_interrupts(200);
    let (taken, seen) = (
        TAKEN.load(Ordering::Relaxed),
        CAUSE_SEEN.load(Ordering::Relaxed),
    );
    if taken != 1 || seen != 1 {
        println!(
            "passthrough-mmio: FAIL: RTC interrupt taken {taken} time(s), cause seen {seen} (expected 1 and 1)"
        );
        exit(exit_status::FAILURE)
    }
    println!(
        "passthrough-mmio: RTC interrupt INTID {RTC_INTID} taken {taken} time(s), cause cleared"
    );
    exit(exit_status::SUCCESS)
}
