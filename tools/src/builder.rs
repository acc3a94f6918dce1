//! Building a variant's flat hypervisor image: cargo builds the ELF,
//! llvm-objcopy (from the toolchain's llvm-tools) flattens it, and the
//! result must carry an arm64 Image header.

use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, anyhow, bail};

use crate::image::check_arm64_image;
use crate::machine::shell_words;
use crate::variant::Variant;
use crate::workspace;

/// Builds `variant` and returns the absolute path of its checked image.
pub fn build_image(root: &Path, variant: &Variant) -> Result<PathBuf> {
    let cargo = cargo_program();
    let mut cargo_args = variant.cargo_build_args();
    cargo_args.extend(registry_remap_args(&registry_sources()));
    eprintln!(
        "tessera: building {}: {}",
        variant.name(),
        shell_words("cargo", &cargo_args)
    );
    run_checked(
        Command::new(&cargo).args(&cargo_args).current_dir(root),
        "cargo build",
    )?;

    let elf = root.join(variant.elf_path());
    if !elf.is_file() {
        bail!(
            "cargo build succeeded but left no ELF at {}",
            workspace::display(&elf)
        );
    }
    let image = root.join(variant.image_path());
    flatten(root, &elf, &image)?;

    let bytes =
        std::fs::read(&image).with_context(|| format!("cannot read {}", image.display()))?;
    check_arm64_image(&bytes).map_err(|err| anyhow!("{} {err}", workspace::display(&image)))?;
    Ok(image)
}

/// Writes the flat binary of `elf` to `out` with llvm-objcopy, creating
/// the directory. The binary is written beside `out` under a name of this
/// process's own and renamed into place, so that a QEMU another `tessera`
/// starts meanwhile never boots half of it.
pub fn flatten(root: &Path, elf: &Path, out: &Path) -> Result<()> {
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let objcopy = find_llvm_objcopy(root)?;
    let mut partial = out.as_os_str().to_owned();
    partial.push(format!(".{}.partial", std::process::id()));
    let partial = PathBuf::from(partial);
    let flattened = run_checked(
        Command::new(&objcopy)
            .arg("-O")
            .arg("binary")
            .arg(elf)
            .arg(&partial),
        "llvm-objcopy",
    )
    .and_then(|()| {
        std::fs::rename(&partial, out)
            .with_context(|| format!("cannot rename {} to {}", partial.display(), out.display()))
    });
    if flattened.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    flattened
}

/// The directories cargo unpacks registry crates into:
/// `$CARGO_HOME/registry/src/<registry>-<hash>` (`CARGO_HOME` defaults to
/// `~/.cargo`); none if there is no such directory.
fn registry_sources() -> Vec<PathBuf> {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".cargo")));
    let Some(Ok(entries)) = home.map(|home| std::fs::read_dir(home.join("registry/src"))) else {
        return Vec::new();
    };
    let mut sources: Vec<PathBuf> = entries
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| path.is_dir())
        .collect();
    sources.sort();
    sources
}

/// Cargo arguments that name the dependencies' sources `crates/...` in the
/// image: its panic locations carry file paths, and a dependency's would
/// otherwise start with this machine's registry directory (some 60 bytes
/// each, about 400 bytes of image in all). The same on every machine, too.
/// Passed with `--config`, so they join the target's flags in
/// `.cargo/config.toml` rather than replace them.
fn registry_remap_args(sources: &[PathBuf]) -> Vec<String> {
    if sources.is_empty() {
        return Vec::new();
    }
    let flags: Vec<String> = sources
        .iter()
        .map(|source| {
            let flag = format!("--remap-path-prefix={}=crates", source.display());
            format!("\"{}\"", flag.replace('\\', "\\\\").replace('"', "\\\""))
        })
        .collect();
    vec![
        "--config".to_string(),
        format!(
            "target.{}.rustflags=[{}]",
            crate::variant::HYPERVISOR_TARGET,
            flags.join(", ")
        ),
    ]
}

/// The cargo that runs us: under `cargo run`, CARGO names it, so nested
/// builds use the same toolchain.
pub fn cargo_program() -> OsString {
    std::env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"))
}

