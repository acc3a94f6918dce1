//! Each VM's virtual PL011: the `tessera-vdevs` model, with its output lines
//! tagged with the VM's name on the hypervisor console. The VM has no
//! interrupt controller yet, so the UART's interrupt line goes nowhere; it
//! is recorded so the vGIC can pick it up.

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

/// The UART's interrupt output, kept until a virtual GIC consumes it.
#[derive(Default)]
pub struct PendingLevel {
    pub asserted: bool,
}

impl InterruptLine for PendingLevel {
    fn set_level(&mut self, asserted: bool) {
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
                PendingLevel { asserted: false },
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

    /// Pushes out a partial last line (when the VM stops or resets).
    pub fn flush(&mut self) {
        self.model.flush();
    }

    pub fn reset(&mut self) {
        self.model.reset();
    }
}
