//! The compiled system configuration (`tessera/manifest.dtb` in the
//! package): which VMs to build, with what RAM, CPUs, image and device tree.
//! The host tool has already checked the configuration; the hypervisor
//! checks again what it depends on (see `check_against_machine`), because a
//! package may be built for a different machine than the one it meets.

use crate::boot::flat_tree::{FlatTree, Token, read_cells, string_list_contains, string_value};

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

/// The VM node being read, before its properties are checked.
#[derive(Clone, Copy, Default)]
struct VmFields<'a> {
    name: Option<&'a str>,
    ram_base: Option<u64>,
    ram_size: Option<u64>,
    cpus: Option<&'a [u8]>,
    image: Option<&'a str>,
    image_load_offset: Option<u64>,
    device_tree: Option<&'a str>,
}

/// A 4- or 8-byte big-endian number.
fn number(value: &[u8]) -> Option<u64> {
    read_cells(value, value.len() / 4).filter(|_| value.len() == 4 || value.len() == 8)
}

impl<'a> VmFields<'a> {
    fn set(&mut self, name: &[u8], value: &'a [u8]) {
        match name {
            b"name" => self.name = string_value(value),
            b"ram-base" => self.ram_base = number(value),
            b"ram-size" => self.ram_size = number(value),
            b"cpus" => self.cpus = Some(value),
            b"image" => self.image = string_value(value),
            b"image-load-offset" => self.image_load_offset = number(value),
            b"device-tree" => self.device_tree = string_value(value),
            _ => {}
        }
    }

    fn finish(self) -> Result<VmManifest<'a>, ManifestError<'a>> {
        let name = self.name.ok_or(ManifestError::Property {
            vm: None,
            property: "name",
        })?;
        let vm = Some(name);
        let missing = |property| ManifestError::Property { vm, property };
        let cpus = self.cpus.ok_or(missing("cpus"))?;
        if cpus.is_empty() || cpus.len() % 4 != 0 {
            return Err(missing("cpus"));
        }
        let vcpu_count = cpus.len() / 4;
        if vcpu_count > MAX_CPUS {
            return Err(ManifestError::TooMany);
        }
        let mut physical_cpus = [0; MAX_CPUS];
        for (slot, chunk) in physical_cpus.iter_mut().zip(cpus.chunks_exact(4)) {
            *slot = u32::from_be_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        }
        Ok(VmManifest {
            name,
            ram_base: self.ram_base.ok_or(missing("ram-base"))?,
            ram_size: self.ram_size.ok_or(missing("ram-size"))?,
            physical_cpus,
            vcpu_count,
            image: self.image.ok_or(missing("image"))?,
            image_load_offset: self.image_load_offset.ok_or(missing("image-load-offset"))?,
            device_tree: self.device_tree.ok_or(missing("device-tree"))?,
        })
    }
}

/// Parses the manifest blob, in one pass over its tokens.
///
/// # Errors
/// See [`ManifestError`].
pub fn parse(blob: &[u8]) -> Result<SystemManifest<'_>, ManifestError<'_>> {
    let tree = FlatTree::new(blob).map_err(|_| ManifestError::NotAManifest)?;
    let mut is_manifest = false;
    let mut version = None;
    let mut board = None;
    let mut gic_version = None;
    let mut saw_vms = false;
    let mut vms = [None; MAX_VMS];
    let mut vm_count = 0;
    let mut current = VmFields::default();
    // Depth 1: the root; 2: `/vms`; 3: a VM node.
    let mut depth = 0usize;
    let mut in_vms = false;
    for token in tree.tokens() {
        match token.map_err(|_| ManifestError::NotAManifest)? {
            Token::BeginNode(name) => {
                depth += 1;
                if depth == 2 {
                    in_vms = name == b"vms";
                    saw_vms |= in_vms;
                } else if depth == 3 && in_vms {
                    current = VmFields::default();
                }
            }
            Token::Property { name, value } => match (depth, name.bytes()) {
                (1, b"compatible") => is_manifest = string_list_contains(value, b"tessera,system"),
                (1, b"tessera,format-version") => version = number(value),
                (1, b"board") => board = string_value(value),
                (1, b"gic-version") => gic_version = number(value),
                (3, name) if in_vms => current.set(name, value),
                _ => {}
            },
            Token::EndNode => {
                if depth == 3 && in_vms {
                    let entry = current.finish()?;
                    *vms.get_mut(vm_count).ok_or(ManifestError::TooMany)? = Some(entry);
                    vm_count += 1;
                }
                depth = depth.checked_sub(1).ok_or(ManifestError::NotAManifest)?;
            }
        }
    }
    if !is_manifest {
        return Err(ManifestError::NotAManifest);
    }
    let property = |property| ManifestError::Property { vm: None, property };
    let version = version.ok_or(property("tessera,format-version"))? as u32;
    if version != FORMAT_VERSION {
        return Err(ManifestError::UnsupportedVersion(version));
    }
    if !saw_vms {
        return Err(property("vms"));
    }
    Ok(SystemManifest {
        board: board.ok_or(property("board"))?,
        gic_version: gic_version.ok_or(property("gic-version"))? as u32,
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
