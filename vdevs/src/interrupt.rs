//! How a device model drives its interrupt output.

use crate::services::VmIndex;

/// A level-sensitive interrupt output of a device model, wired by the
/// hypervisor to a virtual interrupt (for example an SPI of the vGIC).
///
/// Models call [`set_level`](Self::set_level) whenever the level they compute
/// may have changed; a model may remember the last level and call only on
/// changes, so implementations must not count calls as edges.
pub trait InterruptLine {
    /// `true` asserts the line, `false` deasserts it.
    fn set_level(&mut self, asserted: bool);
}

/// Lets the hypervisor keep ownership of the line and lend it to a model.
impl<T: InterruptLine + ?Sized> InterruptLine for &mut T {
    fn set_level(&mut self, asserted: bool) {
        (**self).set_level(asserted);
    }
}

/// The interrupt lines of every VM, for a model that serves several VMs
/// (vdev-shmem raises a peer's vector when it is signalled). Levels, as
/// [`InterruptLine`]: the model calls only on changes of the level it
/// computes, and implementations must not count calls as edges.
///
/// The VM named may run on another physical CPU; the implementation
/// reaches it there (on the target, through the vGIC's cross-CPU path).
pub trait VmLines {
    /// `true` asserts interrupt `intid` of VM `vm`, `false` deasserts it.
    fn set_level(&mut self, vm: VmIndex, intid: u32, asserted: bool);
}

/// Lets the hypervisor keep ownership of the lines and lend them to a model.
impl<T: VmLines + ?Sized> VmLines for &mut T {
    fn set_level(&mut self, vm: VmIndex, intid: u32, asserted: bool) {
        (**self).set_level(vm, intid, asserted);
    }
}
