//! A build variant: one board plus a set of extra cargo features. Each
//! variant gets its own cargo target directory, so builds with different
//! features neither clobber nor invalidate each other.

use std::collections::BTreeSet;
use std::path::PathBuf;

use crate::machine::Board;

/// The target the hypervisor is built for: no FP/SIMD, so EL2 code never
/// touches the guests' vector registers behind their back.
pub const HYPERVISOR_TARGET: &str = "aarch64-unknown-none-softfloat";
pub const HYPERVISOR_PACKAGE: &str = "tessera-hypervisor";

/// The feature that routes the hypervisor's exit status to QEMU's.
pub const SEMIHOSTING_FEATURE: &str = "semihosting";

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Variant {
    board: Board,
    /// Sorted and free of duplicates, so the same set always names the
    /// same variant.
    features: BTreeSet<String>,
}

impl Variant {
    /// Empty feature names are skipped (they come from `--features ""` or a
    /// trailing comma); anything that is not a plain cargo feature name is
    /// rejected, because the names end up in directory names.
    pub fn new<I, S>(board: Board, features: I) -> Result<Self, String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut set = BTreeSet::new();
        for feature in features {
            let feature = feature.as_ref().trim();
            if feature.is_empty() {
                continue;
            }
            check_feature_name(feature)?;
            set.insert(feature.to_string());
        }
        Ok(Variant {
            board,
            features: set,
        })
    }

    pub fn has_feature(&self, feature: &str) -> bool {
        self.features.contains(feature)
    }

    /// Returns the variant with one more feature.
    pub fn with_feature(mut self, feature: &str) -> Self {
        self.features.insert(feature.to_string());
        self
    }

    /// `<board>` then `-<feature>` for each extra feature, in sorted order.
    pub fn name(&self) -> String {
        let mut name = self.board.name().to_string();
        for feature in &self.features {
            name.push('-');
            name.push_str(feature);
        }
        name
    }

    /// The `--features` value: the board feature first, then the rest.
    pub fn cargo_features(&self) -> String {
        std::iter::once(self.board.cargo_feature())
            .chain(self.features.iter().cloned())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Relative to the workspace root.
    pub fn target_dir(&self) -> PathBuf {
        PathBuf::from("target/variants").join(self.name())
    }

    /// Arguments to `cargo` that build this variant's ELF.
    pub fn cargo_build_args(&self) -> Vec<String> {
        [
            "build",
            "--release",
            "-p",
            HYPERVISOR_PACKAGE,
            "--target",
            HYPERVISOR_TARGET,
            "--features",
            &self.cargo_features(),
            "--target-dir",
            &self.target_dir().display().to_string(),
        ]
        .iter()
        .map(|arg| arg.to_string())
        .collect()
    }

    /// Where cargo leaves the ELF, relative to the workspace root.
    pub fn elf_path(&self) -> PathBuf {
        self.target_dir()
            .join(HYPERVISOR_TARGET)
            .join("release")
            .join(HYPERVISOR_PACKAGE)
    }

    /// Where the flat image goes, relative to the workspace root.
    pub fn image_path(&self) -> PathBuf {
        PathBuf::from("target/images")
            .join(self.name())
            .join("tessera.bin")
    }
}

fn check_feature_name(feature: &str) -> Result<(), String> {
    if feature.starts_with("board-") {
        return Err(format!(
            "feature `{feature}` selects a board; choose the board with --board or the machine instead"
        ));
    }
    let plain = feature
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if !plain || feature.starts_with('-') {
        return Err(format!(
            "feature `{feature}` is not a plain feature name (letters, digits, `_` and `-` only)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_sorts_and_deduplicates_features() {
        let variant = Variant::new(Board::Virt, ["semihosting", "bench", "semihosting"]).unwrap();
        assert_eq!(variant.name(), "virt-bench-semihosting");
        assert_eq!(variant.cargo_features(), "board-virt,bench,semihosting");
        assert_eq!(
            variant,
            Variant::new(Board::Virt, ["bench", "semihosting"]).unwrap()
        );
    }

    #[test]
    fn plain_board_variant() {
        let variant = Variant::new(Board::Rpi4, Vec::<String>::new()).unwrap();
        assert_eq!(variant.name(), "rpi4");
        assert_eq!(variant.cargo_features(), "board-rpi4");
    }

    #[test]
    fn empty_feature_names_are_skipped() {
        let variant = Variant::new(Board::Virt, ["", " ", "semihosting"]).unwrap();
        assert_eq!(variant.name(), "virt-semihosting");
    }

    #[test]
    fn cargo_command_line() {
        let variant = Variant::new(Board::Virt, ["semihosting"]).unwrap();
        assert_eq!(
            variant.cargo_build_args().join(" "),
            "build --release -p tessera-hypervisor --target aarch64-unknown-none-softfloat \
             --features board-virt,semihosting --target-dir target/variants/virt-semihosting"
        );
    }

    #[test]
    fn paths() {
        let variant = Variant::new(Board::Rpi4, ["semihosting"]).unwrap();
        assert_eq!(
            variant.elf_path(),
            PathBuf::from(
                "target/variants/rpi4-semihosting/aarch64-unknown-none-softfloat/release/tessera-hypervisor"
            )
        );
        assert_eq!(
            variant.image_path(),
            PathBuf::from("target/images/rpi4-semihosting/tessera.bin")
        );
    }

    #[test]
    fn board_features_are_rejected() {
        let err = Variant::new(Board::Virt, ["board-rpi4"]).unwrap_err();
        assert!(err.contains("selects a board"), "{err}");
    }

    #[test]
    fn odd_feature_names_are_rejected() {
        for bad in ["../x", "a/b", "dep:foo", "-x", "a b"] {
            assert!(Variant::new(Board::Virt, [bad]).is_err(), "{bad}");
        }
    }

    #[test]
    fn with_feature_is_idempotent() {
        let variant = Variant::new(Board::Virt, ["semihosting"]).unwrap();
        assert_eq!(variant.clone().with_feature(SEMIHOSTING_FEATURE), variant);
        assert!(variant.has_feature(SEMIHOSTING_FEATURE));
    }
}
