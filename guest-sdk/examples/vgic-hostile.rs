//! A guest that attacks its interrupt controller: reads every word of the
//! distributor and (GICv3) of every redistributor frame, then writes them
//! all with hostile values — all-ones, zero, a bit pattern — and the
//! byte-wide and 64-bit registers with all-ones, while its own virtual
//! timer keeps ticking. Reserved offsets, other vCPUs' redistributors and
//! SPIs it does not own are written like everything else.
//!
//! Frames: the distributor (64 KiB); on GICv3 every redistributor of the
//! device tree's region up to the one marked Last (GICR_TYPER), whichever
//! vCPU it belongs to, and one more frame pair past that one (another VM's
//! or nobody's: only the first and last 4 KiB of each of its two frames,
//! where the registers would be, since every access there is expected to
//! abort). Every access goes through the SDK's probe accessors, so an
//! access that aborts is counted, not fatal; a read of a RAZ register must
//! simply return.
//!
//! Every `restore_every` writes (default 256) the guest puts its own
//! set-up back (distributor enable, its vCPU's interface, its timer's PPI),
//! so its timer can keep ticking; at the end it checks its timer ticked
//! during the attack and still ticks at its period afterwards. What the
//! attack did to others is for the system test to check (a second VM's
//! timer keeps its period).
//!
//! Bootargs:
//!
//! - `period_ms=N` (default 10): the timer's period;
//! - `restore_every=N` (default 256);
//! - `progress`: a line (`vgic-hostile: writing 0x... from 0x...`) at each
//!   4 KiB page written, to see where a run stalls;
//! - `spare=OFFSET,...`: word offsets not to write with the word values,
//!   from the distributor's base or a redistributor's RD_base (its SGI
//!   frame's registers are at 0x10000 and up), to find which write does
//!   what. Natively, QEMU 10's own GICv2 model stops the whole emulator on
//!   an assertion (`gic_clear_pending_sgi`) after writes to
//!   GICD_SPENDSGIRn, so a native run on `gic-version=2` needs
//!   `spare=0xf20,0xf24,0xf28,0xf2c`. Under a hypervisor nothing is spared.
//!
//! Output:
//!
//! ```text
//! vgic-hostile: GICv3, distributor 0x8000000, redistributors 0x80a0000..0x80c0000
//! vgic-hostile: distributor 0x8000000: read 16384 (aborted 0), wrote 52224 (aborted 0)
//! vgic-hostile: redistributor 0x80a0000: read 32768 (aborted 0), wrote 98304 (aborted 0)
//! vgic-hostile: beyond the last redistributor 0x80c0000: read 4096 (aborted 4096), wrote 12288 (aborted 12288)
//! vgic-hostile: own timer: 10 ticks during 105 ms of attack
//! vgic-hostile: own timer after the attack: 10 ticks, spacing min 633011 max 636956 (period 625000)
//! vgic-hostile: interrupts without a handler: 0
//! vgic-hostile: PASS
//! ```
//!
//! (GICv2: the first line is `vgic-hostile: GICv2, distributor 0x8000000`
//! and there are no redistributor lines; an interrupt without a handler
//! shows as `interrupts without a handler: N (last INTID M)`.) The checks:
//! at least one tick per 4 periods of attack, and 10 ticks afterwards none
//! closer than the period. Otherwise `vgic-hostile: FAIL: ...` (for a dead
//! timer with its PPI's GIC state) and exit status 1.
#![cfg_attr(target_os = "none", no_std)]
#![no_main]

use core::ops::Range;
use core::sync::atomic::{AtomicU64, Ordering};

use tessera_guest_sdk::bootargs::{self, Bootargs};
use tessera_guest_sdk::device_tree::DeviceTree;
use tessera_guest_sdk::gic::{self, Config, Version};
use tessera_guest_sdk::timer::{self, Tick, Timer};
use tessera_guest_sdk::{entry, exit, exit_status, interrupts, println, probe, time};

entry!(main);

