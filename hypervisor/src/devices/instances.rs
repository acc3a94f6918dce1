//! Each VM's emulated devices, and the hot path that carries out a trapped
//! access to one of them.
//!
//! A VM's device map (`Vm::devices`, built at boot) says which device slot
//! an address belongs to; each device sits behind a lock of its own, apart
//! from the VM's vCPU bookkeeping, so a device access takes one uncontended
//! lock and nothing else (lock order: `tessera_hypervisor::vm::system`).

use tessera_hypervisor::devices::map::DeviceSlot;
use tessera_hypervisor::sync::Mutex;
use tessera_hypervisor::traps::guest_exit::{AccessFrame, DataRegister, LoadShape, MmioAccess};
use tessera_hypervisor::vm::ids::{VcpuId, VmId};
use tessera_platform::guest::UART_SPI;

use crate::devices::shmem::{self, VmShmem};
use crate::devices::vuart::VirtualUart;
use crate::interrupts::guest::{self as guest_interrupts, VmVgic};
use crate::interrupts::virtual_interface::VirtualInterface;
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
    /// The distributor's registers that never change, answered without
    /// the vGIC's lock.
    pub gicd_constants: GicdConstants,
    /// Slots from `shmem::FIRST_SLOT`: the VM's vdev-shmem instances,
    /// whose state is the system-wide registry's (`devices::shmem`).
    pub shmem: VmShmem,
}

/// The distributor's identification and type registers (GICD_TYPER,
/// GICD_IIDR, GICD_PIDR2): fixed when the VM is built, so a read of them
/// (a driver probing the GIC) takes no lock.
pub struct GicdConstants {
    offsets: [u64; 3],
    values: [u32; 3],
}

impl GicdConstants {
    /// Reads them off `vgic`'s distributor once.
    pub fn of(vgic: &VmVgic) -> Self {
        use tessera_hypervisor::vgic::distributor::offset;
        use tessera_vdevs::AccessWidth;
        let vgic = vgic.lock();
        let pidr2 = match vgic.state.version() {
            tessera_hypervisor::vgic::state::GicVersion::V2 => offset::V2_PIDR2,
            tessera_hypervisor::vgic::state::GicVersion::V3 => offset::V3_PIDR2,
        };
        let offsets = [offset::TYPER, offset::IIDR, pidr2];
        let read = |offset| {
            vgic.state
                .distributor_read(VcpuId::FIRST, offset, AccessWidth::Word) as u32
        };
        Self {
            offsets,
            values: offsets.map(read),
        }
    }

    #[inline(always)]
    fn read(&self, offset: u64, width: tessera_vdevs::AccessWidth) -> Option<u64> {
        if width != tessera_vdevs::AccessWidth::Word {
            return None;
        }
        let index = self.offsets.iter().position(|known| *known == offset)?;
        Some(u64::from(self.values[index]))
    }
}

impl VmDevices {
    /// VM `id`'s devices in their reset state, at build time.
    pub fn new(id: VmId, vm_name: &'static str, vgic: &'static VmVgic, shmem: VmShmem) -> Self {
        Self {
            uart: Mutex::new(VirtualUart::new(id.index(), vm_name)),
            gicd_constants: GicdConstants::of(vgic),
            vgic,
            shmem,
        }
    }
}

/// The INTID of the virtual UART's interrupt.
const UART_INTID: u32 = 32 + UART_SPI;

/// Pushes out buffered output, as when the VM stops.
pub fn flush(id: VmId) {
    vm::vm(id).device_state.uart.lock().flush();
}

/// VM `id` stopped, crashed or is being reset, with none of its vCPUs
/// running: its vdev-shmem connections are detached, and its peers told.
pub fn stopped(id: VmId) {
    shmem::detach_vm(id);
}

