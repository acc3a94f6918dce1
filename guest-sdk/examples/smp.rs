//! Starts a second vCPU with PSCI and checks what PSCI says about it.
//!
//! vCPU 0 reads the PSCI version and features, starts the first other CPU
//! its device tree lists, waits for it to run (it prints and raises a flag),
//! checks AFFINITY_INFO says ON and a second CPU_ON is refused with
//! ALREADY_ON, lets it turn itself off and waits for AFFINITY_INFO to say
//! OFF. Needs 2 vCPUs.
//!
//! Output:
//!
//! ```text
//! smp: PSCI version 1.1
//! smp: CPU_ON is supported
//! smp: hello from vCPU 0 (MPIDR 0x80000000)
//! smp: starting the vCPU with MPIDR 0x1
//! smp: hello from vCPU 1 (MPIDR 0x80000001)
//! smp: vCPU 1 is ON
//! smp: second CPU_ON refused with ALREADY_ON
//! smp: vCPU 1 calling CPU_OFF
//! smp: vCPU 1 is OFF
//! smp: both vCPUs ran
//! ```
//!
//! Anything else: `smp: FAIL: ...` and exit status 1.
#![cfg_attr(target_os = "none", no_std)]
#![no_main]

use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use tessera_guest_sdk::device_tree::DeviceTree;
use tessera_guest_sdk::psci::{self, AffinityState, PsciError};
use tessera_guest_sdk::time::Deadline;
use tessera_guest_sdk::{cpu, entry, exit, exit_status, println};

entry!(main);

/// Handed to the second vCPU through CPU_ON, to check it arrives.
const ARGUMENT: usize = 0x5EC0_4D00;
const TIMEOUT_MS: u64 = 2000;

static STARTED: AtomicBool = AtomicBool::new(false);
static ARGUMENT_SEEN: AtomicUsize = AtomicUsize::new(0);
static MAY_STOP: AtomicBool = AtomicBool::new(false);

fn main(_device_tree: usize) -> ! {
    println!("smp: PSCI version {}", psci::version());
    match psci::features(psci::function::CPU_ON_64) {
        Ok(_) => println!("smp: CPU_ON is supported"),
        Err(error) => fail(format_args!("PSCI_FEATURES(CPU_ON) = {error}")),
    }
    let me = cpu::mpidr();
    println!("smp: hello from vCPU {} (MPIDR {me:#x})", cpu::index());

    let tree =
        DeviceTree::boot().unwrap_or_else(|error| fail(format_args!("no device tree: {error}")));
    let Some(target) = tree
        .cpu_ids()
        .find(|&id| cpu::index_of(id) != cpu::index_of(me))
    else {
        fail(format_args!("the device tree lists no second vCPU"))
    };
    let Some(index) = cpu::index_of(target) else {
        fail(format_args!(
            "the SDK cannot run the vCPU with MPIDR {target:#x}"
        ))
    };
    println!("smp: starting the vCPU with MPIDR {target:#x}");
    if let Err(error) = psci::cpu_on(target, secondary, ARGUMENT) {
        fail(format_args!("CPU_ON({target:#x}) = {error}"));
    }
    if !wait_until(|| STARTED.load(Ordering::Acquire)) {
        fail(format_args!(
            "vCPU {index} did not run within {TIMEOUT_MS} ms"
        ));
    }
    let seen = ARGUMENT_SEEN.load(Ordering::Relaxed);
    if seen != ARGUMENT {
        fail(format_args!(
            "vCPU {index} got argument {seen:#x}, expected {ARGUMENT:#x}"
        ));
    }
    match psci::affinity_info(target) {
        Ok(AffinityState::On) => println!("smp: vCPU {index} is ON"),
        other => fail(format_args!(
            "AFFINITY_INFO({target:#x}) = {other:?}, expected On"
        )),
    }
    match psci::cpu_on(target, secondary, ARGUMENT) {
        Err(PsciError::AlreadyOn) => println!("smp: second CPU_ON refused with ALREADY_ON"),
        other => fail(format_args!(
            "second CPU_ON({target:#x}) = {other:?}, expected ALREADY_ON"
        )),
    }

    MAY_STOP.store(true, Ordering::Release);
    if !wait_until(|| psci::affinity_info(target) == Ok(AffinityState::Off)) {
        fail(format_args!(
            "vCPU {index} not OFF within {TIMEOUT_MS} ms: {:?}",
            psci::affinity_info(target)
        ));
    }
    println!("smp: vCPU {index} is OFF");
    println!("smp: both vCPUs ran");
    exit(exit_status::SUCCESS)
}

/// The second vCPU.
fn secondary(argument: usize) -> ! {
    println!(
        "smp: hello from vCPU {} (MPIDR {:#x})",
        cpu::index(),
        cpu::mpidr()
    );
    ARGUMENT_SEEN.store(argument, Ordering::Relaxed);
    STARTED.store(true, Ordering::Release);
    while !MAY_STOP.load(Ordering::Acquire) {
        core::hint::spin_loop();
    }
    println!("smp: vCPU {} calling CPU_OFF", cpu::index());
    psci::cpu_off()
}

/// Polls `condition` until it holds (true) or the timeout passes (false).
fn wait_until(mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Deadline::after_ms(TIMEOUT_MS);
    loop {
        if condition() {
            return true;
        }
        if deadline.has_passed() {
            return false;
        }
        core::hint::spin_loop();
    }
}

fn fail(message: core::fmt::Arguments<'_>) -> ! {
    println!("smp: FAIL: {message}");
    exit(exit_status::FAILURE)
}
