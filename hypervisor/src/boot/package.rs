//! Reading the system package: a cpio archive in the `070702` format ("newc"
//! with a per-file checksum), as written by `tessera package`. See
//! docs/system-image.md.
//!
//! The reader is `tessera_package::cpio`, the one the host tool checks
//! packages with. It works in place on the boot loader's copy of the
//! archive and hands out borrowed slices; it checks every header field it
//! uses and every checksum before a file is used.

pub use tessera_package::cpio::{Archive as Package, Entry, ReadError as PackageError, checksum};
