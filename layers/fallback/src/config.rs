//! The builder: every setting of a fallback, validated once in `build()`.

use std::borrow::Cow;
use std::sync::Arc;

use bytes::Bytes;
use http::request::Parts;
use http::Response;
use palisade_core::audit::Audit;

use crate::handle::Activity;
use crate::kind::{Alternate, Kind, RespondWith, Stale, StaticResponse};
use crate::service::{FallbackLayer, Shared};
use crate::stale::{
    StaleIfError, StaleKey, Store, MAX_STALE_BYTES, MAX_STALE_ENTRIES, MAX_STALE_ENTRY_BYTES,
};
use crate::trigger::{FallbackCause, NoResponses, Trigger};

/// Default [`max_body`](Builder::max_body): 64 KiB.
pub const DEFAULT_MAX_BODY: u64 = 64 * 1024;

/// The largest [`max_body`](Builder::max_body) `build()` accepts: 16 MiB. Every request in flight
/// through an alternate fallback may hold a buffer this large.
pub const MAX_BODY_LIMIT: u64 = 16 * 1024 * 1024;

pub use palisade_core::config::BuildError;

/// The layer name in this crate's [`BuildError`]s.
pub(crate) const LAYER: &str = "fallback";

/// The kind slot of a [`Builder`] before a fallback kind was chosen; such a builder has no `build()`.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoKind;

/// Builds a [`FallbackLayer`]: choose the [`Trigger`] and one fallback kind, then `build()`.
///
/// Defaults: name `"default"`, trigger [`Trigger::unavailable`], no audit,
/// [`max_body`](Self::max_body) 64 KiB. `build()` exists once a kind was chosen with
/// [`static_response`](Self::static_response), [`respond_with`](Self::respond_with),
/// [`alternate`](Self::alternate) or [`stale_if_error`](Self::stale_if_error).
#[derive(Debug, Clone)]
pub struct Builder<K = NoKind, C = NoResponses> {
    name: Cow<'static, str>,
    trigger: Trigger<C>,
    audit: Audit,
    max_body: u64,
    kind: K,
}

impl Default for Builder {
    fn default() -> Self {
        Builder {
            name: Cow::Borrowed("default"),
            trigger: Trigger::unavailable(),
            audit: Audit::disabled(),
            max_body: DEFAULT_MAX_BODY,
            kind: NoKind,
        }
    }
}

impl Builder {
    /// A builder with the defaults above.
    pub fn new() -> Self {
        Self::default()
    }
}

impl<K, C> Builder<K, C> {
    /// Names the fallback, for traces, audit records and the handle.
    pub fn name(mut self, name: impl Into<Cow<'static, str>>) -> Self {
        self.name = name.into();
        self
    }

    /// Sets what activates the fallback (see [`Trigger`]).
    pub fn trigger<C2>(self, trigger: Trigger<C2>) -> Builder<K, C2> {
        Builder {
            name: self.name,
            trigger,
            audit: self.audit,
            max_body: self.max_body,
            kind: self.kind,
        }
    }

    /// Records activations in `audit`: one [`fallback.activated`](crate::ACTIVATED_KIND) record at
    /// most once a minute, carrying the count (see the [crate docs](crate#audit)).
    pub fn audit(mut self, audit: &Audit) -> Self {
        self.audit = audit.clone();
        self
    }

    /// The alternate-service kind buffers request bodies up to `bytes` (default 64 KiB; at most
    /// [`MAX_BODY_LIMIT`], checked by every kind's `build()`); requests with larger bodies get no
    /// fallback. Ignored otherwise by the other kinds.
    pub fn max_body(mut self, bytes: u64) -> Self {
        self.max_body = bytes;
        self
    }

    fn with_kind<K2>(self, kind: K2) -> Builder<K2, C> {
        Builder {
            name: self.name,
            trigger: self.trigger,
            audit: self.audit,
            max_body: self.max_body,
            kind,
        }
    }

    /// Serves a fixed response (see [`StaticResponse`] for its cost).
    pub fn static_response(self, response: StaticResponse) -> Builder<StaticResponse, C> {
        self.with_kind(response)
    }

    /// Serves what `f` makes of the request head and the cause (see [`RespondWith`] for its cost).
    pub fn respond_with<F>(self, f: F) -> Builder<RespondWith<F>, C>
    where
        F: Fn(&Parts, &FallbackCause) -> Response<Bytes> + Send + Sync + 'static,
    {
        self.with_kind(RespondWith { f })
    }

    /// Sends the same request to `service` (see [`Alternate`] for its cost).
    pub fn alternate<A>(self, service: A) -> Builder<Alternate<A>, C> {
        self.with_kind(Alternate { service })
    }

    /// Serves the last good response to the same `GET` (see [`StaleIfError`] for the store and its cost).
    pub fn stale_if_error<KF>(self, config: StaleIfError<KF>) -> Builder<StaleIfError<KF>, C> {
        self.with_kind(config)
    }

