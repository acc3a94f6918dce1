//! A virtual Arm PrimeCell UART (PL011), as a pure state machine.
//!
//! Register facts come from the PL011 Technical Reference Manual (Arm DDI
//! 0183, chapter 3 "Programmers Model"). The model aims at two kinds of
//! guest: Linux's `amba-pl011` driver (probe through the ID registers,
//! interrupt-driven receive and transmit) and small polled guests that only
//! write `UARTDR` and read `UARTFR`.
//!
//! # Where the model departs from hardware, and why
//!
//! - **Transmit is instantaneous.** A byte written to `UARTDR` goes straight
//!   to the console line buffer, so the transmit FIFO is empty — `UARTFR`
//!   reads `TXFE = 1`, `TXFF = 0`, `BUSY = 0` — unless the sink cannot take
//!   another line ([`ConsoleSink::ready`]): then it reads `TXFF = 1`,
//!   `BUSY = 1`, `TXFE = 0`, so a guest that polls `TXFF` before each byte
//!   (as Linux's console and the guest SDK do) waits for the console to
//!   drain. The transmit interrupt follows it (below).
//! - **Transmit interrupt.** Hardware raises `TXRIS` when the transmit FIFO
//!   level drops to the trigger level and clears it when the FIFO is filled
//!   above that level or the guest writes `UARTICR.TXIC`. With a FIFO that
//!   is empty at all times that level condition would always hold, and a
//!   latch the guest cannot clear would storm any guest that leaves `TXIM`
//!   unmasked. So `TXRIS` is a latch: set after every transmitted byte and
//!   whenever `TXIM` goes from masked to unmasked (the FIFO being empty),
//!   cleared only by `UARTICR` bit 5. Linux fits this: `pl011_int` never
//!   clears `TXIS` through `UARTICR`, refills up to half a FIFO per pass and
//!   masks `TXIM` once its buffer is empty, which ends the loop. While the
//!   sink cannot take another line (`TXFF` reads 1) the latch is not set:
//!   the byte that filled the FIFO, or an unmask then, leaves the interrupt
//!   *owed*, and [`transmit_space_changed`](Pl011::transmit_space_changed)
//!   (which the hypervisor calls when the console has drained) sets it once
//!   there is room, as hardware raises it when the level drops, so an
//!   interrupt-driven driver is never told to write into a full FIFO.
//! - **Receive interrupts.** The receive trigger level of `UARTIFLS` is
//!   stored but not used: both `RXRIS` and `RTRIS` are set when a byte
//!   arrives (as if the receive timeout expired at once, since nothing more
//!   is on the wire), and cleared by `UARTICR` or when reads empty the FIFO.
//!   A guest that clears them without draining the FIFO hears nothing more
//!   until the next byte, as on hardware.
//! - **Enables are not enforced.** Bytes are transmitted and received
//!   whatever `UARTCR.UARTEN`, `TXE` and `RXE` say, as QEMU's model does:
//!   many bare-metal guests never touch `UARTCR` and rely on firmware having
//!   enabled the UART. `UARTCR` is stored and reads back.
//! - **The FIFO stays enabled.** The receive FIFO keeps its full depth even
//!   when `UARTLCR_H.FEN` is 0 (the reset value, which polled guests often
//!   keep); on hardware it would shrink to one byte. The only visible
//!   difference is that overrun happens later.
//! - **Modem inputs are tied active.** `UARTFR` reports `CTS`, `DSR` and `DCD`
//!   set and `RI` clear, as a null-modem cable to an ever-present terminal
//!   would, so a tty opened without `CLOCAL` does not wait for carrier. The
//!   modem status interrupts never fire.
//! - **Not modelled:** loopback (`UARTCR.LBE`), break, IrDA, DMA, baud rate
//!   and framing (`UARTIBRD`, `UARTFBRD`, `UARTLCR_H`, `UARTILPR`,
//!   `UARTDMACR` are stored and read back only). The only receive error is
//!   overrun; framing, parity and break errors never occur.
//!
//! # Accesses
//!
//! Registers are decoded at their exact offset only. 8-, 16- and 32-bit
//! accesses are accepted there: a read returns the register truncated to
//! the access width; a write uses the value zero-extended to 32 bits (a byte
//! write to `UARTCR` clears its upper byte, as a 32-bit bus without byte
//! strobes would see it). A 64-bit access acts on the 32-bit register at its
//! offset: reads return it zero-extended, writes use the low word. Reads of
//! any other offset return 0 and writes to them, or to read-only registers,
//! are ignored.

use crate::console::{ConsoleSink, LineBuffer};
use crate::interrupt::InterruptLine;
use crate::mmio::{AccessWidth, MmioDevice};

/// The size of the PL011's MMIO window.
pub const WINDOW_SIZE: u64 = 0x1000;

/// How many received bytes the model holds before overrunning. Linux sizes
/// its FIFO from the revision in `UARTPeriphID2`: 16 bytes below r1p5.
pub const RX_FIFO_DEPTH: usize = 16;

