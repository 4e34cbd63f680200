//! Per-thread pools of I/O buffers: a buffer is taken while bytes are in flight and given
//! back right after, so that an idle connection holds none, and a busy thread reuses the
//! same few instead of allocating per read. One pool type for the three kinds of buffer the
//! data path uses: the buffered relay's copy buffers ([`crate::proxy::relay`]), the HBONE
//! tunnels' read chunks ([`crate::proxy::hbone::tunnel`]) and the TLS record buffers
//! ([`crate::proxy::tls`]). The splice pipes are pooled apart (they are fds, shared by all
//! threads).

use std::cell::RefCell;

/// Idle buffers of one kind, kept in a `thread_local!` (so no locking): at most `keep` of
/// them; `new` makes one when none is idle.
pub(crate) struct BufferPool<B> {
    idle: RefCell<Vec<B>>,
    keep: usize,
    new: fn() -> B,
}

impl<B> BufferPool<B> {
    pub(crate) const fn new(keep: usize, new: fn() -> B) -> BufferPool<B> {
        BufferPool {
            idle: RefCell::new(Vec::new()),
            keep,
            new,
        }
    }

    /// An idle buffer, or a new one.
    pub(crate) fn take(&self) -> B {
        let idle = self.idle.borrow_mut().pop();
        idle.unwrap_or_else(self.new)
    }

    /// Keeps `buf` for the next [`take`](Self::take) unless `keep` are idle already (then
    /// it is freed). The caller resets its contents if the kind of buffer needs it.
    pub(crate) fn give_back(&self, buf: B) {
        let mut idle = self.idle.borrow_mut();
        if idle.len() < self.keep {
            idle.push(buf);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    thread_local! {
        static POOL: BufferPool<Box<[u8]>> = const { BufferPool::new(2, || vec![0u8; 8].into_boxed_slice()) };
    }

    #[test]
    fn reuses_up_to_keep_buffers() {
        let (a, b, c) = POOL.with(|p| (p.take(), p.take(), p.take()));
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        POOL.with(|p| {
            p.give_back(a);
            p.give_back(b);
            p.give_back(c); // a third is freed
            assert_eq!(p.idle.borrow().len(), 2);
            let again = [p.take(), p.take()];
            let ptrs: Vec<_> = again.iter().map(|x| x.as_ptr()).collect();
            assert!(ptrs.contains(&pa) && ptrs.contains(&pb));
            assert_eq!(p.idle.borrow().len(), 0);
        });
    }
}
