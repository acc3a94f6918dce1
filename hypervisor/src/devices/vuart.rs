//! Each VM's virtual PL011: the `tessera-vdevs` model, with its output lines
//! tagged with the VM's name on the hypervisor console. Its interrupt line
//! is recorded by the model and handed to the VM's vGIC (`devices`) once
//! the UART's lock is released.

use core::sync::atomic::AtomicUsize;

use tessera_vdevs::{AccessWidth, ConsoleSink, InterruptLine, MmioDevice, Pl011};

use crate::console;

/// Queues a guest's lines for the console as `[name] line`. The queue
/// escapes both (`tessera_hypervisor::console::escape`: control characters
/// and bytes above ASCII as `\xNN`), so a guest cannot drive the host
/// terminal or print a line that is not under its tag.
pub struct TaggedConsole {
    vm: usize,
    name: &'static str,
    /// The VM's queued-output counter and the most it may reach with room
    /// for another line (`console::guest_output_ready`).
    queued: &'static AtomicUsize,
    ready_threshold: usize,
}

impl ConsoleSink for TaggedConsole {
    fn write_line(&mut self, line: &[u8]) {
        // The model hands over at most a line buffer's worth.
        let line = &line[..line.len().min(tessera_vdevs::console::LINE_CAPACITY)];
        // A line sent while the VM's share of the console queue was full
        // (its UART showed TXFF) is dropped; the console reports the loss.
        let _ = console::queue_guest_line(self.vm, self.name, line);
    }

    #[inline(always)]
    fn ready(&self) -> bool {
        console::guest_output_ready(self.queued, self.ready_threshold)
    }
}

/// The UART's interrupt output: the level the model last drove, and
/// whether the vGIC has yet to hear of it.
#[derive(Default)]
pub struct PendingLevel {
    pub asserted: bool,
    pub changed: bool,
}

impl InterruptLine for PendingLevel {
    fn set_level(&mut self, asserted: bool) {
        self.changed |= self.asserted != asserted;
        self.asserted = asserted;
    }
}

pub struct VirtualUart {
    model: Pl011<TaggedConsole, PendingLevel>,
}

impl VirtualUart {
    pub const fn new(vm: usize, name: &'static str) -> Self {
        Self {
            model: Pl011::new(
                TaggedConsole {
                    vm,
                    name,
                    queued: console::guest_output_counter(vm),
                    ready_threshold: tessera_hypervisor::console::queue::ready_threshold(
                        tessera_hypervisor::console::escape::escaped_len(name.as_bytes()),
                    ),
                },
                PendingLevel {
                    asserted: false,
                    changed: false,
                },
            ),
        }
    }

    #[inline(always)]
    pub fn read(&mut self, offset: u64, width: AccessWidth) -> u64 {
        self.model.read(offset, width)
    }

    pub fn write(&mut self, offset: u64, width: AccessWidth, value: u64) {
        self.model.write(offset, width, value);
    }

    /// The console may have drained: a transmit interrupt the model owes
    /// (TXFF was set when it came due) is raised if there is room now.
    pub fn transmit_space_changed(&mut self) {
        self.model.transmit_space_changed();
    }

    /// The new level of the interrupt line, if it changed since asked last.
    #[inline(always)]
    pub fn take_line_change(&mut self) -> Option<bool> {
        let line = self.model.interrupt_line_mut();
        if !line.changed {
            return None;
        }
        line.changed = false;
        Some(line.asserted)
    }

    /// Pushes out a partial last line (when the VM stops or resets).
    pub fn flush(&mut self) {
        self.model.flush();
    }

    pub fn reset(&mut self) {
        self.model.reset();
        // The model starts with its line low; the vGIC is reset with it.
        *self.model.interrupt_line_mut() = PendingLevel::default();
    }
}
