//! PSCI function identifiers and return codes, as a guest uses them over HVC
//! (Arm DEN 0022, "Arm Power State Coordination Interface").

/// PSCI function identifiers (SMC32 forms for the calls without 64-bit
/// arguments, SMC64 for the rest).
pub mod function {
    pub const VERSION: u32 = 0x8400_0000;
    pub const CPU_SUSPEND: u32 = 0xC400_0001;
    pub const CPU_OFF: u32 = 0x8400_0002;
    pub const CPU_ON: u32 = 0xC400_0003;
    pub const AFFINITY_INFO: u32 = 0xC400_0004;
    pub const MIGRATE_INFO_TYPE: u32 = 0x8400_0006;
    pub const SYSTEM_OFF: u32 = 0x8400_0008;
    pub const SYSTEM_RESET: u32 = 0x8400_0009;
    pub const FEATURES: u32 = 0x8400_000A;
}

/// PSCI return codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(i32)]
pub enum PsciError {
    NotSupported = -1,
    InvalidParameters = -2,
    Denied = -3,
    AlreadyOn = -4,
    OnPending = -5,
    InternalFailure = -6,
    NotPresent = -7,
    Disabled = -8,
    InvalidAddress = -9,
}

impl PsciError {
    /// Maps a negative return value to its error; `None` for success values.
    #[must_use]
    pub const fn from_return(value: i64) -> Option<Self> {
        match value {
            -1 => Some(Self::NotSupported),
            -2 => Some(Self::InvalidParameters),
            -3 => Some(Self::Denied),
            -4 => Some(Self::AlreadyOn),
            -5 => Some(Self::OnPending),
            -6 => Some(Self::InternalFailure),
            -7 => Some(Self::NotPresent),
            -8 => Some(Self::Disabled),
            -9 => Some(Self::InvalidAddress),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn return_codes_map_both_ways() {
        for error in [
            PsciError::NotSupported,
            PsciError::AlreadyOn,
            PsciError::InvalidAddress,
        ] {
            assert_eq!(PsciError::from_return(error as i64), Some(error));
        }
        assert_eq!(PsciError::from_return(0), None);
    }
}
