//! Per-CPU request queues: how one physical CPU asks another to start or
//! stop a vCPU, or (for the vGIC) to look at a newly pending interrupt,
//! without touching the other CPU's live vCPU state.
//!
//! # Who pushes, who drains
//!
//! Each physical CPU owns one [`RequestQueue`] (a `static` array indexed by
//! [`CpuId`](crate::vm::ids::CpuId)). Any CPU may post to any queue, the owner
//! included, from thread context or from an interrupt handler, with
//! interrupts masked or not. Only the owner takes requests out: on interrupt
//! exits from its guest and in its idle loop, and it acts on them itself, so
//! a vCPU's registers, list registers and EL1 state are only ever changed by
//! the CPU it runs on. (Taking is sound from any CPU, since the ring is a
//! multi-consumer one, but the design has one consumer and FIFO order is
//! only meaningful with one.)
//!
//! # Nothing waits, nothing is lost
//!
//! There is no lock. The requests that carry parameters (start a vCPU at an
//! entry point, inject interrupt N) go into a bounded ring of slots
//! ([`RequestRing`]: per-slot sequence numbers, after D. Vyukov's bounded
//! queue). A producer claims a position with one compare-and-swap, writes
//! the slot and publishes it with a release store; it never waits for the
//! consumer, and the consumer never waits for a producer. So a producer in
//! an interrupt handler cannot deadlock against the owner it interrupted,
//! and a CPU with interrupts masked can post to a CPU that also has them
//! masked.
//!
//! Back-pressure, request by request, when the ring is full:
//!
//! - **Stop** ([`Request::StopVcpu`]) never needs a slot: it is a bit per VM
//!   in a word of pending stops. Two stops for the same VM before the owner
//!   looks mean one stop, which is all either asked for. A full ring cannot
//!   refuse it.
//! - **Interrupt sync** ([`Request::SyncInterrupts`]) is coalesced the same
//!   way: "re-read this VM's virtual-interrupt state for the vCPU here".
//! - **Inject** ([`Request::InjectInterrupt`]) takes a slot when one is free
//!   and otherwise becomes an interrupt sync for its VM ([`Posted::Coalesced`]).
//!   That is lossless because the request is only a wake-up and a hint: the
//!   vGIC records the interrupt as pending in the target vCPU's distributor
//!   state before it posts, and a sync re-reads all of that state. A real GIC
//!   holds one pending bit per interrupt too, so two assertions of one edge
//!   interrupt before the vCPU sees it are one interrupt either way.
//! - **Start** ([`Request::StartVcpu`]) is refused with `Err(request)` when
//!   the ring is full; the producer keeps the request. It must not spin for
//!   room with interrupts masked (two CPUs waiting for each other's room
//!   would never drain), so the VM core sizes the ring so that a start never
//!   finds it full, and treats a refusal as a failed start: it undoes the
//!   vCPU's pending state and fails the call (PSCI CPU_ON answers
//!   INTERNAL_FAILURE). The bound holds because a vCPU has at most one start
//!   in flight (CPU_ON refuses a vCPU that is already pending), each vCPU has
//!   a physical CPU of its own, and a start overtaken by a reset is only a
//!   stale entry, dropped by the owner's idle loop the next time it runs;
//!   [`CPU_QUEUE_CAPACITY`] leaves ample room on top of that, and the
//!   injections that share the ring fall back to syncs.
//!
//! # Order
//!
//! Coalesced requests are taken before slot requests: all pending stops
//! first, then interrupt syncs, then the ring in FIFO order. Requests from
//! one producer stay in the order it posted them; requests from different
//! producers are ordered by when they claimed their slots. A stop posted
//! after a start still wins even though it is taken first, because the VM
//! core marks the VM stopped (or resetting) before it posts the stop and
//! checks the VM's state again when it acts on the start.
//!
//! # Visibility: post, then SGI
//!
//! A producer posts and then sends the request SGI to the owner (a post to
//! the producer's own CPU needs none: the owner looks before it sleeps).
//! Posting ends with a release store (the slot's sequence number, or the
//! `fetch_or` of a coalesced bit). The SGI is not a memory access, so that
//! release alone does not order it: the sender issues a DSB before it
//! writes the SGI register (`gic::send_request_sgi` does: DSB ISHST on
//! GICv3, DSB SY on GICv2's memory-mapped GICD_SGIR), so the request is
//! visible to every CPU before the
//! SGI can be taken. The owner acknowledges the interrupt and then takes
//! requests with acquire loads, which see the request and everything the
//! producer wrote before it (the VM state it changed under its lock).
//!
//! An SGI sent while the previous one is still pending merges with it. That
//! loses nothing: the merged SGI's request was published before the owner
//! acknowledged, so the drain that follows the acknowledgement finds it.
//! Hence the owner drains after acknowledging, never before. A producer
//! that has claimed a slot but not yet published it hides that slot (and
//! the ones after it) from the consumer, which sees an empty ring there
//! and returns rather than waiting; the producer's own SGI follows its
//! publication and brings the owner back.
//!
//! A [`RequestQueue::drain`] takes the pending coalesced requests and at
//! most one ring's worth of slot requests, so producers that post faster
//! than the owner handles requests cannot keep it in the drain forever;
//! whatever they post meanwhile comes with its own SGI.
//!
//! # No heap, zero-initialised
//!
//! Everything is fixed-size. `new` is a `const fn` whose value is all zero
//! bytes (the slots' sequence numbers are kept relative to the slot's index
//! so that the initial ones are zero, and no field has padding: checked
//! below), so the per-CPU `static`s go to `.bss` and cost the image nothing.

