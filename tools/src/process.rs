//! Running a program with a deadline, its output captured to a file; and
//! running QEMU at the terminal until the hypervisor's verdict.

use std::fmt;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use crate::verdict::VerdictWatcher;

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

/// How long QEMU may take to exit by itself after the verdict line (it
/// does, through semihosting or PSCI SYSTEM_OFF, within milliseconds), so
/// that what the hypervisor prints after it still shows.
const GRACE_AFTER_VERDICT: Duration = Duration::from_millis(300);
/// How long QEMU gets to end after SIGTERM before it is killed.
const TERMINATE_WAIT: Duration = Duration::from_secs(3);

/// How a [`run_until_verdict`] ended.
#[derive(Debug)]
pub struct Watched {
    /// How QEMU ended; [`Ending::Stopped`] when we ended it after the
    /// verdict.
    pub ending: Ending,
    /// The status in the hypervisor's verdict line, if one was printed.
    pub verdict: Option<u32>,
}

/// Runs `command` (QEMU with the console on its stdout) with the terminal
/// as its stdin, copying its stdout to ours as it comes and watching it
/// for the hypervisor's final verdict ([`crate::verdict`]). Once the
/// verdict is seen, QEMU is given [`GRACE_AFTER_VERDICT`] to exit by
/// itself, then ended with SIGTERM, which lets it put the terminal back the
/// way it found it (SIGKILL would leave it raw), and SIGKILL only if that
/// does not work. Its stderr is copied to ours, except QEMU's own notice
/// that it was terminated by the signal we sent.
pub fn run_until_verdict(command: &mut Command) -> io::Result<Watched> {
    command.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = command.spawn()?;
    let (Some(mut stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
        unreachable!("both streams were asked for as pipes");
    };
    let terminating = Arc::new(AtomicBool::new(false));

    let (verdicts, verdict_seen) = mpsc::channel();
    let console = thread::spawn(move || {
        let mut watcher = VerdictWatcher::new();
        let mut buffer = [0; 4096];
        loop {
            let count = match stdout.read(&mut buffer) {
                Ok(0) => break,
                Ok(count) => count,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            };
            let mut out = io::stdout().lock();
            // Our stdout going away must not stop QEMU's being drained.
            let _ = out.write_all(&buffer[..count]).and_then(|()| out.flush());
            if let Some(status) = watcher.feed(&buffer[..count]) {
                let _ = verdicts.send(status);
            }
        }
        watcher.found()
    });
    let quiet = Arc::clone(&terminating);
    let errors = thread::spawn(move || {
        let mut reader = BufReader::new(stderr);
        let mut line = Vec::new();
        while reader
            .read_until(b'\n', &mut line)
            .is_ok_and(|count| count > 0)
        {
            let ours = quiet.load(Ordering::Relaxed)
                && String::from_utf8_lossy(&line).contains("terminating on signal");
            if !ours {
                let _ = io::stderr().write_all(&line);
            }
            line.clear();
        }
    });

    let mut verdict_at: Option<Instant> = None;
    let ending = loop {
        if let Some(status) = child.try_wait()? {
            break Ending::from_status(status);
        }
        if verdict_at.is_none() && verdict_seen.try_recv().is_ok() {
            verdict_at = Some(Instant::now());
        }
        if verdict_at.is_some_and(|at| at.elapsed() >= GRACE_AFTER_VERDICT) {
            terminating.store(true, Ordering::Relaxed);
            terminate(&mut child)?;
            break Ending::Stopped;
        }
        thread::sleep(POLL_INTERVAL);
    };
    // QEMU has gone, so both pipes are at their end: the threads finish
    // once they have passed on the last of the output, which may hold a
    // verdict printed just before QEMU exited by itself.
    let verdict = console.join().unwrap_or(None);
    let _ = errors.join();
    Ok(Watched { ending, verdict })
}

/// Ends `child` with SIGTERM, or SIGKILL if it is still there after
/// [`TERMINATE_WAIT`], and reaps it.
fn terminate(child: &mut Child) -> io::Result<()> {
    // The tool forbids unsafe code, so the signal is sent with kill(1).
    let sent = Command::new("kill")
        .args(["-s", "TERM", &child.id().to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    if sent {
        let asked = Instant::now();
        while asked.elapsed() < TERMINATE_WAIT {
            if child.try_wait()?.is_some() {
                return Ok(());
            }
            thread::sleep(POLL_INTERVAL);
        }
    }
    // It may have exited just now; then kill fails harmlessly.
    let _ = child.kill();
    child.wait().map(|_| ())
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
    fn a_child_is_ended_after_its_verdict_line() {
        let started = Instant::now();
        let watched = run_until_verdict(Command::new("sh").args([
            "-c",
            "echo '[guest] tessera: power off, status 0'; \
             printf 'tessera: power off, status 2\\r\\n'; exec sleep 30",
        ]))
        .unwrap();
        assert_eq!(watched.ending, Ending::Stopped);
        assert_eq!(watched.verdict, Some(2));
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn a_child_that_exits_by_itself_keeps_its_status_and_verdict() {
        let watched = run_until_verdict(
            Command::new("sh").args(["-c", "echo 'tessera: power off, status 5'; exit 5"]),
        )
        .unwrap();
        assert_eq!(watched.ending, Ending::Exited(5));
        assert_eq!(watched.verdict, Some(5));

        let watched =
            run_until_verdict(Command::new("sh").args(["-c", "echo '[g] bye'; exit 3"])).unwrap();
        assert_eq!(watched.ending, Ending::Exited(3));
        assert_eq!(watched.verdict, None);
    }

    #[test]
    fn a_child_that_ignores_sigterm_is_killed() {
        let started = Instant::now();
        let watched = run_until_verdict(Command::new("sh").args([
            "-c",
            "trap '' TERM; echo 'tessera: power off, status 1'; \
             while :; do sleep 1; done",
        ]))
        .unwrap();
        assert_eq!(watched.ending, Ending::Stopped);
        assert_eq!(watched.verdict, Some(1));
        assert!(started.elapsed() < Duration::from_secs(10));
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