/// The registers, by offset (DDI 0183, table 3-1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Register {
    /// `UARTDR`.
    Data,
    /// `UARTRSR` on read, `UARTECR` on write.
    ReceiveStatus,
    /// `UARTFR`.
    Flag,
    /// `UARTILPR`.
    IrdaLowPowerCounter,
    /// `UARTIBRD`.
    IntegerBaudRate,
    /// `UARTFBRD`.
    FractionalBaudRate,
    /// `UARTLCR_H`.
    LineControl,
    /// `UARTCR`.
    Control,
    /// `UARTIFLS`.
    InterruptFifoLevel,
    /// `UARTIMSC`.
    InterruptMask,
    /// `UARTRIS`.
    RawInterruptStatus,
    /// `UARTMIS`.
    MaskedInterruptStatus,
    /// `UARTICR`.
    InterruptClear,
    /// `UARTDMACR`.
    DmaControl,
    /// `UARTPeriphID0..3` then `UARTPCellID0..3`, indexing [`IDENTIFICATION`].
    Identification(usize),
}

impl Register {
    /// On every trapped UART access (the device fast path), so inlined.
    #[inline(always)]
    const fn at(offset: u64) -> Option<Self> {
        Some(match offset {
            0x000 => Self::Data,
            0x004 => Self::ReceiveStatus,
            0x018 => Self::Flag,
            0x020 => Self::IrdaLowPowerCounter,
            0x024 => Self::IntegerBaudRate,
            0x028 => Self::FractionalBaudRate,
            0x02C => Self::LineControl,
            0x030 => Self::Control,
            0x034 => Self::InterruptFifoLevel,
            0x038 => Self::InterruptMask,
            0x03C => Self::RawInterruptStatus,
            0x040 => Self::MaskedInterruptStatus,
            0x044 => Self::InterruptClear,
            0x048 => Self::DmaControl,
            0xFE0..=0xFFC if offset.is_multiple_of(4) => {
                Self::Identification(((offset - 0xFE0) / 4) as usize)
            }
            _ => return None,
        })
    }
}

/// `UARTPeriphID0..3` and `UARTPCellID0..3`: part 0x011, designer 0x41
/// (Arm), revision 1, and the PrimeCell ID 0xB105_F00D. Linux's AMBA bus
/// matches the peripheral ID against 0x0004_1011 under mask 0x000F_FFFF and
/// reads revision 1 as a 16-byte FIFO.
const IDENTIFICATION: [u8; 8] = [0x11, 0x10, 0x14, 0x00, 0x0D, 0xF0, 0x05, 0xB1];

/// `UARTDR` read bits above the data byte.
mod data {
    /// OE: the byte was the first to arrive after an overrun.
    pub const OVERRUN_ERROR: u16 = 1 << 11;
}

/// `UARTRSR` bits.
mod receive_status {
    /// OE: a byte arrived while the receive FIFO was full.
    pub const OVERRUN_ERROR: u32 = 1 << 3;
}

/// `UARTFR` bits.
mod flag {
    pub const CLEAR_TO_SEND: u32 = 1 << 0;
    pub const DATA_SET_READY: u32 = 1 << 1;
    pub const DATA_CARRIER_DETECT: u32 = 1 << 2;
    pub const BUSY: u32 = 1 << 3;
    pub const RECEIVE_FIFO_EMPTY: u32 = 1 << 4;
    pub const TRANSMIT_FIFO_FULL: u32 = 1 << 5;
    pub const RECEIVE_FIFO_FULL: u32 = 1 << 6;
    pub const TRANSMIT_FIFO_EMPTY: u32 = 1 << 7;
}

/// Bits shared by `UARTRIS`, `UARTMIS`, `UARTIMSC` and `UARTICR`.
mod interrupt {
    /// RXIM/RXRIS: data received.
    pub const RECEIVE: u32 = 1 << 4;
    /// TXIM/TXRIS: room in the transmit FIFO.
    pub const TRANSMIT: u32 = 1 << 5;
    /// RTIM/RTRIS: receive timeout, data waiting.
    pub const RECEIVE_TIMEOUT: u32 = 1 << 6;
    /// OEIM/OERIS: receive overrun.
    pub const OVERRUN_ERROR: u32 = 1 << 10;
    /// Bits 10:0, from RIMIM (0) to OEIM (10).
    pub const ALL: u32 = 0x7FF;
}

// Writable bits of the stored registers; the rest read as zero.
const IRDA_LOW_POWER_COUNTER_BITS: u32 = 0xFF;
const INTEGER_BAUD_RATE_BITS: u32 = 0xFFFF;
const FRACTIONAL_BAUD_RATE_BITS: u32 = 0x3F;
const LINE_CONTROL_BITS: u32 = 0xFF;
/// Bits 6:3 of `UARTCR` are reserved.
const CONTROL_BITS: u32 = 0xFF87;
const INTERRUPT_FIFO_LEVEL_BITS: u32 = 0x3F;
const DMA_CONTROL_BITS: u32 = 0x7;

/// The guest-programmable registers and latched status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Registers {
    receive_status: u32,
    irda_low_power_counter: u32,
    integer_baud_rate: u32,
    fractional_baud_rate: u32,
    line_control: u32,
    control: u32,
    interrupt_fifo_level: u32,
    interrupt_mask: u32,
    raw_interrupt_status: u32,
    dma_control: u32,
}

impl Registers {
    /// Reset values from DDI 0183 table 3-1: `UARTCR` has TXE and RXE set,
    /// `UARTIFLS` selects half-full triggers, everything else is zero.
    const RESET: Self = Self {
        receive_status: 0,
        irda_low_power_counter: 0,
        integer_baud_rate: 0,
        fractional_baud_rate: 0,
        line_control: 0,
        control: 0x0300,
        interrupt_fifo_level: 0x12,
        interrupt_mask: 0,
        raw_interrupt_status: 0,
        dma_control: 0,
    };
}

