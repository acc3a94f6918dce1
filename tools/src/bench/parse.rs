//! Reading what the bench guests (`guest-sdk/examples/bench*.rs`) printed
//! out of a serial log.
//!
//! The guest's lines start `bench: `; under Tessera the hypervisor puts the
//! VM's tag in front (`[bench] bench: ...`), natively there is none. Two
//! kinds of line carry figures:
//!
//! ```text
//! bench: boot_counter=1257082                       a value
//! bench: mmio.vuart_read min=358 median=358 max=358  a summary of samples
//! ```

use crate::machine::BENCH_COUNTER_HZ;

/// The guest's line prefix, after the tag if there is one.
const GUEST_PREFIX: &str = "bench: ";

/// The smallest, middle and largest of a set of samples.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stats {
    pub min: u64,
    pub median: u64,
    pub max: u64,
}

/// Everything one run of the bench guest reported.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestReport {
    /// The physical counter at the start of the guest's `main`: counter
    /// ticks (instructions) since power-on.
    pub boot_counter: u64,
    /// One trapped (under Tessera) or device (natively) read of UARTFR,
    /// the calibration already taken off.
    pub vuart_read: Stats,
    /// The timing sequence with nothing in it, as the guest measured it.
    pub calibration: Stats,
}

/// What the `bench-interrupts` guest measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InterruptReport {
    /// One trapped (under Tessera) or device (natively) read of
    /// GICD_TYPER, the calibration already taken off.
    pub gicd_read: Stats,
    /// Virtual-timer deadline to the guest's IRQ vector.
    pub vtimer_latency: Stats,
    /// The timing sequence with nothing in it, as the guest measured it.
    pub calibration: Stats,
}

/// What the two `bench-shmem` guests measured: the sender reports, the
/// receiver only says it finished.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShmemReport {
    /// Sender's counter before its notify to the receiver's handler entry.
    pub notify_oneway: Stats,
    /// Sender's counter before its notify to its own handler entry for the
    /// reply.
    pub pingpong_roundtrip: Stats,
    /// Guest exits of both sides per round trip: only from an image that
    /// counts them (the hypervisor's `exit-counting` feature), `None`
    /// otherwise.
    pub exits_per_roundtrip: Option<Stats>,
}

/// Reads the guest's report from `log`. `tag` is the VM name the
/// hypervisor tags its lines with, `None` for a native run.
///
/// # Errors
/// The first thing wrong, in words: a `FAIL` line, a missing, repeated or
/// malformed line, a counter not at 1 GHz, no closing `bench: done` line.
pub fn parse_report(log: &str, tag: Option<&str>) -> Result<GuestReport, String> {
    let lines = checked_lines(log, tag)?;
    let report = GuestReport {
        boot_counter: value(&lines, "boot_counter")?,
        vuart_read: summary(&lines, "mmio.vuart_read")?,
        calibration: summary(&lines, "calibration")?,
    };
    finished(&lines)?;
    Ok(report)
}

/// Reads the `bench-interrupts` guest's report from `log`, as
/// [`parse_report`] reads the `bench` guest's.
///
/// # Errors
/// As [`parse_report`].
pub fn parse_interrupt_report(log: &str, tag: Option<&str>) -> Result<InterruptReport, String> {
    let lines = checked_lines(log, tag)?;
    let report = InterruptReport {
        gicd_read: summary(&lines, "mmio.gicd_read")?,
        vtimer_latency: summary(&lines, "vtimer.irq_latency")?,
        calibration: summary(&lines, "calibration")?,
    };
    finished(&lines)?;
    Ok(report)
}

/// Reads the `bench-shmem` guests' report from a hosted `log`: the
/// figures from the lines tagged `sender`, and from the lines tagged
/// `receiver` only that it did not fail and finished.
///
/// # Errors
/// As [`parse_report`], for either guest.
pub fn parse_shmem_report(log: &str, sender: &str, receiver: &str) -> Result<ShmemReport, String> {
    let lines = checked_lines(log, Some(sender))?;
    let report = ShmemReport {
        notify_oneway: summary(&lines, "shmem.notify_oneway")?,
        pingpong_roundtrip: summary(&lines, "shmem.pingpong_roundtrip")?,
        exits_per_roundtrip: optional_summary(&lines, "shmem.exits_per_roundtrip")?,
    };
    finished(&lines)?;
    let receiver_lines = guest_lines(log, Some(receiver));
    no_failure(&receiver_lines)
        .and_then(|()| finished(&receiver_lines))
        .map_err(|reason| format!("the receiver ({receiver}): {reason}"))?;
    Ok(report)
}

