//! vdev-shmem's ABI from a real guest, at the register level
//! (../shared/design/vdev-shmem-abi.md): every error status, the access
//! forms a driver may use, and what a VM's end does to its peers.
//!
//! Role `errors` (bootarg `role=errors`) needs two instances: the first
//! with `deny = ["secret*"]` and a window of at least 40 pages, the second
//! (its factory page given as the bootarg `small=ADDRESS`) with a window of
//! 2 pages; the system's `[shmem] limit` 32 pages and a boot region `keep`
//! of one page. It prints one line per check,
//! `shmem-abi: <check>: ok (...)`, then `shmem-abi: errors: all N checks
//! passed` and exits 0; a check that fails prints `shmem-abi: FAIL: ...`
//! and exits 1.
//!
//! Roles `first` and `second` connect to one region in either order and
//! pass data and signals both ways (see `order`).
//!
//! Role `cacheable` maps the factory page and the window as Normal
//! cacheable memory with its own MMU on, writes a name with one unaligned
//! 8-byte store and the same name with STP (both reach the one region),
//! reads the signature with LDP, and checks that LDXR (and LDADD, with
//! FEAT_LSE) on those pages gets the external abort.
//!
//! Roles `keeper`, `leaver` and `quitter` (one instance each, same region
//! name `life`): the leaver connects, resets its VM once (PSCI
//! SYSTEM_RESET), connects again after the restart, then crashes (a fault
//! its vectors cannot take); after that the quitter connects and stops
//! its VM (PSCI SYSTEM_OFF). The order does not hang on timing: the
//! keeper cues the others through a word in a second region, `cue`. The keeper takes its vector (its handler reads status,
//! which lowers the line) and prints each change of the attached set and
//! that an interrupt came with it: the leaver's attach, its detach at the
//! reset, its attach again, its detach at the crash, the quitter's attach
//! and its detach at the stop.
#![cfg_attr(target_os = "none", no_std)]
#![no_main]

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use tessera_guest_sdk::bootargs::Bootargs;
use tessera_guest_sdk::device_tree::DeviceTree;
use tessera_guest_sdk::gic::{self, Config, Interrupt, Trigger};
use tessera_guest_sdk::mmu::{self, MemoryKind};
use tessera_guest_sdk::probe;
use tessera_guest_sdk::{entry, exit, interrupts, println, psci, tessera, time};

entry!(main);

/// Factory page offsets and the signature ("QVMG2GSM").
const SIGNATURE: u64 = 0x4d53_4732_474d_5651;
const SHMEM: u64 = 0x08;
const VECTOR: u64 = 0x10;
const STATUS: u64 = 0x14;
const SIZE: u64 = 0x18;
const NAME: u64 = 0x1C;
const FIND: u64 = 0x3C;
/// Control page offsets.
const CONTROL_STATUS: u64 = 0x0;
const CONTROL_INDEX: u64 = 0x4;
const CONTROL_NOTIFY: u64 = 0x8;
const CONTROL_DETACH: u64 = 0xC;
const PAGE: u64 = 0x1000;

/// The factory's status codes.
const OK: u32 = 0;
const NOMEM: u32 = 2;
const CLIENT_MAX: u32 = 3;
const ILLEGAL_NAME: u32 = 4;
const NO_PERMISSION: u32 = 5;
const DOES_NOT_EXIST: u32 = 6;

fn read32(address: u64) -> u32 {
    // SAFETY: a vdev-shmem page or region data of this VM, from its
    // device tree or the factory's answer.
    unsafe { (address as *const u32).read_volatile() }
}

fn read64(address: u64) -> u64 {
    // SAFETY: as in `read32`.
    unsafe { (address as *const u64).read_volatile() }
}

fn write32(address: u64, value: u32) {
    // SAFETY: as in `read32`.
    unsafe { (address as *mut u32).write_volatile(value) };
}

fn fail(what: core::fmt::Arguments<'_>) -> ! {
    println!("shmem-abi: FAIL: {what}");
    exit(1)
}

