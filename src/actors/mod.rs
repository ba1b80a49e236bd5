//! The actor tree: a [`supervisor::Supervisor`] starts one [`collector::Collector`] per
//! enabled source, one shared [`token_manager::TokenManager`], and one delivery worker per
//! sink ([`sinks`]). Actors are thin shells:
//! the collection cycle lives in `ingest`, token logic in `auth`, and the collector's loop
//! policy (backoff, states) in plain functions tested without an actix System.

pub mod collector;
pub mod policy;
pub mod sinks;
pub mod supervisor;
pub mod token_manager;
