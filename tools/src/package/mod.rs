//! The system package (docs/system-image.md): a `070702` cpio archive of
//! the manifest, then each VM's image and device tree, which the
//! hypervisor is given as its initrd.

pub mod corpus;
pub mod cpio;
mod guest_dt;
mod inspect;
mod manifest;

use std::path::{Path, PathBuf};

use anyhow::Result;

pub use inspect::inspect;
pub use manifest::{MANIFEST_ENTRY, device_tree_entry, image_entry};

use crate::system::LoadedSystem;
use crate::system::guest_image::DEVICE_TREE_ROOM;
use crate::workspace;

/// Where packages go unless told otherwise, relative to the workspace root.
pub const PACKAGE_DIR: &str = "target/packages";

/// Packages of configurations outside the workspace go below this, in
/// [`PACKAGE_DIR`], under their whole absolute path.
const OUTSIDE_DIR: &str = "outside-workspace";

/// Where a configuration's package goes by default: under `root`'s
/// [`PACKAGE_DIR`], at the configuration's own path below `root` with
/// `.toml` replaced by `.cpio` (`systems/demo.toml` packs to
/// `target/packages/systems/demo.cpio`), so that two configurations with
/// one file name in different folders never share a package. The path is
/// resolved first (symbolic links, `..`, and `config_file` relative to the
/// current directory), so one file always gets one package. A
/// configuration outside the workspace goes to
/// `target/packages/outside-workspace/<its absolute path>`.
pub fn default_path(root: &Path, config_file: &Path) -> PathBuf {
    let resolve = |path: &Path| {
        std::fs::canonicalize(path)
            .or_else(|_| std::path::absolute(path))
            .unwrap_or_else(|_| path.to_path_buf())
    };
    root.join(package_path_for(&resolve(root), &resolve(config_file)))
}

/// [`default_path`] relative to the root, for paths already resolved.
fn package_path_for(root: &Path, config_file: &Path) -> PathBuf {
    let below = match config_file.strip_prefix(root) {
        Ok(relative) => relative.to_path_buf(),
        Err(_) => Path::new(OUTSIDE_DIR).join(
            config_file
                .components()
                .filter(|part| matches!(part, std::path::Component::Normal(_)))
                .collect::<PathBuf>(),
        ),
    };
    let name = match below.file_name() {
        Some(_) if below.extension().is_some_and(|ext| ext == "toml") => {
            below.with_extension("cpio")
        }
        Some(name) => below.with_file_name(format!("{}.cpio", name.to_string_lossy())),
        None => below.join("system.cpio"),
    };
    Path::new(PACKAGE_DIR).join(name)
}

/// The package's bytes: the manifest, then for each VM in configuration
/// order its image and its device tree, then the trailer.
pub fn build(system: &LoadedSystem) -> Result<Vec<u8>, String> {
    let manifest = manifest::manifest_dtb(system)
        .map_err(|err| format!("cannot write the manifest: {err}"))?;
    let mut archive = cpio::Writer::new();
    archive.add_file(MANIFEST_ENTRY, &manifest)?;
    let gic_version = system.config.board.gic_version;
    let vms = system
        .config
        .vms
        .iter()
        .zip(&system.images)
        .zip(&system.devices);
    let pmu = system.config.board.spec.pmu;
    for ((vm, image), devices) in vms {
        let dtb = guest_dt::guest_dtb(vm, gic_version, devices, pmu)
            .map_err(|err| format!("vm \"{}\": cannot write its device tree: {err}", vm.name))?;
        // The hypervisor copies it into the last 64 KiB of the VM's RAM.
        if dtb.len() as u64 >= DEVICE_TREE_ROOM {
            return Err(format!(
                "vm \"{}\": its device tree is {} bytes, more than the 64 KiB kept for it",
                vm.name,
                dtb.len()
            ));
        }
        archive.add_file(&image_entry(&vm.name), &image.bytes)?;
        archive.add_file(&device_tree_entry(&vm.name), &dtb)?;
    }
    Ok(archive.finish())
}

