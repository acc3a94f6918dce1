//! Which emulated device a trapped guest access belongs to.
//!
//! The windows are the guest-visible platform's (`tessera_platform::guest`),
//! the same table the host tool writes into each guest's device tree. An
//! access routes to a device only when all of its bytes fall inside that
//! device's window; anything else has nothing behind it and the guest gets
//! the external abort hardware would give.

use tessera_platform::{PhysRange, guest};
use tessera_vdevs::AccessWidth;

use crate::address::GuestPhysAddr;

/// An emulated device of the guest-visible platform.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestDevice {
    /// The virtual PL011.
    Uart,
}

/// Every emulated device with the guest-physical window it answers in.
pub const DEVICE_WINDOWS: [(PhysRange, GuestDevice); 1] = [(guest::UART, GuestDevice::Uart)];

/// The device an access of `width` at `address` targets, and the offset of
/// the access in that device's window.
#[must_use]
#[inline]
pub fn route(address: GuestPhysAddr, width: AccessWidth) -> Option<(GuestDevice, u64)> {
    DEVICE_WINDOWS.iter().find_map(|&(window, device)| {
        // One unsigned compare: an address below the window wraps to a huge
        // offset and fails it like one above.
        // Windows are at least 8 bytes, so the subtraction cannot wrap.
        let offset = address.0.wrapping_sub(window.base);
        (offset <= window.size - u64::from(width.bytes())).then_some((device, offset))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const UART: u64 = guest::UART.base;

    #[test]
    fn accesses_inside_the_uart_window_route_to_it_with_their_offset() {
        assert_eq!(
            route(GuestPhysAddr(UART), AccessWidth::Word),
            Some((GuestDevice::Uart, 0))
        );
        assert_eq!(
            route(GuestPhysAddr(UART + 0x18), AccessWidth::Byte),
            Some((GuestDevice::Uart, 0x18))
        );
        assert_eq!(
            route(GuestPhysAddr(UART + 0xFF8), AccessWidth::DoubleWord),
            Some((GuestDevice::Uart, 0xFF8))
        );
    }

    #[test]
    fn accesses_outside_or_straddling_a_window_route_nowhere() {
        assert_eq!(route(GuestPhysAddr(UART - 1), AccessWidth::Byte), None);
        assert_eq!(route(GuestPhysAddr(UART + 0x1000), AccessWidth::Byte), None);
        assert_eq!(
            route(GuestPhysAddr(UART + 0xFFC), AccessWidth::DoubleWord),
            None
        );
        assert_eq!(route(GuestPhysAddr(0), AccessWidth::Word), None);
        assert_eq!(route(GuestPhysAddr(u64::MAX), AccessWidth::Byte), None);
    }

    #[test]
    fn the_windows_hold_the_widest_access_and_do_not_overlap() {
        assert!(DEVICE_WINDOWS.iter().all(|(window, _)| window.size >= 8));
        for (index, (a, _)) in DEVICE_WINDOWS.iter().enumerate() {
            for (b, _) in &DEVICE_WINDOWS[index + 1..] {
                assert!(a.end() <= b.base || b.end() <= a.base);
            }
        }
    }
}
