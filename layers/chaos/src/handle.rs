//! The handle: inject, list and remove faults at runtime. Synchronous, cheap to clone.

use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::fault::{Fault, FaultId};
use crate::registry::{Entry, Registry};

/// Controls one chaos layer (every service it made): inject faults, list and remove them.
///
/// Every change is logged with `tracing` and recorded in the layer's audit log (`chaos.injected`,
/// `chaos.removed`, `chaos.expired`). Methods are synchronous and never wait on requests in flight;
/// a change applies to requests whose `call` comes after it.
#[derive(Clone)]
pub struct ChaosHandle {
    registry: Arc<dyn AsRegistry>,
}

/// The handle's view of a layer's shared state, without its tenant-key type.
pub(crate) trait AsRegistry: Send + Sync {
    fn registry(&self) -> &Registry;
}

impl ChaosHandle {
    pub(crate) fn new(registry: Arc<dyn AsRegistry>) -> Self {
        ChaosHandle { registry }
    }

    fn reg(&self) -> &Registry {
        self.registry.registry()
    }

    /// Activates `fault` and returns its id. With a [`ttl`](Fault::expires_after), the fault removes
    /// itself that long from now. Audited as `chaos.injected`.
    pub fn inject(&self, fault: Fault) -> FaultId {
        self.reg().inject(fault)
    }

    /// Removes the fault `id`; `false` if it is not active (never injected, removed, or expired).
    /// Audited as `chaos.removed` with `"reason": "removed"`.
    pub fn remove(&self, id: FaultId) -> bool {
        self.reg().remove(id)
    }

    /// Removes every active fault and returns how many there were. Each is audited as `chaos.removed`
    /// with `"reason": "cleared"`.
    pub fn clear(&self) -> usize {
        self.reg().clear()
    }

    /// The active faults, in injection order (expired ones are removed first, and audited).
    pub fn active(&self) -> Vec<ActiveFault> {
        self.reg()
            .active()
            .iter()
            .map(|e| ActiveFault { entry: e.clone() })
            .collect()
    }

    /// Whether any fault is active (expired ones are removed first).
    pub fn is_active(&self) -> bool {
        !self.reg().active().is_empty()
    }
}

impl fmt::Debug for ChaosHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChaosHandle")
            .field("chaos", &self.reg().name)
            .field("active", &self.reg().snapshot().len())
            .finish()
    }
}

/// An active fault, as listed by [`ChaosHandle::active`].
#[derive(Clone)]
pub struct ActiveFault {
    entry: Arc<Entry>,
}

impl ActiveFault {
    /// Its id.
    pub fn id(&self) -> FaultId {
        self.entry.id
    }

    /// The fault as injected.
    pub fn fault(&self) -> &Fault {
        &self.entry.fault
    }

    /// When it was injected.
    pub fn injected_at(&self) -> Instant {
        self.entry.injected_at
    }

    /// When it expires, if it does.
    pub fn expires_at(&self) -> Option<Instant> {
        self.entry.expires_at
    }

    /// Time left until it expires, if it does.
    pub fn remaining(&self) -> Option<Duration> {
        self.entry
            .expires_at
            .map(|t| t.saturating_duration_since(Instant::now()))
    }

    /// How many requests it has fired on so far (read live).
    pub fn hits(&self) -> u64 {
        self.entry.hits.load(Ordering::Relaxed)
    }
}

impl fmt::Debug for ActiveFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ActiveFault")
            .field("id", &self.id())
            .field("fault", &self.entry.fault)
            .field("expires_at", &self.entry.expires_at)
            .field("hits", &self.hits())
            .finish()
    }
}

impl fmt::Display for ActiveFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "#{} {} ({} hits)",
            self.id(),
            self.entry.fault,
            self.hits()
        )
    }
}
