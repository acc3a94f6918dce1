//! What the tool knows about each QEMU machine, kept in one table
//! ([`PRESETS`]), and how a QEMU command line is put together from it.

use std::path::Path;

use serde::Deserialize;

use crate::firmware_dt;

/// The QEMU binary every machine runs under.
pub const QEMU_PROGRAM: &str = "qemu-system-aarch64";

/// A board the hypervisor is built for; selects the `board-<name>` feature.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, clap::ValueEnum)]
pub enum Board {
    Virt,
    Rpi4,
}

impl Board {
    pub fn name(self) -> &'static str {
        match self {
            Board::Virt => "virt",
            Board::Rpi4 => "rpi4",
        }
    }

    /// The hypervisor crate's cargo feature that selects this board.
    pub fn cargo_feature(self) -> String {
        format!("board-{}", self.name())
    }
}

/// A QEMU machine a scenario or `tessera run` can boot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Machine {
    VirtGicv3,
    VirtGicv2,
    Raspi4b,
    /// `virt` without the virtualization extensions: the image is entered
    /// at EL1. For proving that the hypervisor refuses to start there, and
    /// for the native baselines of the benchmarks (a guest run without
    /// Tessera).
    VirtEl1,
}

/// How many CPUs and how much memory a machine can be given.
#[derive(Clone, Copy, Debug)]
pub enum Topology {
    /// QEMU fixes both, so neither `-smp` nor `-m` is passed.
    Fixed { cpus: u32, memory: &'static str },
    /// `-smp` and `-m` are passed; `max_cpus` is what the interrupt
    /// controller can address.
    Configurable {
        max_cpus: u32,
        default_memory: &'static str,
    },
}

/// Builds the device tree a board's firmware would pass to the image it
/// starts.
pub type FirmwareTreeBuilder = fn() -> Result<Vec<u8>, vm_fdt::Error>;

/// One row of the machine table.
#[derive(Debug)]
pub struct MachinePreset {
    pub machine: Machine,
    pub name: &'static str,
    pub board: Board,
    /// The value of QEMU's `-M`.
    pub qemu_machine: &'static str,
    /// The value of QEMU's `-cpu`, where the machine lets us choose.
    pub cpu_model: Option<&'static str>,
    pub topology: Topology,
    /// Arguments every run of this machine needs besides the common ones.
    pub extra_args: &'static [&'static str],
    /// For a machine QEMU starts without a device tree of its own where
    /// the real board's firmware passes one: that tree. It must be given
    /// (`-dtb`) whenever an initrd is, because QEMU tells the image where
    /// the initrd is only inside a device tree. Written by
    /// [`firmware_dt::FirmwareTrees`].
    pub firmware_tree: Option<FirmwareTreeBuilder>,
}

/// Arguments every machine gets: no display or monitor, the first UART on
/// our stdio so it can be logged and matched.
const COMMON_ARGS: &[&str] = &["-display", "none", "-monitor", "none", "-serial", "stdio"];

pub const PRESETS: &[MachinePreset] = &[
    MachinePreset {
        machine: Machine::VirtGicv3,
        name: "virt-gicv3",
        board: Board::Virt,
        qemu_machine: "virt,virtualization=on,gic-version=3",
        cpu_model: Some("cortex-a72"),
        // QEMU's virt addresses up to 512 CPUs through GICv3 redistributors.
        topology: Topology::Configurable {
            max_cpus: 512,
            default_memory: "1G",
        },
        // Without a NIC QEMU does not look for the iPXE option ROM, which
        // Debian packages separately.
        extra_args: &["-nic", "none"],
        firmware_tree: None,
    },
    MachinePreset {
        machine: Machine::VirtGicv2,
        name: "virt-gicv2",
        board: Board::Virt,
        qemu_machine: "virt,virtualization=on,gic-version=2",
        cpu_model: Some("cortex-a72"),
        // GICv2 has 8 CPU interfaces.
        topology: Topology::Configurable {
            max_cpus: 8,
            default_memory: "1G",
        },
        extra_args: &["-nic", "none"],
        firmware_tree: None,
    },
    MachinePreset {
        machine: Machine::Raspi4b,
        name: "raspi4b",
        board: Board::Rpi4,
        qemu_machine: "raspi4b",
        cpu_model: None,
        topology: Topology::Fixed {
            cpus: 4,
            memory: "2G",
        },
        extra_args: &[],
        firmware_tree: Some(firmware_dt::raspi4b_dtb),
    },
    MachinePreset {
        machine: Machine::VirtEl1,
        name: "virt-el1",
        board: Board::Virt,
        qemu_machine: "virt,gic-version=3",
        cpu_model: Some("cortex-a72"),
        topology: Topology::Configurable {
            max_cpus: 512,
            default_memory: "1G",
        },
        extra_args: &["-nic", "none"],
        firmware_tree: None,
    },
];

