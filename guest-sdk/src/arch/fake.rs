//! The host stand-in for `aarch64.rs`. Little here is reached by the unit
//! tests (the barriers are, by the shared-memory tests); it exists so the
//! examples compile on the host. Hypercalls answer
//! NOT_SUPPORTED, console output is dropped, accesses never happen.

use core::ops::Range;

use super::{ProbeOutcome, ProbeSites, TranslationRegisters};

/// PSCI's NOT_SUPPORTED, as the register value an HVC would return.
const NOT_SUPPORTED: u64 = -1_i64 as u64;

pub fn hvc(_function: u32, _arg1: u64, _arg2: u64, _arg3: u64) -> u64 {
    NOT_SUPPORTED
}

pub fn console_write_byte(_byte: u8) {}

pub fn mpidr() -> u64 {
    0
}

pub fn instruction_set_features() -> u64 {
    0
}

pub fn counter() -> u64 {
    0
}

pub fn physical_counter() -> u64 {
    0
}

pub fn ticks_around_nothing() -> u64 {
    0
}

/// # Safety
/// Always safe on the host, where it reads nothing; see the real one.
pub unsafe fn ticks_around_read32(_address: usize) -> u64 {
    0
}

pub fn counter_frequency() -> u64 {
    1_000_000_000
}

pub fn park() -> ! {
    loop {
        core::hint::spin_loop();
    }
}

/// # Safety
/// Always safe on the host, where it does nothing; see the real one.
pub unsafe fn set_vector_base(_address: u64) {}

pub fn publish_translation(_registers: TranslationRegisters) {}

pub fn published_translation() -> Option<TranslationRegisters> {
    None
}

/// # Safety
/// Always safe on the host, where it does nothing; see the real one.
pub unsafe fn enable_published_translation() {}

/// The MMU is off on the host.
pub fn system_control() -> u64 {
    0
}

/// 48 bits.
pub fn physical_address_range() -> u64 {
    0b0101
}

pub fn clean_data_cache(_range: Range<u64>) {}

/// # Safety
/// Always safe on the host, where it does nothing; see the real one.
pub unsafe fn invalidate_data_cache(_range: Range<u64>) {}

pub fn translation_tables_written() {}

pub fn invalidate_translations() {}

/// PAR_EL1.F set: nothing translates on the host.
pub fn translate_read(_address: u64) -> u64 {
    1
}

/// # Safety
/// Always safe on the host, where it reads nothing; see the real one.
pub unsafe fn load_u64_unaligned(_address: usize) -> u64 {
    0
}

/// # Safety
/// Always safe on the host, where it does nothing; see the real one.
pub unsafe fn store_u64_unaligned(_address: usize, _value: u64) {}

/// # Safety
/// Always safe on the host, where it reads nothing; see the real one.
pub unsafe fn load_pair_u64(_address: usize) -> (u64, u64) {
    (0, 0)
}

/// # Safety
/// Always safe on the host, where it does nothing; see the real one.
pub unsafe fn store_pair_u64(_address: usize, _first: u64, _second: u64) {}

pub fn probe_read(address: u64) -> ProbeOutcome {
    ProbeOutcome {
        value: 0,
        esr: 0,
        far: address,
    }
}

/// # Safety
/// Always safe on the host, where it does nothing; see the real one.
pub unsafe fn probe_write(_address: u64, _value: u64) -> ProbeOutcome {
    ProbeOutcome::default()
}

pub fn probe_read32(address: u64) -> ProbeOutcome {
    probe_read(address)
}

/// # Safety
/// Always safe on the host, where it does nothing; see the real one.
pub unsafe fn probe_write32(_address: u64, _value: u32) -> ProbeOutcome {
    ProbeOutcome::default()
}

/// # Safety
/// Always safe on the host, where it does nothing; see the real one.
pub unsafe fn probe_write8(_address: u64, _value: u8) -> ProbeOutcome {
    ProbeOutcome::default()
}

pub fn probe_load_exclusive(_address: u64) -> ProbeOutcome {
    ProbeOutcome::default()
}

/// # Safety
/// Always safe on the host, where it does nothing; see the real one.
pub unsafe fn probe_atomic_add(_address: u64, _value: u64) -> ProbeOutcome {
    ProbeOutcome::default()
}

pub fn probe_sites() -> ProbeSites {
    ProbeSites {
        read: 0,
        write: 0,
        read32: 0,
        write32: 0,
        write8: 0,
        load_exclusive: 0,
        atomic_add: 0,
    }
}

pub fn secondary_entry_address() -> u64 {
    0
}

pub fn image_range() -> Range<u64> {
    0..0
}

/// # Safety
/// Always safe on the host, where it reads nothing; see the real one.
pub unsafe fn mmio_read32(_address: usize) -> u32 {
    0
}

/// # Safety
/// Always safe on the host, where it does nothing; see the real one.
pub unsafe fn mmio_write32(_address: usize, _value: u32) {}

/// # Safety
/// Always safe on the host, where it does nothing; see the real one.
pub unsafe fn mmio_write8(_address: usize, _value: u8) {}

/// # Safety
/// Always safe on the host, where it does nothing; see the real one.
pub unsafe fn mmio_write64(_address: usize, _value: u64) {}

/// System registers read as 0 and ignore writes on the host.
macro_rules! system_register {
    ($read:ident, $write:ident) => {
        pub fn $read() -> u64 {
            0
        }

        pub fn $write(_value: u64) {}
    };
}

system_register!(icc_sre_read, icc_sre_write);
pub fn icc_pmr_write(_value: u64) {}

pub fn icc_bpr1_write(_value: u64) {}

pub fn icc_igrpen1_write(_value: u64) {}
system_register!(icc_ctlr_read, icc_ctlr_write);
system_register!(cntv_ctl_read, cntv_ctl_write);
system_register!(cntv_cval_read, cntv_cval_write);
system_register!(cntp_ctl_read, cntp_ctl_write);
system_register!(cntp_cval_read, cntp_cval_write);

/// The spurious INTID: nothing is ever pending on the host.
pub fn icc_iar1_read() -> u64 {
    1023
}

pub fn icc_eoir1_write(_value: u64) {}

pub fn icc_dir_write(_value: u64) {}

pub fn icc_sgi1r_write(_value: u64) {}

pub fn data_barrier() {}

/// A sequentially consistent fence: host tests run the shared-memory code
/// on threads, where the barriers must order for real.
pub fn memory_barrier() {
    core::sync::atomic::fence(core::sync::atomic::Ordering::SeqCst);
}

/// As [`memory_barrier`] on the host.
pub fn completion_barrier() {
    core::sync::atomic::fence(core::sync::atomic::Ordering::SeqCst);
}

/// All of DAIF set, as at a guest's entry.
pub fn daif() -> u64 {
    0x3C0
}

pub fn irq_mask() {}

pub fn irq_unmask() {}

/// The host runs no IRQ handlers.
#[must_use]
pub fn in_irq_handler() -> bool {
    false
}

pub fn wait_for_interrupt() {}
