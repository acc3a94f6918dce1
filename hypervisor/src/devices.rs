//! Each VM's emulated devices, and the hot path that carries out a trapped
//! access to one of them.
//!
//! A VM's devices sit behind their own lock, apart from its vCPU bookkeeping
//! (`vm::RUNTIMES`), so a device access takes one uncontended lock and
//! nothing else. Lock order: a VM's runtime lock, then its device lock,
//! then the console locks (`console`).

use spin::Mutex;
use tessera_hypervisor::device_bus::{self, GuestDevice};
use tessera_hypervisor::guest_exit::{AccessFrame, MmioAccess};
use tessera_hypervisor::manifest::MAX_VMS;

use crate::vuart::VirtualUart;

struct VmDevices {
    uart: VirtualUart,
}

impl VmDevices {
    const fn new(vm: usize, vm_name: &'static str) -> Self {
        Self {
            uart: VirtualUart::new(vm, vm_name),
        }
    }
}

/// Slot `n` belongs to VM `n`; slots of VMs that do not exist are never
/// routed to, since no CPU runs them.
static DEVICES: [Mutex<VmDevices>; MAX_VMS] =
    [const { Mutex::new(VmDevices::new(usize::MAX, "")) }; MAX_VMS];

/// Gives VM `index` its devices in their reset state, at build time.
pub fn install(index: usize, vm_name: &'static str) {
    *DEVICES[index].lock() = VmDevices::new(index, vm_name);
}

/// Pushes out buffered output, as when the VM stops.
pub fn flush(index: usize) {
    DEVICES[index].lock().uart.flush();
}

/// Returns every device of VM `index` to its reset state (buffered output
/// is flushed first), as when the VM restarts.
pub fn reset(index: usize) {
    let mut devices = DEVICES[index].lock();
    devices.uart.flush();
    devices.uart.reset();
}

/// Carries out a trapped `access` of VM `index`; the caller then steps the
/// guest past the instruction. Returns false, changing nothing, when no device is
/// behind the address (the caller gives the guest an external abort) or
/// when the access's register is not in `frame` (the caller takes the full
/// path, where it is).
///
/// This is the most frequent guest exit; it stays free of logging and
/// allocation. A UART store that completes a line copies it into the
/// console queue and moves queued output to the UART if that is free,
/// without waiting for it.
#[inline(always)]
pub fn emulate(index: usize, frame: &mut AccessFrame<'_>, access: &MmioAccess) -> bool {
    let Some((device, offset)) = device_bus::route(access.address, access.width) else {
        return false;
    };
    let Some(data) = frame.data_register(access) else {
        return false;
    };
    let mut devices = DEVICES[index].lock();
    match device {
        GuestDevice::Uart => {
            if access.is_write {
                devices
                    .uart
                    .write(offset, access.width, data.stored_value());
            } else {
                data.complete_load(access, devices.uart.read(offset, access.width));
            }
        }
    }
    drop(devices);
    true
}
