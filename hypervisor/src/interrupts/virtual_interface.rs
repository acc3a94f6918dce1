//! This CPU's hardware virtual CPU interface: GICv3's ICH_*_EL2 system
//! registers or GICv2's GICH frame (Arm IHI 0069H §12.4, IHI 0048B
//! chapter 5), behind the library's `ListRegisters` trait, whose policy
//! (`tessera_hypervisor::vgic::list_registers`) decides what they hold.
//!
//! Each CPU touches only its own interface: ICH_* registers are per CPU by
//! nature, and the GICH frame at its architected address is banked, each
//! CPU seeing its own. `arm-gic` has no hypervisor interface, so this is
//! the project's own.

use core::arch::asm;
use core::sync::atomic::{AtomicU8, Ordering};

use tessera_hypervisor::MAX_CPUS;
use tessera_hypervisor::vgic::list_registers::{ListEntry, ListRegisters, MAX_LIST_REGISTERS};
use tessera_platform::GicLayout;
use tock_registers::interfaces::{Readable, Writeable};
use tock_registers::register_structs;
use tock_registers::registers::{ReadOnly, ReadWrite};

use crate::{arch, interrupts::gic};

/// ICH_HCR_EL2 and GICH_HCR share these bits: En (the virtual CPU
/// interface works) and NPIE (maintenance while no list register is
/// pending).
const HCR_ENABLE: u64 = 1 << 0;
const HCR_NO_PENDING_MAINTENANCE: u64 = 1 << 3;

register_structs! {
    /// The GICv2 virtual interface control registers this code uses
    /// (GICH, IHI 0048B §5.3, table 5-1); each CPU sees its own frame at
    /// the architected address.
    GichRegisters {
        (0x000 => hcr: ReadWrite<u32>),
        (0x004 => vtr: ReadOnly<u32>),
        (0x008 => vmcr: ReadWrite<u32>),
        (0x00C => _reserved0),
        (0x030 => elrsr0: ReadOnly<u32>),
        (0x034 => _reserved1),
        (0x0F0 => apr: ReadWrite<u32>),
        (0x0F4 => _reserved2),
        (0x100 => lr: [ReadWrite<u32>; MAX_LIST_REGISTERS]),
        (0x140 => @END),
    }
}

const _: () = assert!(MAX_LIST_REGISTERS == 16, "GICH_LR<n> are at 0x100 + 4n");

/// The list-register count of each CPU, read once at its bring-up (0
/// until then: no list register is touched).
static COUNTS: [AtomicU8; MAX_CPUS] = [const { AtomicU8::new(0) }; MAX_CPUS];

/// ICH_LR<index>_EL2 of this CPU as it stands, on GICv3 (the caller
/// knows the GIC is one: the injection fast path is armed on GICv3 only).
///
/// The register is named in the instruction, so `index` picks one of 16
/// `mrs`: by a branch into a table of instruction pairs, as the vectors'
/// fast path does (`arch::vectors`), not a `match`, whose jump table was
/// 60 bytes of rodata in each function holding a copy. Callers pass an
/// index below the implemented count (ICH_VTR_EL2.ListRegs + 1): a
/// register past it is UNDEFINED and would trap at EL2. The `min` only
/// keeps the branch inside the table (an index past 15 reads
/// ICH_LR15_EL2).
#[inline(always)]
pub fn read_gicv3_list_register(index: usize) -> u64 {
    let value: u64;
    // SAFETY: reading a list register of this CPU's virtual CPU interface
    // has no side effects; the branch lands on one of the 16 `mrs, b`
    // pairs (the index is at most 15), each of which leaves at label 3.
    unsafe {
        asm!(
            "adr {target}, 2f",
            "add {target}, {target}, {index}, lsl #3",
            "br {target}",
            "2:",
            ".irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15",
            "mrs {value}, ich_lr\\n\\()_el2",
            "b 3f",
            ".endr",
            "3:",
            index = in(reg) index.min(15),
            target = out(reg) _,
            value = out(reg) value,
            options(nomem, nostack, preserves_flags)
        );
    }
    value
}

