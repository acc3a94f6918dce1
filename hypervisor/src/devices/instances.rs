//! Each VM's emulated devices, and the hot path that carries out a trapped
//! access to one of them.
//!
//! A VM's device map (`Vm::devices`, built at boot) says which device slot
//! an address belongs to; each device sits behind a lock of its own, apart
//! from the VM's vCPU bookkeeping, so a device access takes one uncontended
//! lock and nothing else (lock order: `tessera_hypervisor::vm::system`).

use spin::Mutex;
use tessera_hypervisor::traps::guest_exit::{AccessFrame, DataRegister, MmioAccess};
use tessera_hypervisor::vm::ids::{VcpuId, VmId};
use tessera_platform::guest::UART_SPI;

use crate::devices::vuart::VirtualUart;
use crate::interrupts::guest::{self as guest_interrupts, VmVgic};
use crate::vm::{self, GICD_SLOT, GICR_SLOT, RunningVm, UART_SLOT};

/// One VM's emulated devices, each behind a lock of its own; the VM's
/// device map (`Vm::devices`) says which slot answers which window.
pub struct VmDevices {
    /// Slot `UART_SLOT`.
    pub uart: Mutex<VirtualUart>,
    /// Slots `GICD_SLOT` and `GICR_SLOT`: the distributor and (GICv3) the
    /// redistributors; the GICv2 CPU interface is the hardware's virtual
    /// one, mapped in stage 2.
    pub vgic: &'static VmVgic,
}

impl VmDevices {
    /// VM `id`'s devices in their reset state, at build time.
    pub const fn new(id: VmId, vm_name: &'static str, vgic: &'static VmVgic) -> Self {
        Self {
            uart: Mutex::new(VirtualUart::new(id.index(), vm_name)),
            vgic,
        }
    }
}

/// The INTID of the virtual UART's interrupt.
const UART_INTID: u32 = 32 + UART_SPI;

/// Pushes out buffered output, as when the VM stops.
pub fn flush(id: VmId) {
    vm::vm(id).device_state.uart.lock().flush();
}

/// Returns every device of VM `id` to its reset state (buffered output
/// is flushed first), as when the VM restarts; none of its vCPUs runs.
pub fn reset(id: VmId) {
    let devices = &vm::vm(id).device_state;
    {
        let mut uart = devices.uart.lock();
        uart.flush();
        uart.reset();
    }
    devices.vgic.lock().reset();
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
        return emulate_gic(vm, slot, offset, data, access);
    }
    let mut uart = vm.device_state.uart.lock();
    if access.is_write {
        uart.write(offset, access.width, data.stored_value());
        // A write (a mask, a clear, a character) may move the UART's
        // interrupt line; reads of what Tessera models never do.
        if let Some(level) = uart.take_line_change() {
            drop(uart);
            set_uart_line(vm, level);
        }
    } else {
        data.complete_load(access, uart.read(offset, access.width));
    }
    true
}

/// Drives the virtual UART's SPI to `level` in its VM's vGIC.
#[inline(never)]
fn set_uart_line(vm: &RunningVm, level: bool) {
    let Some((id, vcpu)) = vm::current() else {
        return;
    };
    let mut vgic = vm.device_state.vgic.lock();
    // An SPI belongs to the VM, not to the vCPU named here.
    let effects = vgic.state.set_line_level(vcpu, UART_INTID, level);
    guest_interrupts::deliver(id, vcpu, &mut vgic, effects);
}

/// A trapped access to the VM's distributor or redistributors, by the
/// vCPU running here.
#[inline(never)]
fn emulate_gic(
    vm: &RunningVm,
    slot: tessera_hypervisor::devices::map::DeviceSlot,
    offset: u64,
    data: DataRegister<'_>,
    access: &MmioAccess,
) -> bool {
    let Some((id, vcpu)) = vm::current() else {
        return false;
    };
    let vcpu: VcpuId = vcpu;
    let mut vgic = vm.device_state.vgic.lock();
    if access.is_write {
        let value = data.stored_value();
        let effects = if slot == GICD_SLOT {
            vgic.state
                .distributor_write(vcpu, offset, access.width, value)
        } else if slot == GICR_SLOT {
            vgic.state
                .redistributor_write(vcpu, offset, access.width, value)
        } else {
            return false;
        };
        guest_interrupts::deliver(id, vcpu, &mut vgic, effects);
    } else {
        let value = if slot == GICD_SLOT {
            vgic.state.distributor_read(vcpu, offset, access.width)
        } else if slot == GICR_SLOT {
            vgic.state.redistributor_read(vcpu, offset, access.width)
        } else {
            return false;
        };
        data.complete_load(access, value);
    }
    true
}