/// Returns every device of VM `id` to its reset state (buffered output
/// is flushed first), as when the VM restarts; none of its vCPUs runs.
/// Its vdev-shmem connections are detached (`stopped`).
pub fn reset(id: VmId) {
    stopped(id);
    let devices = &vm::vm(id).device_state;
    {
        let mut uart = devices.uart.lock();
        uart.flush();
        uart.reset();
    }
    let mut vgic = devices.vgic.lock();
    guest_interrupts::quiesce_passthrough(&vgic);
    vgic.reset();
    // The guest's routing is back to its reset state: so is the physical,
    // and where its signalled SPIs ring.
    guest_interrupts::follow_guest_routing(id, &vgic);
    vgic.publish_targets(&devices.vgic.lines);
}

/// Carries out a trapped `access` of `vm`; the caller then steps the
/// guest past the instruction. Returns false, changing nothing, when no
/// device is behind the address (the caller gives the guest an external
/// abort) or when the access's register is not in `frame` (the caller
/// takes the full path, where it is).
///
/// This is the most frequent guest exit; it stays free of logging and
/// allocation. Every device is reached by a tail call with the access in
/// registers, so the trap handler that inlines this keeps no frame. A
/// UART store that completes a line copies it into the console queue and
/// moves queued output to the UART if that is free, without waiting for
/// it.
#[inline(always)]
pub fn emulate(vm: &RunningVm, frame: &mut AccessFrame<'_>, access: &MmioAccess) -> bool {
    let Some(data) = frame.data_register(access) else {
        return false;
    };
    let shape = access.load_shape();
    match vm.devices.route_at_hint(access.address, access.width) {
        Some((slot, offset)) => emulate_at(vm, slot, offset, data, access.is_write, shape),
        None => emulate_past_hint(vm, access.address, data, access.is_write, shape),
    }
}

/// [`emulate`] for an access outside the window that answered last.
#[inline(never)]
fn emulate_past_hint(
    vm: &RunningVm,
    address: tessera_hypervisor::memory::address::GuestPhysAddr,
    data: DataRegister<'_>,
    is_write: bool,
    shape: LoadShape,
) -> bool {
    match vm.devices.route_past_hint(address, shape.width) {
        Some((slot, offset)) => emulate_at(vm, slot, offset, data, is_write, shape),
        None => false,
    }
}

/// [`emulate`] once routed: to `offset` in the device at `slot`.
#[inline(always)]
fn emulate_at(
    vm: &RunningVm,
    slot: DeviceSlot,
    offset: u64,
    data: DataRegister<'_>,
    is_write: bool,
    shape: LoadShape,
) -> bool {
    if slot == UART_SLOT {
        return if is_write {
            uart_write(vm, offset, shape.width, data.stored_value())
        } else {
            uart_read(vm, offset, data, shape)
        };
    }
    if !is_write {
        return read_gic_or_shmem(vm, slot, offset, data, shape);
    }
    let value = data.stored_value();
    // vdev-shmem first: a notify is the measured write
    // (`shmem.notify_oneway`), and the GIC's write path keeps a large
    // frame.
    if shmem::is_shmem_slot(slot) {
        return shmem::write(vm, slot, offset, shape.width, value);
    }
    write_gic_or_shmem(vm, slot, offset, shape.width, value)
}

/// A trapped load from the VM's UART (a leaf: no frame to speak of; the
/// frequent one, `mmio.vuart_read`).
#[inline(never)]
fn uart_read(vm: &RunningVm, offset: u64, data: DataRegister<'_>, shape: LoadShape) -> bool {
    // Reads of what Tessera models never move the interrupt line. The
    // lock is taken inline: the read is measured (`mmio.vuart_read`), and
    // keeps its register `match` in a compact jump table.
    let value = vm.device_state.uart.lock_inline().read(offset, shape.width);
    data.complete_load_as(shape, value);
    true
}

/// A trapped store to the VM's UART.
#[inline(never)]
fn uart_write(vm: &RunningVm, offset: u64, width: tessera_vdevs::AccessWidth, value: u64) -> bool {
    // Inline, which keeps the register `match` in a compact jump table.
    let mut uart = vm.device_state.uart.lock_inline();
    uart.write(offset, width, value);
    // A write (a mask, a clear, a character) may move the UART's
    // interrupt line.
    if let Some(level) = uart.take_line_change() {
        drop(uart);
        set_uart_line(vm, level);
    }
    true
}

