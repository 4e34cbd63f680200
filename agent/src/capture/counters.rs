//! The per-pod counters of `MESHD_PENDING`, memory-mapped (`BPF_F_MMAPABLE`): the programs
//! add to them with `BPF_XADD`, the agent with atomics on the same memory, so taking an
//! original destination on accept costs no extra syscall.

use std::{
    os::fd::{AsFd, AsRawFd},
    ptr::NonNull,
    sync::atomic::{AtomicU64, Ordering},
};

use meshd_common::{PodCounters, POD_SLOTS};

/// The mapping of the whole array, [`POD_SLOTS`] entries.
pub struct Counters {
    base: NonNull<PodCounters>,
    len: usize,
    slots: u32,
}

// SAFETY: the memory is shared with the kernel and only accessed through atomics.
unsafe impl Send for Counters {}
unsafe impl Sync for Counters {}

impl Counters {
    /// Maps the array map behind `fd` (created with `BPF_F_MMAPABLE`, `slots` entries of
    /// [`PodCounters`]).
    pub fn map(fd: impl AsFd, slots: u32) -> std::io::Result<Counters> {
        let page = 4096usize;
        let bytes = slots as usize * std::mem::size_of::<PodCounters>();
        let len = bytes.div_ceil(page) * page;
        // SAFETY: a shared mapping of a BPF array map, which the kernel sizes to at least
        // `len` bytes; it stays valid until munmap in Drop.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_fd().as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let base = NonNull::new(ptr.cast::<PodCounters>())
            .ok_or_else(|| std::io::Error::other("mmap returned null"))?;
        Ok(Counters { base, len, slots })
    }

    fn field(&self, slot: u32, pick: fn(*mut PodCounters) -> *mut u64) -> Option<&AtomicU64> {
        if slot >= self.slots {
            return None;
        }
        // SAFETY: in bounds of the mapping; PodCounters is 8-aligned and the mapping
        // page-aligned, so every u64 field is aligned; the memory lives as long as self.
        unsafe {
            let entry = self.base.as_ptr().add(slot as usize);
            Some(AtomicU64::from_ptr(pick(entry)))
        }
    }

    fn pending(&self, slot: u32) -> Option<&AtomicU64> {
        self.field(slot, |e| unsafe { &raw mut (*e).pending })
    }

    /// One of the pod's entries was taken or swept by the agent.
    pub fn release_one(&self, slot: u32) {
        if let Some(p) = self.pending(slot) {
            // Never below zero, whatever a bug elsewhere did.
            let _ = p.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| v.checked_sub(1));
        }
    }

    /// Counts entries as the programs do (unit tests have no programs).
    #[cfg(test)]
    pub fn add_pending(&self, slot: u32, n: u64) {
        if let Some(p) = self.pending(slot) {
            p.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// The pod's counters now.
    pub fn get(&self, slot: u32) -> Option<PodCounters> {
        Some(PodCounters {
            pending: self.pending(slot)?.load(Ordering::Relaxed),
            refused_quota: self
                .field(slot, |e| unsafe { &raw mut (*e).refused_quota })?
                .load(Ordering::Relaxed),
            refused_full: self
                .field(slot, |e| unsafe { &raw mut (*e).refused_full })?
                .load(Ordering::Relaxed),
        })
    }

    /// Zeroes a slot: for a pod that gets it, or one that left with its entries removed.
    pub fn reset(&self, slot: u32) {
        for pick in [
            (|e| unsafe { &raw mut (*e).pending }) as fn(*mut PodCounters) -> *mut u64,
            |e| unsafe { &raw mut (*e).refused_quota },
            |e| unsafe { &raw mut (*e).refused_full },
        ] {
            if let Some(f) = self.field(slot, pick) {
                f.store(0, Ordering::Relaxed);
            }
        }
    }

    pub fn slots(&self) -> u32 {
        self.slots
    }
}

impl Drop for Counters {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `map`, unmapped once.
        unsafe {
            libc::munmap(self.base.as_ptr().cast(), self.len);
        }
    }
}

/// The default number of slots, as the programs declare the map.
pub const SLOTS: u32 = POD_SLOTS;