/// The factory page of the VM's (first) instance, from its device tree.
fn factory_of(tree: &DeviceTree<'_>) -> u64 {
    let regs = tree
        .compatible_regs("qvm,guest_shm")
        .unwrap_or_else(|| fail(format_args!("no qvm,guest_shm node")));
    regs[0]
        .clone()
        .unwrap_or_else(|| fail(format_args!("no factory page")))
        .start
}

/// Writes `name` into the factory's name field, NUL-padded, a word at a
/// time (MMU off: aligned accesses only).
fn write_name(factory: u64, name: &[u8]) {
    let mut field = [0u8; 32];
    field[..name.len()].copy_from_slice(name);
    for (index, word) in field.chunks_exact(4).enumerate() {
        let value = u32::from_le_bytes([word[0], word[1], word[2], word[3]]);
        write32(factory + NAME + 4 * index as u64, value);
    }
}

/// Create-or-attach `name` with `pages`: the status, and the control
/// page when it is OK.
fn connect(factory: u64, name: &[u8], pages: u32) -> (u32, u64) {
    write_name(factory, name);
    write32(factory + SIZE, pages);
    (read32(factory + STATUS), read64(factory + SHMEM))
}

/// Find `name`: the status, and the control page when it is OK.
fn find(factory: u64, name: &[u8]) -> (u32, u64) {
    write_name(factory, name);
    write32(factory + FIND, 0);
    (read32(factory + STATUS), read64(factory + SHMEM))
}

/// How many checks passed.
static PASSED: AtomicU32 = AtomicU32::new(0);

fn pass(what: core::fmt::Arguments<'_>) {
    PASSED.fetch_add(1, Ordering::Relaxed);
    println!("shmem-abi: {what}");
}

fn check(check: &str, got: u32, wanted: u32) {
    if got != wanted {
        fail(format_args!("{check}: status {got}, expected {wanted}"));
    }
    pass(format_args!("{check}: ok (status {got})"));
}

/// LDP of two doublewords at `address` (a pair: no syndrome at EL2).
#[cfg(target_os = "none")]
fn load_pair(address: u64) -> (u64, u64) {
    let (first, second): (u64, u64);
    // SAFETY: a trapped vdev-shmem page of this VM, 8-byte aligned; the
    // hypervisor carries the pair out from the instruction.
    unsafe {
        core::arch::asm!("ldp {}, {}, [{}]", out(reg) first, out(reg) second, in(reg) address, options(nostack, readonly));
    }
    (first, second)
}

/// STP of two words at `address` (a pair).
#[cfg(target_os = "none")]
fn store_pair32(address: u64, first: u32, second: u32) {
    // SAFETY: as in `load_pair`, 4-byte aligned.
    unsafe {
        core::arch::asm!("stp {:w}, {:w}, [{}]", in(reg) first, in(reg) second, in(reg) address, options(nostack));
    }
}

/// LDR of a word with pre-index writeback: returns the word and the base
/// register after the instruction.
#[cfg(target_os = "none")]
fn load_pre_indexed(base: u64) -> (u32, u64) {
    let mut address = base;
    let value: u32;
    // SAFETY: as in `load_pair`; the access is at `base + 4`.
    unsafe {
        core::arch::asm!("ldr {:w}, [{}, #4]!", out(reg) value, inout(reg) address, options(nostack, readonly));
    }
    (value, address)
}

#[cfg(not(target_os = "none"))]
fn load_pair(_address: u64) -> (u64, u64) {
    unreachable!("a guest runs only on aarch64-unknown-none")
}
#[cfg(not(target_os = "none"))]
fn store_pair32(_address: u64, _first: u32, _second: u32) {
    unreachable!("a guest runs only on aarch64-unknown-none")
}
#[cfg(not(target_os = "none"))]
fn load_pre_indexed(_base: u64) -> (u32, u64) {
    unreachable!("a guest runs only on aarch64-unknown-none")
}

