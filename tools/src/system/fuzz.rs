//! The configuration checker under hostile input: a structured generator
//! of mutated configurations, each run through [`check_bytes`] (the entry
//! point of `tessera check`, in-process), with two promises checked on
//! every one:
//!
//! - no panic (the tests run the debug build, so an overflowing sum
//!   panics instead of wrapping);
//! - every rejection is in a documented form (docs/system-image.md): each
//!   line `FILE: KEY: REASON` or `FILE:LINE:COLUMN: REASON`, no control
//!   character anywhere, at most [`MAX_SHOWN`] mistakes, then one
//!   `FILE: N more mistakes not shown (...)` line.
//!
//! Inputs start from the configurations in the tree (systems/,
//! tests/guests/systems/, tools/tests/fixtures/) and are mutated two ways:
//! as TOML trees (keys added, removed or given values of the wrong type,
//! huge and negative numbers, overflowing sizes, control characters, long
//! arrays, deep nesting, many VMs), then serialised; and as bytes (bytes
//! inserted, flipped, deleted or repeated, non-UTF-8 sequences, snippets
//! such as a 100-part dotted key or 200 nested arrays). `example:` images
//! resolve to hand-made images, some with headers whose offset and size
//! overflow any sum. A small seeded PRNG (SplitMix64) drives it all, so a
//! run is the same every time for one seed.
//!
//! `cargo test` runs 20,000 configurations; `make fuzz` runs the ignored
//! test with `TESSERA_FUZZ_ITERATIONS` (default 1,000,000) and
//! `TESSERA_FUZZ_SEED`.

use std::collections::BTreeMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::time::Instant;

use regex::Regex;
use toml::{Table, Value};

use super::guest_image::fake_image;
use super::{ConfigErrors, ImageLocator, MAX_SHOWN, check_bytes};
use crate::units::MIB;
use crate::workspace;

