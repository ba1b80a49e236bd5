//! Per-source progress of the sessions running now, as `run --once`'s progress bars and log
//! lines show it: a view of [`super::status`], which owns it.

use std::collections::BTreeMap;

/// One source's progress in its current session.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    /// Messages found new on the server so far (grows as folders are listed).
    pub backlog: u64,
    /// Messages stored in this session.
    pub stored: u64,
    pub bytes: u64,
    /// Messages and bytes stored since the process started.
    pub total_stored: u64,
    pub total_bytes: u64,
}

/// Every source's progress now.
pub fn snapshot() -> BTreeMap<String, Progress> {
    super::status::snapshot()
        .into_iter()
        .map(|(name, s)| {
            let p = Progress {
                backlog: s.session.listed,
                stored: s.session.stored,
                bytes: s.session.bytes,
                total_stored: s.stored_since_start,
                total_bytes: s.bytes_since_start,
            };
            (name, p)
        })
        .collect()
}
