//! Finding the workspace root, which every path the tool uses is relative
//! to, whichever directory it is started from; and writing the files the
//! tool hands to QEMU under it.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// The nearest ancestor of the current directory that holds this
/// workspace (a `Cargo.toml` with `[workspace]` next to `tools/`); failing
/// that, the workspace this binary was built from.
pub fn find_root() -> Result<PathBuf> {
    let current = std::env::current_dir().context("cannot read the current directory")?;
    if let Some(root) = current.ancestors().find(|dir| is_root(dir)) {
        return Ok(root.to_path_buf());
    }
    let built_from = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tools crate sits inside the workspace");
    if is_root(built_from) {
        return Ok(built_from.to_path_buf());
    }
    bail!(
        "cannot find the Tessera workspace above {} (looked for Cargo.toml with [workspace] beside tools/)",
        current.display()
    )
}

fn is_root(dir: &Path) -> bool {
    dir.join("tools/Cargo.toml").is_file()
        && std::fs::read_to_string(dir.join("Cargo.toml"))
            .is_ok_and(|manifest| manifest.lines().any(|line| line.trim() == "[workspace]"))
}

/// A path as short as it can be shown unambiguously: relative to the
/// current directory when it lies below it.
pub fn display(path: &Path) -> String {
    std::env::current_dir()
        .ok()
        .and_then(|current| path.strip_prefix(current).ok().map(Path::to_path_buf))
        .unwrap_or_else(|| path.to_path_buf())
        .display()
        .to_string()
}

/// Writes `bytes` to `path`, creating its directory. The file is written
/// beside `path` under a name of this process's own and renamed into
/// place, so a QEMU started meanwhile, or another `tessera` writing the same
/// file, never sees half of it; on failure the partial file is removed.
pub fn write_whole_file(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let serial = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut partial = path.as_os_str().to_owned();
    partial.push(format!(".{}-{serial}.partial", std::process::id()));
    let partial = PathBuf::from(partial);
    let written = std::fs::write(&partial, bytes)
        .with_context(|| format!("cannot write {}", partial.display()))
        .and_then(|()| {
            std::fs::rename(&partial, path).with_context(|| {
                format!("cannot rename {} to {}", partial.display(), path.display())
            })
        });
    if written.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_files_replace_what_was_there_and_leave_nothing_beside() {
        let dir = std::env::temp_dir().join(format!("tessera-write-{}", std::process::id()));
        let path = dir.join("deep/file.bin");
        write_whole_file(&path, b"first").unwrap();
        write_whole_file(&path, b"second").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second");
        let entries: Vec<_> = std::fs::read_dir(dir.join("deep")).unwrap().collect();
        assert_eq!(entries.len(), 1, "no partial file left behind");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_workspace_this_crate_lives_in_is_a_root() {
        let built_from = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        assert!(is_root(built_from));
        assert!(!is_root(Path::new(env!("CARGO_MANIFEST_DIR"))));
    }
}
