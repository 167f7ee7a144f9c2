//! A queue's jobs past its in-memory window, in arrival order. The shard's backlog keeps
//! them as small references into the spool, spilling to a file (`netio/src/park.rs`); the
//! simulations and tests keep them in memory (`MemBacklog`). Running totals answer the
//! status pages without walking the backlog.

use crate::queue::{Contents, Job};
use std::collections::{HashMap, VecDeque};

pub trait Backlog<M> {
    fn push_back(&mut self, job: Job<M>);
    fn pop_front(&mut self) -> Option<Job<M>>;
    fn is_empty(&self) -> bool;
    /// Takes every job `pred` picks, whole (delete, pause a job).
    fn take_where(&mut self, pred: &mut dyn FnMut(&Job<M>) -> bool) -> Vec<Job<M>>;
    /// Jobs, recipients, bytes, the oldest arrival.
    fn totals(&self) -> Contents;
    /// The same per job id, for jobs with mail here.
    fn per_job(&self) -> Vec<(String, Contents)>;
}

/// Makes an empty backlog for a new queue.
pub type BacklogFactory<M> = Box<dyn FnMut() -> Box<dyn Backlog<M>>>;

/// A backlog held in memory whole.
pub struct MemBacklog<M> {
    jobs: VecDeque<Job<M>>,
}

impl<M> Default for MemBacklog<M> {
    fn default() -> Self {
        MemBacklog { jobs: VecDeque::new() }
    }
}

impl<M: 'static> MemBacklog<M> {
    pub fn factory() -> BacklogFactory<M> {
        Box::new(|| Box::new(MemBacklog::default()))
    }
}

impl<M> Backlog<M> for MemBacklog<M> {
    fn push_back(&mut self, job: Job<M>) {
        self.jobs.push_back(job);
    }

    fn pop_front(&mut self) -> Option<Job<M>> {
        self.jobs.pop_front()
    }

    fn is_empty(&self) -> bool {
        self.jobs.is_empty()
    }

    fn take_where(&mut self, pred: &mut dyn FnMut(&Job<M>) -> bool) -> Vec<Job<M>> {
        let (taken, kept): (VecDeque<_>, VecDeque<_>) =
            std::mem::take(&mut self.jobs).into_iter().partition(|j| pred(j));
        self.jobs = kept;
        taken.into()
    }

    fn totals(&self) -> Contents {
        let mut c = Contents::default();
        for j in &self.jobs {
            c.add_job(j.rcpts.len() as u64, j.size, j.queued_unix_ms);
        }
        c
    }

    fn per_job(&self) -> Vec<(String, Contents)> {
        let mut by: HashMap<String, Contents> = HashMap::new();
        for j in self.jobs.iter().filter(|j| !j.job_id.is_empty()) {
            by.entry(j.job_id.clone()).or_default().add_job(j.rcpts.len() as u64, j.size, j.queued_unix_ms);
        }
        by.into_iter().collect()
    }
}
