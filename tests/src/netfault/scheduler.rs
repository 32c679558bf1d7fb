//! The relay's delayed sends: a heap of jobs run at their time, earliest first.

use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::Instant;

use super::{POLL, lock};

pub(super) fn wait_until(at: Instant) {
    let now = Instant::now();
    if at > now {
        std::thread::sleep(at - now);
    }
}

/// Delayed sends, earliest first.
#[derive(Default)]
pub(super) struct Scheduler {
    heap: Mutex<BinaryHeap<Job>>,
    pub(super) cv: Condvar,
    order: AtomicU64,
}

struct Job {
    at: Instant,
    order: u64,
    run: Box<dyn FnOnce() + Send>,
}

impl PartialEq for Job {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.order) == (other.at, other.order)
    }
}
impl Eq for Job {}
impl PartialOrd for Job {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Job {
    /// Reversed: the heap's top is the earliest job.
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (other.at, other.order).cmp(&(self.at, self.order))
    }
}

impl Scheduler {
    pub(super) fn at(&self, at: Instant, run: impl FnOnce() + Send + 'static) {
        let order = self.order.fetch_add(1, Ordering::Relaxed);
        lock(&self.heap).push(Job { at, order, run: Box::new(run) });
        self.cv.notify_one();
    }

    pub(super) fn run(&self, stop: &AtomicBool) {
        let mut heap = lock(&self.heap);
        while !stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            match heap.peek().map(|j| j.at) {
                Some(at) if at <= now => {
                    if let Some(job) = heap.pop() {
                        drop(heap);
                        (job.run)();
                        heap = lock(&self.heap);
                    }
                }
                next => {
                    let wait = next.map_or(POLL, |at| (at - now).min(POLL));
                    heap = self.cv.wait_timeout(heap, wait).unwrap_or_else(|e| e.into_inner()).0;
                }
            }
        }
    }
}
