//! The store's flusher: one thread that makes everything written so far durable, once for
//! everyone who asked while it was busy (group flush).
//!
//! A flush covers every write made before it starts. So a request that arrives while a flush
//! runs waits for the next one, and all requests waiting at that point share it: a thousand
//! sources finishing together cost a few fsyncs, not a thousand in a row.
//!
//! Its own thread, not sled's `flush_async` (that runs on sled's small thread pool, which
//! also writes the log buffers a flush waits for: concurrent flushes took every pool thread
//! and waited forever) and not tokio's blocking pool (sled's deferred frees wait in a
//! per-thread bag; a fresh thread per flush kept them there).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::Duration;

type Reply = tokio::sync::oneshot::Sender<Result<(), sled::Error>>;

/// How long a nudge ([`Flusher::nudge`]) waits before its flush: long enough for a busy
/// ingest to commit several batches that the one flush then covers, short enough that a
/// sink or a long poll sees new events a moment after their commit.
pub(super) const NUDGE_DELAY: Duration = Duration::from_millis(50);

pub(super) struct Flusher {
    /// `Some(reply)`: a caller waits for a flush; `None`: a nudge, nobody waits.
    requests: Mutex<Option<mpsc::Sender<Option<Reply>>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// A nudge is on its way and its flush has not started: later nudges add nothing.
    nudged: Arc<AtomicBool>,
}

impl Flusher {
    /// Starts the thread; `flush` makes the store durable.
    pub(super) fn start<F>(flush: F) -> std::io::Result<Flusher>
    where
        F: Fn() -> Result<(), sled::Error> + Send + 'static,
    {
        let (tx, rx) = mpsc::channel::<Option<Reply>>();
        let nudged = Arc::new(AtomicBool::new(false));
        let pending = nudged.clone();
        let thread = std::thread::Builder::new()
            .name("store-flusher".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    if first.is_none() {
                        std::thread::sleep(NUDGE_DELAY);
                    }
                    pending.store(false, Ordering::Release);
                    let waiting: Vec<Reply> = std::iter::once(first)
                        .chain(rx.try_iter())
                        .flatten()
                        .collect();
                    let result = flush();
                    for w in waiting {
                        let _ = w.send(result.clone());
                    }
                }
            })?;
        Ok(Flusher {
            requests: Mutex::new(Some(tx)),
            thread: Mutex::new(Some(thread)),
            nudged,
        })
    }

    /// Waits until everything written before this call is durable.
    pub(super) async fn flush(&self) -> Result<(), sled::Error> {
        let (reply, done) = tokio::sync::oneshot::channel();
        let sent = self
            .requests
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_ref()
            .map(|tx| tx.send(Some(reply)).is_ok())
            .unwrap_or(false);
        if !sent {
            return Err(stopped());
        }
        done.await.map_err(|_| stopped())?
    }
}

impl Flusher {
    /// Asks for a flush soon ([`NUDGE_DELAY`]) without waiting for it: what is written
    /// becomes durable, and so visible to the outbox's readers, without the writer paying
    /// for the flush. Nudges while one is pending cost nothing.
    pub(super) fn nudge(&self) {
        if self.nudged.swap(true, Ordering::AcqRel) {
            return;
        }
        let sent = self
            .requests
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_ref()
            .is_some_and(|tx| tx.send(None).is_ok());
        if !sent {
            self.nudged.store(false, Ordering::Release);
        }
    }
}

fn stopped() -> sled::Error {
    sled::Error::Io(std::io::Error::other("the store's flusher has stopped"))
}

impl Drop for Flusher {
    /// Stops the thread and waits for it, so the store is closed (sled's file lock released)
    /// when the [`super::Store`] is gone.
    fn drop(&mut self) {
        self.requests
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(t) = self
            .thread
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
        {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[tokio::test]
    async fn requests_waiting_during_a_flush_share_the_next_one() {
        let flushes = Arc::new(AtomicUsize::new(0));
        let f = {
            let flushes = flushes.clone();
            Flusher::start(move || {
                flushes.fetch_add(1, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(100));
                Ok(())
            })
            .unwrap()
        };
        let f = Arc::new(f);
        // One flush starts; 30 requests arrive while it runs.
        let first = tokio::spawn({
            let f = f.clone();
            async move { f.flush().await }
        });
        tokio::time::sleep(Duration::from_millis(30)).await;
        let rest: Vec<_> = (0..30)
            .map(|_| {
                let f = f.clone();
                tokio::spawn(async move { f.flush().await })
            })
            .collect();
        first.await.unwrap().unwrap();
        for r in rest {
            r.await.unwrap().unwrap();
        }
        // The first flush could not cover the later requests (their writes may have come
        // after it started); one more covers them all.
        assert_eq!(flushes.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn every_waiter_gets_the_flush_error() {
        let f =
            Flusher::start(|| Err(sled::Error::Io(std::io::Error::other("disk gone")))).unwrap();
        let e = f.flush().await.unwrap_err();
        assert!(e.to_string().contains("disk gone"), "{e}");
    }

    #[tokio::test]
    async fn a_nudge_flushes_soon_once_for_all_nudges_meanwhile() {
        let flushes = Arc::new(AtomicUsize::new(0));
        let f = {
            let flushes = flushes.clone();
            Flusher::start(move || {
                flushes.fetch_add(1, Ordering::SeqCst);
                Ok(())
            })
            .unwrap()
        };
        for _ in 0..100 {
            f.nudge();
        }
        tokio::time::sleep(NUDGE_DELAY * 4).await;
        assert_eq!(flushes.load(Ordering::SeqCst), 1);
        // The next nudge after that flush started gets a flush of its own.
        f.nudge();
        tokio::time::sleep(NUDGE_DELAY * 4).await;
        assert_eq!(flushes.load(Ordering::SeqCst), 2);
        // A caller waiting meanwhile is answered by a flush, as ever.
        f.nudge();
        f.flush().await.unwrap();
        assert!(flushes.load(Ordering::SeqCst) >= 3);
    }

    #[test]
    fn dropping_it_stops_and_joins_the_thread() {
        let alive = Arc::new(());
        let f = {
            let alive = alive.clone();
            Flusher::start(move || {
                let _ = &alive;
                Ok(())
            })
            .unwrap()
        };
        assert_eq!(Arc::strong_count(&alive), 2);
        drop(f);
        // The thread and its closure are gone once drop returns.
        assert_eq!(Arc::strong_count(&alive), 1);
    }
}