/// The receive FIFO: each entry is a `UARTDR` read value (data byte plus
/// error bits).
#[derive(Clone, Copy, Debug)]
struct ReceiveFifo {
    entries: [u16; RX_FIFO_DEPTH],
    /// Index of the oldest entry.
    head: usize,
    len: usize,
    /// An overrun happened; the next byte stored carries `UARTDR.OE`.
    overrun_pending: bool,
}

impl ReceiveFifo {
    const EMPTY: Self = Self {
        entries: [0; RX_FIFO_DEPTH],
        head: 0,
        len: 0,
        overrun_pending: false,
    };

    const fn is_empty(&self) -> bool {
        self.len == 0
    }

    const fn is_full(&self) -> bool {
        self.len == RX_FIFO_DEPTH
    }

    /// Stores `byte`, or records an overrun and returns false if full.
    fn push(&mut self, byte: u8) -> bool {
        if self.is_full() {
            self.overrun_pending = true;
            return false;
        }
        let mut entry = u16::from(byte);
        if self.overrun_pending {
            entry |= data::OVERRUN_ERROR;
            self.overrun_pending = false;
        }
        self.entries[(self.head + self.len) % RX_FIFO_DEPTH] = entry;
        self.len += 1;
        true
    }

    fn pop(&mut self) -> Option<u16> {
        if self.is_empty() {
            return None;
        }
        // `head` is always below the depth; taking it modulo the depth (a
        // mask) shows the compiler so, which drops a bounds check.
        let entry = self.entries[self.head % RX_FIFO_DEPTH];
        self.head = (self.head + 1) % RX_FIFO_DEPTH;
        self.len -= 1;
        Some(entry)
    }
}

/// A virtual PL011 UART.
///
/// The model owns its console sink and interrupt line so that it fits
/// [`MmioDevice`] as is: an access needs nothing but the offset, width and
/// value. A hypervisor that wants to keep those objects elsewhere can lend
/// them, since both traits are implemented for `&mut T`; [`sink_mut`],
/// [`interrupt_line_mut`] and [`into_parts`] give them back.
///
/// The interrupt line is assumed deasserted when the model is created; after
/// that the model calls [`InterruptLine::set_level`] only when
/// `(UARTRIS & UARTIMSC) != 0` changes.
///
/// [`sink_mut`]: Self::sink_mut
/// [`interrupt_line_mut`]: Self::interrupt_line_mut
/// [`into_parts`]: Self::into_parts
#[derive(Debug)]
pub struct Pl011<S: ConsoleSink, L: InterruptLine> {
    sink: S,
    interrupt_line: L,
    output: LineBuffer,
    registers: Registers,
    receive_fifo: ReceiveFifo,
    /// The level last given to `interrupt_line`.
    interrupt_asserted: bool,
    /// A transmit interrupt is owed for when the sink has room again.
    transmit_owed: bool,
}

impl<S: ConsoleSink, L: InterruptLine> Pl011<S, L> {
    /// A UART in its reset state.
    #[must_use]
    pub const fn new(sink: S, interrupt_line: L) -> Self {
        Self {
            sink,
            interrupt_line,
            output: LineBuffer::new(),
            registers: Registers::RESET,
            receive_fifo: ReceiveFifo::EMPTY,
            interrupt_asserted: false,
            transmit_owed: false,
        }
    }

    /// Returns the UART to its reset state, as when the VM restarts. A
    /// partial output line is flushed to the sink first rather than lost,
    /// pending input is discarded, and the interrupt line is deasserted.
    pub fn reset(&mut self) {
        self.flush();
        self.transmit_owed = false;
        self.registers = Registers::RESET;
        self.receive_fifo = ReceiveFifo::EMPTY;
        self.update_interrupt();
    }

    /// Input from the host side: queues `byte` for the guest to read.
    ///
    /// Returns false if the receive FIFO is full; the byte is then lost and
    /// an overrun is recorded (`UARTRSR.OE`, `UARTRIS.OERIS`, and `UARTDR.OE`
    /// on the next byte that fits), as on hardware. A hypervisor that would
    /// rather hold input back checks [`input_space`](Self::input_space)
    /// first.
    pub fn push_input(&mut self, byte: u8) -> bool {
        let stored = self.receive_fifo.push(byte);
        self.registers.raw_interrupt_status |= if stored {
            interrupt::RECEIVE | interrupt::RECEIVE_TIMEOUT
        } else {
            self.registers.receive_status |= receive_status::OVERRUN_ERROR;
            interrupt::OVERRUN_ERROR
        };
        self.update_interrupt();
        stored
    }

    /// How many more bytes [`push_input`](Self::push_input) accepts now.
    #[must_use]
    pub const fn input_space(&self) -> usize {
        RX_FIFO_DEPTH - self.receive_fifo.len
    }

    /// Hands a partial output line to the sink, for example when the VM
    /// stops. Does nothing if no line is in progress.
    pub fn flush(&mut self) {
        self.output.flush(&mut self.sink);
    }

    /// The level the model last gave its interrupt line.
    #[must_use]
    pub const fn interrupt_asserted(&self) -> bool {
        self.interrupt_asserted
    }

    #[must_use]
    pub const fn sink(&self) -> &S {
        &self.sink
    }

    pub const fn sink_mut(&mut self) -> &mut S {
        &mut self.sink
    }

