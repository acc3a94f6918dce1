//! Reading properties back out of a device tree the tool wrote, for the
//! unit tests of its writers (`firmware_dt`, `package::guest_dt`).

use fdt::node::FdtNode;

/// A property as big-endian 32-bit cells.
pub fn cells(node: FdtNode<'_, '_>, property: &str) -> Vec<u32> {
    let value = node
        .property(property)
        .unwrap_or_else(|| panic!("{} has no {property}", node.name))
        .value;
    value
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// A string-list property.
pub fn strings<'a>(node: FdtNode<'_, 'a>, property: &str) -> Vec<&'a str> {
    let value = node.property(property).unwrap().value;
    value
        .split(|byte| *byte == 0)
        .filter(|s| !s.is_empty())
        .map(|s| std::str::from_utf8(s).unwrap())
        .collect()
}

/// A string property.
pub fn string<'a>(node: FdtNode<'_, 'a>, property: &str) -> &'a str {
    node.property(property).unwrap().as_str().unwrap()
}