fn errors(factory: u64, tree: &DeviceTree<'_>) -> ! {
    let args = Bootargs::new(tree.bootargs().unwrap_or(""));
    let small = args
        .get("small")
        .and_then(|text| tessera_guest_sdk::bootargs::parse_address(text).ok())
        .unwrap_or_else(|| fail(format_args!("no small=ADDRESS bootarg")));

    // The signature and the (empty) shmem field by one LDP.
    let (signature, shmem) = load_pair(factory);
    if signature != SIGNATURE || shmem != 0 {
        fail(format_args!("ldp: {signature:#x} {shmem:#x}"));
    }
    pass(format_args!(
        "ldp of signature and shmem: ok ({signature:#x}, {shmem:#x})"
    ));

    check(
        "illegal name (empty)",
        connect(factory, b"", 1).0,
        ILLEGAL_NAME,
    );
    check(
        "illegal name (space)",
        connect(factory, b"a b", 1).0,
        ILLEGAL_NAME,
    );
    check(
        "illegal name (0x7f)",
        connect(factory, b"a\x7f", 1).0,
        ILLEGAL_NAME,
    );
    check(
        "no permission (deny secret*)",
        connect(factory, b"secret-x", 1).0,
        NO_PERMISSION,
    );
    check(
        "find of a missing name",
        find(factory, b"nothing").0,
        DOES_NOT_EXIST,
    );
    check(
        "create of 0 pages",
        connect(factory, b"nothing", 0).0,
        DOES_NOT_EXIST,
    );
    check(
        "over the page limit",
        connect(factory, b"huge", 33).0,
        NOMEM,
    );
    check("a full window", connect(small, b"two-pages", 2).0, NOMEM);

    // The name written by STP pairs, the size by a plain store.
    let name = *b"stp-name\0\0\0\0";
    for (at, words) in name.chunks_exact(8).enumerate() {
        let first = u32::from_le_bytes([words[0], words[1], words[2], words[3]]);
        let second = u32::from_le_bytes([words[4], words[5], words[6], words[7]]);
        store_pair32(factory + NAME + 8 * at as u64, first, second);
    }
    store_pair32(factory + NAME + 8, 0, 0);
    write32(factory + SIZE, 1);
    let (status, control) = (read32(factory + STATUS), read64(factory + SHMEM));
    check("a name written by STP", status, OK);
    let (index, writeback) = load_pre_indexed(control);
    if index != read32(control + CONTROL_INDEX) || writeback != control + 4 {
        fail(format_args!("pre-indexed load: {index} at {writeback:#x}"));
    }
    pass(format_args!(
        "pre-indexed load of index: ok (index {index}, base moved by 4)"
    ));
    let (found, found_control) = find(factory, b"stp-name");
    check("find of the STP-named region", found, OK);
    write32(found_control + CONTROL_DETACH, 0);

    // An exclusive access is not a plain load or store.
    match probe::probe_load_exclusive(factory) {
        Err(abort) if abort.is_external_abort_at(factory) => {
            pass(format_args!(
                "ldxr on the factory page: ok (external abort)"
            ));
        }
        other => fail(format_args!("ldxr on the factory page: {other:?}")),
    }
    match probe::probe_load_exclusive(control) {
        Err(abort) if abort.is_external_abort_at(control) => {
            pass(format_args!("ldxr on a control page: ok (external abort)"));
        }
        other => fail(format_args!("ldxr on a control page: {other:?}")),
    }
    // An atomic, where the CPU has them (the scenario's `cpu`).
    for (what, address) in [("factory", factory), ("control", control)] {
        // SAFETY: a trapped vdev-shmem page: the add must not happen.
        match unsafe { probe::probe_atomic_add(address, 1) } {
            None => println!("shmem-abi: ldadd on the {what} page: not tried (no FEAT_LSE)"),
            Some(Err(abort)) if abort.is_external_abort_at(address) => {
                pass(format_args!(
                    "ldadd on the {what} page: ok (external abort)"
                ));
            }
            Some(other) => fail(format_args!("ldadd on the {what} page: {other:?}")),
        }
    }

    // Detach: the old control and data pages are nothing now.
    write32(control + CONTROL_DETACH, 0);
    for (what, address) in [("control", control), ("data", control + PAGE)] {
        match probe::probe_read(address) {
            Err(abort) if abort.is_external_abort_at(address) => {
                pass(format_args!(
                    "{what} page after detach: ok (external abort)"
                ));
            }
            other => fail(format_args!("{what} page after detach: {other:?}")),
        }
    }

    // Sixteen connections to one region, then CLIENT_MAX.
    let mut controls = [0u64; 16];
    for slot in &mut controls {
        let (status, control) = connect(factory, b"many", 1);
        if status != OK {
            fail(format_args!("connection to many: status {status}"));
        }
        *slot = control;
    }
    check(
        "a 17th connection",
        connect(factory, b"many", 1).0,
        CLIENT_MAX,
    );
    let attached = read32(controls[0] + CONTROL_STATUS) >> 16;
    if attached != 0xFFFF {
        fail(format_args!("attached set {attached:#x}"));
    }
    for control in controls {
        write32(control + CONTROL_DETACH, 0);
    }

    // A region freed with its last connection reads as zero when made
    // again.
    let (status, control) = connect(factory, b"zeroed", 1);
    check("create zeroed", status, OK);
    write32(control + PAGE, 0xDEAD_BEEF);
    write32(control + CONTROL_DETACH, 0);
    let (status, control) = connect(factory, b"zeroed", 1);
    check("create zeroed again", status, OK);
    let again = read32(control + PAGE);
    if again != 0 {
        fail(format_args!("recreated region reads {again:#x}"));
    }
    pass(format_args!("a recreated region reads zero: ok"));
    write32(control + CONTROL_DETACH, 0);

    // A boot region keeps its data across its last detach.
    let (status, control) = find(factory, b"keep");
    check("find of the boot region", status, OK);
    write32(control + PAGE, 0x0B00_7ED0);
    write32(control + CONTROL_DETACH, 0);
    let (status, control) = find(factory, b"keep");
    check("find of the boot region again", status, OK);
    let kept = read32(control + PAGE);
    if kept != 0x0B00_7ED0 {
        fail(format_args!("boot region reads {kept:#x}"));
    }
    pass(format_args!("a boot region keeps its data: ok"));
    println!(
        "shmem-abi: errors: all {} checks passed",
        PASSED.load(Ordering::Relaxed)
    );
    exit(0)
}

