//! What a device model may ask of the hypervisor core beyond answering
//! accesses: map and unmap pages in its VM's stage 2 (vdev-shmem's data and
//! control pages), raise and lower an interrupt line, write the console.
//!
//! The core implements these for each VM; models are generic over them, so
//! every model runs on the host against fakes.

use crate::{ConsoleSink, InterruptLine};

/// How the guest may access pages a model maps for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageAccess {
    ReadWrite,
    ReadOnly,
}

/// Why a map or unmap request was refused. Each means the model asked for
/// something it should not have (a bug in the model) or the core ran out
/// of table memory; the VM's stage 2 is unchanged past the point of
/// failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PagesRefused {
    /// Not page aligned.
    Misaligned,
    /// Outside the guest-physical address space, or wrapping.
    OutOfRange,
    /// Part of the range is mapped already (a model must unmap first).
    AlreadyMapped { guest_address: u64 },
    /// The core could not get memory for translation tables.
    OutOfMemory,
}

/// A VM's stage 2, as a device model sees it. Addresses are byte addresses:
/// `guest_address` is guest-physical, `host_address` host-physical; both
/// and `length` are multiples of the 4 KiB page.
pub trait GuestPages {
    /// Makes `[guest_address, guest_address + length)` reach the host pages
    /// at `host_address` as normal write-back memory. Nothing may be mapped
    /// there yet.
    fn map_pages(
        &mut self,
        guest_address: u64,
        host_address: u64,
        length: u64,
        access: PageAccess,
    ) -> Result<(), PagesRefused>;

    /// Removes the range from the VM's stage 2. When this returns, no CPU
    /// translates any of it any more (break-before-make, with the TLB
    /// maintenance for the VM's VMID on every CPU that may hold it), so
    /// the host pages may be handed to someone else.
    fn unmap_pages(&mut self, guest_address: u64, length: u64) -> Result<(), PagesRefused>;
}

/// Everything a model may ask of the core for its VM.
pub trait VmServices: GuestPages + ConsoleSink {
    /// The interrupt line (an interrupt ID of the VM's virtual GIC) the
    /// model raises and lowers.
    fn line(&mut self, intid: u32) -> impl InterruptLine + '_;
}
