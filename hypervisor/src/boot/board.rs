//! The board this image was built for. The board feature picks one of the
//! descriptions in `tessera-platform`; build.rs links the image at that
//! board's load address, so the two always agree.

use tessera_platform::Board;

#[cfg(all(feature = "board-virt", not(feature = "board-rpi4")))]
pub const BOARD: &Board = &tessera_platform::QEMU_VIRT;

#[cfg(all(feature = "board-rpi4", not(feature = "board-virt")))]
pub const BOARD: &Board = &tessera_platform::RASPBERRY_PI_4;

#[cfg(not(any(feature = "board-virt", feature = "board-rpi4")))]
compile_error!("build the EL2 image with exactly one board feature: board-virt or board-rpi4");