/// The keeper's control pages of `life` and `cue`, for its handler.
static KEEPER_CONTROL: AtomicU64 = AtomicU64::new(0);
static CUE_CONTROL: AtomicU64 = AtomicU64::new(0);
/// The attached set the keeper's handler last read, and how many
/// interrupts it took.
static ATTACHED: AtomicU32 = AtomicU32::new(0);
static INTERRUPTS: AtomicU32 = AtomicU32::new(0);

/// The vector's handler: reading status lowers the line and returns the
/// attached set now.
fn on_vector(_interrupt: Interrupt) {
    // Both connections share the instance's vector: both are read.
    let _ = read32(CUE_CONTROL.load(Ordering::Relaxed) + CONTROL_STATUS);
    let status = read32(KEEPER_CONTROL.load(Ordering::Relaxed) + CONTROL_STATUS);
    ATTACHED.store(status >> 16, Ordering::Relaxed);
    INTERRUPTS.fetch_add(1, Ordering::Relaxed);
}

/// Waits, interrupts on, until the handler has seen an attached set
/// other than `from`, for at most ten seconds: the new set
/// and the handler's interrupt count then, read together.
fn next_attached(from: u32) -> (u32, u32) {
    let deadline = time::Deadline::after_ms(10_000);
    loop {
        let (attached, taken) = interrupts::without(|| {
            (
                ATTACHED.load(Ordering::Relaxed),
                INTERRUPTS.load(Ordering::Relaxed),
            )
        });
        if attached != from {
            return (attached, taken);
        }
        if deadline.has_passed() {
            fail(format_args!("the attached set stayed {from:#x}"));
        }
        // A short busy wait: the interrupt is taken during it.
        time::delay_ms(1);
    }
}

