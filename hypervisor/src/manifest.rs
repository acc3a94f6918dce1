//! The compiled system configuration (`tessera/manifest.dtb` in the
//! package): which VMs to build, with what RAM, CPUs, image and device tree.
//! The host tool has already checked the configuration; the hypervisor
//! checks again what it depends on (see `check_against_machine`), because a
//! package may be built for a different machine than the one it meets.

use fdt::Fdt;
use fdt::node::FdtNode;

use crate::MAX_CPUS;

/// How many VMs a system may have (at most one per CPU).
pub const MAX_VMS: usize = MAX_CPUS;
/// The manifest format this hypervisor reads.
pub const FORMAT_VERSION: u32 = 1;

/// Why a manifest was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ManifestError<'a> {
    /// Not a device tree, or not a Tessera manifest.
    NotAManifest,
    /// A format version this hypervisor does not read.
    UnsupportedVersion(u32),
    /// A property is missing or malformed; names the VM (if any) and property.
    Property {
        vm: Option<&'a str>,
        property: &'static str,
    },
    /// More VMs than `MAX_VMS`, or more vCPUs than `MAX_CPUS`.
    TooMany,
    /// Built for another board or GIC version.
    WrongMachine,
    /// A VM names a CPU the machine does not have, or one already taken.
    BadCpu { vm: &'a str, cpu: u32 },
}

/// One VM of the manifest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VmManifest<'a> {
    pub name: &'a str,
    pub ram_base: u64,
    pub ram_size: u64,
    /// The physical CPU of each vCPU; the first `vcpu_count` entries count.
    pub physical_cpus: [u32; MAX_CPUS],
    pub vcpu_count: usize,
    /// Package entry names.
    pub image: &'a str,
    pub image_load_offset: u64,
    pub device_tree: &'a str,
}

impl VmManifest<'_> {
    #[must_use]
    pub fn physical_cpus(&self) -> &[u32] {
        &self.physical_cpus[..self.vcpu_count]
    }
}

/// The whole manifest.
#[derive(Clone, Copy, Debug)]
pub struct SystemManifest<'a> {
    pub board: &'a str,
    pub gic_version: u32,
    vms: [Option<VmManifest<'a>>; MAX_VMS],
    vm_count: usize,
}

impl<'a> SystemManifest<'a> {
    pub fn vms(&self) -> impl Iterator<Item = &VmManifest<'a>> {
        self.vms[..self.vm_count].iter().flatten()
    }

    #[must_use]
    pub const fn vm_count(&self) -> usize {
        self.vm_count
    }

    /// Checks that the package was built for this machine: the board, the
    /// GIC version, and CPUs that exist and are used once.
    ///
    /// # Errors
    /// `WrongMachine` or `BadCpu`.
    pub fn check_against_machine(
        &self,
        board: &str,
        gic_version: u32,
        cpu_count: usize,
    ) -> Result<(), ManifestError<'a>> {
        if self.board != board || self.gic_version != gic_version {
            return Err(ManifestError::WrongMachine);
        }
        let mut taken = [false; MAX_CPUS];
        for vm in self.vms() {
            for &cpu in vm.physical_cpus() {
                let index = cpu as usize;
                if index >= cpu_count || taken[index] {
                    return Err(ManifestError::BadCpu { vm: vm.name, cpu });
                }
                taken[index] = true;
            }
        }
        Ok(())
    }
}

fn string<'a>(
    node: FdtNode<'_, 'a>,
    vm: Option<&'a str>,
    property: &'static str,
) -> Result<&'a str, ManifestError<'a>> {
    node.property(property)
        .and_then(|value| value.as_str())
        .ok_or(ManifestError::Property { vm, property })
}

fn number<'a>(
    node: FdtNode<'_, 'a>,
    vm: Option<&'a str>,
    property: &'static str,
) -> Result<u64, ManifestError<'a>> {
    let value = node
        .property(property)
        .ok_or(ManifestError::Property { vm, property })?
        .value;
    match value.len() {
        4 => Ok(u64::from(u32::from_be_bytes([
            value[0], value[1], value[2], value[3],
        ]))),
        8 => Ok(u64::from_be_bytes([
            value[0], value[1], value[2], value[3], value[4], value[5], value[6], value[7],
        ])),
        _ => Err(ManifestError::Property { vm, property }),
    }
}

