//! `include/guest_shm.h` compiles as C11 and agrees with the Rust client on
//! every constant: a C file of static assertions, made from the Rust
//! values, is compiled with the host's `cc`. Skipped (with a note) where no
//! C compiler is installed.

use std::path::{Path, PathBuf};
use std::process::Command;

use tessera_guest_sdk::shmem::{self, ShmemError};

fn include_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("include")
}

/// Runs `cc` on `source`, returning None when there is no `cc`.
fn compile(source: &str, name: &str) -> Option<std::process::Output> {
    let file = std::env::temp_dir().join(format!("tessera-{}-{name}.c", std::process::id()));
    std::fs::write(&file, source).unwrap();
    let output = Command::new("cc")
        .args([
            "-fsyntax-only",
            "-std=c11",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-pedantic",
        ])
        .arg("-I")
        .arg(include_dir())
        .arg(&file)
        .output();
    let _ = std::fs::remove_file(&file);
    match output {
        Ok(output) => Some(output),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            eprintln!("no cc on this host: guest_shm.h not compiled");
            None
        }
        Err(error) => panic!("cannot run cc: {error}"),
    }
}

#[test]
fn the_header_compiles_and_matches_the_rust_constants() {
    let mut source = String::from("#include \"guest_shm.h\"\n");
    let mut check = |expression: String| {
        source.push_str(&format!(
            "_Static_assert({expression}, \"{expression}\");\n"
        ));
    };
    check(format!("GUEST_SHM_SIGNATURE == {:#x}ULL", shmem::SIGNATURE));
    check(format!(
        "GUEST_SHM_SIGNATURE_L == {:#x}U && GUEST_SHM_SIGNATURE_H == {:#x}U",
        shmem::SIGNATURE as u32,
        (shmem::SIGNATURE >> 32) as u32
    ));
    check(format!(
        "GUEST_SHM_MAX_CLIENTS == {}",
        shmem::MAX_CONNECTIONS
    ));
    check(format!("GUEST_SHM_MAX_NAME == {}", shmem::NAME_FIELD_BYTES));
    check(format!("GUEST_SHM_PAGE_SIZE == {:#x}", shmem::PAGE_SIZE));
    check(format!(
        "GUEST_SHM_NOTIFY_ALL_BUT_ME == {:#x}U",
        shmem::NOTIFY_ALL_BUT_ME
    ));
    check("GSS_OK == 0".into());
    for (name, error) in [
        ("GSS_UNKNOWN_FAILURE", ShmemError::UnknownFailure),
        ("GSS_NOMEM", ShmemError::NoMemory),
        ("GSS_CLIENT_MAX", ShmemError::ClientMax),
        ("GSS_ILLEGAL_NAME", ShmemError::IllegalName),
        ("GSS_NO_PERMISSION", ShmemError::NoPermission),
        ("GSS_DOES_NOT_EXIST", ShmemError::DoesNotExist),
    ] {
        check(format!("{name} == {}", error.status().unwrap()));
    }
    // The helpers compile where they are used.
    source.push_str(
        "void use(volatile struct guest_shm_factory *f, volatile struct guest_shm_control *c);\n\
         void use(volatile struct guest_shm_factory *f, volatile struct guest_shm_control *c) {\n\
             guest_shm_create(f, 1); guest_shm_find(f, 1);\n\
             guest_shm_notify(c, GUEST_SHM_NOTIFY_ALL_BUT_ME); (void)guest_shm_status(c);\n\
         }\n",
    );
    let Some(output) = compile(&source, "constants") else {
        return;
    };
    assert!(
        output.status.success(),
        "cc refused guest_shm.h:\n{}\n{source}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn a_wrong_constant_is_caught() {
    // The check above can fail: a false assertion does not compile.
    let source = "#include \"guest_shm.h\"\n_Static_assert(GSS_NOMEM == 3, \"wrong\");\n";
    if let Some(output) = compile(source, "wrong") {
        assert!(!output.status.success());
    }
}