/// The guest's lines, once they show no failure and a 1 GHz counter.
fn checked_lines<'a>(log: &'a str, tag: Option<&str>) -> Result<Vec<&'a str>, String> {
    let lines = guest_lines(log, tag);
    no_failure(&lines)?;
    let counter_hz = value(&lines, "cntfrq")?;
    if counter_hz != BENCH_COUNTER_HZ {
        return Err(format!(
            "the generic timer runs at {counter_hz} Hz, not {BENCH_COUNTER_HZ}: \
             QEMU did not take the `cntfrq` CPU property, so counter ticks are not instructions"
        ));
    }
    Ok(lines)
}

fn no_failure(lines: &[&str]) -> Result<(), String> {
    match lines.iter().find(|line| line.contains("FAIL")) {
        Some(failure) => Err(format!("the guest failed: `{GUEST_PREFIX}{failure}`")),
        None => Ok(()),
    }
}

fn finished(lines: &[&str]) -> Result<(), String> {
    if lines.contains(&"done") {
        Ok(())
    } else {
        Err(format!(
            "no `{GUEST_PREFIX}done` line: the guest did not finish"
        ))
    }
}

/// The guest's lines in `log`, tag and `bench: ` taken off, trailing `\r`
/// too. Lines of anyone else (the hypervisor, QEMU) are left out.
fn guest_lines<'a>(log: &'a str, tag: Option<&str>) -> Vec<&'a str> {
    log.lines()
        .map(|line| line.trim_end_matches('\r'))
        .filter_map(|line| match tag {
            None => Some(line),
            Some(tag) => line
                .strip_prefix('[')
                .and_then(|rest| rest.strip_prefix(tag))
                .and_then(|rest| rest.strip_prefix("] ")),
        })
        .filter_map(|line| line.strip_prefix(GUEST_PREFIX))
        .collect()
}

/// The rest of the one line that starts with `key` followed by
/// `separator`.
fn the_line<'a>(lines: &[&'a str], key: &str, separator: char) -> Result<&'a str, String> {
    let mut found = lines.iter().filter_map(|line| {
        line.strip_prefix(key)
            .and_then(|rest| rest.strip_prefix(separator))
    });
    let example = if separator == '=' {
        format!("{GUEST_PREFIX}{key}=N")
    } else {
        format!("{GUEST_PREFIX}{key} min=N median=N max=N")
    };
    match (found.next(), found.next()) {
        (Some(rest), None) => Ok(rest),
        (None, _) => Err(format!("no `{example}` line")),
        (Some(_), Some(_)) => Err(format!(
            "more than one `{example}` line (did the guest restart?)"
        )),
    }
}

fn number(text: &str, line: &str) -> Result<u64, String> {
    text.parse()
        .map_err(|_| format!("`{GUEST_PREFIX}{line}`: `{text}` is not a whole number"))
}

/// `key=N`.
fn value(lines: &[&str], key: &str) -> Result<u64, String> {
    let text = the_line(lines, key, '=')?;
    number(text, &format!("{key}={text}"))
}

/// `name min=N median=N max=N`, in that order.
fn summary(lines: &[&str], name: &str) -> Result<Stats, String> {
    let rest = the_line(lines, name, ' ')?;
    let line = format!("{name} {rest}");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let [min, median, max] = fields[..] else {
        return Err(format!(
            "`{GUEST_PREFIX}{line}`: expected `min=N median=N max=N`"
        ));
    };
    let field = |text: &str, key: &str| match text.strip_prefix(key) {
        Some(digits) => number(digits, &line),
        None => Err(format!(
            "`{GUEST_PREFIX}{line}`: expected `min=N median=N max=N`"
        )),
    };
    let stats = Stats {
        min: field(min, "min=")?,
        median: field(median, "median=")?,
        max: field(max, "max=")?,
    };
    if stats.min > stats.median || stats.median > stats.max {
        return Err(format!(
            "`{GUEST_PREFIX}{line}`: not in order min <= median <= max"
        ));
    }
    Ok(stats)
}

