//! Passes the linker script and the board's load address to the linker when
//! building the EL2 image. Host builds (unit tests, clippy) need neither.

use tessera_platform::{Board, QEMU_VIRT, RASPBERRY_PI_4};

fn main() {
    println!("cargo:rerun-if-changed=../linker/hypervisor.ld");
    println!("cargo:rerun-if-changed=build.rs");
    let target_os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    if target_os != "none" {
        return;
    }
    let virt = std::env::var_os("CARGO_FEATURE_BOARD_VIRT").is_some();
    let rpi4 = std::env::var_os("CARGO_FEATURE_BOARD_RPI4").is_some();
    let board: &Board = match (virt, rpi4) {
        (true, false) => &QEMU_VIRT,
        (false, true) => &RASPBERRY_PI_4,
        _ => panic!(
            "the EL2 image needs exactly one board feature: board-virt or board-rpi4 \
             (use `tessera build --board ...`)"
        ),
    };
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    println!("cargo:rustc-link-arg-bins=-T{manifest_dir}/../linker/hypervisor.ld");
    println!(
        "cargo:rustc-link-arg-bins=--defsym=TESSERA_LOAD_ADDRESS={:#x}",
        board.load_address
    );
}
