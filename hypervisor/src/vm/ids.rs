//! Typed identifiers: a VM, one of its vCPUs, a physical CPU. Each is a
//! small index, and mixing them up is the easiest mistake to make in code
//! that maps one onto another; the types make it a compile error.

use crate::MAX_CPUS;
use crate::boot::manifest::MAX_VMS;

/// A VM: its index in the system manifest (0 is the first VM listed).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VmId(u8);

/// A vCPU of some VM: its index within that VM (Aff0 of its virtual MPIDR).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VcpuId(u8);

/// A physical CPU: its logical index (0 is the boot CPU).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CpuId(u8);

const _: () = assert!(MAX_VMS <= u8::MAX as usize && MAX_CPUS <= u8::MAX as usize);

macro_rules! index_type {
    ($type:ident, $limit:expr) => {
        impl $type {
            /// The identifier with index `index`, if it is below the limit.
            #[must_use]
            pub const fn new(index: usize) -> Option<Self> {
                if index < $limit {
                    Some(Self(index as u8))
                } else {
                    None
                }
            }

            /// The index, always below the limit, so arrays sized by the
            /// limit need no bounds check.
            #[must_use]
            #[inline(always)]
            pub const fn index(self) -> usize {
                self.0 as usize % $limit
            }

            /// Every identifier below `count` (at most the limit).
            pub fn all(count: usize) -> impl Iterator<Item = Self> {
                (0..count.min($limit)).map(|index| Self(index as u8))
            }
        }

        impl core::fmt::Display for $type {
            fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                write!(f, "{}", self.0)
            }
        }
    };
}

index_type!(VmId, MAX_VMS);
index_type!(VcpuId, MAX_CPUS);
index_type!(CpuId, MAX_CPUS);

impl VmId {
    /// The VMID stage 2 tags this VM's translations with. 0 is left to no
    /// VM, so a TLB entry made while no VM was loaded never matches one.
    #[must_use]
    pub const fn vmid(self) -> u8 {
        self.0 + 1
    }
}

impl VcpuId {
    pub const FIRST: Self = Self(0);
}

/// A set of vCPUs of one VM, as a bit mask.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VcpuSet(u32);

const _: () = assert!(MAX_CPUS <= 32, "a VcpuSet holds one bit per vCPU");

impl VcpuSet {
    pub const EMPTY: Self = Self(0);

    pub const fn insert(&mut self, vcpu: VcpuId) {
        self.0 |= 1 << vcpu.index();
    }

    #[must_use]
    pub const fn contains(self, vcpu: VcpuId) -> bool {
        self.0 & (1 << vcpu.index()) != 0
    }

    #[must_use]
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Whether no vCPU but `vcpu` is in the set (the empty set is too).
    #[must_use]
    pub const fn has_none_but(self, vcpu: VcpuId) -> bool {
        self.0 & !(1 << vcpu.index()) == 0
    }

    /// The members, lowest first: one step per member (the notify path
    /// walks these).
    pub fn iter(self) -> impl Iterator<Item = VcpuId> {
        let mut rest = self.0;
        core::iter::from_fn(move || {
            if rest == 0 {
                return None;
            }
            let index = rest.trailing_zeros() as usize;
            rest &= rest - 1;
            VcpuId::new(index)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_refuse_indices_past_their_limit() {
        assert_eq!(VmId::new(MAX_VMS), None);
        assert_eq!(
            CpuId::new(MAX_CPUS - 1).map(CpuId::index),
            Some(MAX_CPUS - 1)
        );
        assert_eq!(VmId::new(0).map(VmId::vmid), Some(1), "VMID 0 is no VM's");
        assert_eq!(VcpuId::all(100).count(), MAX_CPUS);
    }

    #[test]
    fn a_vcpu_set_holds_exactly_what_was_inserted() {
        let mut set = VcpuSet::EMPTY;
        assert!(set.is_empty());
        set.insert(VcpuId::new(1).unwrap());
        set.insert(VcpuId::new(3).unwrap());
        assert_eq!(
            set.iter().map(VcpuId::index).collect::<Vec<_>>(),
            vec![1, 3]
        );
        assert!(!set.has_none_but(VcpuId::new(1).unwrap()));
        assert!(VcpuSet::EMPTY.has_none_but(VcpuId::new(1).unwrap()));
        let mut one = VcpuSet::EMPTY;
        one.insert(VcpuId::new(3).unwrap());
        assert!(one.has_none_but(VcpuId::new(3).unwrap()));
        assert!(!set.contains(VcpuId::FIRST));
    }
}
