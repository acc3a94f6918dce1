//! A minimal, zero-copy reader of flattened device trees (the DTB format of
//! the Devicetree Specification, chapter 5): the header, the memory
//! reservation block and the structure block as a stream of tokens.
//!
//! Both device trees the hypervisor reads — the board's and the package
//! manifest — are read in one pass over this stream. It never allocates and
//! never panics on malformed input: every length and offset is checked.

/// The FDT header magic, big-endian `0xd00dfeed`.
pub const MAGIC: u32 = 0xD00D_FEED;

const TOKEN_BEGIN_NODE: u32 = 1;
const TOKEN_END_NODE: u32 = 2;
const TOKEN_PROPERTY: u32 = 3;
const TOKEN_NOP: u32 = 4;
const TOKEN_END: u32 = 9;

/// Why a blob was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlatTreeError {
    BadMagic,
    /// A header field, offset or length points outside the blob, or the
    /// structure block holds an unknown token.
    Malformed,
}

/// One element of the structure block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Token<'a> {
    /// A node starts; its name (with any `@unit-address`).
    BeginNode(&'a [u8]),
    /// A property of the innermost open node.
    Property {
        name: PropertyName<'a>,
        value: &'a [u8],
    },
    /// The innermost open node ends.
    EndNode,
}

/// A property's name: its offset in the strings block, resolved to bytes
/// only when asked. Readers that look for a few known names compare offsets
/// (see [`FlatTree::name_offsets`]) instead of strings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PropertyName<'a> {
    strings: &'a [u8],
    offset: usize,
}

impl<'a> PropertyName<'a> {
    /// The name's offset in the strings block.
    #[must_use]
    pub const fn offset(&self) -> usize {
        self.offset
    }

    /// The name, without its NUL; empty if the offset is out of range.
    #[must_use]
    pub fn bytes(&self) -> &'a [u8] {
        self.strings
            .get(self.offset..)
            .and_then(c_string)
            .unwrap_or(&[])
    }
}

/// A checked header with its blocks located.
#[derive(Clone, Copy, Debug)]
pub struct FlatTree<'a> {
    blob: &'a [u8],
    structure: &'a [u8],
    strings: &'a [u8],
    reservations_offset: usize,
}

/// The big-endian word at `offset`, if `bytes` holds it. Out of line: a
/// bounds check and four byte loads (the target does no unaligned loads),
/// which the readers of the header, the reservations and cells each
/// inlined (about 900 bytes of image in all).
#[inline(never)]
fn be32(bytes: &[u8], offset: usize) -> Option<u32> {
    be32_inline(bytes, offset)
}

/// [`be32`], inlined: for the token walk's unaligned fallback, which sits
/// in the boot's hottest loop (calling out of line there cost about 3,000
/// boot instructions, `bench`).
#[inline(always)]
fn be32_inline(bytes: &[u8], offset: usize) -> Option<u32> {
    let word = bytes.get(offset..offset.checked_add(4)?)?;
    Some(u32::from_be_bytes([word[0], word[1], word[2], word[3]]))
}

fn be64(bytes: &[u8], offset: usize) -> Option<u64> {
    Some((u64::from(be32(bytes, offset)?) << 32) | u64::from(be32(bytes, offset + 4)?))
}

/// The bytes before the first NUL.
fn c_string(bytes: &[u8]) -> Option<&[u8]> {
    bytes
        .iter()
        .position(|byte| *byte == 0)
        .map(|end| &bytes[..end])
}

/// The total size an FDT header announces, or `None` if `header` does not
/// start with the magic. Lets a caller size a slice from a bare pointer.
#[must_use]
pub fn announced_size(header: &[u8; 8]) -> Option<usize> {
    (be32(header, 0)? == MAGIC).then(|| be32(header, 4).map(|size| size as usize))?
}

impl<'a> FlatTree<'a> {
    /// Checks the header and locates the blocks.
    ///
    /// # Errors
    /// `BadMagic` or `Malformed`.
    pub fn new(blob: &'a [u8]) -> Result<Self, FlatTreeError> {
        if be32(blob, 0) != Some(MAGIC) {
            return Err(FlatTreeError::BadMagic);
        }
        let field = |offset| {
            be32(blob, offset)
                .map(|value| value as usize)
                .ok_or(FlatTreeError::Malformed)
        };
        let total_size = field(4)?;
        let blob = blob.get(..total_size).ok_or(FlatTreeError::Malformed)?;
        let structure_offset = field(8)?;
        let strings_offset = field(12)?;
        let reservations_offset = field(16)?;
        let strings_size = field(32)?;
        let structure_size = field(36)?;
        let structure = blob
            .get(structure_offset..structure_offset.saturating_add(structure_size))
            .ok_or(FlatTreeError::Malformed)?;
        let strings = blob
            .get(strings_offset..strings_offset.saturating_add(strings_size))
            .ok_or(FlatTreeError::Malformed)?;
        Ok(Self {
            blob,
            structure,
            strings,
            reservations_offset,
        })
    }