fn keeper(factory: u64) -> ! {
    let (status, control) = connect(factory, b"life", 1);
    if status != OK {
        fail(format_args!("keeper connect: status {status}"));
    }
    KEEPER_CONTROL.store(control, Ordering::Relaxed);
    let (status, cue) = connect(factory, b"cue", 1);
    if status != OK {
        fail(format_args!("keeper connect to cue: status {status}"));
    }
    CUE_CONTROL.store(cue, Ordering::Relaxed);
    ATTACHED.store(read32(control + CONTROL_STATUS) >> 16, Ordering::Relaxed);
    let vector = read32(factory + VECTOR);
    let set_up = gic::init_from_device_tree()
        .map(|_| ())
        .and_then(|()| gic::register_handler(vector, on_vector))
        .and_then(|()| {
            gic::enable_interrupt(
                vector,
                Config {
                    priority: 0x80,
                    trigger: Some(Trigger::Level),
                },
            )
        });
    if let Err(error) = set_up {
        fail(format_args!("cannot set up INTID {vector}: {error}"));
    }
    interrupts::enable();
    let mut attached = ATTACHED.load(Ordering::Relaxed);
    let mut taken;
    // The leaver's cue: the keeper is ready to watch.
    write32(cue + PAGE, 1);
    for event in [
        "leaver attach",
        "leaver detach at reset",
        "leaver attach again",
        "leaver detach at crash",
        "quitter attach",
        "quitter detach at stop",
    ] {
        // Only the handler reads status: a change seen came by interrupt.
        (attached, taken) = next_attached(attached);
        println!(
            "shmem-abi: keeper: {event}: attached {attached:#x}, with an interrupt ({taken} so far)"
        );
        // The others' cue: how many changes the keeper has seen, plus
        // one. Each acts only once the keeper has seen the change before,
        // so no two changes can merge into one status read.
        write32(cue + PAGE, read32(cue + PAGE) + 1);
    }
    exit(0)
}

fn leaver(factory: u64) -> ! {
    // Once the keeper watches; after the reset, once it saw the detach.
    let resets = tessera::reset_count().unwrap_or(0);
    let seen = if resets == 0 { 1 } else { 3 };
    let cue = connect_cue(factory);
    wait_for_cue(cue, seen);
    let (status, control) = connect(factory, b"life", 1);
    if status != OK {
        fail(format_args!("leaver connect: status {status}"));
    }
    let resets = tessera::reset_count().unwrap_or(0);
    println!(
        "shmem-abi: leaver: connected as index {} (reset {resets})",
        read32(control + CONTROL_INDEX)
    );
    // Once the keeper saw the attach.
    wait_for_cue(cue, seen + 1);
    if resets == 0 {
        psci::system_reset();
    }
    // A fault its vectors cannot take: the VM is stopped.
    // SAFETY: deliberately no vector table: the next exception cannot be
    // taken, and the hypervisor stops this VM (and only it).
    unsafe { tessera_guest_sdk::exception::set_vector_base(0) };
    // Nothing is mapped at 8 for this VM: the read aborts, and with
    // VBAR_EL1 at 0 the probe's recovery is never reached.
    let _ = probe::probe_read(8);
    fail(format_args!("still running after the crash"))
}

/// Connects to `cue`, the region through which the keeper cues the
/// others: its control page.
fn connect_cue(factory: u64) -> u64 {
    let (status, cue) = connect(factory, b"cue", 1);
    if status != OK {
        fail(format_args!("connect to cue: status {status}"));
    }
    cue
}

/// Waits until the keeper has written at least `wanted` into the first
/// word of `cue` (a control page).
fn wait_for_cue(cue: u64, wanted: u32) {
    let deadline = time::Deadline::after_ms(10_000);
    while read32(cue + PAGE) < wanted {
        if deadline.has_passed() {
            fail(format_args!("no cue {wanted} from the keeper"));
        }
        time::delay_ms(1);
    }
}