    fn split(self) -> (Builder<NoKind, C>, K) {
        let Builder {
            name,
            trigger,
            audit,
            max_body,
            kind,
        } = self;
        let b = Builder {
            name,
            trigger,
            audit,
            max_body,
            kind: NoKind,
        };
        (b, kind)
    }

    /// The settings every kind has: the name and `max_body`.
    fn check_common(&self) -> Result<(), BuildError> {
        if self.name.is_empty() {
            return Err(BuildError::new(LAYER, "name", "must not be empty"));
        }
        if self.max_body > MAX_BODY_LIMIT {
            return Err(BuildError::new(
                LAYER,
                "max_body",
                format!(
                    "must be at most {MAX_BODY_LIMIT} bytes, got {}",
                    self.max_body
                ),
            ));
        }
        Ok(())
    }

    fn finish<K2>(
        self,
        kind: K2,
        kind_name: &'static str,
        store: Option<Arc<Store>>,
    ) -> FallbackLayer<K2, C> {
        let activity = Arc::new(Activity::new(self.name, kind_name, self.audit));
        FallbackLayer::from_shared(Arc::new(Shared {
            kind,
            trigger: self.trigger,
            activity,
            max_body: self.max_body,
            store,
        }))
    }
}

impl<C> Builder<StaticResponse, C> {
    /// Validates the configuration and builds the layer.
    ///
    /// # Errors
    ///
    /// The name is empty, or `max_body` is above [`MAX_BODY_LIMIT`].
    pub fn build(self) -> Result<FallbackLayer<StaticResponse, C>, BuildError> {
        self.check_common()?;
        let (b, kind) = self.split();
        Ok(b.finish(kind, StaticResponse::NAME, None))
    }
}

impl<F, C> Builder<RespondWith<F>, C>
where
    RespondWith<F>: Kind,
{
    /// Validates the configuration and builds the layer.
    ///
    /// # Errors
    ///
    /// The name is empty, or `max_body` is above [`MAX_BODY_LIMIT`].
    pub fn build(self) -> Result<FallbackLayer<RespondWith<F>, C>, BuildError> {
        self.check_common()?;
        let (b, kind) = self.split();
        Ok(b.finish(kind, RespondWith::<F>::NAME, None))
    }
}

impl<A, C> Builder<Alternate<A>, C> {
    /// Validates the configuration and builds the layer.
    ///
    /// # Errors
    ///
    /// The name is empty, or `max_body` is above [`MAX_BODY_LIMIT`].
    pub fn build(self) -> Result<FallbackLayer<Alternate<A>, C>, BuildError> {
        self.check_common()?;
        let (b, kind) = self.split();
        Ok(b.finish(kind, "alternate", None))
    }
}

impl<KF: StaleKey, C> Builder<StaleIfError<KF>, C> {
    /// Validates the configuration, creates the (empty) store and builds the layer.
    ///
    /// # Errors
    ///
    /// The name is empty; `max_body` is above [`MAX_BODY_LIMIT`]; `max_entries`, `max_bytes`,
    /// `max_entry_bytes` or `max_age` is zero; `max_entries`, `max_bytes` or `max_entry_bytes` is above
    /// its maximum ([`MAX_STALE_ENTRIES`], [`MAX_STALE_BYTES`], [`MAX_STALE_ENTRY_BYTES`]); or
    /// `max_entry_bytes` is larger than `max_bytes`.
    pub fn build(self) -> Result<FallbackLayer<Stale<KF>, C>, BuildError> {
        self.check_common()?;
        let cfg = &self.kind;
        for (setting, value, max) in [
            ("max_entries", cfg.max_entries, MAX_STALE_ENTRIES),
            ("max_bytes", cfg.max_bytes, MAX_STALE_BYTES),
            (
                "max_entry_bytes",
                cfg.max_entry_bytes,
                MAX_STALE_ENTRY_BYTES,
            ),
        ] {
            if value > max {
                return Err(BuildError::new(
                    LAYER,
                    setting,
                    format!("must be at most {max}, got {value}"),
                ));
            }
        }
        if cfg.max_entries == 0 {
            return Err(BuildError::new(LAYER, "max_entries", "must be at least 1"));
        }
        if cfg.max_bytes == 0 {
            return Err(BuildError::new(LAYER, "max_bytes", "must be at least 1"));
        }
        if cfg.max_entry_bytes == 0 {
            return Err(BuildError::new(
                LAYER,
                "max_entry_bytes",
                "must be at least 1",
            ));
        }
        if cfg.max_entry_bytes > cfg.max_bytes {
            return Err(BuildError::new(
                LAYER,
                "max_entry_bytes",
                format!(
                    "{} is larger than max_bytes ({})",
                    cfg.max_entry_bytes, cfg.max_bytes
                ),
            ));
        }
        if cfg.max_age.is_zero() {
            return Err(BuildError::new(
                LAYER,
                "max_age",
                "must be longer than zero",
            ));
        }
        let store = Arc::new(Store::new(cfg));
        let (b, kind) = self.split();
        let stale = Stale {
            key: kind.key,
            store: store.clone(),
        };
        Ok(b.finish(stale, Stale::<KF>::NAME, Some(store)))
    }
}
