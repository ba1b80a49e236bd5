//! The configuration the node runs with now. A reload (SIGHUP or `POST /api/reload`)
//! replaces it as a whole; readers take a snapshot and never see half of a change.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use super::Settings;
use crate::net::Connector;

/// One consistent snapshot: settings and the connector built from their `[tls]` and
/// timeouts.
#[derive(Clone)]
pub struct Current {
    pub settings: Arc<Settings>,
    pub connector: Connector,
}

/// Shared handle on the current configuration, plus where it was read from (for reloads).
#[derive(Clone)]
pub struct Live {
    inner: Arc<RwLock<Current>>,
    /// The config file `run` was started with; reloads read it again.
    pub path: Option<PathBuf>,
}

impl Live {
    pub fn new(settings: Arc<Settings>, connector: Connector, path: Option<PathBuf>) -> Live {
        Live {
            inner: Arc::new(RwLock::new(Current {
                settings,
                connector,
            })),
            path,
        }
    }

    pub fn get(&self) -> Current {
        self.inner.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn settings(&self) -> Arc<Settings> {
        self.get().settings
    }

    pub(crate) fn set(&self, current: Current) {
        *self.inner.write().unwrap_or_else(|p| p.into_inner()) = current;
    }
}
