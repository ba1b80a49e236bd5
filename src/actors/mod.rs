//! The actor tree: a [`supervisor::Supervisor`] starts one [`collector::Collector`] per
//! enabled source and one shared [`token_manager::TokenManager`]. Actors are thin shells:
//! the collection cycle lives in `ingest`, token logic in `auth`, and the collector's loop
//! policy (backoff, states) in plain functions tested without an actix System.

pub mod collector;
pub mod policy;
pub mod supervisor;
pub mod token_manager;