fn quitter(factory: u64) -> ! {
    // After the leaver is gone (the keeper has seen 4 changes).
    let cue = connect_cue(factory);
    wait_for_cue(cue, 5);
    let (status, control) = connect(factory, b"life", 1);
    if status != OK {
        fail(format_args!("quitter connect: status {status}"));
    }
    println!(
        "shmem-abi: quitter: connected as index {}",
        read32(control + CONTROL_INDEX)
    );
    // Once the keeper saw the attach.
    wait_for_cue(cue, 6);
    psci::system_off()
}

/// Role `cacheable`: the factory page and the window mapped as Normal
/// cacheable memory in the guest's own stage 1, as clients of the QNX
/// driver do; names written with one unaligned 8-byte store and with an
/// STP pair, the signature read with LDP, and an exclusive (and, with
/// FEAT_LSE, an atomic) refused with the external abort.
fn cacheable(factory: u64, tree: &DeviceTree<'_>) -> ! {
    let window = tree
        .compatible_regs("qvm,guest_shm")
        .and_then(|regs| regs[1].clone())
        .unwrap_or_else(|| fail(format_args!("no window in the qvm,guest_shm node")));
    let mapped = mmu::map_defaults(tree)
        .map_err(|_| ())
        .and_then(|()| mmu::map(factory..factory + PAGE, MemoryKind::Normal).map_err(|_| ()))
        .and_then(|()| mmu::map(window.clone(), MemoryKind::Normal).map_err(|_| ()))
        .and_then(|()| mmu::enable().map_err(|_| ()));
    if mapped.is_err() {
        fail(format_args!(
            "cannot map the pages as Normal and enable the MMU"
        ));
    }
    pass(format_args!(
        "MMU on, factory page and window mapped Normal cacheable"
    ));

    // SAFETY: the VM's own vdev-shmem factory page, mapped Normal above;
    // the hypervisor answers the access from its model.
    let (signature, _) = unsafe { mmu::load_pair_u64(factory as usize) };
    if signature != SIGNATURE {
        fail(format_args!("ldp signature {signature:#x}"));
    }
    pass(format_args!("ldp of the signature: ok"));

    // "unalign8" by one 8-byte store at 0x1C (4 bytes off alignment), then
    // the NUL: a plain word.
    // SAFETY: as for the LDP above.
    unsafe {
        mmu::store_u64_unaligned((factory + NAME) as usize, u64::from_le_bytes(*b"unalign8"))
    };
    write32(factory + NAME + 8, 0);
    write32(factory + SIZE, 2);
    check(
        "create by an unaligned 8-byte name store",
        read32(factory + STATUS),
        OK,
    );
    let first = read64(factory + SHMEM);
    // The data, through the cacheable window.
    write32(first + PAGE, 0x5EED_CAFE);

    // The same name by an STP pair of doublewords, then find: the same
    // region, so the data is there.
    // SAFETY: as for the LDP above.
    unsafe {
        mmu::store_pair_u64(
            (factory + NAME) as usize,
            u64::from_le_bytes(*b"unalign8"),
            0,
        );
    }
    write32(factory + FIND, 0);
    check("find by an STP-written name", read32(factory + STATUS), OK);
    let second = read64(factory + SHMEM);
    let seen = read32(second + PAGE);
    let size = read32(factory + SIZE);
    if seen != 0x5EED_CAFE || size != 2 || second == first {
        fail(format_args!(
            "found {seen:#x}, {size} pages, control {second:#x}"
        ));
    }
    pass(format_args!(
        "the same region: {size} pages, data {seen:#x}, attached {:#x}",
        read32(second + CONTROL_STATUS) >> 16
    ));

    match probe::probe_load_exclusive(factory) {
        Err(abort) if abort.is_external_abort_at(factory) => {
            pass(format_args!(
                "ldxr on the cacheable factory page: ok (external abort)"
            ));
        }
        other => fail(format_args!(
            "ldxr on the cacheable factory page: {other:?}"
        )),
    }
    // SAFETY: as above: the add must not happen.
    match unsafe { probe::probe_atomic_add(second, 1) } {
        None => println!("shmem-abi: ldadd on the cacheable control page: not tried (no FEAT_LSE)"),
        Some(Err(abort)) if abort.is_external_abort_at(second) => {
            pass(format_args!(
                "ldadd on the cacheable control page: ok (external abort)"
            ));
        }
        Some(other) => fail(format_args!(
            "ldadd on the cacheable control page: {other:?}"
        )),
    }
    write32(second + CONTROL_DETACH, 0);
    write32(first + CONTROL_DETACH, 0);
    println!(
        "shmem-abi: cacheable: all {} checks passed",
        PASSED.load(Ordering::Relaxed)
    );
    exit(0)
}

