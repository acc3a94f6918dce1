//! What the tool knows about each board a system can be configured for,
//! kept in one table ([`BOARDS`]).

use std::ops::RangeInclusive;

use tessera_package::rules::{self, BoardRules};

use crate::machine::{Board, Machine};
use crate::units::MIB;

#[derive(Debug)]
pub struct BoardSpec {
    /// The rules both the tool and the hypervisor apply; `name`,
    /// `gic_versions` and `cpus` are copied from them.
    pub rules: &'static BoardRules,
    /// As written in `board.name`, and in the manifest's `board`.
    pub name: &'static str,
    /// The hypervisor build this board needs.
    pub build: Board,
    pub gic_versions: &'static [u32],
    pub cpus: RangeInclusive<u32>,
    /// Memory the hypervisor can use, where the board fixes it.
    pub max_memory: Option<u64>,
    /// Whether its CPUs have an architectural PMU (PMUv3) that Tessera
    /// hands to each vCPU, so guest device trees describe one
    /// (docs/ARCHITECTURE.md, "Trap configuration").
    pub pmu: bool,
}

pub const BOARDS: &[BoardSpec] = &[
    BoardSpec {
        rules: &rules::QEMU_VIRT,
        name: rules::QEMU_VIRT.name,
        build: Board::Virt,
        gic_versions: rules::QEMU_VIRT.gic_versions,
        cpus: rules::QEMU_VIRT.cpus,
        // QEMU is started with the configured -m.
        max_memory: None,
        // The machine presets run QEMU's cortex-a72 model, a PMUv3.
        pmu: true,
    },
    BoardSpec {
        rules: &rules::RPI4,
        name: rules::RPI4.name,
        build: Board::Rpi4,
        gic_versions: rules::RPI4.gic_versions,
        cpus: rules::RPI4.cpus,
        // The firmware keeps everything above this for the VideoCore.
        max_memory: Some(948 * MIB),
        // The Cortex-A72 has a PMUv3 (QEMU's raspi4b model too).
        pmu: true,
    },
];

impl BoardSpec {
    /// The board the shared rules know by `name`.
    pub fn find(name: &str) -> Option<&'static BoardSpec> {
        let rules = rules::board(name).ok()?;
        BOARDS.iter().find(|board| board.rules == rules)
    }

    /// The board a hypervisor build is for, and so its limits.
    pub fn for_build(build: Board) -> Option<&'static BoardSpec> {
        BOARDS.iter().find(|board| board.build == build)
    }

    pub fn names() -> String {
        BOARDS
            .iter()
            .map(|board| board.name)
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The QEMU machine that emulates this board with `gic_version`.
    pub fn machine(&self, gic_version: u32) -> Machine {
        match (self.build, gic_version) {
            (Board::Rpi4, _) => Machine::Raspi4b,
            (Board::Virt, 2) => Machine::VirtGicv2,
            (Board::Virt, _) => Machine::VirtGicv3,
        }
    }

    /// "2 or 3", "2 only": for messages.
    pub fn gic_versions_text(&self) -> String {
        match self.gic_versions {
            [only] => format!("{only} only"),
            versions => versions
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(" or "),
        }
    }

    /// "1 to 8 CPUs", "4 CPUs": for messages.
    pub fn cpus_text(&self) -> String {
        if self.cpus.start() == self.cpus.end() {
            format!("{} CPUs", self.cpus.start())
        } else {
            format!("{} to {} CPUs", self.cpus.start(), self.cpus.end())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boards_map_to_machines() {
        let virt = BoardSpec::find("qemu-virt").unwrap();
        assert_eq!(virt.machine(3), Machine::VirtGicv3);
        assert_eq!(virt.machine(2), Machine::VirtGicv2);
        assert_eq!(
            BoardSpec::find("rpi4").unwrap().machine(2),
            Machine::Raspi4b
        );
        assert!(BoardSpec::find("virt").is_none());
        assert_eq!(BoardSpec::names(), "qemu-virt, rpi4");
    }

    #[test]
    fn every_board_is_the_shared_rules_board() {
        assert_eq!(BOARDS.len(), rules::BOARDS.len());
        for (board, shared) in BOARDS.iter().zip(rules::BOARDS) {
            assert_eq!(board.rules, shared);
            assert_eq!(board.name, shared.name);
            assert_eq!(board.gic_versions, shared.gic_versions);
            assert_eq!(board.cpus, shared.cpus);
            assert_eq!(BoardSpec::find(board.name).unwrap().build, board.build);
        }
    }

    #[test]
    fn every_board_machine_builds_for_that_board() {
        for board in BOARDS {
            for &gic in board.gic_versions {
                assert_eq!(board.machine(gic).board(), board.build, "{}", board.name);
            }
        }
    }
}