/// Parses the manifest blob.
///
/// # Errors
/// See [`ManifestError`].
pub fn parse(blob: &[u8]) -> Result<SystemManifest<'_>, ManifestError<'_>> {
    let tree = Fdt::new(blob).map_err(|_| ManifestError::NotAManifest)?;
    let root = tree.find_node("/").ok_or(ManifestError::NotAManifest)?;
    let is_manifest = root
        .compatible()
        .is_some_and(|compatible| compatible.all().any(|entry| entry == "tessera,system"));
    if !is_manifest {
        return Err(ManifestError::NotAManifest);
    }
    let version = number(root, None, "tessera,format-version")? as u32;
    if version != FORMAT_VERSION {
        return Err(ManifestError::UnsupportedVersion(version));
    }
    let board = string(root, None, "board")?;
    let gic_version = number(root, None, "gic-version")? as u32;

    let mut vms = [None; MAX_VMS];
    let mut vm_count = 0;
    let vms_node = tree.find_node("/vms").ok_or(ManifestError::Property {
        vm: None,
        property: "vms",
    })?;
    for node in vms_node.children() {
        let name = string(node, None, "name")?;
        let vm = Some(name);
        let cpus_value = node
            .property("cpus")
            .ok_or(ManifestError::Property {
                vm,
                property: "cpus",
            })?
            .value;
        if cpus_value.is_empty() || cpus_value.len() % 4 != 0 {
            return Err(ManifestError::Property {
                vm,
                property: "cpus",
            });
        }
        let mut physical_cpus = [0; MAX_CPUS];
        let vcpu_count = cpus_value.len() / 4;
        if vcpu_count > MAX_CPUS {
            return Err(ManifestError::TooMany);
        }
        for (slot, chunk) in physical_cpus.iter_mut().zip(cpus_value.chunks_exact(4)) {
            *slot = u32::from_be_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        }
        let entry = VmManifest {
            name,
            ram_base: number(node, vm, "ram-base")?,
            ram_size: number(node, vm, "ram-size")?,
            physical_cpus,
            vcpu_count,
            image: string(node, vm, "image")?,
            image_load_offset: number(node, vm, "image-load-offset")?,
            device_tree: string(node, vm, "device-tree")?,
        };
        *vms.get_mut(vm_count).ok_or(ManifestError::TooMany)? = Some(entry);
        vm_count += 1;
    }
    Ok(SystemManifest {
        board,
        gic_version,
        vms,
        vm_count,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use vm_fdt::FdtWriter;

    /// A manifest as `tessera package` writes it.
    pub fn manifest(vms: &[(&str, &[u32])]) -> Vec<u8> {
        let mut writer = FdtWriter::new().unwrap();
        let root = writer.begin_node("").unwrap();
        writer
            .property_string("compatible", "tessera,system")
            .unwrap();
        writer.property_u32("tessera,format-version", 1).unwrap();
        writer.property_string("board", "qemu-virt").unwrap();
        writer.property_u32("gic-version", 3).unwrap();
        let vms_node = writer.begin_node("vms").unwrap();
        for (index, (name, cpus)) in vms.iter().enumerate() {
            let node = writer.begin_node(&format!("vm@{index}")).unwrap();
            writer.property_string("name", name).unwrap();
            writer.property_u64("ram-base", 0x4000_0000).unwrap();
            writer.property_u64("ram-size", 0x400_0000).unwrap();
            writer.property_array_u32("cpus", cpus).unwrap();
            writer
                .property_string("image", &format!("vm/{name}/image"))
                .unwrap();
            writer.property_u64("image-load-offset", 0x8_0000).unwrap();
            writer
                .property_string("device-tree", &format!("vm/{name}/guest.dtb"))
                .unwrap();
            writer.end_node(node).unwrap();
        }
        writer.end_node(vms_node).unwrap();
        writer.end_node(root).unwrap();
        writer.finish().unwrap()
    }

    #[test]
    fn reads_every_vm() {
        let blob = manifest(&[("alpha", &[1]), ("beta", &[2, 3])]);
        let system = parse(&blob).unwrap();
        assert_eq!(system.board, "qemu-virt");
        assert_eq!(system.gic_version, 3);
        let vms: Vec<_> = system.vms().collect();
        assert_eq!(vms.len(), 2);
        assert_eq!(vms[0].name, "alpha");
        assert_eq!(vms[0].ram_base, 0x4000_0000);
        assert_eq!(vms[0].ram_size, 0x400_0000);
        assert_eq!(vms[1].physical_cpus(), &[2, 3]);
        assert_eq!(vms[1].image, "vm/beta/image");
        assert_eq!(vms[1].image_load_offset, 0x8_0000);
        assert_eq!(vms[1].device_tree, "vm/beta/guest.dtb");
        assert_eq!(system.check_against_machine("qemu-virt", 3, 4), Ok(()));
    }

    #[test]
    fn refuses_packages_for_another_machine() {
        let blob = manifest(&[("alpha", &[1]), ("beta", &[1])]);
        let system = parse(&blob).unwrap();
        assert_eq!(
            system.check_against_machine("rpi4", 2, 4),
            Err(ManifestError::WrongMachine)
        );
        assert_eq!(
            system.check_against_machine("qemu-virt", 2, 4),
            Err(ManifestError::WrongMachine)
        );
        assert_eq!(
            system.check_against_machine("qemu-virt", 3, 4),
            Err(ManifestError::BadCpu { vm: "beta", cpu: 1 })
        );
        let blob = manifest(&[("alpha", &[5])]);
        assert_eq!(
            parse(&blob)
                .unwrap()
                .check_against_machine("qemu-virt", 3, 4),
            Err(ManifestError::BadCpu {
                vm: "alpha",
                cpu: 5
            })
        );
    }

    #[test]
    fn refuses_what_is_not_a_manifest() {
        assert_eq!(
            parse(b"not a tree").unwrap_err(),
            ManifestError::NotAManifest
        );
        let mut writer = FdtWriter::new().unwrap();
        let root = writer.begin_node("").unwrap();
        writer
            .property_string("compatible", "linux,dummy-virt")
            .unwrap();
        writer.end_node(root).unwrap();
        let blob = writer.finish().unwrap();
        assert_eq!(parse(&blob).unwrap_err(), ManifestError::NotAManifest);
    }
}