/// The console may have drained (the EL2 tick moves it on): the virtual
/// UART of the VM running here raises the transmit interrupt it owes, if
/// any (the PL011 model raises none while its FIFO shows full).
pub fn console_drained() {
    let Some(vm) = vm::running_vm() else {
        return;
    };
    let mut uart = vm.device_state.uart.lock();
    uart.transmit_space_changed();
    if let Some(level) = uart.take_line_change() {
        drop(uart);
        set_uart_line(vm, level);
    }
}

/// Drives the virtual UART's SPI to `level` in its VM's vGIC.
#[inline(never)]
fn set_uart_line(vm: &RunningVm, level: bool) {
    let (id, vcpu) = (vm.description.id, vm::running_vcpu());
    let mut vgic = vm.device_state.vgic.lock();
    // An SPI belongs to the VM, not to the vCPU named here.
    let effects = vgic.state.set_line_level(vcpu, UART_INTID, level);
    guest_interrupts::deliver(id, vcpu, &mut vgic, effects);
}

/// A trapped read of the VM's distributor, redistributors or vdev-shmem
/// pages (`devices::shmem`), by the vCPU running here, into its register:
/// false when nothing answers there. vdev-shmem is told apart after the
/// distributor's constants, so that the measured GIC read
/// (`mmio.gicd_read`) pays nothing for it.
#[inline(never)]
fn read_gic_or_shmem(
    vm: &RunningVm,
    slot: DeviceSlot,
    offset: u64,
    data: DataRegister<'_>,
    shape: LoadShape,
) -> bool {
    let value = if slot == GICD_SLOT
        && let Some(value) = vm.device_state.gicd_constants.read(offset, shape.width)
    {
        Some(value)
    } else if shmem::is_shmem_slot(slot) {
        shmem::read(vm, slot, offset, shape.width)
    } else {
        read_gic(vm, slot, offset, shape.width)
    };
    match value {
        Some(value) => {
            data.complete_load_as(shape, value);
            true
        }
        None => false,
    }
}

/// [`read_gic_or_shmem`] for a register that needs the vGIC's lock, in a
/// frame of its own (the constants and vdev-shmem do not pay for it).
#[inline(never)]
fn read_gic(
    vm: &RunningVm,
    slot: DeviceSlot,
    offset: u64,
    width: tessera_vdevs::AccessWidth,
) -> Option<u64> {
    let vcpu = vm::running_vcpu();
    let mut vgic = vm.device_state.vgic.lock();
    let state_register = reaches_interrupt_state(slot, offset);
    if state_register {
        // What the list registers hold is the model's too.
        let _ = vgic.fold_all(vcpu, &mut VirtualInterface::this_cpu());
    }
    let value = if slot == GICD_SLOT {
        vgic.state.distributor_read(vcpu, offset, width)
    } else if slot == GICR_SLOT {
        vgic.state.redistributor_read(vcpu, offset, width)
    } else {
        return None;
    };
    if state_register {
        guest_interrupts::resync(&mut vgic, vcpu);
    }
    Some(value)
}

/// The interrupts a write of `value` explicitly clears the pending or
/// active state of (GICD/GICR ICPENDR, ICACTIVER), as the first INTID of
/// the register and its bits; a redistributor write counts only in the
/// accessing vCPU's own frame (its PPIs are this CPU's).
fn cleared_interrupts(
    slot: tessera_hypervisor::devices::map::DeviceSlot,
    offset: u64,
    width: tessera_vdevs::AccessWidth,
    value: u64,
    vcpu: VcpuId,
) -> Option<(u32, u32)> {
    if width != tessera_vdevs::AccessWidth::Word {
        return None;
    }
    let value = value as u32;
    if slot == GICD_SLOT {
        let base = [0x280, 0x380]
            .into_iter()
            .find(|base| (*base..*base + 0x80).contains(&offset))?;
        Some((((offset - base) / 4 * 32) as u32, value))
    } else if slot == GICR_SLOT {
        let own_frame = offset / 0x2_0000 == vcpu.index() as u64;
        (own_frame && matches!(offset % 0x2_0000, 0x1_0280 | 0x1_0380)).then_some((0, value))
    } else {
        None
    }
}

