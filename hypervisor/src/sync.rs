//! The hypervisor's spin lock.
//!
//! The same lock as `spin::Mutex` (a flag taken with an acquiring
//! compare-and-swap, released with a releasing store), but its waiting is
//! out of line. The CPUs Tessera runs on lack the LSE atomics, so each
//! compare-and-swap is a load-exclusive/store-exclusive sequence, and
//! `spin::Mutex::lock` inlines the whole wait loop (its retries and the
//! spin on the flag) at every one of the ~80 places a lock is taken. Here
//! a lock site holds only a call to one shared assembly routine that
//! changes just two scratch registers and the link register, so the registers the site has
//! live stay where they are (a call to a Rust function would clobber all
//! the caller-saved ones and make each site spill around it).
//! [`Mutex::lock_inline`] keeps the first attempt at the site, for paths
//! measured to the instruction.

use core::cell::UnsafeCell;
use core::marker::PhantomData;
use core::ops::{Deref, DerefMut};
use core::ptr::NonNull;
use core::sync::atomic::{AtomicBool, Ordering};

/// A spin lock around a `T`.
pub struct Mutex<T> {
    locked: AtomicBool,
    data: UnsafeCell<T>,
}

// SAFETY: the lock hands out the data to one holder at a time, so sharing
// the lock between CPUs moves the `T` between them, which `T: Send` allows.
unsafe impl<T: Send> Sync for Mutex<T> {}

/// Access to a [`Mutex`]'s data while it is held; dropping it releases
/// the lock. The data is held by pointer, not as `&mut T`: a reference
/// passed into a function promises the compiler that nobody else touches
/// the data until that function returns, which a guard dropped inside it
/// would break (std's guards do the same). Not `Send`: a lock is released
/// by the CPU that took it.
pub struct MutexGuard<'a, T> {
    locked: &'a AtomicBool,
    data: NonNull<T>,
    _data: PhantomData<&'a mut T>,
}

impl<T> Mutex<T> {
    pub const fn new(value: T) -> Self {
        Self {
            locked: AtomicBool::new(false),
            data: UnsafeCell::new(value),
        }
    }

    /// Takes the lock, spinning while another CPU holds it.
    #[inline(always)]
    pub fn lock(&self) -> MutexGuard<'_, T> {
        take(&self.locked);
        self.guard()
    }

    /// The same as [`Mutex::lock`], with the first attempt inline: the
    /// compare-and-swap that takes a free lock, and a call to the shared
    /// Rust wait loop when it fails. For paths measured to the instruction
    /// (the call to `tessera_lock_take` costs a branch and a return more),
    /// and for functions with a `match` compiled to a jump table: LLVM
    /// cannot size inline assembly, so a function holding the call keeps
    /// its jump tables at four bytes an entry instead of one.
    #[inline(always)]
    pub fn lock_inline(&self) -> MutexGuard<'_, T> {
        if self
            .locked
            .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            wait_and_take(&self.locked);
        }
        self.guard()
    }

    /// Takes the lock if nobody holds it.
    #[inline(always)]
    pub fn try_lock(&self) -> Option<MutexGuard<'_, T>> {
        // Strong, so that a spurious failure does not read as "held".
        self.locked
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
            .then(|| self.guard())
    }

    /// The guard of a lock this CPU has just taken.
    #[inline(always)]
    fn guard(&self) -> MutexGuard<'_, T> {
        MutexGuard {
            locked: &self.locked,
            // An `UnsafeCell`'s pointer is never null.
            data: NonNull::from(&self.data).cast(),
            _data: PhantomData,
        }
    }
}

/// Takes `locked`, spinning while another CPU holds it: a call to the one
/// shared routine `tessera_lock_take` below. The routine changes only x16,
/// x17 and the link register, so the call leaves every other register live
/// across it, where a call to a Rust function would clobber all the
/// caller-saved ones and make each lock site spill around it.
#[cfg(target_os = "none")]
#[inline(always)]
fn take(locked: &AtomicBool) {
    // SAFETY: `tessera_lock_take` takes the flag at x15 with an acquiring
    // exclusive load and store, and changes only x16, x17 and the link
    // register, as declared; it uses no stack and leaves the flags alone.
    // (The address is not in x16 or x17, which a linker veneer on the way
    // to a `bl` target may change.)
    unsafe {
        core::arch::asm!(
            "bl tessera_lock_take",
            in("x15") locked.as_ptr(),
            out("x16") _,
            out("x17") _,
            out("lr") _,
            options(nostack, preserves_flags),
        );
    }
}

// The lock routine: one acquiring compare-and-swap of 0 to 1 on the byte at
// x15, which is all a free lock needs; when it is held, wait with plain
// loads (which do not take the cache line from the holder) until it is
// clear, and try again. Also again when the exclusive store fails.
#[cfg(target_os = "none")]
core::arch::global_asm!(
    r#"
    .section .text.tessera_lock_take, "ax"
    .p2align 2
    .global tessera_lock_take
    .hidden tessera_lock_take
tessera_lock_take:
1:  ldaxrb  w16, [x15]
    cbnz    w16, 2f
    mov     w17, #1
    stxrb   w16, w17, [x15]
    cbnz    w16, 1b
    ret
2:  clrex
3:  ldrb    w16, [x15]
    cbz     w16, 1b
    isb
    b       3b
"#
);

/// The same for host tests, in Rust.
#[cfg(not(target_os = "none"))]
fn take(locked: &AtomicBool) {
    wait_and_take(locked);
}

/// Spins until `locked` is clear, then takes it; again if another CPU was
/// faster. [`Mutex::lock_inline`]'s wait, out of line and shared; only
/// taken when the lock was held (or, rarely, when the exclusive store of
/// the first attempt failed).
#[cold]
#[inline(never)]
fn wait_and_take(locked: &AtomicBool) {
    loop {
        // Wait with plain loads, which do not take the cache line from
        // the holder, before trying again.
        while locked.load(Ordering::Relaxed) {
            core::hint::spin_loop();
        }
        if locked
            .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
        {
            return;
        }
    }
}

impl<T> Deref for MutexGuard<'_, T> {
    type Target = T;

    #[inline(always)]
    fn deref(&self) -> &T {
        // SAFETY: the guard holds the lock, so nothing else reaches the
        // data until it is dropped, and this borrow of the guard ends first.
        unsafe { self.data.as_ref() }
    }
}

impl<T> DerefMut for MutexGuard<'_, T> {
    #[inline(always)]
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as for `deref`; the `&mut self` borrow makes this the
        // only reference made through the guard meanwhile.
        unsafe { self.data.as_mut() }
    }
}

impl<T> Drop for MutexGuard<'_, T> {
    #[inline(always)]
    fn drop(&mut self) {
        self.locked.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::thread;

    #[test]
    fn a_held_lock_cannot_be_taken_again_until_released() {
        let lock = Mutex::new(1);
        let mut guard = lock.lock();
        *guard += 1;
        assert!(lock.try_lock().is_none());
        drop(guard);
        assert_eq!(*lock.try_lock().expect("released"), 2);
        assert_eq!(*lock.lock(), 2);
    }

    #[test]
    fn contending_threads_each_get_the_lock_in_turn() {
        let lock = Arc::new(Mutex::new(0u64));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let lock = Arc::clone(&lock);
                thread::spawn(move || {
                    for _ in 0..10_000 {
                        *lock.lock() += 1;
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        assert_eq!(*lock.lock(), 40_000);
    }
}