/// Runs a command to completion with its output captured, so that it does
/// not interleave with the tool's own lines (cargo's progress lines would);
/// a failure names the step and its status, and its output, where the
/// compiler's errors are, goes to stderr first.
pub fn run_checked(command: &mut Command, step: &str) -> Result<()> {
    let output = command
        .stdin(std::process::Stdio::null())
        .output()
        .with_context(|| format!("cannot start {step} ({:?})", command.get_program()))?;
    if !output.status.success() {
        let mut stderr = std::io::stderr().lock();
        let _ = stderr.write_all(&output.stdout);
        let _ = stderr.write_all(&output.stderr);
        bail!("{step} failed ({})", output.status);
    }
    Ok(())
}

/// `<sysroot>/lib/rustlib/<host>/bin/llvm-objcopy`, as installed by the
/// toolchain's `llvm-tools` component. Asked of rustc in the workspace
/// root so that rust-toolchain.toml picks the toolchain.
fn find_llvm_objcopy(root: &Path) -> Result<PathBuf> {
    let sysroot = rustc_output(root, &["--print", "sysroot"])?;
    let version = rustc_output(root, &["-vV"])?;
    let host = parse_host_triple(&version)
        .ok_or_else(|| anyhow!("`rustc -vV` printed no `host:` line:\n{version}"))?;
    let objcopy = llvm_objcopy_path(Path::new(sysroot.trim()), host);
    if !objcopy.is_file() {
        bail!(
            "llvm-objcopy not found at {}; install the llvm-tools component \
             (`rustup component add llvm-tools`, or `make deps`)",
            objcopy.display()
        );
    }
    Ok(objcopy)
}

fn rustc_output(root: &Path, args: &[&str]) -> Result<String> {
    let output = Command::new("rustc")
        .args(args)
        .current_dir(root)
        .output()
        .context("cannot start rustc")?;
    if !output.status.success() {
        bail!(
            "`rustc {}` failed ({}): {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    String::from_utf8(output.stdout).context("rustc printed something that is not UTF-8")
}

fn parse_host_triple(rustc_verbose_version: &str) -> Option<&str> {
    rustc_verbose_version
        .lines()
        .find_map(|line| line.strip_prefix("host:"))
        .map(str::trim)
        .filter(|host| !host.is_empty())
}

fn llvm_objcopy_path(sysroot: &Path, host: &str) -> PathBuf {
    sysroot
        .join("lib/rustlib")
        .join(host)
        .join("bin/llvm-objcopy")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_triple_from_rustc_verbose_version() {
        let output = "rustc 1.95.0 (59807616e 2026-04-14)\n\
                      binary: rustc\n\
                      host: x86_64-unknown-linux-gnu\n\
                      release: 1.95.0\n";
        assert_eq!(parse_host_triple(output), Some("x86_64-unknown-linux-gnu"));
        assert_eq!(parse_host_triple("rustc 1.95.0\n"), None);
        assert_eq!(parse_host_triple("host:\n"), None);
    }

    #[test]
    fn registry_sources_are_remapped_through_the_config() {
        assert!(registry_remap_args(&[]).is_empty());
        let args = registry_remap_args(&[
            PathBuf::from("/home/me/.cargo/registry/src/index.crates.io-0123"),
            PathBuf::from("/odd \"dir\""),
        ]);
        assert_eq!(
            args,
            [
                "--config",
                "target.aarch64-unknown-none-softfloat.rustflags=[\
                 \"--remap-path-prefix=/home/me/.cargo/registry/src/index.crates.io-0123=crates\", \
                 \"--remap-path-prefix=/odd \\\"dir\\\"=crates\"]"
            ]
        );
    }

    #[test]
    fn objcopy_lives_in_the_host_rustlib() {
        assert_eq!(
            llvm_objcopy_path(Path::new("/sys/root"), "aarch64-apple-darwin"),
            PathBuf::from("/sys/root/lib/rustlib/aarch64-apple-darwin/bin/llvm-objcopy")
        );
    }
}