use core::cell::UnsafeCell;
use core::mem::MaybeUninit;
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crate::boot::manifest::MAX_VMS;
use crate::memory::address::GuestPhysAddr;
use crate::vm::ids::{VcpuId, VmId};

/// Slots in each CPU's ring (a power of two).
pub const CPU_QUEUE_CAPACITY: usize = 16;

/// The queue each physical CPU owns.
pub type CpuRequestQueue = RequestQueue<CPU_QUEUE_CAPACITY>;

const _: () = assert!(
    MAX_VMS <= u32::BITS as usize,
    "the coalesced requests keep a bit per VM in a u32"
);

/// What one CPU asks the CPU that owns a queue to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    /// Run vCPU `vcpu` of VM `vm` on this CPU from `entry`, with x0 =
    /// `argument` (CPU_ON's context id; the device tree's address for a
    /// VM's vCPU 0). The VM core checks when it acts on it that the vCPU is
    /// still waiting to start, in the VM's run that `generation` names (its
    /// reset count): a reset or a stop may have overtaken it.
    /// Takes a slot; refused when the ring is full.
    StartVcpu {
        vm: VmId,
        vcpu: VcpuId,
        entry: GuestPhysAddr,
        argument: u64,
        generation: u32,
    },
    /// Stop the vCPU of VM `vm` running on this CPU: its VM stopped, or
    /// another of its vCPUs is resetting it. Moot if no vCPU of `vm` runs
    /// here when it is taken. Coalesced.
    StopVcpu { vm: VmId },
    /// Interrupt `intid` (a GIC INTID) became pending for vCPU `vcpu` of VM
    /// `vm`, which runs on this CPU, and is already recorded as pending in
    /// the vGIC's state. Takes a slot if one is free; otherwise posted as a
    /// [`Request::SyncInterrupts`] for `vm`.
    InjectInterrupt { vm: VmId, vcpu: VcpuId, intid: u32 },
    /// Re-read VM `vm`'s virtual-interrupt state for its vCPU on this CPU:
    /// something changed that no slot request describes. Coalesced.
    SyncInterrupts { vm: VmId },
}

impl Request {
    /// The VM the request is about.
    #[must_use]
    pub const fn vm(&self) -> VmId {
        match *self {
            Self::StartVcpu { vm, .. }
            | Self::StopVcpu { vm }
            | Self::InjectInterrupt { vm, .. }
            | Self::SyncInterrupts { vm } => vm,
        }
    }
}

/// How an accepted request was queued.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Posted {
    /// In a slot of its own.
    Queued,
    /// Merged into a coalesced request (a stop, or an interrupt sync).
    Coalesced,
}

/// One CPU's requests: the coalesced ones as bits, the others in a ring of
/// `N` slots. See the module documentation for the protocol.
pub struct RequestQueue<const N: usize> {
    ring: RequestRing<Request, N>,
    /// Bit `vm`: a [`Request::StopVcpu`] for that VM is pending. Bit
    /// `SYNCS + vm`: a [`Request::SyncInterrupts`] for it. One word, so
    /// that [`is_empty`](Self::is_empty) (the notify path asks it) reads
    /// one.
    coalesced: AtomicU64,
}