    /// The `(address, size)` pairs of the memory reservation block.
    pub fn reservations(&self) -> impl Iterator<Item = Result<(u64, u64), FlatTreeError>> + 'a {
        let blob = self.blob;
        let mut offset = self.reservations_offset;
        let mut done = false;
        core::iter::from_fn(move || {
            if done {
                return None;
            }
            let entry = be64(blob, offset).zip(be64(blob, offset + 8));
            offset += 16;
            match entry {
                None => {
                    done = true;
                    Some(Err(FlatTreeError::Malformed))
                }
                Some((0, 0)) => {
                    done = true;
                    None
                }
                Some(pair) => Some(Ok(pair)),
            }
        })
    }

    /// The strings-block offset of each of `names` (usize::MAX where the
    /// tree does not use that name), found in one pass over the block.
    #[must_use]
    pub fn name_offsets<const N: usize>(&self, names: [&[u8]; N]) -> [usize; N] {
        let mut offsets = [usize::MAX; N];
        let mut start = 0;
        for entry in self.strings.split(|byte| *byte == 0) {
            if let Some(index) = names.iter().position(|name| *name == entry)
                && offsets[index] == usize::MAX
            {
                offsets[index] = start;
            }
            start += entry.len() + 1;
        }
        offsets
    }

    /// Calls `visit` on every token up to the END token; stops at the first
    /// error from `visit`, or with `malformed` if the block is damaged. The
    /// same walk as [`FlatTree::tokens`], without handing each token back
    /// through an iterator (the boot path reads hundreds of them).
    ///
    /// # Errors
    /// `visit`'s error, or `malformed`.
    #[inline(always)]
    pub fn walk<E>(
        &self,
        malformed: E,
        mut visit: impl FnMut(Token<'a>) -> Result<(), E>,
    ) -> Result<(), E> {
        let mut tokens = self.tokens();
        loop {
            match tokens.step() {
                Ok(Step::Token(token)) => visit(token)?,
                Ok(Step::Nop) => {}
                Ok(Step::End) => return Ok(()),
                Err(_) => return Err(malformed),
            }
        }
    }

    /// The structure block, token by token, up to the END token. A
    /// malformed block yields one error and stops.
    #[must_use]
    pub fn tokens(&self) -> Tokens<'a> {
        // SAFETY: u32 accepts every bit pattern; only the aligned middle of
        // the block is reinterpreted.
        let (head, words, _) = unsafe { self.structure.align_to::<u32>() };
        Tokens {
            structure: self.structure,
            words: if head.is_empty() { words } else { &[] },
            strings: self.strings,
            position: 0,
            done: false,
        }
    }
}

/// The iterator of [`FlatTree::tokens`].
#[derive(Clone, Debug)]
pub struct Tokens<'a> {
    structure: &'a [u8],
    /// The structure block as words when it is 4-byte aligned in memory (as
    /// the specification requires), else empty. The target is strict-align,
    /// so big-endian reads through the byte slice would be byte loads.
    words: &'a [u32],
    strings: &'a [u8],
    position: usize,
    done: bool,
}

/// What one step through the structure block found.
enum Step<'a> {
    Token(Token<'a>),
    Nop,
    End,
}

impl<'a> Tokens<'a> {
    /// The big-endian word at byte `offset` (a multiple of 4).
    #[inline(always)]
    fn word(&self, offset: usize) -> Option<u32> {
        if self.words.is_empty() {
            be32_inline(self.structure, offset)
        } else {
            self.words.get(offset / 4).map(|word| u32::from_be(*word))
        }
    }

    #[inline(always)]
    fn step(&mut self) -> Result<Step<'a>, FlatTreeError> {
        let malformed = FlatTreeError::Malformed;
        let structure = self.structure;
        let token = self.word(self.position).ok_or(malformed)?;
        self.position += 4;
        Ok(match token {
            TOKEN_BEGIN_NODE => {
                let name =
                    c_string(structure.get(self.position..).ok_or(malformed)?).ok_or(malformed)?;
                self.position = (self.position + name.len() + 1).next_multiple_of(4);
                Step::Token(Token::BeginNode(name))
            }
            TOKEN_PROPERTY => {
                let length = self.word(self.position).ok_or(malformed)? as usize;
                let offset = self.word(self.position + 4).ok_or(malformed)? as usize;
                let start = self.position + 8;
                let end = start.checked_add(length).ok_or(malformed)?;
                let value = structure.get(start..end).ok_or(malformed)?;
                self.position = end.next_multiple_of(4);
                if offset >= self.strings.len() {
                    return Err(malformed);
                }
                let name = PropertyName {
                    strings: self.strings,
                    offset,
                };
                Step::Token(Token::Property { name, value })
            }
            TOKEN_END_NODE => Step::Token(Token::EndNode),
            TOKEN_NOP => Step::Nop,
            TOKEN_END => Step::End,
            _ => return Err(malformed),
        })
    }
}

impl<'a> Iterator for Tokens<'a> {
    type Item = Result<Token<'a>, FlatTreeError>;

    fn next(&mut self) -> Option<Self::Item> {
        while !self.done {
            match self.step() {
                Ok(Step::Token(token)) => return Some(Ok(token)),
                Ok(Step::Nop) => {}
                Ok(Step::End) => self.done = true,
                Err(error) => {
                    self.done = true;
                    return Some(Err(error));
                }
            }
        }
        None
    }
}