/// SplitMix64: tiny, fast and good enough to pick mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n`; `n` must not be 0.
    fn below(&mut self, n: usize) -> usize {
        // The modulo bias is irrelevant here.
        usize::try_from(self.next() % n as u64).unwrap_or(0)
    }

    /// True once in `n` times.
    fn one_in(&mut self, n: usize) -> bool {
        self.below(n) == 0
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// Keys the checker knows, and some it does not.
const KEYS: &[&str] = &[
    "board",
    "vm",
    "name",
    "gic-version",
    "cpus",
    "memory",
    "image",
    "ram",
    "ram-base",
    "bootargs",
    "start-delay",
    "device-tree",
    "passthrough",
    "path",
    "reg",
    "spis",
    "vdev-shmem",
    "loc",
    "intr",
    "window",
    "allow",
    "deny",
    "shmem",
    "limit",
    "region",
    "size",
    "extra",
    "",
    "a b",
    "x.y",
    "\u{1b}[2J",
    "line\nbreak",
    "é",
];

const INTEGERS: &[i64] = &[
    0,
    1,
    -1,
    2,
    3,
    4,
    7,
    8,
    9,
    255,
    -2,
    0x20_0000,
    0x0600_0000,
    0x0800_0000,
    0x4000_0000,
    0x4010_0000,
    0x8000_0000,
    0x7F_FE00_0000,
    0x80_0000_0000,
    0x7FFF_FFFF_FFE0_0000,
    u32::MAX as i64,
    u32::MAX as i64 + 1,
    i64::MAX,
    i64::MIN,
];

const STRINGS: &[&str] = &[
    "64M",
    "2M",
    "3M",
    "0M",
    "1G",
    "948M",
    "2G",
    "512G",
    "8589934591G",
    "17179869183G",
    "17592186044415M",
    "18014398509481983K",
    "18446744073709551615K",
    "99999999999999999999G",
    "12Q",
    "-1M",
    "1.5G",
    "",
    "M",
    "qemu-virt",
    "rpi4",
    "alpha",
    "beta",
    "Gamma_1",
    "a\u{0}b",
    "ok\nOK",
    "\u{1b}[32mOK\u{1b}[0m",
    "\r\u{7f}\u{85}\u{9b}",
    "é",
    "\u{202e}reversed",
    "example:hello",
    "example:big",
    "example:wrap",
    "example:offset",
    "example:elf",
    "example:nope",
    "example:../x",
    "example:",
    "images/raw.bin",
    "images/big.bin",
    "images/elf.bin",
    "images/absent.bin",
    "images",
    ".",
    "console=ttyAMA0",
    "20ms",
    "60s",
    "61s",
    "1.5s",
];

/// Snippets spliced into the text, each a way a file goes wrong.
fn snippets() -> Vec<Vec<u8>> {
    let mut snippets: Vec<Vec<u8>> = [
        "\n[[vm]]\n",
        "\n[board]\n",
        "\n[[vm.vdev-shmem]]\nloc = 0x100000000\nintr = 40\nwindow = [0x100010000, 0x100000]\n",
        "\n[[vm.vdev-shmem]]\nloc = 0x7FFFFFFFF000\nintr = 4294967295\nwindow = [-1, 0x7FFFFFFFFFFFFFFF]\n",
        "\nallow = [\"*\", \"\", \"a b\", 3]\ndeny = \"x\"\n",
        "\n[shmem]\nlimit = \"4K\"\n[[shmem.region]]\nname = \"r\"\nsize = \"17179869183G\"\n",
        "\n[vm]\n",
        "\nram-base = 0x7FFF_FFFF_FFE0_0000\n",
        "\nram-base = 0xFFFF_FFFF_FFE0_0000\n",
        "\nram-base = -9223372036854775808\n",
        "\nram = \"18446744073709551615K\"\n",
        "\nram = \"17179869183G\"\n",
        "\nstart-delay = \"18446744073709551615s\"\n",
        "\nstart-delay = \"60000ms\"\n",
        "\ncpus = [0, 1, 2, 3, 4, 5, 6, 7, 8, 4294967295, -1, 1.5, \"x\"]\n",
        "\nname = \"\\u001b[31mOK\\r\\n\"\n",
        "\n\"\\u0000\" = 1\n",
        "\n\"\" = 1\n",
        "\r\n",
        "\u{feff}",
        "\"\"\"",
        "'''",
        "\\",
        "= =",
        "\nx = 1979-05-27T07:32:00Z\n",
        "\nx = {a = {b = {c = 1}}}\n",
        "\nmemory = 1e400\n",
        "\nmemory = nan\n",
    ]
    .iter()
    .map(|text| text.as_bytes().to_vec())
    .collect();
    let dotted = (0..100).map(|n| format!("k{n}")).collect::<Vec<_>>();
    snippets.push(format!("\n{} = 1\n", dotted.join(".")).into_bytes());
    snippets.push(format!("\n[{}]\n", dotted.join(".")).into_bytes());
    snippets.push(format!("\nx = {}{}\n", "[".repeat(200), "]".repeat(200)).into_bytes());
    snippets.push(format!("\nx = {}{}\n", "{a=".repeat(100), "}".repeat(100)).into_bytes());
    snippets.push(vec![0xFF]);
    snippets.push(vec![0xC3, b'(']);
    snippets.push(vec![0xE2, 0x82]);
    snippets.push(vec![0xED, 0xA0, 0x80]);
    snippets.push(vec![0xF4, 0x90, 0x80, 0x80]);
    snippets.push(vec![0]);
    snippets
}

fn random_integer(rng: &mut Rng) -> i64 {
    match rng.below(4) {
        0 => rng.next() as i64,
        1 => INTEGERS[rng.below(INTEGERS.len())].wrapping_add(rng.below(3) as i64 - 1),
        _ => *rng.pick(INTEGERS),
    }
}

fn random_string(rng: &mut Rng) -> String {
    match rng.below(6) {
        0 => {
            // A size with random digits and a unit, often past 2^64.
            let digits = 1 + rng.below(22);
            let mut text: String = (0..digits)
                .map(|_| char::from(b'0' + rng.below(10) as u8))
                .collect();
            text.push(*rng.pick(&['K', 'M', 'G', 'T', 'k', '\u{1b}']));
            text
        }
        1 => {
            // Random characters, control characters among them.
            let len = rng.below(24);
            (0..len)
                .map(|_| {
                    char::from_u32(match rng.below(4) {
                        0 => rng.below(0x20) as u32,
                        1 => 0x7F + rng.below(0x21) as u32,
                        2 => rng.below(0x11_0000) as u32,
                        _ => 0x20 + rng.below(0x5F) as u32,
                    })
                    .unwrap_or('?')
                })
                .collect()
        }
        2 => "x".repeat(rng.below(3000)),
        _ => rng.pick(STRINGS).to_string(),
    }
}

/// A value of a random type; arrays and tables nest at most `depth` more.
fn random_value(rng: &mut Rng, depth: usize) -> Value {
    match rng.below(if depth == 0 { 6 } else { 10 }) {
        0 | 1 => Value::Integer(random_integer(rng)),
        2 | 3 => Value::String(random_string(rng)),
        4 => Value::Float(*rng.pick(&[0.0, -0.0, 1.5, 1e300, f64::INFINITY, f64::NAN])),
        5 => match rng.below(2) {
            0 => Value::Boolean(rng.one_in(2)),
            _ => Value::Datetime(
                "1979-05-27T07:32:00Z"
                    .parse()
                    .expect("a valid TOML date-time"),
            ),
        },
        6 => {
            let len = rng.below(6);
            Value::Array((0..len).map(|_| random_value(rng, depth - 1)).collect())
        }
        7 => {
            // An array of numbers, now and then a long one.
            let len = if rng.one_in(50) {
                rng.below(3000)
            } else {
                rng.below(20)
            };
            Value::Array(
                (0..len)
                    .map(|_| Value::Integer(random_integer(rng)))
                    .collect(),
            )
        }
        8 => {
            // Deep nesting, past the parser's limit at times.
            let mut value = Value::Integer(1);
            for _ in 0..rng.below(120) {
                value = Value::Array(vec![value]);
            }
            value
        }
        _ => {
            let mut table = Table::new();
            for _ in 0..rng.below(4) {
                table.insert(rng.pick(KEYS).to_string(), random_value(rng, depth - 1));
            }
            Value::Table(table)
        }
    }
}

/// One of the tables of `root` that hold settings: the top level, the
/// board, or a VM.
fn random_table<'a>(rng: &mut Rng, root: &'a mut Table) -> &'a mut Table {
    // Which one is chosen first, with shared borrows only, so the
    // mutable borrow below is taken once.
    let board = matches!(root.get("board"), Some(Value::Table(_)));
    let vm_tables: Vec<usize> = match root.get("vm") {
        Some(Value::Array(vms)) => (0..vms.len()).filter(|&n| vms[n].is_table()).collect(),
        _ => Vec::new(),
    };
    match rng.below(3) {
        1 if board => root
            .get_mut("board")
            .and_then(Value::as_table_mut)
            .expect("the board table"),
        2 if !vm_tables.is_empty() => {
            let index = *rng.pick(&vm_tables);
            root.get_mut("vm")
                .and_then(Value::as_array_mut)
                .and_then(|vms| vms[index].as_table_mut())
                .expect("a vm table")
        }
        _ => root,
    }
}