const fn vm_bit(vm: VmId) -> u64 {
    1 << vm.index()
}

/// Where the interrupt syncs start in `RequestQueue::coalesced`.
const SYNCS: u32 = 32;
const _: () = assert!(MAX_VMS <= SYNCS as usize);

impl<const N: usize> RequestQueue<N> {
    /// An empty queue, all zero bytes.
    #[must_use]
    pub const fn new() -> Self {
        Self {
            ring: RequestRing::new(),
            coalesced: AtomicU64::new(0),
        }
    }

    /// Posts `request` to the owner; the caller sends the request SGI
    /// afterwards (unless the owner is this CPU). Stops and syncs are always
    /// accepted, injections too (coalesced into a sync when the ring is
    /// full). A start that finds the ring full is handed back as
    /// `Err(request)`, and nothing is posted.
    ///
    /// # Errors
    ///
    /// `Err(request)`: a [`Request::StartVcpu`] and the ring is full.
    pub fn post(&self, request: Request) -> Result<Posted, Request> {
        match request {
            Request::StopVcpu { vm } => {
                // Release: pairs with the owner's acquire in `pop`.
                self.coalesced.fetch_or(vm_bit(vm), Ordering::Release);
                Ok(Posted::Coalesced)
            }
            Request::SyncInterrupts { vm } => {
                self.coalesced
                    .fetch_or(vm_bit(vm) << SYNCS, Ordering::Release);
                Ok(Posted::Coalesced)
            }
            Request::InjectInterrupt { vm, .. } => match self.ring.push(request) {
                Ok(()) => Ok(Posted::Queued),
                Err(_) => {
                    // The vGIC holds the interrupt pending already: a sync
                    // makes the owner find it (module documentation).
                    self.coalesced
                        .fetch_or(vm_bit(vm) << SYNCS, Ordering::Release);
                    Ok(Posted::Coalesced)
                }
            },
            Request::StartVcpu { .. } => self.ring.push(request).map(|()| Posted::Queued),
        }
    }

    /// Takes the next request: pending stops first, then interrupt syncs,
    /// then the ring's oldest. `None` when nothing is visible.
    pub fn pop(&self) -> Option<Request> {
        if let Some(vm) = take_lowest_bit(&self.coalesced, 0) {
            return Some(Request::StopVcpu { vm });
        }
        if let Some(vm) = take_lowest_bit(&self.coalesced, SYNCS) {
            return Some(Request::SyncInterrupts { vm });
        }
        self.ring.pop()
    }

    /// Whether nothing waits: checked before a drain on the interrupt
    /// exit path, which most interrupts (a guest's timer) take with no
    /// request at all, and before a doorbell is rung.
    #[inline]
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.coalesced.load(Ordering::Acquire) == 0 && self.ring.is_empty()
    }

    /// Hands `handle` the pending coalesced requests and at most `N` slot
    /// requests, in [`pop`](Self::pop) order, and returns how many it
    /// handed over. The bound keeps producers from holding the owner here;
    /// everything posted before the call (before the SGI that prompted it
    /// was acknowledged) is within it. A request is taken out only just
    /// before `handle` gets it, so when `handle` does not return (it parks
    /// the vCPU and idles) the rest stay queued.
    pub fn drain(&self, mut handle: impl FnMut(Request)) -> usize {
        let mut handed = 0;
        while let Some(vm) = take_lowest_bit(&self.coalesced, 0) {
            handle(Request::StopVcpu { vm });
            handed += 1;
        }
        while let Some(vm) = take_lowest_bit(&self.coalesced, SYNCS) {
            handle(Request::SyncInterrupts { vm });
            handed += 1;
        }
        for _ in 0..N {
            let Some(request) = self.ring.pop() else {
                break;
            };
            handle(request);
            handed += 1;
        }
        handed
    }
}

impl<const N: usize> Default for RequestQueue<N> {
    fn default() -> Self {
        Self::new()
    }
}

/// Clears the lowest set bit of the 32 from `shift` of `word` and returns
/// its VM; `None` when none is set. Only consumers clear bits, so the loop
/// only repeats when another consumer took the same bit.
fn take_lowest_bit(word: &AtomicU64, shift: u32) -> Option<VmId> {
    loop {
        // Acquire: pairs with the producer's release `fetch_or`.
        let bits = (word.load(Ordering::Acquire) >> shift) & u64::from(u32::MAX);
        if bits == 0 {
            return None;
        }
        let bit = bits & bits.wrapping_neg();
        if word.fetch_and(!(bit << shift), Ordering::AcqRel) & (bit << shift) != 0 {
            // Set bits are below MAX_VMS: only `VmId`s are posted.
            return VmId::new(bit.trailing_zeros() as usize);
        }
    }
}