const FRAME: u64 = 0x1_0000;
const PAGE: u64 = 0x1000;
const TIMER_PRIORITY: u8 = 0x80;
const WORD_VALUES: [u32; 3] = [0xFFFF_FFFF, 0x0000_0000, 0xA5A5_5A5A];
/// GICD_IPRIORITYR and GICD_ITARGETSR: byte-accessible.
const BYTE_REGISTERS: Range<u64> = 0x400..0xC00;
/// GICD_IROUTER<n> (GICv3): 64-bit.
const ROUTE_REGISTERS: Range<u64> = 0x6000..0x8000;
const TICKS_AFTER: u64 = 10;
/// GICR_TYPER (low half) and its Last bit.
const GICR_TYPER: u64 = 0x8;
const GICR_TYPER_LAST: u32 = 1 << 4;
/// The guest's console: the attack never goes near it.
const UART_BASE: u64 = 0x0900_0000;

static TICKS: AtomicU64 = AtomicU64::new(0);
static LAST_ENTRY: AtomicU64 = AtomicU64::new(0);
static MIN_SPACING: AtomicU64 = AtomicU64::new(u64::MAX);
static MAX_SPACING: AtomicU64 = AtomicU64::new(0);

/// The redistributor frame pairs of `region`, up to the one GICR_TYPER
/// marks Last, and the address just past that one. (QEMU's own device tree
/// gives a region with room for 123 CPUs, most of it empty.)
fn redistributor_frames(region: Range<u64>) -> (impl Iterator<Item = u64>, u64) {
    let mut end = region.start;
    while end < region.end {
        let typer = probe::probe_read32(end + GICR_TYPER).unwrap_or(GICR_TYPER_LAST);
        end += 2 * FRAME;
        if typer & GICR_TYPER_LAST != 0 {
            break;
        }
    }
    ((region.start..end).step_by(2 * FRAME as usize), end)
}

/// Reads, writes and aborts against one frame.
#[derive(Default)]
struct Counts {
    read: u64,
    read_aborted: u64,
    written: u64,
    write_aborted: u64,
}

/// Interleaves the attack with the guest's own repairs.
struct Attack {
    restore_every: u64,
    since_restore: u64,
    period: u64,
    /// Print a line at each 4 KiB page (bootargs `progress`).
    progress: bool,
    /// Frame offsets not to write (bootargs `spare=`).
    spared: [u64; MAX_SPARED],
    spared_count: usize,
}

const MAX_SPARED: usize = 8;

