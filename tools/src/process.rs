//! Running a program with a deadline, its output captured to a file.

use std::fmt;
use std::fs::File;
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// How a run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    Exited(i32),
    /// Killed by a signal that we did not send.
    Signalled(i32),
    /// Still running at the deadline, so we killed it.
    TimedOut(Duration),
    /// Its output showed it would do nothing more (a halted machine), so
    /// we killed it.
    Stopped,
}

impl Ending {
    pub fn from_status(status: ExitStatus) -> Self {
        match (status.code(), status.signal()) {
            (Some(code), _) => Ending::Exited(code),
            (None, Some(signal)) => Ending::Signalled(signal),
            // Unix reports one or the other.
            (None, None) => Ending::Exited(-1),
        }
    }

    /// The status a shell would report for this ending.
    pub fn shell_status(self) -> i32 {
        match self {
            Ending::Exited(code) => code,
            Ending::Signalled(signal) => 128 + signal,
            Ending::TimedOut(_) => 124,
            Ending::Stopped => 125,
        }
    }
}

impl fmt::Display for Ending {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ending::Exited(code) => write!(f, "exit status {code}"),
            Ending::Signalled(signal) => write!(f, "killed by signal {signal}"),
            Ending::TimedOut(limit) => write!(f, "timed out after {}s", limit.as_secs()),
            Ending::Stopped => write!(f, "stopped by the tool once the output showed a halt"),
        }
    }
}

#[derive(Debug)]
pub struct Finished {
    pub ending: Ending,
    pub elapsed: Duration,
}

/// How often a running child is checked; short enough not to add visible
/// time to a scenario, long enough to cost nothing.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Runs `command` with stdin from /dev/null and stdout and stderr both
/// written to `log` (through one file description, so the two streams
/// interleave as they were written). At `timeout` the child is killed with
/// SIGKILL, which ends the whole process, all its threads included.
///
/// The child stays in our process group on purpose: Ctrl-C at the terminal
/// then stops it along with us instead of leaving it running.
pub fn run_logged(command: &mut Command, log: &Path, timeout: Duration) -> io::Result<Finished> {
    run_logged_until(command, log, timeout, |_| false)
}

/// [`run_logged`], and the child is also killed (ending
/// [`Ending::Stopped`]) as soon as a line of its output satisfies
/// `halted`: for a machine that stops without ending QEMU.
pub fn run_logged_until(
    command: &mut Command,
    log: &Path,
    timeout: Duration,
    halted: impl Fn(&str) -> bool,
) -> io::Result<Finished> {
    let stdout = File::create(log)?;
    let stderr = stdout.try_clone()?;
    command.stdin(Stdio::null()).stdout(stdout).stderr(stderr);
    let started = Instant::now();
    let mut child = command.spawn()?;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Finished {
                ending: Ending::from_status(status),
                elapsed: started.elapsed(),
            });
        }
        let ending = if started.elapsed() >= timeout {
            Some(Ending::TimedOut(timeout))
        } else if shows_halt(log, &halted) {
            Some(Ending::Stopped)
        } else {
            None
        };
        if let Some(ending) = ending {
            // It may have exited just now; then kill fails harmlessly and
            // wait reaps it.
            let _ = child.kill();
            child.wait()?;
            return Ok(Finished {
                ending,
                elapsed: started.elapsed(),
            });
        }
        thread::sleep(POLL_INTERVAL);
    }
}

/// Whether a line written to `log` so far satisfies `halted`. Logs are
/// small, so reading the whole file on every poll costs nothing worth
/// saving.
fn shows_halt(log: &Path, halted: &impl Fn(&str) -> bool) -> bool {
    std::fs::read(log).is_ok_and(|bytes| {
        String::from_utf8_lossy(&bytes)
            .lines()
            .any(|line| halted(line.trim_end_matches('\r')))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_log(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("tessera-tools-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join(name)
    }

    #[test]
    fn captures_both_streams_in_order_and_the_exit_status() {
        let log = temp_log("streams.log");
        let finished = run_logged(
            Command::new("sh").args(["-c", "echo one; echo two >&2; echo three; exit 3"]),
            &log,
            Duration::from_secs(10),
        )
        .unwrap();
        assert_eq!(finished.ending, Ending::Exited(3));
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "one\ntwo\nthree\n");
    }

    #[test]
    fn stdin_is_empty() {
        let log = temp_log("stdin.log");
        let finished = run_logged(
            Command::new("sh").args(["-c", "cat; echo done"]),
            &log,
            Duration::from_secs(10),
        )
        .unwrap();
        assert_eq!(finished.ending, Ending::Exited(0));
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "done\n");
    }

    #[test]
    fn a_hung_child_is_killed_at_the_deadline() {
        let log = temp_log("hang.log");
        let finished = run_logged(
            Command::new("sh").args(["-c", "echo started; exec sleep 30"]),
            &log,
            Duration::from_millis(300),
        )
        .unwrap();
        assert_eq!(
            finished.ending,
            Ending::TimedOut(Duration::from_millis(300))
        );
        assert!(finished.elapsed < Duration::from_secs(5));
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "started\n");
    }

    #[test]
    fn a_child_whose_output_shows_a_halt_is_stopped() {
        let log = temp_log("halt.log");
        let finished = run_logged_until(
            Command::new("sh").args(["-c", "echo booting; echo system halted; exec sleep 30"]),
            &log,
            Duration::from_secs(20),
            |line| line == "system halted",
        )
        .unwrap();
        assert_eq!(finished.ending, Ending::Stopped);
        assert!(finished.elapsed < Duration::from_secs(5));
        assert_eq!(
            std::fs::read_to_string(&log).unwrap(),
            "booting\nsystem halted\n"
        );
    }

    #[test]
    fn endings_read_like_the_runner_reports_them() {
        assert_eq!(Ending::Exited(1).to_string(), "exit status 1");
        assert_eq!(Ending::Signalled(9).to_string(), "killed by signal 9");
        assert_eq!(
            Ending::TimedOut(Duration::from_secs(30)).to_string(),
            "timed out after 30s"
        );
        assert_eq!(Ending::Signalled(9).shell_status(), 137);
    }
}