    #[must_use]
    pub const fn interrupt_line(&self) -> &L {
        &self.interrupt_line
    }

    pub const fn interrupt_line_mut(&mut self) -> &mut L {
        &mut self.interrupt_line
    }

    /// Takes the model apart. A partial output line is dropped; call
    /// [`flush`](Self::flush) first to keep it.
    pub fn into_parts(self) -> (S, L) {
        (self.sink, self.interrupt_line)
    }

    fn transmit(&mut self, byte: u8) {
        self.output.push(byte, &mut self.sink);
        self.raise_transmit();
    }

    /// The FIFO has room at or below the trigger level: set `TXRIS`, or
    /// owe it while the sink cannot take another line (`TXFF`).
    fn raise_transmit(&mut self) {
        if self.sink.ready() {
            self.registers.raw_interrupt_status |= interrupt::TRANSMIT;
            self.transmit_owed = false;
        } else {
            self.transmit_owed = true;
        }
    }

    /// The console may have made room since the sink was last asked: an
    /// owed transmit interrupt is raised once the sink can take a line.
    /// The hypervisor calls this after draining the console.
    pub fn transmit_space_changed(&mut self) {
        if self.transmit_owed && self.sink.ready() {
            self.raise_transmit();
            self.update_interrupt();
        }
    }

    fn receive(&mut self) -> u16 {
        let entry = self.receive_fifo.pop().unwrap_or(0);
        if self.receive_fifo.is_empty() {
            self.registers.raw_interrupt_status &=
                !(interrupt::RECEIVE | interrupt::RECEIVE_TIMEOUT);
        }
        entry
    }

    fn set_interrupt_mask(&mut self, mask: u32) {
        let newly_unmasked = mask & !self.registers.interrupt_mask;
        if newly_unmasked & interrupt::TRANSMIT != 0 {
            // The transmit FIFO is modelled as empty, hence at or below any
            // trigger level, unless the sink is full (see the module notes).
            self.raise_transmit();
        }
        self.registers.interrupt_mask = mask;
    }

    #[inline(always)]
    fn flags(&self) -> u32 {
        let mut flags = flag::CLEAR_TO_SEND | flag::DATA_SET_READY | flag::DATA_CARRIER_DETECT;
        flags |= if self.sink.ready() {
            flag::TRANSMIT_FIFO_EMPTY
        } else {
            flag::TRANSMIT_FIFO_FULL | flag::BUSY
        };
        if self.receive_fifo.is_empty() {
            flags |= flag::RECEIVE_FIFO_EMPTY;
        }
        if self.receive_fifo.is_full() {
            flags |= flag::RECEIVE_FIFO_FULL;
        }
        flags
    }

    const fn masked_interrupt_status(&self) -> u32 {
        self.registers.raw_interrupt_status & self.registers.interrupt_mask
    }

    fn update_interrupt(&mut self) {
        let asserted = self.masked_interrupt_status() != 0;
        if asserted != self.interrupt_asserted {
            self.interrupt_asserted = asserted;
            self.interrupt_line.set_level(asserted);
        }
    }

    #[inline(always)]
    fn read_register(&mut self, register: Register) -> u32 {
        let registers = &self.registers;
        match register {
            Register::Data => u32::from(self.receive()),
            Register::ReceiveStatus => registers.receive_status,
            Register::Flag => self.flags(),
            Register::IrdaLowPowerCounter => registers.irda_low_power_counter,
            Register::IntegerBaudRate => registers.integer_baud_rate,
            Register::FractionalBaudRate => registers.fractional_baud_rate,
            Register::LineControl => registers.line_control,
            Register::Control => registers.control,
            Register::InterruptFifoLevel => registers.interrupt_fifo_level,
            Register::InterruptMask => registers.interrupt_mask,
            Register::RawInterruptStatus => registers.raw_interrupt_status,
            Register::MaskedInterruptStatus => self.masked_interrupt_status(),
            Register::InterruptClear => 0,
            Register::DmaControl => registers.dma_control,
            Register::Identification(index) => u32::from(IDENTIFICATION[index]),
        }
    }

    fn write_register(&mut self, register: Register, value: u32) {
        let registers = &mut self.registers;
        match register {
            Register::Data => self.transmit(value as u8),
            // Any write to UARTECR clears all error flags.
            Register::ReceiveStatus => registers.receive_status = 0,
            Register::IrdaLowPowerCounter => {
                registers.irda_low_power_counter = value & IRDA_LOW_POWER_COUNTER_BITS;
            }
            Register::IntegerBaudRate => {
                registers.integer_baud_rate = value & INTEGER_BAUD_RATE_BITS
            }
            Register::FractionalBaudRate => {
                registers.fractional_baud_rate = value & FRACTIONAL_BAUD_RATE_BITS;
            }
            Register::LineControl => registers.line_control = value & LINE_CONTROL_BITS,
            Register::Control => registers.control = value & CONTROL_BITS,
            Register::InterruptFifoLevel => {
                registers.interrupt_fifo_level = value & INTERRUPT_FIFO_LEVEL_BITS;
            }
            Register::InterruptMask => self.set_interrupt_mask(value & interrupt::ALL),
            Register::InterruptClear => registers.raw_interrupt_status &= !(value & interrupt::ALL),
            Register::DmaControl => registers.dma_control = value & DMA_CONTROL_BITS,
            Register::Flag
            | Register::RawInterruptStatus
            | Register::MaskedInterruptStatus
            | Register::Identification(_) => {}
        }
    }
}

