//! How a device model drives its interrupt output.

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