/// A slot of the ring and its sequence number.
///
/// The sequence number says whose turn the slot is: equal to a producer's
/// position, the slot is free for it; one more, it holds the value for the
/// consumer at that position; `N` more, it was emptied and is free for the
/// next lap. It is stored minus the slot's index, so that the initial
/// numbers (slot `i` starts at `i`) are all stored as zero.
struct Slot<T> {
    relative_sequence: AtomicUsize,
    value: UnsafeCell<MaybeUninit<T>>,
}

impl<T> Slot<T> {
    const fn new() -> Self {
        Self {
            relative_sequence: AtomicUsize::new(0),
            value: UnsafeCell::new(MaybeUninit::zeroed()),
        }
    }

    /// Acquire: pairs with the release in `publish`, so the value written
    /// (by a producer) or read (by the consumer) before is done.
    fn sequence(&self, index: usize) -> usize {
        self.relative_sequence
            .load(Ordering::Acquire)
            .wrapping_add(index)
    }

    fn publish(&self, index: usize, sequence: usize) {
        self.relative_sequence
            .store(sequence.wrapping_sub(index), Ordering::Release);
    }
}

/// A bounded multi-producer queue of `N` slots of `T`, without locks or
/// heap; see the module documentation. `N` is a power of two, at least 2.
pub struct RequestRing<T: Copy, const N: usize> {
    /// The position the next producer claims (it only grows; the slot is
    /// the position modulo `N`).
    tail: AtomicUsize,
    /// The position the consumer takes next.
    head: AtomicUsize,
    slots: [Slot<T>; N],
}

// SAFETY: the ring hands each `T` from the thread that pushed it to the one
// that pops it (so `T: Send`), and a slot's value is only touched by the
// one thread whose position the slot's sequence number admits: a producer
// after claiming the position with a compare-and-swap on `tail`, the
// consumer after claiming it on `head`, with acquire/release on the
// sequence number ordering one owner's access before the next one's.
unsafe impl<T: Copy + Send, const N: usize> Sync for RequestRing<T, N> {}

impl<T: Copy, const N: usize> RequestRing<T, N> {
    /// An empty ring, all zero bytes.
    #[must_use]
    pub const fn new() -> Self {
        const {
            // With one slot, a slot just filled (sequence position + 1)
            // would read as free for the next position.
            assert!(
                N >= 2 && N.is_power_of_two(),
                "a ring has a power of two slots, at least 2 (positions wrap with usize)"
            );
        }
        Self {
            tail: AtomicUsize::new(0),
            head: AtomicUsize::new(0),
            slots: [const { Slot::new() }; N],
        }
    }

    /// How many values the ring holds when full.
    #[must_use]
    pub const fn capacity(&self) -> usize {
        N
    }

    /// Appends `value`, or hands it back when every slot is taken (a slot
    /// the consumer is emptying at this instant counts as taken). Never
    /// waits: the loop only repeats when another producer claimed the
    /// position first.
    ///
    /// # Errors
    ///
    /// `Err(value)` when the ring is full.
    pub fn push(&self, value: T) -> Result<(), T> {
        let mut position = self.tail.load(Ordering::Relaxed);
        loop {
            let index = position % N;
            let slot = &self.slots[index];
            // How far the slot is ahead of this position (wrapping).
            let lead = slot.sequence(index).wrapping_sub(position) as isize;
            if lead == 0 {
                // Free for this position: claim it. Relaxed: the slot's
                // sequence number, not `tail`, orders the slot's contents.
                match self.tail.compare_exchange_weak(
                    position,
                    position.wrapping_add(1),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => {
                        // SAFETY: the claim makes this producer the slot's
                        // only user until it publishes below; the consumer
                        // finished reading the previous lap's value before
                        // publishing the sequence this load acquired.
                        unsafe { slot.value.get().write(MaybeUninit::new(value)) };
                        slot.publish(index, position.wrapping_add(1));
                        return Ok(());
                    }
                    Err(current) => position = current,
                }
            } else if lead < 0 {
                // Still holding the value from a lap ago: full.
                return Err(value);
            } else {
                // Another producer took this position already.
                position = self.tail.load(Ordering::Relaxed);
            }
        }
    }