fn main(_device_tree: usize) -> ! {
    let tree =
        DeviceTree::boot().unwrap_or_else(|error| fail(format_args!("no device tree: {error}")));
    let args = Bootargs::new(tree.bootargs().unwrap_or(""));
    let number = |key: &str, default: u64| match args.get(key) {
        None => default,
        Some(text) => bootargs::parse_number(text)
            .unwrap_or_else(|error| fail(format_args!("bad {key}: {error}"))),
    };
    let period_ms = number("period_ms", 10).max(1);
    let mut attack = Attack {
        restore_every: number("restore_every", 256).max(1),
        since_restore: 0,
        period: time::ms_to_ticks(period_ms, time::frequency()),
        spared: [0; MAX_SPARED],
        spared_count: 0,
        progress: args.get("progress").is_some(),
    };
    for text in args
        .get("spare")
        .unwrap_or("")
        .split(',')
        .filter(|text| !text.is_empty())
    {
        let offset = bootargs::parse_number(text)
            .unwrap_or_else(|error| fail(format_args!("bad spare: {error}")));
        if attack.spared_count == MAX_SPARED {
            fail(format_args!("at most {MAX_SPARED} spared offsets"));
        }
        attack.spared[attack.spared_count] = offset;
        attack.spared_count += 1;
    }

    let layout =
        gic::init_from_device_tree().unwrap_or_else(|error| fail(format_args!("GIC: {error}")));
    match layout.version {
        Version::V3 => println!(
            "vgic-hostile: GICv3, distributor {:#x}, redistributors {:#x}..{:#x}",
            layout.distributor, layout.redistributors.start, layout.redistributors.end
        ),
        Version::V2 => println!("vgic-hostile: GICv2, distributor {:#x}", layout.distributor),
    }
    if let Err(error) =
        timer::start_periodic(Timer::Virtual, attack.period, TIMER_PRIORITY, on_tick)
    {
        fail(format_args!("timer: {error}"));
    }
    interrupts::enable();

    let attack_start = time::ticks();
    let ticks_before = TICKS.load(Ordering::Acquire);

    let distributor = layout.distributor;
    let mut counts = Counts::default();
    attack.sweep(distributor, distributor..distributor + FRAME, &mut counts);
    attack.bytes(distributor, &mut counts);
    if layout.version == Version::V3 {
        attack.routes(distributor, &mut counts);
    }
    println!(
        "vgic-hostile: distributor {distributor:#x}: read {} (aborted {}), wrote {} (aborted {})",
        counts.read, counts.read_aborted, counts.written, counts.write_aborted
    );

    if layout.version == Version::V3 {
        let (frames, beyond) = redistributor_frames(layout.redistributors.clone());
        for frame_pair in frames {
            let mut counts = Counts::default();
            attack.sweep(frame_pair, frame_pair..frame_pair + 2 * FRAME, &mut counts);
            println!(
                "vgic-hostile: redistributor {frame_pair:#x}: read {} (aborted {}), wrote {} (aborted {})",
                counts.read, counts.read_aborted, counts.written, counts.write_aborted
            );
        }
        if beyond + 2 * FRAME <= UART_BASE {
            let mut counts = Counts::default();
            for frame in [beyond, beyond + FRAME] {
                attack.sweep(beyond, frame..frame + PAGE, &mut counts);
                attack.sweep(beyond, frame + FRAME - PAGE..frame + FRAME, &mut counts);
            }
            println!(
                "vgic-hostile: beyond the last redistributor {beyond:#x}: read {} (aborted {}), wrote {} (aborted {})",
                counts.read, counts.read_aborted, counts.written, counts.write_aborted
            );
        }
    }
    restore();
    let attack_ms = time::ticks_to_ms(time::ticks() - attack_start, time::frequency());
    let during = TICKS.load(Ordering::Acquire) - ticks_before;
    println!("vgic-hostile: own timer: {during} ticks during {attack_ms} ms of attack");

    // Afterwards the timer must still tick at its period.
    MIN_SPACING.store(u64::MAX, Ordering::Relaxed);
    MAX_SPACING.store(0, Ordering::Relaxed);
    let after_start = TICKS.load(Ordering::Acquire);
    // The next tick was armed during the attack: spacings count from it.
    LAST_ENTRY.store(0, Ordering::Release);
    let deadline = time::Deadline::after_ms((TICKS_AFTER + 1) * period_ms * 4 + 1000);
    while TICKS.load(Ordering::Acquire) - after_start < TICKS_AFTER + 1 && !deadline.has_passed() {
        interrupts::wait();
    }
    let after = (TICKS.load(Ordering::Acquire) - after_start).saturating_sub(1);
    let min = MIN_SPACING.load(Ordering::Relaxed);
    let max = MAX_SPACING.load(Ordering::Relaxed);
    println!(
        "vgic-hostile: own timer after the attack: {after} ticks, spacing min {min} max {max} (period {})",
        attack.period
    );
    let (unhandled, last) = gic::unhandled();
    match last {
        Some(intid) => {
            println!("vgic-hostile: interrupts without a handler: {unhandled} (last INTID {intid})")
        }
        None => println!("vgic-hostile: interrupts without a handler: 0"),
    }

    // Ticks during the attack: at least one per four periods of it.
    let expected_during = time::ms_to_ticks(attack_ms, 1000) / (4 * period_ms);
    if during < expected_during.max(1) {
        fail(format_args!(
            "own timer ticked {during} times during the attack, expected at least {}",
            expected_during.max(1)
        ));
    }
    if after < TICKS_AFTER || min < attack.period {
        let intid = Timer::Virtual.intid();
        fail(format_args!(
            "own timer broken after the attack (INTID {intid}: enabled {:?}, pending {:?}, active {:?}; timer condition met {}, {} ticks since armed)",
            gic::is_enabled(intid),
            gic::is_pending(intid),
            gic::is_active(intid),
            Timer::Virtual.has_fired(),
            Timer::Virtual.now() as i64 - Timer::Virtual.deadline() as i64,
        ));
    }
    println!("vgic-hostile: PASS");
    exit(exit_status::SUCCESS)
}