/// Writes ICH_LR<index>_EL2 of this CPU with `value`, on GICv3 (as
/// [`read_gicv3_list_register`]; an index past 15 writes ICH_LR15_EL2).
#[inline(always)]
pub fn write_gicv3_list_register(index: usize, value: u64) {
    // SAFETY: the list registers only affect what this CPU's guest is
    // shown; the policy keeps them in step with the VM's interrupt model.
    // The branch lands on one of the 16 `msr, b` pairs, as in
    // `read_gicv3_list_register`.
    unsafe {
        asm!(
            "adr {target}, 2f",
            "add {target}, {target}, {index}, lsl #3",
            "br {target}",
            "2:",
            ".irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15",
            "msr ich_lr\\n\\()_el2, {value}",
            "b 3f",
            ".endr",
            "3:",
            index = in(reg) index.min(15),
            target = out(reg) _,
            value = in(reg) value,
            options(nomem, nostack, preserves_flags)
        );
    }
}

/// This CPU's virtual CPU interface.
pub struct VirtualInterface {
    count: usize,
    /// GICv2: this CPU's (banked) GICH frame; GICv3: none, the ICH_*
    /// system registers are used.
    gich: Option<&'static GichRegisters>,
}

impl VirtualInterface {
    /// The calling CPU's interface. Out of line: a dozen exits and
    /// maintenance paths make one, none of them a measured fast path (those
    /// touch the list registers in assembly or through
    /// [`write_gicv3_list_register`]), and each inlined copy was ~100 bytes.
    #[inline(never)]
    pub fn this_cpu() -> Self {
        let count = usize::from(COUNTS[arch::cpu_index()].load(Ordering::Relaxed));
        let gich = match gic::layout() {
            Some(GicLayout::V2 {
                hypervisor_interface,
                ..
            }) => {
                let registers = hypervisor_interface.base as usize as *const GichRegisters;
                // SAFETY: the board's GICH frame, mapped as device memory in
                // the EL2 map for the whole run; each CPU sees its own
                // (banked) registers there, and only this CPU's code uses
                // them, so no two writers share a register.
                Some(unsafe { &*registers })
            }
            _ => None,
        };
        Self { count, gich }
    }

    fn hcr(&self) -> u64 {
        match self.gich {
            Some(gich) => u64::from(gich.hcr.get()),
            None => {
                let value: u64;
                // SAFETY: reading ICH_HCR_EL2 has no side effects.
                unsafe {
                    asm!("mrs {v}, ich_hcr_el2", v = out(reg) value,
                        options(nomem, nostack, preserves_flags));
                }
                value
            }
        }
    }

    fn set_hcr(&self, value: u64) {
        match self.gich {
            Some(gich) => gich.hcr.set(value as u32),
            None => {
                // SAFETY: ICH_HCR_EL2 controls this CPU's virtual CPU
                // interface only.
                unsafe {
                    asm!("msr ich_hcr_el2, {v}", v = in(reg) value,
                        options(nomem, nostack, preserves_flags));
                }
            }
        }
    }

    /// Brings up this CPU's virtual CPU interface at its bring-up: learns
    /// its list-register count and leaves it empty and disabled.
    pub fn init_this_cpu() {
        let gich = Self::this_cpu().gich;
        let count = match gich {
            // GICH_VTR.ListRegs [5:0]: the count less one.
            Some(gich) => (gich.vtr.get() & 0x3F) as usize + 1,
            None => {
                let vtr: u64;
                // SAFETY: reading ICH_VTR_EL2 has no side effects.
                unsafe {
                    asm!("mrs {v}, ich_vtr_el2", v = out(reg) vtr,
                        options(nomem, nostack, preserves_flags));
                }
                (vtr & 0x1F) as usize + 1
            }
        };
        let count = count.min(MAX_LIST_REGISTERS);
        COUNTS[arch::cpu_index()].store(count as u8, Ordering::Relaxed);
        Self::this_cpu().reset(false);
    }