impl Machine {
    pub fn preset(self) -> &'static MachinePreset {
        PRESETS
            .iter()
            .find(|preset| preset.machine == self)
            .expect("every machine has a row in PRESETS")
    }

    pub fn name(self) -> &'static str {
        self.preset().name
    }

    pub fn board(self) -> Board {
        self.preset().board
    }

    /// Checks a CPU count and an optional memory size against what the
    /// machine accepts; the error says why, in words a user can act on.
    pub fn check_topology(self, cpus: u32, memory: Option<&str>) -> Result<(), String> {
        if let Some(memory) = memory {
            check_memory_syntax(memory)?;
        }
        match self.preset().topology {
            Topology::Fixed {
                cpus: fixed_cpus,
                memory: fixed_memory,
            } => {
                if cpus != fixed_cpus {
                    return Err(format!(
                        "{} always has {fixed_cpus} CPUs; {cpus} were asked for",
                        self.name()
                    ));
                }
                if let Some(memory) = memory
                    && memory != fixed_memory
                {
                    return Err(format!(
                        "{} always has {fixed_memory} of memory; {memory} was asked for",
                        self.name()
                    ));
                }
            }
            Topology::Configurable { max_cpus, .. } => {
                if cpus == 0 || cpus > max_cpus {
                    return Err(format!(
                        "{} takes 1 to {max_cpus} CPUs; {cpus} were asked for",
                        self.name()
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Memory sizes are written the way QEMU's `-m` takes them, limited to the
/// two suffixes anyone uses here so typos are caught before QEMU starts.
fn check_memory_syntax(memory: &str) -> Result<(), String> {
    let (digits, suffix) = memory.split_at(memory.len().saturating_sub(1));
    let digits_ok = !digits.is_empty()
        && !digits.starts_with('0')
        && digits.bytes().all(|byte| byte.is_ascii_digit());
    if digits_ok && (suffix == "M" || suffix == "G") {
        Ok(())
    } else {
        Err(format!(
            "memory size `{memory}` is not a number followed by M or G (e.g. 1G, 512M)"
        ))
    }
}

/// How time runs in the emulated machine.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Clock {
    /// QEMU's default: the counter follows the host's clock.
    #[default]
    Host,
    /// For benchmarks: `-icount` with [`ICOUNT_OPTIONS`] and the generic
    /// timer at [`BENCH_COUNTER_HZ`], so that one emulated instruction is
    /// one counter tick and every run counts the same. Needs a machine
    /// whose CPU model can be chosen.
    Instructions,
}

/// The counter frequency under [`Clock::Instructions`]: 1 GHz, one tick per
/// nanosecond of virtual time, which `shift=0` makes one instruction.
pub const BENCH_COUNTER_HZ: u64 = 1_000_000_000;
/// QEMU's `-icount` value under [`Clock::Instructions`]: one instruction
/// per virtual nanosecond, virtual time not held back to host time, and
/// idle time skipped instead of slept through.
pub const ICOUNT_OPTIONS: &str = "shift=0,align=off,sleep=off";

/// Everything that varies between QEMU runs.
#[derive(Debug)]
pub struct QemuRequest<'a> {
    pub machine: Machine,
    pub cpus: u32,
    pub memory: Option<&'a str>,
    /// Lets the hypervisor end QEMU with an exit status of its choosing.
    pub semihosting: bool,
    pub image: &'a Path,
    /// A system package, handed to the hypervisor as its initrd.
    pub initrd: Option<&'a Path>,
    /// A device tree for the image (`-dtb`). Required with an initrd on a
    /// machine with a [`MachinePreset::firmware_tree`]; see
    /// [`firmware_dt::FirmwareTrees`].
    pub device_tree: Option<&'a Path>,
    /// Passed through unchanged after everything else.
    pub extra_args: &'a [String],
    pub clock: Clock,
    /// Another CPU model than the machine's (`-cpu`), where the machine
    /// lets one choose: a scenario that needs a CPU feature the default
    /// lacks (FEAT_LSE atomics on `virt`, say).
    pub cpu_model: Option<&'a str>,
}

/// The arguments to [`QEMU_PROGRAM`] for a request, after checking the
/// request against the machine's limits.
pub fn qemu_args(request: &QemuRequest<'_>) -> Result<Vec<String>, String> {
    let machine = request.machine;
    machine.check_topology(request.cpus, request.memory)?;
    let preset = machine.preset();

    let mut args: Vec<String> = vec!["-M".into(), preset.qemu_machine.into()];
    let cpu_model = match (preset.cpu_model, request.cpu_model) {
        (Some(_), Some(chosen)) => Some(chosen),
        (None, Some(chosen)) => {
            return Err(format!(
                "{} has a fixed CPU model; it cannot run {chosen}",
                machine.name()
            ));
        }
        (preset_model, None) => preset_model,
    };
    match (cpu_model, request.clock) {
        (Some(cpu_model), Clock::Host) => args.extend(["-cpu".into(), cpu_model.into()]),
        (Some(cpu_model), Clock::Instructions) => args.extend([
            "-cpu".into(),
            format!("{cpu_model},cntfrq={BENCH_COUNTER_HZ}"),
        ]),
        (None, Clock::Host) => {}
        (None, Clock::Instructions) => {
            return Err(format!(
                "{} has a fixed CPU model, so its counter cannot be set to {BENCH_COUNTER_HZ} Hz \
                 for counting instructions",
                machine.name()
            ));
        }
    }
    if let Topology::Configurable { default_memory, .. } = preset.topology {
        let memory = request.memory.unwrap_or(default_memory);
        args.extend([
            "-smp".into(),
            request.cpus.to_string(),
            "-m".into(),
            memory.into(),
        ]);
    }
    if request.clock == Clock::Instructions {
        args.extend(["-icount".into(), ICOUNT_OPTIONS.into()]);
    }
    args.extend(COMMON_ARGS.iter().map(|arg| arg.to_string()));
    args.extend(preset.extra_args.iter().map(|arg| arg.to_string()));
    args.extend(["-kernel".into(), request.image.display().to_string()]);
    if let Some(initrd) = request.initrd {
        if preset.firmware_tree.is_some() && request.device_tree.is_none() {
            return Err(format!(
                "{} needs a device tree (-dtb) beside the initrd {}: QEMU tells the image \
                 where its initrd is only inside one",
                machine.name(),
                initrd.display()
            ));
        }
        args.extend(["-initrd".into(), initrd.display().to_string()]);
    }
    if let Some(device_tree) = request.device_tree {
        args.extend(["-dtb".into(), device_tree.display().to_string()]);
    }
    if request.semihosting {
        args.push("-semihosting".into());
    }
    args.extend(request.extra_args.iter().cloned());
    Ok(args)
}

/// A command line as a user would type it, for messages.
pub fn shell_words(program: &str, args: &[String]) -> String {
    let quote = |word: &str| {
        let plain = !word.is_empty()
            && word
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./,=:+@%".contains(c));
        if plain {
            word.to_string()
        } else {
            format!("'{}'", word.replace('\'', r"'\''"))
        }
    };
    std::iter::once(program)
        .chain(args.iter().map(String::as_str))
        .map(quote)
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(machine: Machine, cpus: u32) -> QemuRequest<'static> {
        QemuRequest {
            machine,
            cpus,
            memory: None,
            semihosting: false,
            image: Path::new("target/images/virt/tessera.bin"),
            initrd: None,
            device_tree: None,
            extra_args: &[],
            clock: Clock::Host,
            cpu_model: None,
        }
    }

    #[test]
    fn every_machine_has_exactly_one_preset() {
        for machine in [Machine::VirtGicv3, Machine::VirtGicv2, Machine::Raspi4b] {
            let rows = PRESETS.iter().filter(|p| p.machine == machine).count();
            assert_eq!(rows, 1, "{machine:?}");
        }
    }

    #[test]
    fn virt_gicv3_command_line() {
        let args = qemu_args(&request(Machine::VirtGicv3, 4)).unwrap();
        assert_eq!(
            args.join(" "),
            "-M virt,virtualization=on,gic-version=3 -cpu cortex-a72 -smp 4 -m 1G \
             -display none -monitor none -serial stdio -nic none \
             -kernel target/images/virt/tessera.bin"
        );
    }

    #[test]
    fn a_chosen_cpu_model_replaces_the_machines_where_it_may() {
        let virt = QemuRequest {
            cpu_model: Some("neoverse-n1"),
            ..request(Machine::VirtGicv3, 1)
        };
        let args = qemu_args(&virt).unwrap();
        assert_eq!(args[2..4], ["-cpu", "neoverse-n1"]);
        let pi = QemuRequest {
            cpu_model: Some("neoverse-n1"),
            ..request(Machine::Raspi4b, 4)
        };
        assert!(qemu_args(&pi).unwrap_err().contains("fixed CPU model"));
    }

    #[test]
    fn virt_gicv2_differs_only_in_gic_version() {
        let v3 = qemu_args(&request(Machine::VirtGicv3, 2)).unwrap();
        let v2 = qemu_args(&request(Machine::VirtGicv2, 2)).unwrap();
        assert_eq!(v2[1], "virt,virtualization=on,gic-version=2");
        assert_eq!(v3[2..], v2[2..]);
    }

    #[test]
    fn raspi4b_command_line_has_no_smp_or_memory() {
        let mut req = request(Machine::Raspi4b, 4);
        req.image = Path::new("img.bin");
        let args = qemu_args(&req).unwrap();
        assert_eq!(
            args.join(" "),
            "-M raspi4b -display none -monitor none -serial stdio -kernel img.bin"
        );
    }

    #[test]
    fn raspi4b_with_a_package_gets_the_firmware_device_tree() {
        let req = QemuRequest {
            image: Path::new("img.bin"),
            initrd: Some(Path::new("target/packages/pi.cpio")),
            device_tree: Some(Path::new("target/machines/raspi4b.dtb")),
            ..request(Machine::Raspi4b, 4)
        };
        assert_eq!(
            qemu_args(&req).unwrap().join(" "),
            "-M raspi4b -display none -monitor none -serial stdio -kernel img.bin \
             -initrd target/packages/pi.cpio -dtb target/machines/raspi4b.dtb"
        );
    }

    #[test]
    fn raspi4b_refuses_a_package_without_a_device_tree() {
        let req = QemuRequest {
            initrd: Some(Path::new("target/packages/pi.cpio")),
            ..request(Machine::Raspi4b, 4)
        };
        assert_eq!(
            qemu_args(&req).unwrap_err(),
            "raspi4b needs a device tree (-dtb) beside the initrd target/packages/pi.cpio: \
             QEMU tells the image where its initrd is only inside one"
        );
    }

    #[test]
    fn only_raspi4b_has_a_firmware_device_tree() {
        for preset in PRESETS {
            assert_eq!(
                preset.firmware_tree.is_some(),
                preset.machine == Machine::Raspi4b,
                "{}",
                preset.name
            );
        }
    }

    #[test]
    fn raspi4b_rejects_other_cpu_counts() {
        let err = qemu_args(&request(Machine::Raspi4b, 2)).unwrap_err();
        assert_eq!(err, "raspi4b always has 4 CPUs; 2 were asked for");
    }

    #[test]
    fn raspi4b_accepts_its_own_memory_size_only() {
        assert!(Machine::Raspi4b.check_topology(4, Some("2G")).is_ok());
        let err = Machine::Raspi4b.check_topology(4, Some("1G")).unwrap_err();
        assert!(err.contains("always has 2G"), "{err}");
    }

    #[test]
    fn gicv2_is_limited_to_eight_cpus() {
        assert!(Machine::VirtGicv2.check_topology(8, None).is_ok());
        let err = Machine::VirtGicv2.check_topology(9, None).unwrap_err();
        assert_eq!(err, "virt-gicv2 takes 1 to 8 CPUs; 9 were asked for");
        assert!(Machine::VirtGicv3.check_topology(0, None).is_err());
    }

    #[test]
    fn semihosting_memory_and_extra_args() {
        let extra = vec!["-dtb".to_string(), "board.dtb".to_string()];
        let req = QemuRequest {
            memory: Some("512M"),
            semihosting: true,
            extra_args: &extra,
            ..request(Machine::VirtGicv3, 1)
        };
        let args = qemu_args(&req).unwrap();
        let line = args.join(" ");
        assert!(line.contains("-smp 1 -m 512M"), "{line}");
        assert!(
            line.ends_with("-semihosting -dtb board.dtb"),
            "extra args come last: {line}"
        );
    }

    #[test]
    fn a_package_follows_the_kernel() {
        let req = QemuRequest {
            initrd: Some(Path::new("target/packages/demo.cpio")),
            ..request(Machine::VirtGicv3, 4)
        };
        let line = qemu_args(&req).unwrap().join(" ");
        assert!(
            line.ends_with(
                "-kernel target/images/virt/tessera.bin -initrd target/packages/demo.cpio"
            ),
            "{line}"
        );
    }

    #[test]
    fn instruction_clock_sets_icount_and_a_1_ghz_counter() {
        let native = QemuRequest {
            clock: Clock::Instructions,
            image: Path::new("target/guests/bench.bin"),
            ..request(Machine::VirtEl1, 1)
        };
        assert_eq!(
            qemu_args(&native).unwrap().join(" "),
            "-M virt,gic-version=3 -cpu cortex-a72,cntfrq=1000000000 -smp 1 -m 1G \
             -icount shift=0,align=off,sleep=off -display none -monitor none -serial stdio \
             -nic none -kernel target/guests/bench.bin"
        );
        let hosted = QemuRequest {
            clock: Clock::Instructions,
            ..request(Machine::VirtGicv3, 1)
        };
        let line = qemu_args(&hosted).unwrap().join(" ");
        assert!(
            line.starts_with(
                "-M virt,virtualization=on,gic-version=3 -cpu cortex-a72,cntfrq=1000000000 \
                 -smp 1 -m 1G -icount shift=0,align=off,sleep=off "
            ),
            "{line}"
        );
        let err = qemu_args(&QemuRequest {
            clock: Clock::Instructions,
            ..request(Machine::Raspi4b, 4)
        })
        .unwrap_err();
        assert!(err.contains("raspi4b has a fixed CPU model"), "{err}");
    }

    #[test]
    fn memory_syntax() {
        for good in ["1G", "512M", "16G"] {
            assert!(check_memory_syntax(good).is_ok(), "{good}");
        }
        for bad in ["", "G", "1", "1g", "01G", "1.5G", "1T", "-1G"] {
            assert!(check_memory_syntax(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn machine_names_parse_from_toml_as_written_on_the_command_line() {
        #[derive(Deserialize)]
        struct Holder {
            machine: Machine,
        }
        for preset in PRESETS {
            let holder: Holder = toml::from_str(&format!("machine = '{}'", preset.name)).unwrap();
            assert_eq!(holder.machine, preset.machine);
            let from_cli = <Machine as clap::ValueEnum>::from_str(preset.name, false).unwrap();
            assert_eq!(from_cli, preset.machine);
        }
    }

    #[test]
    fn shell_words_quotes_only_what_needs_it() {
        let args = vec!["-M".to_string(), "a b".to_string(), "it's".to_string()];
        assert_eq!(shell_words("qemu", &args), r"qemu -M 'a b' 'it'\''s'");
    }
}
