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

use std::sync::{Mutex, mpsc};
use std::thread::JoinHandle;

type Reply = tokio::sync::oneshot::Sender<Result<(), sled::Error>>;

pub(super) struct Flusher {
    requests: Mutex<Option<mpsc::Sender<Reply>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Flusher {
    /// Starts the thread; `flush` makes the store durable.
    pub(super) fn start<F>(flush: F) -> std::io::Result<Flusher>
    where
        F: Fn() -> Result<(), sled::Error> + Send + 'static,
    {
        let (tx, rx) = mpsc::channel::<Reply>();
        let thread = std::thread::Builder::new()
            .name("store-flusher".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut waiting = vec![first];
                    waiting.extend(rx.try_iter());
                    let result = flush();
                    for w in waiting {
                        let _ = w.send(result.clone());
                    }
                }
            })?;
        Ok(Flusher {
            requests: Mutex::new(Some(tx)),
            thread: Mutex::new(Some(thread)),
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
            .map(|tx| tx.send(reply).is_ok())
            .unwrap_or(false);
        if !sent {
            return Err(stopped());
        }
        done.await.map_err(|_| stopped())?
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
