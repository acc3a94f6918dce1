//! A VM's device map: which emulated device answers a trapped access, by
//! guest-physical window.
//!
//! Each VM has its own map, built at boot from what its manifest gives it
//! (today every VM gets the guest platform's UART; GIC frames and
//! vdev-shmem factory and control pages are further windows). Windows never
//! overlap: `insert` refuses one that would. An access routes to a device
//! only when all of its bytes fall inside that device's window; anything
//! else has nothing behind it, and the guest gets the external abort
//! hardware would give.
//!
//! Routing is on the device fast path (`mmio.vuart_read`, 150 instructions
//! round trip at most), so the map is a small array kept sorted by base,
//! searched linearly with one unsigned compare per window: for the handful
//! of windows a VM has, that beats any tree. The window that answered last
//! is tried first: a guest works one device at a time (polling a UART's
//! flags, a run of GIC register accesses), so most accesses take one
//! compare however many windows the VM has.

use core::sync::atomic::{AtomicU8, Ordering};

use tessera_vdevs::AccessWidth;

use crate::memory::address::GuestPhysAddr;

/// The most windows one VM's map holds: the UART, the GIC's distributor
/// and redistributors, and a factory page and a mapping window for each
/// vdev-shmem instance (at most 6 in a VM, `rules::MAX_SHMEM_DEVICES_PER_VM`:
/// 15 windows). A power of two, so the routing hint's bound is a mask; the
/// map is built in place in the VM and kept small, since building a VM
/// moves it.
pub const MAX_WINDOWS: usize = 16;

/// Which of a VM's device slots a window belongs to: an index the VM's
/// owner of the devices gives meaning to (the hypervisor keeps one lock per
/// slot).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceSlot(pub u8);

/// A device's guest-physical window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    pub base: GuestPhysAddr,
    /// At least 8 bytes (the widest access), so the routing compare cannot
    /// wrap.
    pub size: u64,
}

impl Window {
    const fn end(self) -> u64 {
        self.base.0 + self.size
    }
}

/// Why a window was not added.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapError {
    /// It overlaps the window of `slot`.
    Overlaps { slot: DeviceSlot, window: Window },
    /// Smaller than the widest access, or past the end of the address space.
    BadWindow(Window),
    /// The map already holds `MAX_WINDOWS` windows.
    Full,
}

/// A window no trapped access can fall in (guest-physical addresses stay
/// far below it), for the entries past `count`: the routing hint may
/// point at one without a bounds check, and it answers nothing.
const UNUSED: Entry = Entry(
    Window {
        base: GuestPhysAddr(u64::MAX - 7),
        size: 8,
    },
    DeviceSlot(u8::MAX),
);

/// A window and its slot, 32 bytes so the hint's entry is found with a
/// shift (this is on the device fast path).
#[derive(Clone, Copy, Debug)]
#[repr(C, align(32))]
struct Entry(Window, DeviceSlot);

/// One VM's windows, sorted by base; the entries past `count` are
/// [`UNUSED`].
#[derive(Debug)]
pub struct DeviceMap {
    windows: [Entry; MAX_WINDOWS],
    count: usize,
    /// The window that answered last (an index below `count`, or 0): only
    /// a hint, so vCPUs racing on it cost at most a longer search.
    last_hit: AtomicU8,
}

impl Default for DeviceMap {
    fn default() -> Self {
        Self::new()
    }
}

impl DeviceMap {
    #[must_use]
    pub const fn new() -> Self {
        Self {
            windows: [UNUSED; MAX_WINDOWS],
            count: 0,
            last_hit: AtomicU8::new(0),
        }
    }

    /// Adds `window` for `slot`, refusing one that overlaps another.
    pub fn insert(&mut self, window: Window, slot: DeviceSlot) -> Result<(), MapError> {
        if window.size < 8 || window.base.0.checked_add(window.size).is_none() {
            return Err(MapError::BadWindow(window));
        }
        if let Some(&Entry(other, other_slot)) = self
            .entries()
            .iter()
            .find(|Entry(other, _)| window.base.0 < other.end() && other.base.0 < window.end())
        {
            return Err(MapError::Overlaps {
                slot: other_slot,
                window: other,
            });
        }
        if self.count == MAX_WINDOWS {
            return Err(MapError::Full);
        }
        let entries = self.entries();
        let count = entries.len();
        let position = entries
            .iter()
            .position(|Entry(other, _)| other.base.0 > window.base.0)
            .unwrap_or(count);
        // The entries from `position` move up one (there is room: the map
        // is not full; the second bound only shows the compiler so).
        let mut index = count;
        while index > position && index < MAX_WINDOWS {
            self.windows[index] = self.windows[index - 1];
            index -= 1;
        }
        self.windows[position] = Entry(window, slot);
        self.count = count + 1;
        Ok(())
    }