/// As [`summary`], but `None` when there is no line for `name` at all.
fn optional_summary(lines: &[&str], name: &str) -> Result<Option<Stats>, String> {
    let present = lines.iter().any(|line| {
        line.strip_prefix(name)
            .is_some_and(|rest| rest.starts_with(' '))
    });
    if present {
        summary(lines, name).map(Some)
    } else {
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NATIVE: &str = "\
bench: boot_counter=32877\r
bench: cntfrq=1000000000\r
bench: calibration min=2 median=2 max=2\r
bench: mmio.vuart_read min=1 median=1 max=1\r
bench: done\r
qemu-system-aarch64: warning: icount sleep disabled and no active timers
";

    const HOSTED: &str = "\
Tessera 0.1.0 (EL2 hypervisor) on qemu-virt, GICv3, 1 CPUs
tessera: 1 VM(s) built; starting them
[bench] bench: boot_counter=1257082
[bench] bench: cntfrq=1000000000
[other] bench: boot_counter=5
[bench] bench: calibration min=2 median=2 max=9
[bench] bench: mmio.vuart_read min=358 median=360 max=1200
[bench] bench: done
tessera: vm bench: stopped cleanly
";

    #[test]
    fn the_interrupt_guests_report() {
        let log = "\
[bench] bench: cntfrq=1000000000
[bench] bench: calibration min=2 median=2 max=2
[bench] bench: mmio.gicd_read min=140 median=141 max=150
[bench] bench: vtimer.irq_latency min=90 median=95 max=99
[bench] bench: done
";
        let report = parse_interrupt_report(log, Some("bench")).unwrap();
        assert_eq!(report.gicd_read.median, 141);
        assert_eq!(
            report.vtimer_latency,
            Stats {
                min: 90,
                median: 95,
                max: 99
            }
        );
        let unfinished = log.replace("[bench] bench: done\n", "");
        assert!(
            parse_interrupt_report(&unfinished, Some("bench"))
                .unwrap_err()
                .contains("did not finish")
        );
        let no_timer = log.replace("vtimer.irq_latency", "other");
        assert!(
            parse_interrupt_report(&no_timer, Some("bench"))
                .unwrap_err()
                .contains("vtimer.irq_latency")
        );
    }

    const SHMEM: &str = "\
Tessera 0.1.0 (EL2 hypervisor) on qemu-virt, GICv3, 3 CPUs
[sender] bench: cntfrq=1000000000
[sender] bench: shmem.notify_oneway min=380 median=390 max=520
[receiver] bench: shmem.notify_oneway min=1 median=1 max=1
[sender] bench: shmem.pingpong_roundtrip min=1200 median=1250 max=1400
[sender] bench: done
[receiver] bench: done
tessera: vm sender: stopped cleanly
";

    #[test]
    fn the_shmem_guests_report_without_exit_counts() {
        let report = parse_shmem_report(SHMEM, "sender", "receiver").unwrap();
        assert_eq!(
            report,
            ShmemReport {
                notify_oneway: Stats {
                    min: 380,
                    median: 390,
                    max: 520
                },
                pingpong_roundtrip: Stats {
                    min: 1200,
                    median: 1250,
                    max: 1400
                },
                exits_per_roundtrip: None,
            }
        );
    }

    #[test]
    fn the_shmem_guests_report_with_exit_counts() {
        let log = SHMEM.replace(
            "[sender] bench: done",
            "[sender] bench: shmem.exits_per_roundtrip min=6 median=6 max=8\n[sender] bench: done",
        );
        let report = parse_shmem_report(&log, "sender", "receiver").unwrap();
        assert_eq!(
            report.exits_per_roundtrip,
            Some(Stats {
                min: 6,
                median: 6,
                max: 8
            })
        );
        // A line that is there must be well formed.
        let bad = log.replace("max=8", "max=x");
        assert_eq!(
            parse_shmem_report(&bad, "sender", "receiver").unwrap_err(),
            "`bench: shmem.exits_per_roundtrip min=6 median=6 max=x`: `x` is not a whole number"
        );
        // A figure whose name only starts the same is not it.
        let other = SHMEM.replace(
            "[sender] bench: done",
            "[sender] bench: shmem.exits_per_roundtrip_other min=1 median=1 max=1\n[sender] bench: done",
        );
        assert_eq!(
            parse_shmem_report(&other, "sender", "receiver")
                .unwrap()
                .exits_per_roundtrip,
            None
        );
    }

    #[test]
    fn the_shmem_receiver_must_finish_without_failing() {
        let unfinished = SHMEM.replace("[receiver] bench: done\n", "");
        assert_eq!(
            parse_shmem_report(&unfinished, "sender", "receiver").unwrap_err(),
            "the receiver (receiver): no `bench: done` line: the guest did not finish"
        );
        let failed = SHMEM.replace(
            "[receiver] bench: done",
            "[receiver] bench: FAIL: vector 40: no GIC",
        );
        assert_eq!(
            parse_shmem_report(&failed, "sender", "receiver").unwrap_err(),
            "the receiver (receiver): the guest failed: `bench: FAIL: vector 40: no GIC`"
        );
        let no_roundtrip = SHMEM.replace("pingpong_roundtrip", "other");
        assert_eq!(
            parse_shmem_report(&no_roundtrip, "sender", "receiver").unwrap_err(),
            "no `bench: shmem.pingpong_roundtrip min=N median=N max=N` line"
        );
        // The sender's lines are the ones tagged `sender`.
        assert_eq!(
            parse_shmem_report(SHMEM, "receiver", "sender").unwrap_err(),
            "no `bench: cntfrq=N` line"
        );
    }

    #[test]
    fn native_output_without_tags() {
        let report = parse_report(NATIVE, None).unwrap();
        assert_eq!(
            report,
            GuestReport {
                boot_counter: 32877,
                vuart_read: Stats {
                    min: 1,
                    median: 1,
                    max: 1
                },
                calibration: Stats {
                    min: 2,
                    median: 2,
                    max: 2
                },
            }
        );
    }

    #[test]
    fn hosted_output_takes_only_the_vms_tagged_lines() {
        let report = parse_report(HOSTED, Some("bench")).unwrap();
        assert_eq!(report.boot_counter, 1_257_082);
        assert_eq!(
            report.vuart_read,
            Stats {
                min: 358,
                median: 360,
                max: 1200
            }
        );
        // Untagged lines are not the VM's.
        assert_eq!(
            parse_report(NATIVE, Some("bench")).unwrap_err(),
            "no `bench: cntfrq=N` line"
        );
    }

    #[test]
    fn missing_lines_are_named() {
        let without = |needle: &str| {
            let log: String = NATIVE
                .lines()
                .filter(|line| !line.contains(needle))
                .map(|line| format!("{line}\n"))
                .collect();
            parse_report(&log, None).unwrap_err()
        };
        assert_eq!(without("boot_counter"), "no `bench: boot_counter=N` line");
        assert_eq!(
            without("vuart_read"),
            "no `bench: mmio.vuart_read min=N median=N max=N` line"
        );
        assert_eq!(
            without("done"),
            "no `bench: done` line: the guest did not finish"
        );
        assert_eq!(
            parse_report("", None).unwrap_err(),
            "no `bench: cntfrq=N` line"
        );
    }

    #[test]
    fn failures_and_bad_lines_are_reported() {
        let failed = format!("{NATIVE}bench: FAIL: no samples\n");
        assert_eq!(
            parse_report(&failed, None).unwrap_err(),
            "the guest failed: `bench: FAIL: no samples`"
        );
        let twice = format!("bench: boot_counter=1\n{NATIVE}");
        assert_eq!(
            parse_report(&twice, None).unwrap_err(),
            "more than one `bench: boot_counter=N` line (did the guest restart?)"
        );
        let bad_number = NATIVE.replace("boot_counter=32877", "boot_counter=3x");
        assert_eq!(
            parse_report(&bad_number, None).unwrap_err(),
            "`bench: boot_counter=3x`: `3x` is not a whole number"
        );
        let bad_fields = NATIVE.replace("median=1 max=1", "max=1");
        assert_eq!(
            parse_report(&bad_fields, None).unwrap_err(),
            "`bench: mmio.vuart_read min=1 max=1`: expected `min=N median=N max=N`"
        );
        let disordered = NATIVE.replace("min=1 median=1", "min=5 median=1");
        assert!(
            parse_report(&disordered, None)
                .unwrap_err()
                .ends_with("not in order min <= median <= max")
        );
    }

    #[test]
    fn a_counter_not_at_1_ghz_is_refused() {
        let slow = NATIVE.replace("cntfrq=1000000000", "cntfrq=62500000");
        let err = parse_report(&slow, None).unwrap_err();
        assert!(
            err.starts_with("the generic timer runs at 62500000 Hz, not 1000000000"),
            "{err}"
        );
    }
}
