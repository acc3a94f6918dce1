//! Links the example guests with `linker/guest.ld` when they are built for a
//! bare-metal target. Host builds (unit tests, clippy) link normally.

use std::path::PathBuf;

fn main() {
    let manifest_dir = PathBuf::from(
        std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"),
    );
    let script = manifest_dir.join("../linker/guest.ld");
    let script = script.canonicalize().unwrap_or_else(|err| {
        panic!(
            "cannot find the guest linker script {}: {err}",
            script.display()
        )
    });
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed={}", script.display());
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("none") {
        println!("cargo:rustc-link-arg-examples=-T{}", script.display());
    }
}