impl Attack {
    /// Reads every word of `range`, then writes every word with each of
    /// [`WORD_VALUES`] but those spared at their offset from `base` (the
    /// distributor, or the redistributor's RD_base).
    fn sweep(&mut self, base: u64, range: Range<u64>, counts: &mut Counts) {
        for address in range.clone().step_by(4) {
            counts.read += 1;
            if probe::probe_read32(address).is_err() {
                counts.read_aborted += 1;
            }
        }
        for value in WORD_VALUES {
            for address in range.clone().step_by(4) {
                if self.progress && address % PAGE == 0 {
                    println!("vgic-hostile: writing {value:#x} from {address:#x}");
                }
                if self.is_spared(address - base) {
                    continue;
                }
                // SAFETY: `address` is in a GIC frame (or past the
                // redistributors, where nothing of this guest lives): no
                // memory this program uses. Wrecking interrupt state is the
                // point; `restore` repairs this guest's own.
                let outcome = unsafe { probe::probe_write32(address, value) };
                self.count_write(outcome.is_err(), counts);
            }
        }
    }

    /// All-ones to every byte of the byte-accessible registers, one byte
    /// store each.
    fn bytes(&mut self, distributor: u64, counts: &mut Counts) {
        for offset in BYTE_REGISTERS {
            // SAFETY: as in `sweep`.
            let outcome = unsafe { probe::probe_write8(distributor + offset, 0xFF) };
            self.count_write(outcome.is_err(), counts);
        }
    }

    /// All-ones (64 bits) to every GICD_IROUTER.
    fn routes(&mut self, distributor: u64, counts: &mut Counts) {
        for address in
            (distributor + ROUTE_REGISTERS.start..distributor + ROUTE_REGISTERS.end).step_by(8)
        {
            // SAFETY: as in `sweep`.
            let outcome = unsafe { probe::probe_write(address, u64::MAX) };
            self.count_write(outcome.is_err(), counts);
        }
    }

    fn is_spared(&self, offset: u64) -> bool {
        self.spared[..self.spared_count].contains(&offset)
    }

    fn count_write(&mut self, aborted: bool, counts: &mut Counts) {
        counts.written += 1;
        if aborted {
            counts.write_aborted += 1;
        }
        self.since_restore += 1;
        if self.since_restore >= self.restore_every {
            self.since_restore = 0;
            restore();
        }
    }
}

/// Puts this guest's own interrupt set-up back: distributor on, this
/// vCPU's interface and SGI/PPI state, the timer's PPI.
fn restore() {
    let repaired = gic::enable_distributor()
        .and_then(|()| gic::init_this_cpu())
        .and_then(|()| {
            gic::enable_interrupt(Timer::Virtual.intid(), Config::priority(TIMER_PRIORITY))
        });
    if let Err(error) = repaired {
        fail(format_args!("cannot restore the GIC set-up: {error}"));
    }
}

fn on_tick(tick: Tick) {
    let previous = LAST_ENTRY.swap(tick.virtual_now, Ordering::AcqRel);
    if previous != 0 {
        let spacing = tick.virtual_now.wrapping_sub(previous);
        MIN_SPACING.fetch_min(spacing, Ordering::Relaxed);
        MAX_SPACING.fetch_max(spacing, Ordering::Relaxed);
    }
    TICKS.fetch_add(1, Ordering::AcqRel);
}

fn fail(message: core::fmt::Arguments<'_>) -> ! {
    println!("vgic-hostile: FAIL: {message}");
    exit(exit_status::FAILURE)
}
