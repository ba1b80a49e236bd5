//! The node's parse-and-store workers: a fixed set of threads, one per core, that every
//! session hands its parsing and store transactions to.
//!
//! Why threads of their own rather than tokio's blocking pool: sled frees what a transaction
//! replaced (old tree nodes, cached values, its 2 MiB log buffers) through epoch-deferred
//! drops that wait in a per-thread bag until that thread works in sled again. With a
//! blocking-pool thread per fetching session, hundreds of threads each kept a bag of dead
//! buffers, and glibc gave each thread group an arena of its own: a 300-mailbox fan-out
//! peaked at 1.6 GB RSS. A few threads that always do this work keep their garbage moving
//! and their allocations in a few arenas.

use std::panic::AssertUnwindSafe;
use std::sync::{Mutex, OnceLock, mpsc};

type Job = Box<dyn FnOnce() + Send + 'static>;

struct Pool {
    queue: mpsc::Sender<Job>,
}

fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = std::sync::Arc::new(Mutex::new(rx));
        let threads = count();
        for n in 0..threads {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("store-worker-{n}"))
                .spawn(move || {
                    loop {
                        // The lock is held only while waiting for the next job.
                        let job = {
                            let rx = rx.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                            rx.recv()
                        };
                        let Ok(job) = job else { return };
                        // A panicking job drops its reply sender, which its caller sees as
                        // an error; the worker itself carries on.
                        let _ = std::panic::catch_unwind(AssertUnwindSafe(job));
                    }
                })
                .expect("spawn a store worker thread");
        }
        Pool { queue: tx }
    })
}

/// The job panicked (its reply never came).
#[derive(Debug, thiserror::Error)]
#[error("a parse-and-store worker failed: {0}")]
pub struct WorkerFailed(pub String);

/// Hands `f` to the workers now (not when the returned future is first polled), so the
/// caller can do other work, including handing in more jobs, while it runs.
pub fn submit<R, F>(f: F) -> impl std::future::Future<Output = Result<R, WorkerFailed>> + use<R, F>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    let (reply, result) = tokio::sync::oneshot::channel();
    let job: Job = Box::new(move || {
        let r = f();
        let _ = reply.send(r);
    });
    let sent = pool().queue.send(job).is_ok();
    async move {
        if !sent {
            return Err(WorkerFailed("the workers have stopped".into()));
        }
        result
            .await
            .map_err(|_| WorkerFailed("the job panicked".into()))
    }
}

/// How many workers there are (one per core).
pub fn count() -> usize {
    std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn jobs_run_on_the_fixed_workers_and_return_their_results() {
        let mut names = HashSet::new();
        for i in 0..50u32 {
            let (n, name) =
                submit(move || (i * 2, std::thread::current().name().map(str::to_owned)))
                    .await
                    .unwrap();
            assert_eq!(n, i * 2);
            names.insert(name.expect("workers are named"));
        }
        assert!(!names.is_empty() && names.len() <= count(), "{names:?}");
        assert!(
            names.iter().all(|n| n.starts_with("store-worker-")),
            "{names:?}"
        );
    }

    #[tokio::test]
    async fn at_most_one_job_per_worker_runs_at_once() {
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let jobs = (0..40).map(|_| {
            let running = running.clone();
            let most = most.clone();
            submit(move || {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                std::thread::sleep(std::time::Duration::from_millis(5));
                running.fetch_sub(1, Ordering::SeqCst);
            })
        });
        for r in futures_util::future::join_all(jobs).await {
            r.unwrap();
        }
        let most = most.load(Ordering::SeqCst);
        assert!(
            most >= 1 && most <= count(),
            "{most} at once with {} workers",
            count()
        );
    }

    #[tokio::test]
    async fn a_submitted_job_runs_before_its_future_is_polled() {
        let (tx, rx) = std::sync::mpsc::channel();
        let pending = submit(move || tx.send(()).unwrap());
        rx.recv_timeout(std::time::Duration::from_secs(10))
            .expect("the job ran without being awaited");
        pending.await.unwrap();
    }

    #[tokio::test]
    async fn a_panicking_job_is_an_error_and_the_workers_carry_on() {
        let failed = submit(|| -> u32 { panic!("boom") }).await;
        assert!(failed.is_err());
        for _ in 0..count() * 2 {
            assert_eq!(submit(|| 7).await.unwrap(), 7);
        }
    }
}