impl<S: ConsoleSink, L: InterruptLine> MmioDevice for Pl011<S, L> {
    fn window_size(&self) -> u64 {
        WINDOW_SIZE
    }

    #[inline(always)]
    fn read(&mut self, offset: u64, width: AccessWidth) -> u64 {
        let Some(register) = Register::at(offset) else {
            return 0;
        };
        let value = self.read_register(register);
        // Popping UARTDR may have cleared the receive interrupts; no other
        // read changes state, and reads of UARTFR are the polling hot path.
        if register == Register::Data {
            self.update_interrupt();
        }
        width.truncate(u64::from(value))
    }

    fn write(&mut self, offset: u64, width: AccessWidth, value: u64) {
        let Some(register) = Register::at(offset) else {
            return;
        };
        self.write_register(register, width.truncate(value) as u32);
        self.update_interrupt();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::console::LINE_CAPACITY;
    use std::vec::Vec;

    const DR: u64 = 0x000;
    const RSR_ECR: u64 = 0x004;
    const FR: u64 = 0x018;
    const ILPR: u64 = 0x020;
    const IBRD: u64 = 0x024;
    const FBRD: u64 = 0x028;
    const LCR_H: u64 = 0x02C;
    const CR: u64 = 0x030;
    const IFLS: u64 = 0x034;
    const IMSC: u64 = 0x038;
    const RIS: u64 = 0x03C;
    const MIS: u64 = 0x040;
    const ICR: u64 = 0x044;
    const DMACR: u64 = 0x048;

    const CTS: u64 = 1 << 0;
    const DSR: u64 = 1 << 1;
    const DCD: u64 = 1 << 2;
    const BUSY: u64 = 1 << 3;
    const RXFE: u64 = 1 << 4;
    const TXFF: u64 = 1 << 5;
    const RXFF: u64 = 1 << 6;
    const TXFE: u64 = 1 << 7;

    const RXIM: u64 = 1 << 4;
    const TXIM: u64 = 1 << 5;
    const RTIM: u64 = 1 << 6;
    const OEIM: u64 = 1 << 10;

    #[derive(Default, Debug)]
    struct Lines(Vec<Vec<u8>>);

    impl ConsoleSink for Lines {
        fn write_line(&mut self, line: &[u8]) {
            self.0.push(line.to_vec());
        }
    }

    /// Records every level it is given, so tests see both the current level
    /// and how many calls the model made.
    #[derive(Default, Debug)]
    struct RecordingLine(Vec<bool>);

    impl RecordingLine {
        fn level(&self) -> bool {
            self.0.last().copied().unwrap_or(false)
        }
    }

    impl InterruptLine for RecordingLine {
        fn set_level(&mut self, asserted: bool) {
            self.0.push(asserted);
        }
    }

    type Uart = Pl011<Lines, RecordingLine>;

    fn uart() -> Uart {
        Pl011::new(Lines::default(), RecordingLine::default())
    }

    fn read32(uart: &mut Uart, offset: u64) -> u64 {
        uart.read(offset, AccessWidth::Word)
    }

    fn write32(uart: &mut Uart, offset: u64, value: u64) {
        uart.write(offset, AccessWidth::Word, value);
    }

    fn transmit(uart: &mut Uart, bytes: &[u8]) {
        for &byte in bytes {
            write32(uart, DR, u64::from(byte));
        }
    }

    fn lines(uart: &Uart) -> &[Vec<u8>] {
        &uart.sink().0
    }

    fn levels(uart: &Uart) -> &[bool] {
        &uart.interrupt_line().0
    }

    #[test]
    fn identification_reads_as_linux_amba_bus_expects() {
        let mut uart = uart();
        // drivers/amba/bus.c: four 32-bit reads each, low byte of each.
        let id = |uart: &mut Uart, base: u64| {
            (0..4).fold(0u64, |id, i| {
                id | ((read32(uart, base + 4 * i) & 0xFF) << (8 * i))
            })
        };
        let peripheral = id(&mut uart, 0xFE0);
        assert_eq!(peripheral, 0x0014_1011);
        assert_eq!(peripheral & 0x000F_FFFF, 0x0004_1011);
        assert_eq!((peripheral >> 20) & 0xF, 1, "revision 1: 16-byte FIFO");
        assert_eq!(id(&mut uart, 0xFF0), 0xB105_F00D);
        assert_eq!(uart.read(0xFEC, AccessWidth::Byte), 0x00);
        assert_eq!(uart.read(0xFFC, AccessWidth::Byte), 0xB1);
    }

    /// A sink that takes nothing until told to.
    struct Busy {
        ready: bool,
        lines: Vec<Vec<u8>>,
    }

    impl ConsoleSink for Busy {
        fn write_line(&mut self, line: &[u8]) {
            self.lines.push(line.to_vec());
        }

        fn ready(&self) -> bool {
            self.ready
        }
    }

    #[test]
    fn the_transmit_interrupt_waits_for_room_in_the_sink() {
        let mut sink = Busy {
            ready: true,
            lines: Vec::new(),
        };
        let mut line = RecordingLine::default();
        let mut uart = Pl011::new(&mut sink, &mut line);
        uart.write(IMSC, AccessWidth::Word, TXIM);
        assert!(uart.interrupt_line().level(), "room: raised at unmask");
        uart.write(ICR, AccessWidth::Word, TXIM);
        assert!(!uart.interrupt_line().level());
        // The console fills: the byte that fills it raises nothing.
        uart.sink_mut().ready = false;
        uart.write(DR, AccessWidth::Word, u64::from(b'a'));
        assert!(
            !uart.interrupt_line().level(),
            "no interrupt into a full FIFO"
        );
        uart.transmit_space_changed();
        assert!(!uart.interrupt_line().level(), "still full");
        // It drains: the owed interrupt comes, once.
        uart.sink_mut().ready = true;
        uart.transmit_space_changed();
        assert!(uart.interrupt_line().level());
        uart.write(ICR, AccessWidth::Word, TXIM);
        uart.transmit_space_changed();
        assert!(!uart.interrupt_line().level(), "owed once, not again");
    }

    #[test]
    fn a_sink_that_cannot_take_a_line_shows_as_a_full_transmit_fifo() {
        let mut sink = Busy {
            ready: false,
            lines: Vec::new(),
        };
        let mut line = RecordingLine::default();
        let flags = Pl011::new(&mut sink, &mut line).read(FR, AccessWidth::Word);
        assert_eq!(flags & (TXFF | TXFE | BUSY), TXFF | BUSY);
        sink.ready = true;
        let flags = Pl011::new(&mut sink, &mut line).read(FR, AccessWidth::Word);
        assert_eq!(flags & (TXFF | TXFE), TXFE);
    }

    #[test]
    fn registers_at_reset() {
        let mut uart = uart();
        let flags = read32(&mut uart, FR);
        assert_eq!(flags, TXFE | RXFE | CTS | DSR | DCD);
        assert_eq!(flags & (BUSY | TXFF | RXFF), 0);
        assert_eq!(read32(&mut uart, CR), 0x0300);
        assert_eq!(read32(&mut uart, IFLS), 0x12);
        for offset in [RSR_ECR, ILPR, IBRD, FBRD, LCR_H, IMSC, RIS, MIS, ICR, DMACR] {
            assert_eq!(read32(&mut uart, offset), 0, "offset {offset:#x}");
        }
        assert_eq!(read32(&mut uart, DR), 0, "empty FIFO reads 0");
        assert!(levels(&uart).is_empty());
        assert_eq!(uart.window_size(), 0x1000);
    }

    #[test]
    fn hello_crlf_is_one_line() {
        let mut uart = uart();
        transmit(&mut uart, b"hello\r\n");
        assert_eq!(lines(&uart), [b"hello"]);
    }

    #[test]
    fn long_line_splits_at_buffer_size() {
        let mut uart = uart();
        transmit(&mut uart, &[b'a'; LINE_CAPACITY + 44]);
        assert_eq!(lines(&uart), [[b'a'; LINE_CAPACITY]]);
        transmit(&mut uart, b"\n");
        assert_eq!(lines(&uart).len(), 2);
        assert_eq!(lines(&uart)[1], [b'a'; 44]);
    }

    #[test]
    fn flush_pushes_out_a_partial_line_once() {
        let mut uart = uart();
        uart.flush();
        assert!(lines(&uart).is_empty());
        transmit(&mut uart, b"login: ");
        assert!(lines(&uart).is_empty());
        uart.flush();
        uart.flush();
        assert_eq!(lines(&uart), [b"login: "]);
    }

    #[test]
    fn transmit_interrupt_follows_mask_and_clear() {
        let mut uart = uart();

        // Unmasking TXIM with the (always empty) FIFO raises TXRIS.
        write32(&mut uart, IMSC, TXIM);
        assert_eq!(read32(&mut uart, RIS), TXIM);
        assert_eq!(read32(&mut uart, MIS), TXIM);
        assert_eq!(levels(&uart), [true]);
        assert!(uart.interrupt_asserted());

        // Re-writing the same mask is not a new unmask.
        write32(&mut uart, ICR, TXIM);
        assert_eq!(levels(&uart), [true, false]);
        write32(&mut uart, IMSC, TXIM);
        assert_eq!(read32(&mut uart, RIS), 0);
        assert_eq!(levels(&uart), [true, false]);

        // Each transmitted byte sets TXRIS again; the level is reported once.
        transmit(&mut uart, b"ab");
        assert_eq!(read32(&mut uart, MIS), TXIM);
        assert_eq!(levels(&uart), [true, false, true]);

        // Masking deasserts the line but leaves the raw status.
        write32(&mut uart, IMSC, 0);
        assert_eq!(levels(&uart), [true, false, true, false]);
        assert_eq!(read32(&mut uart, RIS), TXIM);
        assert_eq!(read32(&mut uart, MIS), 0);

        // Unmasking again asserts at once.
        write32(&mut uart, IMSC, TXIM);
        assert!(uart.interrupt_line().level());
        write32(&mut uart, ICR, 0x7FF);
        assert!(!uart.interrupt_line().level());
        assert_eq!(read32(&mut uart, RIS), 0);
    }

    #[test]
    fn receive_interrupt_until_fifo_drained() {
        let mut uart = uart();
        // As Linux's pl011_hwinit and pl011_enable_interrupts do.
        write32(&mut uart, ICR, 0x7FF);
        write32(&mut uart, IMSC, RXIM | RTIM);
        assert!(levels(&uart).is_empty());

        assert!(uart.push_input(b'x'));
        assert!(uart.push_input(b'y'));
        assert_eq!(read32(&mut uart, RIS), RXIM | RTIM);
        assert_eq!(read32(&mut uart, MIS), RXIM | RTIM);
        assert_eq!(levels(&uart), [true]);
        assert_eq!(read32(&mut uart, FR) & RXFE, 0);

        assert_eq!(read32(&mut uart, DR), u64::from(b'x'));
        assert_eq!(levels(&uart), [true], "one byte still waiting");
        assert_eq!(read32(&mut uart, DR), u64::from(b'y'));
        assert_eq!(levels(&uart), [true, false]);
        assert_eq!(read32(&mut uart, RIS), 0);
        assert_ne!(read32(&mut uart, FR) & RXFE, 0);
    }

    #[test]
    fn clearing_receive_interrupt_without_draining_waits_for_next_byte() {
        let mut uart = uart();
        write32(&mut uart, IMSC, RXIM | RTIM);
        uart.push_input(b'1');
        write32(&mut uart, ICR, RXIM | RTIM);
        assert_eq!(levels(&uart), [true, false]);
        assert_eq!(read32(&mut uart, FR) & RXFE, 0, "data still there");
        uart.push_input(b'2');
        assert_eq!(levels(&uart), [true, false, true]);
    }

    #[test]
    fn receive_fifo_order_full_and_overrun() {
        let mut uart = uart();
        write32(&mut uart, IMSC, OEIM);
        for byte in 0..RX_FIFO_DEPTH as u8 {
            assert_eq!(uart.input_space(), RX_FIFO_DEPTH - usize::from(byte));
            assert!(uart.push_input(byte));
        }
        assert_eq!(uart.input_space(), 0);
        assert_ne!(read32(&mut uart, FR) & RXFF, 0);
        assert!(levels(&uart).is_empty(), "only OEIM unmasked");

        assert!(!uart.push_input(0xAA));
        assert_eq!(read32(&mut uart, RSR_ECR), 1 << 3);
        assert_ne!(read32(&mut uart, RIS) & OEIM, 0);
        assert_eq!(levels(&uart), [true]);

        // The FIFO keeps its contents; the lost byte is gone.
        assert_eq!(read32(&mut uart, DR), 0);
        assert_eq!(read32(&mut uart, FR) & RXFF, 0);
        // The first byte stored after the overrun carries UARTDR.OE.
        assert!(uart.push_input(0x55));
        for byte in 1..RX_FIFO_DEPTH as u64 {
            assert_eq!(read32(&mut uart, DR), byte);
        }
        assert_eq!(read32(&mut uart, DR), 0x0800 | 0x55);
        assert_ne!(read32(&mut uart, FR) & RXFE, 0);

        // UARTRSR.OE stays until UARTECR is written; OERIS until UARTICR.
        assert_eq!(read32(&mut uart, RSR_ECR), 1 << 3);
        write32(&mut uart, RSR_ECR, 0);
        assert_eq!(read32(&mut uart, RSR_ECR), 0);
        assert!(uart.interrupt_asserted());
        write32(&mut uart, ICR, OEIM);
        assert_eq!(levels(&uart), [true, false]);
    }

    #[test]
    fn byte_and_halfword_access_to_data() {
        let mut uart = uart();
        uart.write(DR, AccessWidth::Byte, u64::from(b'o'));
        uart.write(DR, AccessWidth::HalfWord, 0xFF00 | u64::from(b'k'));
        uart.write(DR, AccessWidth::DoubleWord, 0xFFFF_FFFF_0000_000A);
        assert_eq!(lines(&uart), [b"ok"]);

        for _ in 0..=RX_FIFO_DEPTH {
            uart.push_input(b'z');
        }
        for _ in 0..RX_FIFO_DEPTH {
            uart.read(DR, AccessWidth::Byte);
        }
        uart.push_input(b'q');
        // The entry after the overrun: a halfword read keeps the error
        // bits, a byte read has the data only, and either pops.
        assert_eq!(
            uart.read(DR, AccessWidth::HalfWord),
            0x0800 | u64::from(b'q')
        );
        uart.push_input(b'r');
        assert_eq!(uart.read(DR, AccessWidth::Byte), u64::from(b'r'));
        assert_ne!(uart.read(FR, AccessWidth::Byte) & RXFE, 0);
    }

    #[test]
    fn other_offsets_read_zero_and_ignore_writes() {
        let mut uart = uart();
        uart.push_input(b'!');
        let unknown = [
            0x001, 0x002, 0x008, 0x01C, 0x04C, 0x100, 0xFDC, 0xFE1, 0xFFE, 0x1000,
        ];
        for offset in unknown {
            write32(&mut uart, offset, 0xFFFF_FFFF);
            for width in [AccessWidth::Byte, AccessWidth::Word] {
                assert_eq!(uart.read(offset, width), 0, "offset {offset:#x}");
            }
        }
        assert!(lines(&uart).is_empty());
        assert_eq!(read32(&mut uart, DR), u64::from(b'!'), "nothing popped");
        assert_eq!(read32(&mut uart, IMSC), 0);
        assert_eq!(read32(&mut uart, CR), 0x0300);
    }

    #[test]
    fn writes_to_read_only_registers_are_ignored() {
        let mut uart = uart();
        uart.push_input(b'#');
        let before: Vec<u64> = [FR, RIS, MIS, 0xFE0, 0xFF0, 0xFFC]
            .iter()
            .map(|&offset| read32(&mut uart, offset))
            .collect();
        for offset in [FR, RIS, MIS, 0xFE0, 0xFF0, 0xFFC] {
            write32(&mut uart, offset, 0xFFFF_FFFF);
        }
        let after: Vec<u64> = [FR, RIS, MIS, 0xFE0, 0xFF0, 0xFFC]
            .iter()
            .map(|&offset| read32(&mut uart, offset))
            .collect();
        assert_eq!(before, after);
        assert!(lines(&uart).is_empty());
        // UARTICR is write-only.
        assert_eq!(read32(&mut uart, ICR), 0);
    }

    #[test]
    fn stored_registers_keep_only_defined_bits() {
        let mut uart = uart();
        let cases = [
            (ILPR, 0xFF),
            (IBRD, 0xFFFF),
            (FBRD, 0x3F),
            (LCR_H, 0xFF),
            (CR, 0xFF87),
            (IFLS, 0x3F),
            (IMSC, 0x7FF),
            (DMACR, 0x7),
        ];
        for (offset, bits) in cases {
            write32(&mut uart, offset, 0xFFFF_FFFF);
            assert_eq!(read32(&mut uart, offset), bits, "offset {offset:#x}");
        }
        // A narrow write zero-extends; a 64-bit one uses the low word.
        uart.write(CR, AccessWidth::Byte, 0x01);
        assert_eq!(read32(&mut uart, CR), 0x01);
        uart.write(IBRD, AccessWidth::DoubleWord, 0x1234_0000_0000_000D);
        assert_eq!(uart.read(IBRD, AccessWidth::DoubleWord), 0x0D);
        assert_eq!(uart.read(IMSC, AccessWidth::Byte), 0xFF);
    }

    #[test]
    fn transmit_ignores_control_register() {
        let mut uart = uart();
        write32(&mut uart, CR, 0);
        transmit(&mut uart, b"early\n");
        assert_eq!(lines(&uart), [b"early"]);
    }

    #[test]
    fn reset_restores_everything_and_deasserts() {
        let mut uart = uart();
        write32(&mut uart, CR, 0x0301);
        write32(&mut uart, IBRD, 13);
        write32(&mut uart, LCR_H, 0x70);
        write32(&mut uart, IFLS, 0);
        write32(&mut uart, IMSC, RXIM | TXIM);
        for _ in 0..=RX_FIFO_DEPTH {
            uart.push_input(b'i');
        }
        transmit(&mut uart, b"half a li");
        assert!(uart.interrupt_asserted());

        uart.reset();

        assert_eq!(lines(&uart), [b"half a li"], "partial line kept");
        assert_eq!(levels(&uart), [true, false]);
        assert!(!uart.interrupt_asserted());
        assert_eq!(read32(&mut uart, CR), 0x0300);
        assert_eq!(read32(&mut uart, IFLS), 0x12);
        for offset in [RSR_ECR, IBRD, LCR_H, IMSC, RIS, MIS] {
            assert_eq!(read32(&mut uart, offset), 0, "offset {offset:#x}");
        }
        assert_eq!(read32(&mut uart, FR), TXFE | RXFE | CTS | DSR | DCD);
        assert_eq!(uart.input_space(), RX_FIFO_DEPTH);
        // No overrun mark survives the reset.
        uart.push_input(b'n');
        assert_eq!(read32(&mut uart, DR), u64::from(b'n'));
    }

    #[test]
    fn linux_style_interrupt_driven_session() {
        let mut uart = uart();
        // pl011_startup: clear, unmask receive, enable.
        write32(&mut uart, ICR, 0x7FF);
        write32(&mut uart, IMSC, RXIM | RTIM);
        write32(&mut uart, LCR_H, 0x70);
        write32(&mut uart, CR, 0x0301);

        // pl011_start_tx writes while TXFF is clear, which it always is.
        for &byte in b"$ " {
            assert_eq!(read32(&mut uart, FR) & TXFF, 0);
            write32(&mut uart, DR, u64::from(byte));
        }
        assert!(levels(&uart).is_empty(), "TXIM stays masked");

        // A key press: the handler drains until RXFE, then the line drops.
        uart.push_input(b'l');
        uart.push_input(b's');
        assert!(uart.interrupt_asserted());
        let mut received = Vec::new();
        while read32(&mut uart, FR) & RXFE == 0 {
            received.push(read32(&mut uart, DR) as u8);
        }
        assert_eq!(received, b"ls");
        assert!(!uart.interrupt_asserted());

        // TX backlog: unmasking TXIM interrupts at once; the handler never
        // clears TXIS, it refills and finally masks TXIM.
        write32(&mut uart, IMSC, RXIM | RTIM | TXIM);
        assert!(uart.interrupt_asserted());
        assert_eq!(read32(&mut uart, MIS), TXIM);
        transmit(&mut uart, b"ls\r\n");
        write32(&mut uart, IMSC, RXIM | RTIM);
        assert!(!uart.interrupt_asserted());
        uart.flush();
        assert_eq!(lines(&uart), [&b"$ ls"[..]]);
    }

    #[test]
    fn parts_can_be_lent_and_taken_back() {
        let mut sink = Lines::default();
        let mut line = RecordingLine::default();
        let mut uart = Pl011::new(&mut sink, &mut line);
        uart.write(IMSC, AccessWidth::Word, TXIM);
        uart.write(DR, AccessWidth::Byte, u64::from(b'p'));
        uart.flush();
        let (_, _) = uart.into_parts();
        assert_eq!(sink.0, [b"p"]);
        assert_eq!(line.0, [true]);
    }
}