/// Builds the package and writes it to `out`, creating its directory,
/// whole or not at all (see [`workspace::write_whole_file`]).
pub fn write(system: &LoadedSystem, out: &Path) -> Result<()> {
    let bytes = build(system).map_err(|reason| anyhow::anyhow!(reason))?;
    workspace::write_whole_file(out, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::system::guest_image::{ImageLayout, fake_image};
    use crate::system::{BoardConfig, BoardSpec, GuestImage, ImageSource, SystemConfig, VmConfig};
    use fdt::Fdt;

    /// Two VMs, one image with a header and one raw; also the good package
    /// the corpus (`corpus.rs`) corrupts.
    pub(super) fn system() -> LoadedSystem {
        let vm = |name: &str, cpus: &[u32], ram_base: u64| VmConfig {
            name: name.into(),
            image: ImageSource::Example("hello".into()),
            ram: 0x400_0000,
            ram_base,
            cpus: cpus.to_vec(),
            bootargs: None,
            start_delay_ms: 0,
            passthrough: Vec::new(),
            shmem: Vec::new(),
        };
        let image = |load_offset: u64, bytes: Vec<u8>| GuestImage {
            path: PathBuf::from("target/guests/hello.bin"),
            layout: ImageLayout {
                load_offset,
                size: bytes.len() as u64,
            },
            bytes,
        };
        LoadedSystem {
            config: SystemConfig {
                board: BoardConfig {
                    spec: BoardSpec::find("qemu-virt").unwrap(),
                    gic_version: 3,
                    cpus: 4,
                    memory: 1 << 30,
                },
                vms: vec![
                    vm("alpha", &[1], 0x4000_0000),
                    vm("beta", &[2, 3], 0x8000_0000),
                ],
                shmem: crate::system::ShmemSystem::default(),
            },
            images: vec![
                image(0x8_0000, fake_image(0x8_0000, 0, 4096)),
                image(0, b"raw guest".to_vec()),
            ],
            devices: vec![Vec::new(), Vec::new()],
        }
    }

    fn entry<'a>(entries: &'a [cpio::Entry<'a>], name: &str) -> &'a cpio::Entry<'a> {
        entries.iter().find(|e| e.name == name).unwrap()
    }

    #[test]
    fn entries_come_in_the_documented_order_and_round_trip() {
        let system = system();
        let bytes = build(&system).unwrap();
        let entries = cpio::read(&bytes).unwrap();
        let names: Vec<&str> = entries.iter().map(|e| e.name).collect();
        assert_eq!(
            names,
            [
                "tessera/manifest.dtb",
                "vm/alpha/image",
                "vm/alpha/guest.dtb",
                "vm/beta/image",
                "vm/beta/guest.dtb",
            ]
        );
        for entry in &entries {
            assert!(entry.checksum_ok(), "{}", entry.name);
            assert_eq!(entry.mode(), Ok(0o100644), "{}", entry.name);
        }
        assert_eq!(
            entry(&entries, "vm/alpha/image").data,
            system.images[0].bytes
        );
        assert_eq!(entry(&entries, "vm/beta/image").data, b"raw guest");
        let beta_dt = Fdt::new(entry(&entries, "vm/beta/guest.dtb").data).unwrap();
        assert!(beta_dt.find_node("/memory@80000000").is_some());
        assert!(inspect(&bytes).problems.is_empty());
    }

    #[test]
    fn the_manifest_describes_every_vm() {
        let bytes = build(&system()).unwrap();
        let entries = cpio::read(&bytes).unwrap();
        let tree = Fdt::new(entry(&entries, MANIFEST_ENTRY).data).unwrap();
        let root = tree.find_node("/").unwrap();
        let text = |node: fdt::node::FdtNode<'_, '_>, name: &str| {
            node.property(name).unwrap().as_str().unwrap().to_string()
        };
        let number = |node: fdt::node::FdtNode<'_, '_>, name: &str| {
            node.property(name).unwrap().as_usize().unwrap() as u64
        };
        assert_eq!(
            root.compatible().unwrap().all().collect::<Vec<_>>(),
            ["tessera,system"]
        );
        assert_eq!(number(root, "tessera,format-version"), 1);
        assert_eq!(text(root, "board"), "qemu-virt");
        assert_eq!(number(root, "gic-version"), 3);

        let vms: Vec<_> = tree.find_node("/vms").unwrap().children().collect();
        assert_eq!(vms.len(), 2);
        assert_eq!(vms[0].name, "vm@0");
        assert_eq!(text(vms[0], "name"), "alpha");
        assert_eq!(vms[0].property("ram-base").unwrap().value.len(), 8);
        assert_eq!(number(vms[0], "ram-base"), 0x4000_0000);
        assert_eq!(number(vms[0], "ram-size"), 0x400_0000);
        assert_eq!(vms[0].property("cpus").unwrap().value, [0, 0, 0, 1]);
        assert_eq!(text(vms[0], "image"), "vm/alpha/image");
        assert_eq!(number(vms[0], "image-load-offset"), 0x8_0000);
        assert_eq!(text(vms[0], "device-tree"), "vm/alpha/guest.dtb");

        assert_eq!(vms[1].name, "vm@1");
        assert_eq!(text(vms[1], "name"), "beta");
        assert_eq!(number(vms[1], "ram-base"), 0x8000_0000);
        assert_eq!(
            vms[1].property("cpus").unwrap().value,
            [0, 0, 0, 2, 0, 0, 0, 3]
        );
        assert_eq!(vms[1].property("image-load-offset").unwrap().value, [0; 8]);
    }

    #[test]
    fn vdev_shmem_reaches_the_manifest_inspect_and_the_guest_tree() {
        use crate::system::shmem::BootRegion;
        use crate::system::{ShmemDevice, ShmemSystem};
        let mut system = system();
        system.config.vms[0].shmem = vec![ShmemDevice {
            loc: 0x1_0000_0000,
            intr: 40,
            window: (0x1_0001_0000, 0x10_0000),
            allow: vec!["ping*".into()],
            deny: vec!["ping-secret".into()],
        }];
        system.config.shmem = ShmemSystem {
            limit_pages: 256,
            regions: vec![BootRegion {
                name: "log".into(),
                size: 0x1_0000,
            }],
        };
        let bytes = build(&system).unwrap();
        let entries = cpio::read(&bytes).unwrap();
        let tree = Fdt::new(entry(&entries, MANIFEST_ENTRY).data).unwrap();
        let root = tree.find_node("/").unwrap();
        assert_eq!(
            crate::device_tree_reading::cells(root, "shmem-page-limit"),
            [0, 256]
        );
        assert_eq!(
            crate::device_tree_reading::strings(root, "shmem-regions"),
            ["log"]
        );
        assert_eq!(
            crate::device_tree_reading::cells(root, "shmem-region-pages"),
            [16]
        );
        let alpha = tree.find_node("/vms/vm@0").unwrap();
        assert_eq!(
            crate::device_tree_reading::cells(alpha, "vdev-shmem"),
            [1, 0, 1, 0x1_0000, 0, 0x10_0000, 40]
        );
        // Denies first: the order the model checks them in.
        assert_eq!(
            crate::device_tree_reading::strings(alpha, "vdev-shmem-rules"),
            ["0 deny ping-secret", "0 allow ping*"]
        );
        let beta = tree.find_node("/vms/vm@1").unwrap();
        assert!(beta.property("vdev-shmem").is_none());
        assert!(beta.property("vdev-shmem-rules").is_none());

        let inspection = inspect(&bytes);
        assert!(inspection.problems.is_empty(), "{:?}", inspection.problems);
        for line in [
            "shmem: 1 vdev-shmem instance(s), page limit 256 (1M), boot regions log (64K)",
            "vm[0] alpha: vdev-shmem[0] factory 0x1_0000_0000, INTID 40, window \
             0x1_0001_0000..0x1_0011_0000, names: deny ping-secret, allow ping*",
        ] {
            assert!(
                inspection.listing.contains(&line.to_string()),
                "{line}\n{:#?}",
                inspection.listing
            );
        }
        let guest = Fdt::new(entry(&entries, "vm/alpha/guest.dtb").data).unwrap();
        let node = guest.find_node("/vdev-shmem@100000000").unwrap();
        assert_eq!(
            crate::device_tree_reading::strings(node, "compatible"),
            ["qvm,guest_shm"]
        );
        // A system without shared memory writes none of the root fields.
        let plain = build(&super::tests::system()).unwrap();
        let entries = cpio::read(&plain).unwrap();
        let tree = Fdt::new(entry(&entries, MANIFEST_ENTRY).data).unwrap();
        assert!(
            tree.find_node("/")
                .unwrap()
                .property("shmem-page-limit")
                .is_none()
        );
        // The hypervisor's own rules refuse what the tool would not write.
        system.config.vms[0].shmem[0].intr = 33;
        let inspection = inspect(&build(&system).unwrap());
        assert_eq!(
            inspection.problems,
            [
                "tessera/manifest.dtb: vm[0] \"alpha\": field vdev-shmem: 33: SPI 1 (INTID 33) is \
                 the interrupt of the guest's virtual UART; rebuild the package with `tessera \
                 package`"
            ]
        );
    }

    #[test]
    fn passthrough_devices_reach_the_manifest_inspect_and_the_guest_tree() {
        use crate::system::PassthroughDevice;
        use crate::system::passthrough::DeviceNode;
        let mut system = system();
        system.devices[0] = vec![
            PassthroughDevice {
                ranges: vec![(0x0901_0000, 0x1000)],
                spis: vec![2],
                node: Some(DeviceNode {
                    name: "pl031@9010000".into(),
                    compatible: b"arm,pl031\0arm,primecell\0".to_vec(),
                    interrupts: vec![0, 2, 4],
                    clocks: Vec::new(),
                    clock_names: None,
                }),
            },
            PassthroughDevice {
                ranges: vec![(0x0903_0000, 0x1000)],
                spis: vec![7],
                node: None,
            },
        ];
        let bytes = build(&system).unwrap();
        let entries = cpio::read(&bytes).unwrap();
        let tree = Fdt::new(entry(&entries, MANIFEST_ENTRY).data).unwrap();
        let alpha = tree.find_node("/vms/vm@0").unwrap();
        assert_eq!(
            crate::device_tree_reading::cells(alpha, "passthrough-reg"),
            [0, 0x0901_0000, 0, 0x1000, 0, 0x0903_0000, 0, 0x1000]
        );
        assert_eq!(
            crate::device_tree_reading::cells(alpha, "passthrough-spis"),
            [2, 7]
        );
        // A VM without devices has neither field.
        let beta = tree.find_node("/vms/vm@1").unwrap();
        assert!(beta.property("passthrough-reg").is_none());
        assert!(beta.property("passthrough-spis").is_none());

        let inspection = inspect(&bytes);
        assert!(inspection.problems.is_empty(), "{:?}", inspection.problems);
        assert!(
            inspection.listing.contains(
                &"vm[0] alpha: passthrough 0x0901_0000..0x0901_1000, 0x0903_0000..0x0903_1000, \
              SPI 2 (INTID 34), SPI 7 (INTID 39)"
                    .to_string()
            )
        );
        let guest = Fdt::new(entry(&entries, "vm/alpha/guest.dtb").data).unwrap();
        assert!(guest.find_node("/pl031@9010000").is_some());
        assert!(
            guest.find_node("/pl061@9030000").is_none(),
            "no node: not named by path"
        );
        // Given to beta as well: the hypervisor's own rules refuse it.
        system.devices[1] = vec![system.devices[0][1].clone()];
        let inspection = inspect(&build(&system).unwrap());
        assert_eq!(
            inspection.problems,
            [
                "tessera/manifest.dtb: vm[1] \"beta\": field passthrough-reg: 0x903_0000: overlaps \
                 the range 0x0903_0000..0x0903_1000, already given to vm[0]; rebuild the package \
                 with `tessera package`"
            ]
        );
    }

    #[test]
    fn a_start_delay_reaches_the_manifest_inspect_and_the_hypervisor() {
        let mut system = system();
        system.config.vms[1].start_delay_ms = 20;
        let bytes = build(&system).unwrap();
        let entries = cpio::read(&bytes).unwrap();
        let blob = entry(&entries, MANIFEST_ENTRY).data;
        let tree = Fdt::new(blob).unwrap();
        let beta = tree.find_node("/vms/vm@1").unwrap();
        assert_eq!(
            crate::device_tree_reading::cells(beta, "start-delay-us"),
            [0, 20_000]
        );
        // A VM that starts at once has no such field.
        let alpha = tree.find_node("/vms/vm@0").unwrap();
        assert!(alpha.property("start-delay-us").is_none());
        // The hypervisor's own reader sees what was written.
        let manifest = tessera_hypervisor::boot::manifest::parse(blob).unwrap();
        let delays: Vec<u64> = manifest.vms().map(|vm| vm.start_delay_us).collect();
        assert_eq!(delays, [0, 20_000]);

        let inspection = inspect(&bytes);
        assert!(inspection.problems.is_empty(), "{:?}", inspection.problems);
        let delayed: Vec<&String> = inspection
            .listing
            .iter()
            .filter(|line| line.contains("starts"))
            .collect();
        assert_eq!(
            delayed,
            ["vm[1] beta: starts 20 ms after the VMs are started"]
        );
    }

    #[test]
    fn a_corrupted_package_is_caught_by_its_checksum() {
        let mut bytes = build(&system()).unwrap();
        let at = bytes.windows(9).position(|w| w == b"raw guest").unwrap();
        bytes[at] ^= 0x20;
        let inspection = inspect(&bytes);
        assert_eq!(
            inspection.problems,
            [
                "vm/beta/image: field check: 0x00000392 in its header, but its data sums to \
                 0x00000372; rebuild the package with `tessera package`"
            ]
        );
    }

    #[test]
    fn the_same_system_gives_the_same_bytes() {
        assert_eq!(build(&system()).unwrap(), build(&system()).unwrap());
    }

    #[test]
    fn write_creates_the_directory_and_leaves_no_partial_file() {
        let dir = std::env::temp_dir().join(format!("tessera-package-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let out = dir.join("deep/demo.cpio");
        write(&system(), &out).unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), build(&system()).unwrap());
        let beside: Vec<_> = std::fs::read_dir(dir.join("deep")).unwrap().collect();
        assert_eq!(beside.len(), 1, "no partial file left beside the package");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn packages_follow_the_configuration_path_below_the_root() {
        let ws = Path::new("/ws");
        assert_eq!(
            package_path_for(ws, Path::new("/ws/systems/demo.toml")),
            PathBuf::from("target/packages/systems/demo.cpio")
        );
        // One file name in two folders: two packages.
        assert_eq!(
            package_path_for(ws, Path::new("/ws/tests/guests/systems/demo.toml")),
            PathBuf::from("target/packages/tests/guests/systems/demo.cpio")
        );
        assert_eq!(
            package_path_for(ws, Path::new("/ws/systems/demo.conf")),
            PathBuf::from("target/packages/systems/demo.conf.cpio")
        );
        assert_eq!(
            package_path_for(ws, Path::new("/home/me/demo.toml")),
            PathBuf::from("target/packages/outside-workspace/home/me/demo.cpio")
        );
    }

    #[test]
    fn a_configuration_gets_one_package_however_its_path_is_written() {
        let root =
            std::env::temp_dir().join(format!("tessera-default-path-{}", std::process::id()));
        let config = root.join("systems/demo.toml");
        std::fs::create_dir_all(config.parent().unwrap()).unwrap();
        std::fs::write(&config, "").unwrap();
        let expected = root.join("target/packages/systems/demo.cpio");
        assert_eq!(default_path(&root, &config), expected);
        assert_eq!(
            default_path(&root, &root.join("systems/../systems/./demo.toml")),
            expected
        );
        std::fs::remove_dir_all(root).unwrap();
    }
}