    /// Whether no producer has claimed a position the consumer has not
    /// taken. One that claims one just after is followed by its SGI.
    #[inline]
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.tail.load(Ordering::Acquire) == self.head.load(Ordering::Relaxed)
    }

    /// Takes the oldest value; `None` when the ring is empty, or when the
    /// oldest position is claimed by a producer that has not published yet.
    /// Never waits.
    pub fn pop(&self) -> Option<T> {
        let mut position = self.head.load(Ordering::Relaxed);
        loop {
            let index = position % N;
            let slot = &self.slots[index];
            let lead = slot.sequence(index).wrapping_sub(position.wrapping_add(1)) as isize;
            if lead == 0 {
                match self.head.compare_exchange_weak(
                    position,
                    position.wrapping_add(1),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => {
                        // SAFETY: the sequence number (acquired above)
                        // says the producer finished writing this slot, and
                        // the claim makes this the slot's only user until
                        // it publishes it free below.
                        let value = unsafe { *slot.value.get() };
                        slot.publish(index, position.wrapping_add(N));
                        // SAFETY: a slot holding a value for this position
                        // was written by `push` with an initialised `T`.
                        return Some(unsafe { value.assume_init() });
                    }
                    Err(current) => position = current,
                }
            } else if lead < 0 {
                return None;
            } else {
                // Another consumer took this position already.
                position = self.head.load(Ordering::Relaxed);
            }
        }
    }
}

impl<T: Copy, const N: usize> Default for RequestRing<T, N> {
    fn default() -> Self {
        Self::new()
    }
}

