//! Typed identifiers: a VM, one of a VM's vCPUs, and a physical CPU are all
//! small indices, and these types keep one from being passed for another.
//!
//! Each is checked against its bound when made, so `index()` is always a
//! valid index into the arrays sized by that bound (`[_; MAX_VMS]` for a
//! [`VmId`], `[_; MAX_CPUS]` for a [`VcpuId`] or a [`CpuId`]). They are one
//! byte each, which keeps the requests that carry them small.

use core::fmt;

use crate::MAX_CPUS;
use crate::manifest::MAX_VMS;

/// The most vCPUs one VM has: a VM's vCPUs each take a physical CPU of
/// their own (the manifest check refuses more).
pub const MAX_VCPUS: usize = MAX_CPUS;

const _: () = assert!(
    MAX_VMS <= u8::MAX as usize && MAX_CPUS <= u8::MAX as usize,
    "the identifiers hold their index in a byte"
);

macro_rules! identifier {
    ($(#[$attribute:meta])* $name:ident, $bound:expr) => {
        $(#[$attribute])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(u8);

        impl $name {
            /// The identifier for `index`; `None` when `index` is out of bounds.
            #[must_use]
            pub const fn new(index: usize) -> Option<Self> {
                if index < $bound {
                    Some(Self(index as u8))
                } else {
                    None
                }
            }

            /// The index, always below the bound checked in `new`.
            #[must_use]
            pub const fn index(self) -> usize {
                self.0 as usize
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}", self.0)
            }
        }
    };
}

identifier!(
    /// A VM: its position in the system package, below `MAX_VMS`.
    VmId,
    MAX_VMS
);
identifier!(
    /// One of a VM's vCPUs, numbered from 0 within the VM (below
    /// [`MAX_VCPUS`]); vCPU 0 is the one that boots.
    VcpuId,
    MAX_VCPUS
);
identifier!(
    /// A physical CPU: its logical index (the hypervisor's own numbering,
    /// not its MPIDR), below `MAX_CPUS`.
    CpuId,
    MAX_CPUS
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indices_inside_the_bound_round_trip() {
        for index in 0..MAX_VMS {
            assert_eq!(VmId::new(index).map(VmId::index), Some(index));
        }
        for index in 0..MAX_VCPUS {
            assert_eq!(VcpuId::new(index).map(VcpuId::index), Some(index));
        }
        for index in 0..MAX_CPUS {
            assert_eq!(CpuId::new(index).map(CpuId::index), Some(index));
        }
    }

    #[test]
    fn indices_outside_the_bound_are_refused() {
        assert_eq!(VmId::new(MAX_VMS), None);
        assert_eq!(VcpuId::new(MAX_VCPUS), None);
        assert_eq!(CpuId::new(MAX_CPUS), None);
        // Not truncated into range by the byte it is kept in.
        assert_eq!(CpuId::new(256), None);
        assert_eq!(VmId::new(usize::MAX), None);
    }

    #[test]
    fn shows_as_the_bare_index() {
        let vm = VmId::new(3).unwrap();
        assert_eq!(format!("vm {vm}"), "vm 3");
    }
}