    /// The entries in use. `count` never passes the array; the `min`
    /// shows the compiler, so there is no panic path.
    fn entries(&self) -> &[Entry] {
        &self.windows[..self.count.min(MAX_WINDOWS)]
    }

    /// The slot an access of `width` at `address` targets, and the offset
    /// of the access in that slot's window. `address` is an IPA (below
    /// 2^52, as every trapped access's is), which no unused entry holds.
    #[must_use]
    #[inline]
    pub fn route(&self, address: GuestPhysAddr, width: AccessWidth) -> Option<(DeviceSlot, u64)> {
        self.route_at_hint(address, width)
            .or_else(|| self.route_past_hint(address, width))
    }

    /// [`route`](Self::route) when the access is in the window that
    /// answered last (the hint); `None` when it is not, and
    /// [`route_past_hint`](Self::route_past_hint) searches the rest.
    #[must_use]
    #[inline(always)]
    pub fn route_at_hint(
        &self,
        address: GuestPhysAddr,
        width: AccessWidth,
    ) -> Option<(DeviceSlot, u64)> {
        // Any index is a real or an unused entry: no count check needed.
        let hint = &self.windows[usize::from(self.last_hit.load(Ordering::Relaxed)) % MAX_WINDOWS];
        answer(hint, address, width).map(|offset| (hint.1, offset))
    }

    /// The search past the hint, kept out of line so the hit stays short;
    /// the window found becomes the hint.
    #[must_use]
    #[inline(never)]
    pub fn route_past_hint(
        &self,
        address: GuestPhysAddr,
        width: AccessWidth,
    ) -> Option<(DeviceSlot, u64)> {
        let answers = |entry: &Entry| answer(entry, address, width);
        let windows = self.entries();
        let (index, slot, offset) = windows
            .iter()
            .enumerate()
            .find_map(|(index, entry)| answers(entry).map(|offset| (index, entry.1, offset)))?;
        self.last_hit.store(index as u8, Ordering::Relaxed);
        Some((slot, offset))
    }

    /// Every window with its slot, by base.
    pub fn windows(&self) -> impl Iterator<Item = (Window, DeviceSlot)> + '_ {
        self.entries()
            .iter()
            .map(|Entry(window, slot)| (*window, *slot))
    }
}

