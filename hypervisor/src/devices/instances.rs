//! Each VM's emulated devices, and the hot path that carries out a trapped
//! access to one of them.
//!
//! A VM's device map (`Vm::devices`, built at boot) says which device slot
//! an address belongs to; each device sits behind a lock of its own, apart
//! from the VM's vCPU bookkeeping, so a device access takes one uncontended
//! lock and nothing else (lock order: `tessera_hypervisor::vm::system`).

use spin::Mutex;
use tessera_hypervisor::traps::guest_exit::{AccessFrame, MmioAccess};
use tessera_hypervisor::vm::ids::VmId;

use crate::devices::vuart::VirtualUart;
use crate::vm::{self, RunningVm, UART_SLOT};

/// One VM's emulated devices, each behind a lock of its own; the VM's
/// device map (`Vm::devices`) says which slot answers which window.
pub struct VmDevices {
    /// Slot `UART_SLOT`.
    pub uart: Mutex<VirtualUart>,
}

impl VmDevices {
    /// VM `id`'s devices in their reset state, at build time.
    pub const fn new(id: VmId, vm_name: &'static str) -> Self {
        Self {
            uart: Mutex::new(VirtualUart::new(id.index(), vm_name)),
        }
    }
}

/// Pushes out buffered output, as when the VM stops.
pub fn flush(id: VmId) {
    vm::vm(id).device_state.uart.lock().flush();
}

/// Returns every device of VM `id` to its reset state (buffered output
/// is flushed first), as when the VM restarts.
pub fn reset(id: VmId) {
    let mut uart = vm::vm(id).device_state.uart.lock();
    uart.flush();
    uart.reset();
}

/// Carries out a trapped `access` of `vm`; the caller then steps the
/// guest past the instruction. Returns false, changing nothing, when no
/// device is behind the address (the caller gives the guest an external
/// abort) or when the access's register is not in `frame` (the caller
/// takes the full path, where it is).
///
/// This is the most frequent guest exit; it stays free of logging and
/// allocation. A UART store that completes a line copies it into the
/// console queue and moves queued output to the UART if that is free,
/// without waiting for it.
#[inline(always)]
pub fn emulate(vm: &RunningVm, frame: &mut AccessFrame<'_>, access: &MmioAccess) -> bool {
    let Some((slot, offset)) = vm.devices.route(access.address, access.width) else {
        return false;
    };
    let Some(data) = frame.data_register(access) else {
        return false;
    };
    if slot != UART_SLOT {
        return false;
    }
    let mut uart = vm.device_state.uart.lock();
    if access.is_write {
        uart.write(offset, access.width, data.stored_value());
    } else {
        data.complete_load(access, uart.read(offset, access.width));
    }
    true
}
