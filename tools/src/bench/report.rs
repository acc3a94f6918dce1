//! The figures and the two forms they are written in:
//! `target/bench/results.json` (the contract in the testing design's
//! "Benchmarks" section) and the table of `docs/benchmarks.md`.

use std::fmt::Write as _;

use serde::Serialize;

use crate::machine::{BENCH_COUNTER_HZ, ICOUNT_OPTIONS};

/// One measured figure: an object of `results.json`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Figure {
    /// Fixed once in use: a different measurement gets a new name.
    pub name: &'static str,
    pub unit: &'static str,
    pub min: u64,
    pub median: u64,
    pub max: u64,
    /// The median of the same guest code run natively, where that makes
    /// sense.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub native_median: Option<u64>,
    /// The figure the median should not exceed, where an issue sets one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<u64>,
    /// What is measured and how, for the documentation; not in the JSON.
    #[serde(skip)]
    pub what: &'static str,
}

impl Figure {
    /// median / native median; `None` without a baseline or with a zero
    /// one.
    pub fn ratio(&self) -> Option<f64> {
        self.native_median
            .filter(|&native| native != 0)
            .map(|native| self.median as f64 / native as f64)
    }

    /// Whether the median is within the target; `None` without one.
    pub fn met(&self) -> Option<bool> {
        self.target.map(|target| self.median <= target)
    }
}

/// `results.json`: a JSON array with one object per figure, in order.
pub fn to_json(figures: &[Figure]) -> String {
    let mut json =
        serde_json::to_string_pretty(figures).expect("figures are plain numbers and strings");
    json.push('\n');
    json
}

/// What the documentation says besides the figures.
#[derive(Debug)]
pub struct RunFacts {
    /// The first line of `qemu-system-aarch64 --version`.
    pub qemu_version: String,
    /// The QEMU commands of the runs, with a label each, as run from the
    /// workspace root.
    pub commands: Vec<(String, String)>,
}

/// The table: name | unit | min | median | max | native | ratio | target
/// | met?, with `–` where a column does not apply.
pub fn table(figures: &[Figure]) -> String {
    let dash = || "–".to_string();
    let mut table = String::from(
        "| name | unit | min | median | max | native | ratio | target | met? |\n\
         |---|---|--:|--:|--:|--:|--:|--:|:-:|\n",
    );
    for figure in figures {
        let _ = writeln!(
            table,
            "| `{}` | {} | {} | {} | {} | {} | {} | {} | {} |",
            figure.name,
            figure.unit,
            figure.min,
            figure.median,
            figure.max,
            figure.native_median.map_or_else(dash, |n| n.to_string()),
            figure.ratio().map_or_else(dash, format_ratio),
            figure.target.map_or_else(dash, |t| t.to_string()),
            figure
                .met()
                .map_or_else(dash, |met| { if met { "yes" } else { "no" }.to_string() }),
        );
    }
    table
}

/// Ratios of 10 and more need no decimals to be read.
fn format_ratio(ratio: f64) -> String {
    if ratio >= 10.0 {
        format!("{ratio:.0}×")
    } else {
        format!("{ratio:.2}×")
    }
}

/// The whole of `docs/benchmarks.md`.
pub fn markdown(figures: &[Figure], facts: &RunFacts) -> String {
    let mut doc = format!(
        "# Benchmarks\n\
         \n\
         <!-- Written by `make bench` (`tessera bench`, tools/src/bench/); \
         edit the tool, not this file. -->\n\
         \n\
         These are **instruction counts under emulation, not hardware timings**. \
         Every run is under QEMU's TCG with `-icount {ICOUNT_OPTIONS}` and the generic \
         timer at 1 GHz (`-cpu cortex-a72,cntfrq={BENCH_COUNTER_HZ}`), so one counter \
         tick is one emulated instruction and the figures repeat exactly from run to \
         run, whatever else the host is doing. The guests read the counter themselves. \
         \"native\" is the same guest code run at EL1 on the same QEMU with the same \
         flags, without Tessera; ratio is median / native.\n\
         \n\
         QEMU: `{}`\n\
         \n",
        facts.qemu_version
    );
    doc.push_str(&table(figures));
    doc.push_str(
        "\nA figure meets its target when its median is at most the target. \
         Samples are counted once per round; min, median and max are over the rounds.\n\
         \n\
         ## What is measured\n\
         \n",
    );
    for figure in figures {
        let _ = writeln!(doc, "- `{}`: {}", figure.name, figure.what);
    }
    doc.push_str(
        "\n## Regenerating\n\
         \n\
         `make bench` installs what is missing, then runs \
         `cargo run --release -p tessera-tools -- bench`, which builds the production \
         hypervisor image, the same image with the `exit-counting` feature (for \
         `shmem.exits_per_roundtrip` alone) and the bench guests \
         (guest-sdk/examples/bench.rs, bench-interrupts.rs, bench-shmem.rs); boots the \
         `bench` and `bench-interrupts` guests natively and under Tessera \
         (bench/systems/one-vm.toml, interrupts.toml) and the two `bench-shmem` guests \
         under Tessera with each image (bench/systems/shmem.toml); and writes \
         `target/bench/results.json` and this file. It is not part of `make test`. \
         The serial logs and QEMU commands are kept in `target/bench/logs/`. \
         The runs, from the workspace root:\n\
         \n\
         ```sh\n",
    );
    for (label, command) in &facts.commands {
        let _ = writeln!(doc, "# {label}\n{command}");
    }
    doc.push_str("```\n");
    doc
}