/// Changes one thing in the tree.
fn mutate_tree(rng: &mut Rng, root: &mut Table) {
    match rng.below(10) {
        0..=2 => {
            let table = random_table(rng, root);
            table.insert(rng.pick(KEYS).to_string(), random_value(rng, 2));
        }
        3 => {
            let table = random_table(rng, root);
            let keys: Vec<String> = table.keys().cloned().collect();
            if !keys.is_empty() {
                table.remove(&keys[rng.below(keys.len())]);
            }
        }
        4 => {
            // Many VMs, copies of one, so names and CPUs clash and RAM adds
            // up past 2^64 when it is large.
            if let Some(Value::Array(vms)) = root.get_mut("vm")
                && !vms.is_empty()
            {
                let copies = if rng.one_in(100) {
                    rng.below(1000)
                } else {
                    rng.below(8)
                };
                let copy = vms[rng.below(vms.len())].clone();
                vms.extend(std::iter::repeat_n(copy, copies));
            }
        }
        5 => {
            // A long CPU list, at times very long.
            let len = match rng.below(1000) {
                0 => 100_000,
                1..=20 => rng.below(5000),
                _ => rng.below(20),
            };
            let cpus = (0..len)
                .map(|n| {
                    Value::Integer(if rng.one_in(2) {
                        n as i64
                    } else {
                        random_integer(rng)
                    })
                })
                .collect();
            let table = random_table(rng, root);
            table.insert("cpus".into(), Value::Array(cpus));
        }
        6 => {
            let table = random_table(rng, root);
            let size = format!(
                "{}{}",
                rng.pick(&[
                    "17179869183",
                    "17179869184",
                    "8589934592",
                    "1",
                    "256",
                    "511"
                ]),
                rng.pick(&["G", "M", "K"])
            );
            table.insert(
                rng.pick(&["ram", "memory"]).to_string(),
                Value::String(size),
            );
        }
        7 => {
            let table = random_table(rng, root);
            table.insert(
                "ram-base".into(),
                Value::Integer(*rng.pick(&[
                    i64::MAX & !0x1F_FFFF,
                    0x7F_FE00_0000,
                    0x7F_FFE0_0000,
                    0x4000_0000,
                    0,
                ])),
            );
        }
        8 => {
            root.insert("vm".into(), random_value(rng, 2));
        }
        _ => {
            root.insert("board".into(), random_value(rng, 2));
        }
    }
}

