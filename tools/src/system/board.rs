//! What the tool knows about each board a system can be configured for,
//! kept in one table ([`BOARDS`]).

use std::ops::RangeInclusive;

use crate::machine::{Board, Machine};
use crate::units::MIB;

#[derive(Debug)]
pub struct BoardSpec {
    /// As written in `board.name`, and in the manifest's `board`.
    pub name: &'static str,
    /// The hypervisor build this board needs.
    pub build: Board,
    pub gic_versions: &'static [u32],
    pub cpus: RangeInclusive<u32>,
    /// Memory the hypervisor can use, where the board fixes it.
    pub max_memory: Option<u64>,
}

pub const BOARDS: &[BoardSpec] = &[
    BoardSpec {
        name: "qemu-virt",
        build: Board::Virt,
        gic_versions: &[2, 3],
        // The hypervisor runs on at most 8 CPUs, which is also all that a
        // GICv2 can address.
        cpus: 1..=8,
        // QEMU is started with the configured -m.
        max_memory: None,
    },
    BoardSpec {
        name: "rpi4",
        build: Board::Rpi4,
        gic_versions: &[2],
        cpus: 4..=4,
        // The firmware keeps everything above this for the VideoCore.
        max_memory: Some(948 * MIB),
    },
];

impl BoardSpec {
    pub fn find(name: &str) -> Option<&'static BoardSpec> {
        BOARDS.iter().find(|board| board.name == name)
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
    fn every_board_machine_builds_for_that_board() {
        for board in BOARDS {
            for &gic in board.gic_versions {
                assert_eq!(board.machine(gic).board(), board.build, "{}", board.name);
            }
        }
    }
}