#[cfg(test)]
mod tests {
    use super::*;

    fn figures() -> Vec<Figure> {
        vec![
            Figure {
                name: "boot.hypervisor_insns",
                unit: "instructions",
                min: 1_224_205,
                median: 1_224_205,
                max: 1_224_205,
                native_median: Some(32_877),
                target: Some(250_000),
                what: "boot",
            },
            Figure {
                name: "mmio.vuart_read",
                unit: "instructions",
                min: 358,
                median: 360,
                max: 1200,
                native_median: Some(4),
                target: Some(400),
                what: "read",
            },
            Figure {
                name: "image.hypervisor_bytes",
                unit: "bytes",
                min: 115_424,
                median: 115_424,
                max: 115_424,
                native_median: None,
                target: None,
                what: "size",
            },
        ]
    }

    #[test]
    fn json_has_the_contracts_keys_and_leaves_out_what_does_not_apply() {
        let json = to_json(&figures());
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        let array = value.as_array().unwrap();
        assert_eq!(array.len(), 3);
        assert_eq!(
            array[0],
            serde_json::json!({
                "name": "boot.hypervisor_insns",
                "unit": "instructions",
                "min": 1_224_205,
                "median": 1_224_205,
                "max": 1_224_205,
                "native_median": 32_877,
                "target": 250_000,
            })
        );
        assert_eq!(
            array[2],
            serde_json::json!({
                "name": "image.hypervisor_bytes",
                "unit": "bytes",
                "min": 115_424,
                "median": 115_424,
                "max": 115_424,
            })
        );
        assert!(json.ends_with("]\n"));
    }

    #[test]
    fn ratio_and_target() {
        let figures = figures();
        assert_eq!(figures[1].ratio(), Some(90.0));
        assert_eq!(figures[0].met(), Some(false));
        assert_eq!(figures[1].met(), Some(true));
        assert_eq!(figures[2].ratio(), None);
        assert_eq!(figures[2].met(), None);
        let zero_baseline = Figure {
            native_median: Some(0),
            ..figures[1].clone()
        };
        assert_eq!(zero_baseline.ratio(), None);
        assert_eq!(format_ratio(37.236), "37×");
        assert_eq!(format_ratio(1.5), "1.50×");
    }

    #[test]
    fn table_rows() {
        let table = table(&figures());
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(
            lines[0],
            "| name | unit | min | median | max | native | ratio | target | met? |"
        );
        assert_eq!(
            lines[2],
            "| `boot.hypervisor_insns` | instructions | 1224205 | 1224205 | 1224205 | 32877 | 37× | 250000 | no |"
        );
        assert_eq!(
            lines[3],
            "| `mmio.vuart_read` | instructions | 358 | 360 | 1200 | 4 | 90× | 400 | yes |"
        );
        assert_eq!(
            lines[4],
            "| `image.hypervisor_bytes` | bytes | 115424 | 115424 | 115424 | – | – | – | – |"
        );
        assert_eq!(lines.len(), 5);
    }

    #[test]
    fn markdown_says_what_the_figures_are_and_how_to_regenerate_them() {
        let facts = RunFacts {
            qemu_version: "QEMU emulator version 10.0.2".into(),
            commands: vec![("native".into(), "qemu-system-aarch64 -M virt".into())],
        };
        let doc = markdown(&figures(), &facts);
        assert!(doc.starts_with("# Benchmarks\n"));
        for needle in [
            "instruction counts under emulation, not hardware timings",
            "-icount shift=0,align=off,sleep=off",
            "cntfrq=1000000000",
            "QEMU: `QEMU emulator version 10.0.2`",
            "| `mmio.vuart_read` | instructions | 358 |",
            "- `boot.hypervisor_insns`: boot\n",
            "`make bench`",
            "```sh\n# native\nqemu-system-aarch64 -M virt\n```\n",
        ] {
            assert!(doc.contains(needle), "{needle:?} missing from:\n{doc}");
        }
    }
}