/// Roles `first` and `second` (order independence): both create-or-attach
/// `name` (bootarg, default `raw`) asking for `pages` (default 2), so
/// whichever the system starts first creates it and both get its size.
/// `first` writes a pattern into the data, waits until a peer attaches,
/// notifies exactly it and waits for its answer; `second` waits for the
/// notification, reads the pattern back and answers.
fn order(factory: u64, role: &str, args: &Bootargs<'_>) -> ! {
    const PATTERN: u32 = 0xC0FF_EE42;
    let name = args.get("name").unwrap_or("raw");
    let pages = args
        .get("pages")
        .map_or(Ok(2), tessera_guest_sdk::bootargs::parse_number)
        .unwrap_or_else(|_| fail(format_args!("bad pages")));
    let (status, control) = connect(factory, name.as_bytes(), pages as u32);
    if status != OK {
        fail(format_args!("status {status} for {role}"));
    }
    let size = read32(factory + SIZE);
    let index = read32(control + CONTROL_INDEX);
    let data = control + PAGE;
    println!("shmem-abi: connected {name}: {size} pages, index {index}");
    if role == "first" {
        write32(data, PATTERN);
        let status = wait_status(control, "a peer", |status| status >> 16 != 1 << index);
        let peers = (status >> 16) & !(1 << index);
        println!("shmem-abi: attached 0x{:x}", status >> 16);
        write32(control + CONTROL_NOTIFY, peers);
        let delivered = read32(control + CONTROL_NOTIFY);
        println!("shmem-abi: notified 0x{peers:x}, delivered 0x{delivered:x}");
        let status = wait_status(control, "the answer", |status| status & peers != 0);
        println!("shmem-abi: senders 0x{:x}", status & 0xFFFF);
    } else {
        // The creator notifies after writing its data: seen in that order,
        // whatever the timing.
        let status = wait_status(control, "a notification", |status| status & 0xFFFF != 0);
        let senders = status & 0xFFFF;
        let seen = read32(data);
        println!(
            "shmem-abi: senders 0x{senders:x}, attached 0x{:x}, data 0x{seen:x}",
            status >> 16
        );
        if seen != PATTERN {
            fail(format_args!("data 0x{seen:x}"));
        }
        write32(control + CONTROL_NOTIFY, senders);
    }
    exit(0)
}

/// Polls the control page's status until `wanted` says it has what it
/// waits for, for at most two seconds of virtual time.
fn wait_status(control: u64, what: &str, wanted: impl Fn(u32) -> bool) -> u32 {
    let deadline = time::Deadline::after_ms(2000);
    loop {
        let status = read32(control + CONTROL_STATUS);
        if wanted(status) {
            return status;
        }
        if deadline.has_passed() {
            fail(format_args!(
                "timed out waiting for {what} (status {status:#x})"
            ));
        }
        time::delay_ms(1);
    }
}

fn main(_device_tree: usize) -> ! {
    let tree = DeviceTree::boot().unwrap_or_else(|_| fail(format_args!("no device tree")));
    let args = Bootargs::new(tree.bootargs().unwrap_or(""));
    let factory = factory_of(&tree);
    if read64(factory) != SIGNATURE {
        fail(format_args!("signature {:#x}", read64(factory)));
    }
    match args.get("role").unwrap_or("errors") {
        "keeper" => keeper(factory),
        "leaver" => leaver(factory),
        "quitter" => quitter(factory),
        "cacheable" => cacheable(factory, &tree),
        role @ ("first" | "second") => order(factory, role, &args),
        _ => errors(factory, &tree),
    }
}