// No padding anywhere in the per-CPU queue: every byte belongs to a field,
// so the all-zero fields of `new` make an all-zero value (`.bss`), and the
// test below may read its bytes.
const _: () = {
    let slot = size_of::<usize>() + size_of::<Request>();
    assert!(size_of::<Slot<Request>>() == slot);
    let ring = 2 * size_of::<usize>() + CPU_QUEUE_CAPACITY * slot;
    assert!(size_of::<RequestRing<Request, CPU_QUEUE_CAPACITY>>() == ring);
    assert!(size_of::<CpuRequestQueue>() == ring + size_of::<u64>());
};

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::thread;

    fn vm(index: usize) -> VmId {
        VmId::new(index).unwrap()
    }

    fn vcpu(index: usize) -> VcpuId {
        VcpuId::new(index).unwrap()
    }

    fn start(vm_index: usize, argument: u64) -> Request {
        Request::StartVcpu {
            vm: vm(vm_index),
            vcpu: vcpu(1),
            entry: GuestPhysAddr(0x4008_0000),
            argument,
            generation: 0,
        }
    }

    fn inject(vm_index: usize, intid: u32) -> Request {
        Request::InjectInterrupt {
            vm: vm(vm_index),
            vcpu: vcpu(0),
            intid,
        }
    }

    fn drained<const N: usize>(queue: &RequestQueue<N>) -> Vec<Request> {
        let mut taken = Vec::new();
        queue.drain(|request| taken.push(request));
        taken
    }

    #[test]
    fn ring_is_first_in_first_out_across_many_laps() {
        let ring = RequestRing::<u64, 4>::new();
        let mut next_in = 0;
        let mut next_out = 0;
        // Three in, two out, again and again: the positions go round the
        // four slots many times with the ring never empty nor full.
        for _ in 0..100 {
            for _ in 0..3 {
                if ring.push(next_in).is_ok() {
                    next_in += 1;
                }
            }
            for _ in 0..2 {
                assert_eq!(ring.pop(), Some(next_out));
                next_out += 1;
            }
        }
        while let Some(value) = ring.pop() {
            assert_eq!(value, next_out);
            next_out += 1;
        }
        assert_eq!(next_out, next_in);
        assert!(next_in > 4 * 20, "the ring went round many times");
    }

    #[test]
    fn a_full_ring_hands_the_value_back_and_keeps_what_it_holds() {
        let ring = RequestRing::<u32, 8>::new();
        assert_eq!(ring.capacity(), 8);
        for value in 0..8 {
            assert_eq!(ring.push(value), Ok(()));
        }
        assert_eq!(ring.push(8), Err(8));
        assert_eq!(ring.push(9), Err(9));
        // One out makes room for exactly one.
        assert_eq!(ring.pop(), Some(0));
        assert_eq!(ring.push(8), Ok(()));
        assert_eq!(ring.push(9), Err(9));
        let rest: Vec<u32> = core::iter::from_fn(|| ring.pop()).collect();
        assert_eq!(rest, (1..=8).collect::<Vec<_>>());
        assert_eq!(ring.pop(), None);
    }

    #[test]
    fn stops_for_one_vm_coalesce_and_come_before_slot_requests() {
        let queue = RequestQueue::<4>::new();
        assert_eq!(queue.post(start(2, 7)), Ok(Posted::Queued));
        let stop = |index| Request::StopVcpu { vm: vm(index) };
        assert_eq!(queue.post(stop(3)), Ok(Posted::Coalesced));
        assert_eq!(queue.post(stop(3)), Ok(Posted::Coalesced));
        assert_eq!(queue.post(stop(1)), Ok(Posted::Coalesced));
        assert_eq!(drained(&queue), [stop(1), stop(3), start(2, 7)]);
        assert_eq!(queue.pop(), None);
    }

    #[test]
    fn stops_and_syncs_share_a_word_but_keep_their_order_and_their_vms() {
        let queue = RequestQueue::<4>::new();
        let stop = |index| Request::StopVcpu { vm: vm(index) };
        let sync = |index| Request::SyncInterrupts { vm: vm(index) };
        // The same VM in both halves, and the highest VM index in each.
        for request in [
            sync(3),
            stop(3),
            sync(0),
            stop(MAX_VMS - 1),
            sync(MAX_VMS - 1),
        ] {
            assert_eq!(queue.post(request), Ok(Posted::Coalesced));
        }
        assert_eq!(queue.post(start(2, 7)), Ok(Posted::Queued));
        assert_eq!(
            drained(&queue),
            [
                stop(3),
                stop(MAX_VMS - 1),
                sync(0),
                sync(3),
                sync(MAX_VMS - 1),
                start(2, 7)
            ]
        );
        assert!(queue.is_empty());
        // Taking a stop leaves the same VM's sync pending, and back.
        queue.post(stop(1)).unwrap();
        queue.post(sync(1)).unwrap();
        assert_eq!(queue.pop(), Some(stop(1)));
        assert!(!queue.is_empty());
        assert_eq!(queue.pop(), Some(sync(1)));
        assert_eq!(queue.pop(), None);
    }

    #[test]
    fn a_queue_is_empty_until_anything_is_posted_and_again_after_the_drain() {
        let queue: RequestQueue<4> = RequestQueue::new();
        assert!(queue.is_empty());
        queue.post(start(0, 1)).unwrap();
        assert!(!queue.is_empty());
        drained(&queue);
        assert!(queue.is_empty());
        queue.post(Request::SyncInterrupts { vm: vm(1) }).unwrap();
        assert!(!queue.is_empty());
        drained(&queue);
        queue.post(Request::StopVcpu { vm: vm(2) }).unwrap();
        assert!(!queue.is_empty());
        drained(&queue);
        assert!(queue.is_empty());
    }

    #[test]
    fn a_stop_needs_no_slot() {
        let queue = RequestQueue::<2>::new();
        assert_eq!(queue.post(start(0, 1)), Ok(Posted::Queued));
        assert_eq!(queue.post(start(0, 2)), Ok(Posted::Queued));
        let stop = Request::StopVcpu { vm: vm(0) };
        assert_eq!(queue.post(stop), Ok(Posted::Coalesced));
        assert_eq!(drained(&queue), [stop, start(0, 1), start(0, 2)]);
    }

    #[test]
    fn a_start_that_finds_the_ring_full_is_handed_back_whole() {
        let queue = RequestQueue::<2>::new();
        assert_eq!(queue.post(start(0, 1)), Ok(Posted::Queued));
        assert_eq!(queue.post(inject(0, 33)), Ok(Posted::Queued));
        assert_eq!(queue.post(start(5, 2)), Err(start(5, 2)));
        // Nothing of the refused start was queued.
        assert_eq!(drained(&queue), [start(0, 1), inject(0, 33)]);
        assert_eq!(queue.post(start(5, 2)), Ok(Posted::Queued));
        assert_eq!(queue.pop(), Some(start(5, 2)));
    }

    #[test]
    fn injections_beyond_the_ring_become_one_sync_per_vm() {
        let queue = RequestQueue::<2>::new();
        assert_eq!(queue.post(inject(1, 40)), Ok(Posted::Queued));
        assert_eq!(queue.post(inject(1, 41)), Ok(Posted::Queued));
        // Twice the ring's worth more, for two VMs: none refused.
        for intid in 42..46 {
            assert_eq!(queue.post(inject(1, intid)), Ok(Posted::Coalesced));
            assert_eq!(queue.post(inject(4, intid)), Ok(Posted::Coalesced));
        }
        let sync = |index| Request::SyncInterrupts { vm: vm(index) };
        assert_eq!(
            drained(&queue),
            [sync(1), sync(4), inject(1, 40), inject(1, 41)]
        );
        assert_eq!(queue.post(sync(1)), Ok(Posted::Coalesced));
        assert_eq!(queue.pop(), Some(sync(1)));
        assert_eq!(queue.pop(), None);
    }

    #[test]
    fn a_drain_ends_even_when_requests_keep_coming() {
        let queue = RequestQueue::<4>::new();
        for argument in 0..4 {
            queue.post(start(0, argument)).unwrap();
        }
        let mut arguments = Vec::new();
        // Every request handled posts another, as a flood of producers
        // would: the drain still ends after one ring's worth.
        let handed = queue.drain(|request| {
            if let Request::StartVcpu { argument, .. } = request {
                arguments.push(argument);
                queue.post(start(0, argument + 100)).unwrap();
            }
        });
        assert_eq!(handed, 4);
        assert_eq!(arguments, [0, 1, 2, 3]);
        // What came meanwhile is still there, in order.
        assert_eq!(queue.pop(), Some(start(0, 100)));
    }

    #[test]
    fn a_drain_that_does_not_come_back_leaves_the_rest_queued() {
        let queue = RequestQueue::<4>::new();
        queue.post(Request::StopVcpu { vm: vm(2) }).unwrap();
        queue.post(start(2, 9)).unwrap();
        // As `pop` one at a time: the owner parks on the stop, and its idle
        // loop later finds the start.
        assert_eq!(queue.pop(), Some(Request::StopVcpu { vm: vm(2) }));
        assert_eq!(drained(&queue), [start(2, 9)]);
    }

    static ZERO_CHECKED: CpuRequestQueue = CpuRequestQueue::new();

    #[test]
    fn a_new_queue_is_all_zero_bytes_and_empty() {
        let size = size_of::<CpuRequestQueue>();
        let base = (&raw const ZERO_CHECKED).cast::<u8>();
        // SAFETY: `ZERO_CHECKED` lives for the whole program and `size` is
        // its size. Every byte of it is initialised: it has no padding (the
        // const assertion on its layout) and its slot values are
        // `MaybeUninit::zeroed`, which initialises every byte. Nothing
        // writes it while the bytes are viewed: this test is its only user,
        // and it only posts after it has finished looking.
        let bytes = unsafe { core::slice::from_raw_parts(base, size) };
        assert!(bytes.iter().all(|&byte| byte == 0));
        // And all zeros is the empty state, not merely a pattern.
        assert_eq!(ZERO_CHECKED.pop(), None);
        assert_eq!(ZERO_CHECKED.post(start_request()), Ok(Posted::Queued));
        assert_eq!(ZERO_CHECKED.pop(), Some(start_request()));
    }

    fn start_request() -> Request {
        start(0, 0)
    }

    /// Several producers push far more than the ring holds while one
    /// consumer drains: each value arrives exactly once, and each
    /// producer's values arrive in the order it pushed them.
    #[test]
    fn concurrent_producers_lose_and_duplicate_nothing() {
        const PRODUCERS: u64 = 4;
        const EACH: u64 = 4_000;
        let ring = RequestRing::<u64, 8>::new();
        let finished = AtomicUsize::new(0);
        let refusals = AtomicUsize::new(0);
        let mut next_expected = [0u64; PRODUCERS as usize];
        thread::scope(|scope| {
            for producer in 0..PRODUCERS {
                let ring = &ring;
                let finished = &finished;
                let refusals = &refusals;
                scope.spawn(move || {
                    for sequence in 0..EACH {
                        let mut value = (producer << 32) | sequence;
                        // Back-pressure: keep the value and try again.
                        while let Err(back) = ring.push(value) {
                            value = back;
                            refusals.fetch_add(1, Ordering::Relaxed);
                            thread::yield_now();
                        }
                    }
                    finished.fetch_add(1, Ordering::Release);
                });
            }
            // Start only once the ring has been found full, so the
            // refusal path is certainly part of the run.
            while refusals.load(Ordering::Relaxed) == 0 {
                thread::yield_now();
            }
            loop {
                // Read before popping: once every producer has finished
                // and the ring is then empty, nothing more can come.
                let done = finished.load(Ordering::Acquire) == PRODUCERS as usize;
                match ring.pop() {
                    Some(value) => {
                        let producer = (value >> 32) as usize;
                        assert_eq!(value & 0xFFFF_FFFF, next_expected[producer]);
                        next_expected[producer] += 1;
                    }
                    None if done => break,
                    None => thread::yield_now(),
                }
            }
        });
        assert_eq!(next_expected, [EACH; PRODUCERS as usize]);
        assert_eq!(ring.pop(), None);
    }

    /// The typed queue under the same load: starts retried on refusal all
    /// arrive once; injections arrive once when queued, and any that were
    /// coalesced are covered by a later sync of their VM; stops coalesce.
    #[test]
    fn concurrent_posts_to_one_cpu_are_all_accounted_for() {
        const PRODUCERS: usize = 3;
        const EACH: u64 = 3_000;
        let queue = RequestQueue::<8>::new();
        let finished = AtomicUsize::new(0);
        let mut starts: HashMap<(usize, u64), u32> = HashMap::new();
        let mut injections: HashMap<(usize, u32), u32> = HashMap::new();
        let mut syncs = [0u64; PRODUCERS];
        let mut stops = 0u64;
        let mut queued_injections = [0u64; PRODUCERS];
        let mut coalesced_injections = [0u64; PRODUCERS];
        thread::scope(|scope| {
            let mut producers = Vec::new();
            for producer in 0..PRODUCERS {
                let queue = &queue;
                let finished = &finished;
                producers.push(scope.spawn(move || {
                    let (mut queued, mut coalesced) = (0u64, 0u64);
                    for sequence in 0..EACH {
                        let mut request = start(producer, sequence);
                        while let Err(back) = queue.post(request) {
                            request = back;
                            thread::yield_now();
                        }
                        match queue.post(inject(producer, sequence as u32)) {
                            Ok(Posted::Queued) => queued += 1,
                            Ok(Posted::Coalesced) => coalesced += 1,
                            Err(refused) => panic!("injection refused: {refused:?}"),
                        }
                        if sequence % 1000 == 0 {
                            queue.post(Request::StopVcpu { vm: vm(0) }).unwrap();
                        }
                    }
                    finished.fetch_add(1, Ordering::Release);
                    (queued, coalesced)
                }));
            }
            loop {
                let done = finished.load(Ordering::Acquire) == PRODUCERS;
                let handed = queue.drain(|request| match request {
                    Request::StartVcpu { vm, argument, .. } => {
                        *starts.entry((vm.index(), argument)).or_default() += 1;
                    }
                    Request::InjectInterrupt { vm, intid, .. } => {
                        *injections.entry((vm.index(), intid)).or_default() += 1;
                    }
                    Request::SyncInterrupts { vm } => syncs[vm.index()] += 1,
                    Request::StopVcpu { vm } => {
                        assert_eq!(vm.index(), 0);
                        stops += 1;
                    }
                });
                if handed == 0 {
                    if done {
                        break;
                    }
                    thread::yield_now();
                }
            }
            for (producer, handle) in producers.into_iter().enumerate() {
                (queued_injections[producer], coalesced_injections[producer]) =
                    handle.join().unwrap();
            }
        });
        assert_eq!(starts.len(), PRODUCERS * EACH as usize);
        assert!(starts.values().all(|&count| count == 1));
        for producer in 0..PRODUCERS {
            let delivered = injections.keys().filter(|(vm, _)| *vm == producer).count() as u64;
            assert_eq!(delivered, queued_injections[producer]);
            assert_eq!(
                queued_injections[producer] + coalesced_injections[producer],
                EACH
            );
            // Each coalesced injection set its VM's sync bit; the final
            // drain found the queue empty, so every such bit was taken.
            if coalesced_injections[producer] > 0 {
                assert!(syncs[producer] > 0);
            }
        }
        assert!(injections.values().all(|&count| count == 1));
        // 30 stops posted, coalesced into at least one and at most 30.
        assert!((1..=3 * 10).contains(&stops));
        assert_eq!(queue.pop(), None);
    }
}
