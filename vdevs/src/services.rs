//! What a device model may ask of the hypervisor core beyond answering
//! accesses: map and unmap pages in its VM's stage 2 (vdev-shmem's data and
//! control pages), raise and lower an interrupt line, write the console.
//!
//! The core implements these for each VM; models are generic over them, so
//! every model runs on the host against fakes. A model that spans VMs
//! (vdev-shmem's region registry) also needs host pages of its own
//! ([`HostPages`]) and the lines of any VM ([`crate::interrupt::VmLines`]),
//! naming the VM by [`VmIndex`].

use crate::{ConsoleSink, InterruptLine};

/// A VM, as a model that serves several VMs names it: the VM's index in
/// the system (the hypervisor's `VmId::index()`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VmIndex(pub u8);

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

/// Host memory a model may take for data it shares with guests
/// (vdev-shmem's region pages). Addresses are host-physical byte addresses;
/// counts are 4 KiB pages. Not a heap: the target takes whole pages from
/// its page allocator, and nothing here is called on a device's fast path
/// (only when a region is created or freed).
pub trait HostPages {
    /// `pages` contiguous, page-aligned host pages, or `None` when there
    /// is no memory for them. Their contents are unspecified.
    fn allocate_pages(&mut self, pages: u64) -> Option<u64>;

    /// Makes the pages read as zero through any mapping a guest may make
    /// of them (on the target: zeroed, then cleaned to the point of
    /// coherency, since a guest may map them non-cacheable).
    fn zero_pages(&mut self, host_address: u64, pages: u64);

    /// Gives back pages from [`allocate_pages`](Self::allocate_pages); no
    /// stage 2 maps them any more.
    fn free_pages(&mut self, host_address: u64, pages: u64);
}