/// Changes one thing in the bytes.
fn mutate_bytes(rng: &mut Rng, bytes: &mut Vec<u8>, snippets: &[Vec<u8>]) {
    let at = rng.below(bytes.len() + 1);
    match rng.below(8) {
        0 => bytes.insert(at, rng.next() as u8),
        1 => {
            if at < bytes.len() {
                bytes[at] ^= 1 << rng.below(8);
            }
        }
        2 => {
            let end = (at + rng.below(40)).min(bytes.len());
            bytes.drain(at..end);
        }
        3 => {
            let end = (at + rng.below(200)).min(bytes.len());
            let copy = bytes[at..end].to_vec();
            let to = rng.below(bytes.len() + 1);
            bytes.splice(to..to, copy);
        }
        4 => bytes.truncate(at),
        _ => {
            let snippet = rng.pick(snippets);
            bytes.splice(at..at, snippet.iter().copied());
        }
    }
}

/// One generated configuration.
fn generate(rng: &mut Rng, seeds: &[Vec<u8>], snippets: &[Vec<u8>]) -> Vec<u8> {
    let seed = rng.pick(seeds);
    let mut bytes = seed.clone();
    let tree = std::str::from_utf8(seed)
        .ok()
        .and_then(|text| text.parse::<Table>().ok());
    if let Some(mut tree) = tree
        && rng.below(10) < 6
    {
        for _ in 0..1 + rng.below(4) {
            mutate_tree(rng, &mut tree);
        }
        if let Ok(text) = toml::to_string(&tree) {
            bytes = text.into_bytes();
        }
        if !rng.one_in(3) {
            return bytes;
        }
    }
    for _ in 0..1 + rng.below(4) {
        mutate_bytes(rng, &mut bytes, snippets);
    }
    bytes
}

/// `example:` names resolve to images made for the run: a good one, and
/// ones whose headers put the image past any RAM or past 2^64.
/// The folder of images is removed when the run ends.
struct FuzzExamples(BTreeMap<&'static str, PathBuf>, PathBuf);

impl Drop for FuzzExamples {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.1);
    }
}

impl FuzzExamples {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("tessera-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a scratch directory");
        let images = [
            ("hello", fake_image(0x8_0000, MIB, 4096)),
            ("big", fake_image(0x8_0000, 1 << 40, 4096)),
            ("wrap", fake_image(0x8_0000, u64::MAX, 4096)),
            ("offset", fake_image(u64::MAX - 0xFFF, 0x1000, 4096)),
            ("elf", b"\x7fELF\x02\x01\x01".to_vec()),
        ];
        let mut paths = BTreeMap::new();
        for (name, bytes) in images {
            let path = dir.join(format!("{name}.bin"));
            std::fs::write(&path, bytes).expect("a scratch image");
            paths.insert(name, path);
        }
        FuzzExamples(paths, dir)
    }
}

impl ImageLocator for FuzzExamples {
    fn example_image(&mut self, name: &str) -> Result<PathBuf, String> {
        self.0
            .get(name)
            .cloned()
            .ok_or_else(|| format!("guest-sdk has no example \"{name}\""))
    }
}

/// The configurations of the tree, as bytes.
fn seeds(root: &Path) -> Vec<Vec<u8>> {
    let mut seeds = Vec::new();
    for dir in ["systems", "tests/guests/systems", "tools/tests/fixtures"] {
        let mut files: Vec<PathBuf> = std::fs::read_dir(root.join(dir))
            .expect("a configuration folder")
            .map(|entry| entry.expect("a folder entry").path())
            .filter(|path| path.extension().is_some_and(|ext| ext == "toml"))
            .collect();
        // Sorted, so a seed means the same inputs on every machine.
        files.sort();
        seeds.extend(
            files
                .iter()
                .map(|path| std::fs::read(path).expect("a seed")),
        );
    }
    assert!(seeds.len() >= 10, "found only {} seeds", seeds.len());
    seeds
}

/// What is wrong with the report of a rejected configuration, if anything.
fn form_problem(errors: &ConfigErrors, text: &str, forms: &Forms) -> Option<String> {
    if errors.0.is_empty() {
        return Some("a rejection without a mistake".into());
    }
    if errors.0.len() > MAX_SHOWN {
        return Some(format!("{} mistakes shown", errors.0.len()));
    }
    let lines: Vec<&str> = text.split('\n').collect();
    let expected_lines = errors.0.len() + usize::from(errors.1 > 0);
    if lines.len() != expected_lines {
        return Some(format!(
            "{} lines for {expected_lines} messages",
            lines.len()
        ));
    }
    for (index, line) in lines.iter().enumerate() {
        if line.chars().any(char::is_control) {
            return Some(format!("a control character in {line:?}"));
        }
        let counted = errors.1 > 0 && index == lines.len() - 1;
        let good = if counted {
            forms.count.is_match(line)
        } else {
            forms.keyed.is_match(line) || forms.positioned.is_match(line)
        };
        if !good {
            return Some(format!("not in a documented form: {line:?}"));
        }
    }
    None
}