/// A number from 1 or 2 big-endian cells (or a 4/8-byte property).
#[must_use]
pub fn read_cells(bytes: &[u8], cells: usize) -> Option<u64> {
    match cells {
        1 => be32(bytes, 0).map(u64::from),
        2 => be64(bytes, 0),
        _ => None,
    }
}

/// Whether a string-list property value contains `wanted`.
#[must_use]
pub fn string_list_contains(value: &[u8], wanted: &[u8]) -> bool {
    value.split(|byte| *byte == 0).any(|entry| entry == wanted)
}

/// A string property's text (up to its NUL), if it is UTF-8.
#[must_use]
pub fn string_value(value: &[u8]) -> Option<&str> {
    core::str::from_utf8(c_string(value)?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_fdt::{FdtReserveEntry, FdtWriter};

    fn sample() -> Vec<u8> {
        let mut writer =
            FdtWriter::new_with_mem_reserv(&[FdtReserveEntry::new(0x1000, 0x2000).unwrap()])
                .unwrap();
        let root = writer.begin_node("").unwrap();
        writer.property_string("model", "test").unwrap();
        let child = writer.begin_node("child@10").unwrap();
        writer.property_u32("reg", 0x10).unwrap();
        writer.property_null("empty").unwrap();
        writer.end_node(child).unwrap();
        writer.end_node(root).unwrap();
        writer.finish().unwrap()
    }

    #[test]
    fn tokens_come_in_document_order() {
        let blob = sample();
        let tree = FlatTree::new(&blob).unwrap();
        let tokens: Vec<_> = tree
            .tokens()
            .map(|token| match token.unwrap() {
                Token::BeginNode(name) => (0, name.to_vec(), Vec::new()),
                Token::Property { name, value } => (1, name.bytes().to_vec(), value.to_vec()),
                Token::EndNode => (2, Vec::new(), Vec::new()),
            })
            .collect();
        assert_eq!(
            tokens,
            [
                (0, b"".to_vec(), vec![]),
                (1, b"model".to_vec(), b"test\0".to_vec()),
                (0, b"child@10".to_vec(), vec![]),
                (1, b"reg".to_vec(), vec![0, 0, 0, 0x10]),
                (1, b"empty".to_vec(), vec![]),
                (2, vec![], vec![]),
                (2, vec![], vec![]),
            ]
        );
        let [model, reg, absent] = tree.name_offsets([b"model", b"reg", b"absent"]);
        assert_ne!(model, usize::MAX);
        assert_ne!(reg, usize::MAX);
        assert_eq!(absent, usize::MAX);
        let reg_token = tree.tokens().nth(3).unwrap().unwrap();
        assert!(matches!(reg_token, Token::Property { name, .. } if name.offset() == reg));
        let mut walked = 0;
        tree.walk((), |_| {
            walked += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!(walked, 7, "walk visits the same tokens");
        let reservations: Vec<_> = tree.reservations().collect::<Result<_, _>>().unwrap();
        assert_eq!(reservations, [(0x1000, 0x2000)]);
    }

    #[test]
    fn damage_is_an_error_not_a_panic() {
        let blob = sample();
        assert_eq!(
            FlatTree::new(&blob[..3]).unwrap_err(),
            FlatTreeError::BadMagic
        );
        assert_eq!(
            FlatTree::new(&blob[..4]).unwrap_err(),
            FlatTreeError::Malformed
        );
        for cut in (8..blob.len()).step_by(7) {
            let mut bytes = blob[..cut].to_vec();
            bytes[4..8].copy_from_slice(&(cut as u32).to_be_bytes());
            if let Ok(tree) = FlatTree::new(&bytes) {
                // Walking must end, with or without an error.
                let _ = tree.tokens().count();
                let _ = tree.reservations().count();
            }
        }
        // An unknown token.
        let mut bytes = blob.clone();
        let structure_offset =
            u32::from_be_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize;
        bytes[structure_offset + 3] = 7;
        let tree = FlatTree::new(&bytes).unwrap();
        assert_eq!(tree.tokens().next(), Some(Err(FlatTreeError::Malformed)));
    }

    #[test]
    fn helpers() {
        assert_eq!(read_cells(&[0, 0, 0, 5], 1), Some(5));
        assert_eq!(
            read_cells(&[0, 0, 0, 1, 0, 0, 0, 2], 2),
            Some(0x1_0000_0002)
        );
        assert_eq!(read_cells(&[0, 0, 0], 1), None);
        assert!(string_list_contains(
            b"arm,gic-400\0arm,cortex-a15-gic\0",
            b"arm,cortex-a15-gic"
        ));
        assert!(!string_list_contains(b"arm,gic-4000\0", b"arm,gic-400"));
        assert_eq!(string_value(b"qemu-virt\0"), Some("qemu-virt"));
        assert_eq!(
            announced_size(&[0xD0, 0x0D, 0xFE, 0xED, 0, 0, 1, 0]),
            Some(256)
        );
    }
}