    /// Empties the list registers and the active-priority registers,
    /// zeroes the guest's interface controls (ICH_VMCR_EL2 / GICH_VMCR:
    /// a fresh vCPU finds its CPU interface disabled, as at reset), and
    /// enables the interface if `enable`. Called when a vCPU starts on this
    /// CPU, so nothing of an earlier run survives.
    pub fn reset(&mut self, enable: bool) {
        for index in 0..self.count {
            self.write(index, ListEntry::EMPTY);
        }
        let hcr = if enable { HCR_ENABLE } else { 0 };
        match self.gich {
            Some(gich) => {
                gich.vmcr.set(0);
                gich.apr.set(0);
            }
            None => {
                // SAFETY: zeroing this CPU's virtual interface controls
                // and active priorities, with no vCPU running on it.
                unsafe {
                    asm!(
                        "msr ich_vmcr_el2, xzr",
                        "msr ich_ap0r0_el2, xzr",
                        "msr ich_ap1r0_el2, xzr",
                        options(nomem, nostack, preserves_flags)
                    );
                }
                // With 6 or 7 preemption bits (ICH_VTR_EL2.PREbits) the
                // active priorities span more registers (IHI 0069H
                // §12.4.1-2); 5 bits, as QEMU and the A72 have, need one.
                let vtr: u64;
                // SAFETY: reading ICH_VTR_EL2 has no side effects.
                unsafe {
                    asm!("mrs {v}, ich_vtr_el2", v = out(reg) vtr,
                        options(nomem, nostack, preserves_flags));
                }
                let preemption_bits = ((vtr >> 26) & 0b111) + 1;
                if preemption_bits >= 6 {
                    // SAFETY: as above; these exist with 6 or more bits.
                    unsafe {
                        asm!(
                            "msr ich_ap0r1_el2, xzr",
                            "msr ich_ap1r1_el2, xzr",
                            options(nomem, nostack, preserves_flags)
                        );
                    }
                }
                if preemption_bits == 7 {
                    // SAFETY: as above; these exist with 7 bits.
                    unsafe {
                        asm!(
                            "msr ich_ap0r2_el2, xzr",
                            "msr ich_ap0r3_el2, xzr",
                            "msr ich_ap1r2_el2, xzr",
                            "msr ich_ap1r3_el2, xzr",
                            options(nomem, nostack, preserves_flags)
                        );
                    }
                }
            }
        }
        self.set_hcr(hcr);
        arch::instruction_barrier();
    }
}

impl ListRegisters for VirtualInterface {
    #[inline(always)]
    fn count(&self) -> usize {
        self.count
    }

    fn read(&self, index: usize) -> ListEntry {
        debug_assert!(index < self.count, "list register {index} not implemented");
        match self.gich {
            // The policy stays below `count`; the `min` only spares the
            // bounds check's panic (past 15 is GICH_LR15, as on GICv3).
            Some(gich) => ListEntry::from_gicv2(gich.lr[index.min(MAX_LIST_REGISTERS - 1)].get()),
            None => ListEntry::from_gicv3(read_gicv3_list_register(index)),
        }
    }

    /// Out of line, as [`VirtualInterface::this_cpu`]: the two
    /// generations' register selects together are too large to copy into
    /// every caller.
    #[inline(never)]
    fn write(&mut self, index: usize, entry: ListEntry) {
        debug_assert!(index < self.count, "list register {index} not implemented");
        match self.gich {
            Some(gich) => gich.lr[index.min(MAX_LIST_REGISTERS - 1)].set(entry.to_gicv2()),
            None => write_gicv3_list_register(index, entry.to_gicv3()),
        }
    }

    fn empty(&self) -> u32 {
        match self.gich {
            Some(gich) => gich.elrsr0.get(),
            None => {
                let value: u64;
                // SAFETY: reading ICH_ELRSR_EL2 has no side effects.
                unsafe {
                    asm!("mrs {v}, ich_elrsr_el2", v = out(reg) value,
                        options(nomem, nostack, preserves_flags));
                }
                value as u32
            }
        }
    }

    fn set_no_pending_maintenance(&mut self, enabled: bool) {
        let hcr = self.hcr();
        let wanted = if enabled {
            hcr | HCR_NO_PENDING_MAINTENANCE
        } else {
            hcr & !HCR_NO_PENDING_MAINTENANCE
        };
        if wanted != hcr {
            self.set_hcr(wanted);
        }
    }
}
