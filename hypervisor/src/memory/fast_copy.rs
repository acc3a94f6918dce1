//! Copying bytes with the widest loads and stores alignment allows.
//!
//! The hypervisor's target is strict-align, so a generic `memcpy` between
//! buffers whose alignments differ falls back to narrow accesses. Package
//! entries are only 4-byte aligned (cpio pads to 4), and guest images are
//! copied on every boot and reset.

/// Copies `source` into `destination` (same length), by 8-byte words when
/// both share their offset modulo 8, by 4-byte words when they share it
/// modulo 4, and bytewise otherwise.
///
/// # Panics
/// If the lengths differ (a caller bug, like `copy_from_slice`).
pub fn copy_bytes(destination: &mut [u8], source: &[u8]) {
    assert_eq!(
        destination.len(),
        source.len(),
        "copy_bytes length mismatch"
    );
    let misalignment = |pointer: usize, modulus: usize| pointer % modulus;
    let destination_address = destination.as_ptr() as usize;
    let source_address = source.as_ptr() as usize;
    if misalignment(destination_address, 8) == misalignment(source_address, 8) {
        copy_words::<u64>(destination, source);
    } else if misalignment(destination_address, 4) == misalignment(source_address, 4) {
        copy_words::<u32>(destination, source);
    } else {
        destination.copy_from_slice(source);
    }
}

/// The word types `copy_bytes` moves.
trait Word: Copy {}
impl Word for u32 {}
impl Word for u64 {}

fn copy_words<W: Word>(destination: &mut [u8], source: &[u8]) {
    // SAFETY: u32 and u64 accept every bit pattern, so viewing the aligned
    // middle of a byte slice as words (and writing words there) is sound.
    let (destination_head, destination_words, destination_tail) =
        unsafe { destination.align_to_mut::<W>() };
    // SAFETY: as above, for reading.
    let (source_head, source_words, source_tail) = unsafe { source.align_to::<W>() };
    if destination_head.len() != source_head.len() || destination_words.len() != source_words.len()
    {
        // Both slices share their alignment, so their splits match; if an
        // implementation of `align_to` ever chose otherwise, stay correct.
        destination_head.copy_from_slice(&source[..destination_head.len()]);
        return copy_fallback(
            destination_words,
            destination_tail,
            &source[destination_head.len()..],
        );
    }
    destination_head.copy_from_slice(source_head);
    // Four words per iteration: the loop overhead otherwise costs as much
    // as the copying.
    let mut to_blocks = destination_words.chunks_exact_mut(4);
    let mut from_blocks = source_words.chunks_exact(4);
    for (to, from) in (&mut to_blocks).zip(&mut from_blocks) {
        to[0] = from[0];
        to[1] = from[1];
        to[2] = from[2];
        to[3] = from[3];
    }
    for (to, from) in to_blocks
        .into_remainder()
        .iter_mut()
        .zip(from_blocks.remainder())
    {
        *to = *from;
    }
    // The tails are as long as each other (the heads and middles are), but
    // the compiler cannot tell: a `copy_from_slice` would keep a
    // length-mismatch panic it can never take. At most 7 bytes.
    for (to, from) in destination_tail.iter_mut().zip(source_tail) {
        *to = *from;
    }
}

fn copy_fallback<W: Word>(words: &mut [W], tail: &mut [u8], source: &[u8]) {
    // SAFETY: as in `copy_words`: a word slice viewed as its bytes.
    let (_, word_bytes, _) = unsafe { words.align_to_mut::<u8>() };
    // Byte by byte: a path no `align_to` takes today, so its speed does
    // not matter, and a loop has no length-mismatch panic to carry.
    for (to, from) in word_bytes.iter_mut().chain(tail).zip(source) {
        *to = *from;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_every_alignment_combination() {
        let source: Vec<u8> = (0..300u32).map(|index| (index * 13 + 7) as u8).collect();
        for source_offset in 0..9 {
            for destination_offset in 0..9 {
                for length in [0, 1, 3, 4, 7, 8, 9, 63, 64, 65, 200] {
                    let mut destination = vec![0xAAu8; 300];
                    let from = &source[source_offset..source_offset + length];
                    copy_bytes(
                        &mut destination[destination_offset..destination_offset + length],
                        from,
                    );
                    assert_eq!(
                        &destination[destination_offset..destination_offset + length],
                        from
                    );
                    assert!(
                        destination[..destination_offset]
                            .iter()
                            .all(|byte| *byte == 0xAA)
                    );
                    assert!(
                        destination[destination_offset + length..]
                            .iter()
                            .all(|byte| *byte == 0xAA)
                    );
                }
            }
        }
    }

    #[test]
    #[should_panic(expected = "length mismatch")]
    fn different_lengths_are_a_bug() {
        copy_bytes(&mut [0; 4], &[0; 5]);
    }
}