/// The offset of an access of `width` at `address` in `entry`'s window,
/// if it lies wholly inside. One unsigned compare: an address below the
/// window wraps to a huge offset and fails it like one above. Windows are
/// at least 8 bytes, so `size - 1 - last_byte` cannot wrap.
#[inline(always)]
fn answer(Entry(window, _): &Entry, address: GuestPhysAddr, width: AccessWidth) -> Option<u64> {
    let last_byte = u64::from(width.bytes()) - 1;
    let offset = address.0.wrapping_sub(window.base.0);
    (offset <= window.size - 1 - last_byte).then_some(offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    const UART: Window = Window {
        base: GuestPhysAddr(0x0900_0000),
        size: 0x1000,
    };
    const DISTRIBUTOR: Window = Window {
        base: GuestPhysAddr(0x0800_0000),
        size: 0x1_0000,
    };

    fn map() -> DeviceMap {
        let mut map = DeviceMap::new();
        map.insert(UART, DeviceSlot(0)).unwrap();
        map.insert(DISTRIBUTOR, DeviceSlot(1)).unwrap();
        map
    }

    #[test]
    fn accesses_inside_a_window_route_to_its_slot_with_their_offset() {
        let map = map();
        let at = |address| GuestPhysAddr(address);
        assert_eq!(
            map.route(at(0x0900_0000), AccessWidth::Word),
            Some((DeviceSlot(0), 0))
        );
        assert_eq!(
            map.route(at(0x0900_0FF8), AccessWidth::DoubleWord),
            Some((DeviceSlot(0), 0xFF8))
        );
        assert_eq!(
            map.route(at(0x0800_0004), AccessWidth::Byte),
            Some((DeviceSlot(1), 4))
        );
        assert_eq!(
            map.windows().map(|(_, slot)| slot).collect::<Vec<_>>(),
            vec![DeviceSlot(1), DeviceSlot(0)],
            "kept sorted by base"
        );
    }

    #[test]
    fn the_last_window_hit_is_only_a_hint() {
        let map = map();
        let uart = GuestPhysAddr(0x0900_0010);
        let distributor = GuestPhysAddr(0x0800_0010);
        for _ in 0..3 {
            assert_eq!(
                map.route(uart, AccessWidth::Word),
                Some((DeviceSlot(0), 0x10))
            );
            assert_eq!(
                map.route(uart, AccessWidth::Word),
                Some((DeviceSlot(0), 0x10))
            );
            assert_eq!(
                map.route(distributor, AccessWidth::Byte),
                Some((DeviceSlot(1), 0x10))
            );
            // A miss after a hit searches on, and finds nothing.
            assert_eq!(
                map.route(GuestPhysAddr(0x0A00_0000), AccessWidth::Byte),
                None
            );
        }
    }

    #[test]
    fn accesses_outside_or_straddling_a_window_route_nowhere() {
        let map = map();
        for (address, width) in [
            (0x08FF_FFFF, AccessWidth::Byte),
            (0x0900_1000, AccessWidth::Byte),
            (0x0900_0FFC, AccessWidth::DoubleWord),
            (0x0801_0000, AccessWidth::Word),
            (0, AccessWidth::Word),
            (u64::MAX, AccessWidth::Byte),
        ] {
            assert_eq!(
                map.route(GuestPhysAddr(address), width),
                None,
                "{address:#x}"
            );
        }
        assert_eq!(DeviceMap::new().route(UART.base, AccessWidth::Byte), None);
        // The address the unused entries hold is not an IPA, and a map
        // with windows never hints at an unused entry.
        let top = GuestPhysAddr(u64::MAX - 7);
        assert_eq!(map.route(top, AccessWidth::DoubleWord), None);
        assert_eq!(
            DeviceMap::new().route(GuestPhysAddr((1 << 52) - 8), AccessWidth::DoubleWord),
            None
        );
    }

    #[test]
    fn overlapping_windows_are_refused_and_change_nothing() {
        let mut map = map();
        let straddling = Window {
            base: GuestPhysAddr(0x0900_0FF0),
            size: 0x1000,
        };
        assert_eq!(
            map.insert(straddling, DeviceSlot(2)),
            Err(MapError::Overlaps {
                slot: DeviceSlot(0),
                window: UART
            })
        );
        let covering = Window {
            base: GuestPhysAddr(0),
            size: 0x1000_0000,
        };
        assert!(matches!(
            map.insert(covering, DeviceSlot(2)),
            Err(MapError::Overlaps { .. })
        ));
        assert!(matches!(
            map.insert(UART, DeviceSlot(3)),
            Err(MapError::Overlaps { .. })
        ));
        assert_eq!(map.windows().count(), 2);
        // Touching is not overlapping.
        let adjacent = Window {
            base: GuestPhysAddr(0x0900_1000),
            size: 0x1000,
        };
        assert_eq!(map.insert(adjacent, DeviceSlot(2)), Ok(()));
    }

    #[test]
    fn tiny_wrapping_and_surplus_windows_are_refused() {
        let mut map = DeviceMap::new();
        let tiny = Window {
            base: GuestPhysAddr(0x1000),
            size: 4,
        };
        assert_eq!(
            map.insert(tiny, DeviceSlot(0)),
            Err(MapError::BadWindow(tiny))
        );
        let wrapping = Window {
            base: GuestPhysAddr(u64::MAX - 8),
            size: 0x1000,
        };
        assert_eq!(
            map.insert(wrapping, DeviceSlot(0)),
            Err(MapError::BadWindow(wrapping))
        );
        for index in 0..MAX_WINDOWS {
            let window = Window {
                base: GuestPhysAddr(0x1000 * (index as u64 + 1)),
                size: 0x1000,
            };
            map.insert(window, DeviceSlot(index as u8)).unwrap();
        }
        let one_more = Window {
            base: GuestPhysAddr(0x10_0000),
            size: 0x1000,
        };
        assert_eq!(map.insert(one_more, DeviceSlot(9)), Err(MapError::Full));
    }
}