/// Whether a distributor register at `offset` routes SPIs: GICv2's
/// GICD_ITARGETSR, GICv3's GICD_IROUTER.
fn routes_spis(offset: u64) -> bool {
    (0x820..0xC00).contains(&offset) || (0x6100..0x8000).contains(&offset)
}

/// Whether a register at `offset` of the distributor (`GICD_SLOT`) or the
/// redistributors (`GICR_SLOT`) reads or changes pending or active state:
/// I[SC]PENDR and I[SC]ACTIVER, and GICv2's SGI pending registers. The
/// accessing vCPU's list registers are folded into the model first, so the
/// access sees and changes what the guest would on hardware. (Another
/// vCPU's list registers are folded when its own CPU next syncs: an
/// access to its redistributor sees its state as of then.)
fn reaches_interrupt_state(
    slot: tessera_hypervisor::devices::map::DeviceSlot,
    offset: u64,
) -> bool {
    if slot == GICD_SLOT {
        (0x200..0x400).contains(&offset) || (0xF10..0xF30).contains(&offset)
    } else if slot == GICR_SLOT {
        (0x1_0200..0x1_0400).contains(&(offset % 0x2_0000))
    } else {
        false
    }
}

#[inline(never)]
fn write_gic_or_shmem(
    vm: &RunningVm,
    slot: tessera_hypervisor::devices::map::DeviceSlot,
    offset: u64,
    width: tessera_vdevs::AccessWidth,
    value: u64,
) -> bool {
    if shmem::is_shmem_slot(slot) {
        return shmem::write(vm, slot, offset, width, value);
    }
    let (id, vcpu) = (vm.description.id, vm::running_vcpu());
    let mut vgic = vm.device_state.vgic.lock();
    let folded = reaches_interrupt_state(slot, offset)
        .then(|| vgic.fold_all(vcpu, &mut VirtualInterface::this_cpu()));
    let mut effects = if slot == GICD_SLOT {
        vgic.state.distributor_write(vcpu, offset, width, value)
    } else if slot == GICR_SLOT {
        vgic.state.redistributor_write(vcpu, offset, width, value)
    } else {
        return false;
    };
    if slot == GICD_SLOT && routes_spis(offset) {
        // The guest moved an SPI: its passed-through ones follow
        // physically, and its signalled ones ring their new vCPU's CPU.
        guest_interrupts::follow_guest_routing(id, &vgic);
        vgic.publish_targets(&vm.device_state.vgic.lines);
    }
    if folded.is_some() {
        // A linked interrupt whose pending or active state the guest
        // cleared by this write, left neither pending nor active, has no
        // instance left for the guest to complete: its physical interrupt,
        // left active when it fired, is made inactive too, as a
        // deactivation through the list register would have, or the
        // device (the timer) would never interrupt again. Only what the
        // write named, and only the active state: a physical interrupt
        // pending meanwhile is not lost.
        if let Some((first, bits)) = cleared_interrupts(slot, offset, width, value, vcpu) {
            for bit in (0..32).filter(|bit| bits & (1 << bit) != 0) {
                let intid = first + bit;
                if let Some(physical) = vgic.state.linked_physical(vcpu, intid)
                    && vgic.is_idle(vcpu, intid)
                {
                    crate::interrupts::gic::deactivate_physical(physical);
                }
            }
        }
        effects.reevaluate.insert(vcpu);
    }
    guest_interrupts::deliver(id, vcpu, &mut vgic, effects);
    true
}
