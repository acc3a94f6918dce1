//! `tessera run --system` end to end, with the production image (no
//! `semihosting`): the built binary boots small systems under QEMU on virt
//! (which powers off through PSCI only after a success) and on raspi4b
//! (which has no power-off at all), and must return by itself with the
//! system's status: 0 for a clean system, non-zero for a failing one.
//!
//! The images and guests are built first, outside the boot's time limit
//! (a first build takes minutes); each boot then has [`BOOT_LIMIT`]. The
//! boots run one at a time: QEMU with several CPUs keeps a 2-core machine
//! busy.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

/// A boot of these systems takes a second or two; a run that has not
/// returned by this is taken to hang.
const BOOT_LIMIT: Duration = Duration::from_secs(60);
/// One boot (and one build) at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tools/ is inside the workspace")
        .to_path_buf()
}

fn config(name: &str) -> PathBuf {
    Path::new("tools/tests/fixtures/run").join(name)
}

fn tessera(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tessera"));
    command
        .args(args)
        .current_dir(workspace_root())
        .stdin(Stdio::null());
    command
}

/// Runs `tessera` to completion, without a time limit, and insists that
/// it succeeds: for the builds before a boot.
fn prepare(args: &[&str]) -> String {
    let output = tessera(args).output().expect("the tessera binary runs");
    assert!(
        output.status.success(),
        "tessera {}: {}\n{}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// The outcome of `tessera run --system`.
struct Run {
    status: ExitStatus,
    stdout: String,
    stderr: String,
    elapsed: Duration,
}

/// Builds what `config` needs, then runs `tessera run --system` on it and
/// waits at most [`BOOT_LIMIT`] for it to return.
fn run_system(config: &Path, board: &str) -> Run {
    let _one = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let config = config.to_str().expect("fixture paths are UTF-8");
    prepare(&["build", "--board", board]);
    prepare(&["package", "--system", config]);

    let log_dir = workspace_root().join("target/run-tests");
    std::fs::create_dir_all(&log_dir).unwrap();
    let log_name = config.replace('/', "-");
    let stdout_log = log_dir.join(format!("{log_name}.stdout"));
    let stderr_log = log_dir.join(format!("{log_name}.stderr"));
    let mut command = tessera(&["run", "--system", config]);
    command
        .stdout(std::fs::File::create(&stdout_log).unwrap())
        .stderr(std::fs::File::create(&stderr_log).unwrap())
        // Its own process group, so that a hung run can be ended along
        // with the QEMU it started.
        .process_group(0);
    let started = Instant::now();
    let mut child = command.spawn().expect("the tessera binary runs");
    let status = wait_at_most(&mut child, BOOT_LIMIT);
    let elapsed = started.elapsed();
    let read = |path: &Path| {
        let mut text = String::new();
        let _ = std::fs::File::open(path).and_then(|mut file| file.read_to_string(&mut text));
        text
    };
    let stdout = read(&stdout_log);
    let stderr = read(&stderr_log);
    let Some(status) = status else {
        panic!(
            "tessera run --system {config} did not return within {}s\n\
             --- stdout\n{stdout}\n--- stderr\n{stderr}",
            BOOT_LIMIT.as_secs()
        );
    };
    Run {
        status,
        stdout,
        stderr,
        elapsed,
    }
}

/// The child's status, or None if it was still running at `limit` (it is
/// then killed, with its whole process group).
fn wait_at_most(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let started = Instant::now();
    while started.elapsed() < limit {
        if let Some(status) = child.try_wait().expect("waiting for tessera") {
            return Some(status);
        }
        thread::sleep(Duration::from_millis(50));
    }
    let group = format!("-{}", child.id());
    let _ = Command::new("kill")
        .args(["-s", "KILL", "--", &group])
        .status();
    let _ = child.kill();
    let _ = child.wait();
    None
}

fn assert_returned_with(run: &Run, status: i32, verdict: &str) {
    let context = format!("--- stdout\n{}\n--- stderr\n{}", run.stdout, run.stderr);
    assert_eq!(run.status.code(), Some(status), "{context}");
    let verdict_line = format!("tessera: power off, status {verdict}");
    assert!(
        run.stdout
            .lines()
            .any(|line| line.trim_end_matches('\r') == verdict_line),
        "no `{verdict_line}` line\n{context}"
    );
    // Builds were done before; what is left is the boot itself.
    assert!(
        run.elapsed < Duration::from_secs(30),
        "took {:.1}s\n{context}",
        run.elapsed.as_secs_f64()
    );
    // The tool's own lines and the builds' output do not mix into the
    // console: no cargo progress lines anywhere.
    for line in run.stdout.lines().chain(run.stderr.lines()) {
        let line = line.trim_start();
        assert!(
            !line.starts_with("Compiling ") && !line.starts_with("Finished "),
            "cargo's output leaked: {line}\n{context}"
        );
    }
}

#[test]
fn a_clean_system_on_virt_returns_0() {
    let run = run_system(&config("virt/clean.toml"), "virt");
    assert_returned_with(&run, 0, "0");
    assert!(run.stdout.contains("[hello] Hello from a Tessera guest"));
}

#[test]
fn a_failing_system_on_virt_returns_1() {
    let run = run_system(&config("virt/failing.toml"), "virt");
    assert_returned_with(&run, 1, "1");
    assert!(
        run.stdout
            .contains("tessera: vm broken: stopped after a fault it could not take (failure)")
    );
    assert!(
        run.stderr
            .contains("tessera: the system powered off with status 1; QEMU was stopped"),
        "{}",
        run.stderr
    );
}

#[test]
fn a_clean_system_on_raspi4b_returns_0() {
    let run = run_system(&config("rpi4/clean.toml"), "rpi4");
    assert_returned_with(&run, 0, "0");
    assert!(run.stdout.contains("[hello] Hello from a Tessera guest"));
    // The Pi cannot power off: the tool stopped QEMU after the verdict.
    assert!(
        run.stderr
            .contains("tessera: the system powered off with status 0; QEMU was stopped"),
        "{}",
        run.stderr
    );
}

#[test]
fn a_failing_system_on_raspi4b_returns_1() {
    let run = run_system(&config("rpi4/failing.toml"), "rpi4");
    assert_returned_with(&run, 1, "1");
}

#[test]
fn configurations_with_one_file_name_in_two_folders_get_two_packages() {
    let _one = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let virt = prepare(&[
        "package",
        "--system",
        "tools/tests/fixtures/run/virt/clean.toml",
    ]);
    let rpi4 = prepare(&[
        "package",
        "--system",
        "tools/tests/fixtures/run/rpi4/clean.toml",
    ]);
    assert_eq!(
        virt,
        "target/packages/tools/tests/fixtures/run/virt/clean.cpio"
    );
    assert_eq!(
        rpi4,
        "target/packages/tools/tests/fixtures/run/rpi4/clean.cpio"
    );
    let root = workspace_root();
    let virt = std::fs::read(root.join(virt)).unwrap();
    let rpi4 = std::fs::read(root.join(rpi4)).unwrap();
    assert_ne!(virt, rpi4, "each package is its own system's");
}

#[test]
fn run_refuses_more_cpus_than_check_allows() {
    let output = tessera(&["run", "--machine", "virt-gicv3", "--cpus", "9"])
        .output()
        .expect("the tessera binary runs");
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&output.stderr),
        "tessera: error: --cpus: qemu-virt (the board of virt-gicv3) has 1 to 8 CPUs, not 9\n"
    );
}