/// The documented forms of a report line, for one file.
struct Forms {
    keyed: Regex,
    positioned: Regex,
    count: Regex,
}

impl Forms {
    fn new(file: &Path) -> Self {
        let file = regex::escape(&workspace::display(file));
        // A key path: bare parts or quoted ones, each maybe indexed.
        let part = r#"(?:[A-Za-z0-9_-]+|"(?:[^"\\]|\\.)*")(?:\[[0-9]+\])?"#;
        let form = |pattern: String| Regex::new(&pattern).expect("a valid pattern");
        Forms {
            keyed: form(format!(r"^{file}: {part}(?:\.{part})*: \S.*$")),
            positioned: form(format!(r"^{file}:[1-9][0-9]*:[1-9][0-9]*: \S.*$")),
            count: form(format!(
                r"^{file}: [1-9][0-9]* more mistakes? not shown \(the first {MAX_SHOWN} are above\)$"
            )),
        }
    }
}

/// The totals of a run.
#[derive(Debug, Default)]
struct Outcome {
    accepted: usize,
    rejected: usize,
    /// Rejections with more mistakes than are shown.
    capped: usize,
}

/// Runs `iterations` generated configurations from `seed`; panics with
/// the first input that panicked the checker or was answered in no
/// documented form, escaped so it can be pasted into a test.
fn run(seed: u64, iterations: usize) -> Outcome {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root");
    let seeds = seeds(root);
    let snippets = snippets();
    // A file beside the fixtures, so their relative image paths resolve.
    let file = root.join("tools/tests/fixtures/fuzz.toml");
    let forms = Forms::new(&file);
    let mut examples = FuzzExamples::new();
    let mut rng = Rng(seed);
    let mut outcome = Outcome::default();
    for iteration in 0..iterations {
        let input = generate(&mut rng, &seeds, &snippets);
        let result = catch_unwind(AssertUnwindSafe(|| {
            check_bytes(&input, &file, &mut examples)
        }));
        let shown = || String::from_utf8_lossy(&input).escape_debug().to_string();
        match result {
            Err(_) => panic!(
                "iteration {iteration} (seed {seed:#x}): the checker panicked on \"{}\"",
                shown()
            ),
            Ok(Ok(_)) => outcome.accepted += 1,
            Ok(Err(errors)) => {
                outcome.rejected += 1;
                outcome.capped += usize::from(errors.1 > 0);
                if let Some(problem) = form_problem(&errors, &errors.to_string(), &forms) {
                    panic!(
                        "iteration {iteration} (seed {seed:#x}): {problem}\ninput: \"{}\"",
                        shown()
                    );
                }
            }
        }
    }
    outcome
}

const DEFAULT_SEED: u64 = 0x7E55_E4A0;

#[test]
fn twenty_thousand_mutated_configurations() {
    let outcome = run(DEFAULT_SEED, 20_000);
    // The generator must reach both verdicts and the cap, or it tests little.
    assert!(outcome.accepted > 0, "{outcome:?}");
    assert!(outcome.rejected > outcome.accepted, "{outcome:?}");
    assert!(outcome.capped > 0, "{outcome:?}");
}

/// `make fuzz`: `TESSERA_FUZZ_ITERATIONS` configurations (default
/// 1,000,000) from `TESSERA_FUZZ_SEED` (default the short run's).
#[test]
#[ignore = "long; run by `make fuzz`"]
fn fuzz_many_configurations() {
    // Decimal, or hexadecimal after `0x`.
    let number = |name: &str, default: u64| {
        std::env::var(name).map_or(default, |text| {
            let parsed = match text.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => text.parse(),
            };
            parsed.unwrap_or_else(|_| panic!("{name} is not a number: {text}"))
        })
    };
    let iterations =
        usize::try_from(number("TESSERA_FUZZ_ITERATIONS", 1_000_000)).expect("an iteration count");
    let seed = number("TESSERA_FUZZ_SEED", DEFAULT_SEED);
    let start = Instant::now();
    let outcome = run(seed, iterations);
    eprintln!(
        "fuzz: {iterations} configurations from seed {seed:#x} in {:.1?}: {} accepted, {} rejected \
         ({} with more mistakes than shown); no panic, every rejection in a documented form",
        start.elapsed(),
        outcome.accepted,
        outcome.rejected,
        outcome.capped
    );
}
