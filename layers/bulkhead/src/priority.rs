//! Priority classes for the queue: which waiting request is served first.

use std::fmt;

use http::header::HeaderName;
use http::Request;

/// The priority class of a request, used only to order the queue (an admitted request runs the same
/// whatever its class).
///
/// Waiting requests are served `Critical` before `Normal` before `Background`, with
/// [aging](crate::Builder::aging): each aging interval a request has waited ranks it one class higher, so
/// a `Normal` request goes ahead of `Critical` ones that arrived more than one interval after it, and a
/// `Background` request ahead of `Normal` ones more than one interval and `Critical` ones more than two
/// intervals after it. Background work is never starved for longer than that, and aging never lets a
/// request go ahead of an older one or reorder tenants within a class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum Priority {
    /// Served first: health probes, payments, anything a user is waiting on right now.
    Critical,
    /// The default class.
    #[default]
    Normal,
    /// Served last (until aged): batch jobs, prefetches, reports.
    Background,
}

impl Priority {
    /// The classes, highest first.
    pub const ALL: [Priority; 3] = [Priority::Critical, Priority::Normal, Priority::Background];

    /// The lowercase name: `"critical"`, `"normal"` or `"background"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Priority::Critical => "critical",
            Priority::Normal => "normal",
            Priority::Background => "background",
        }
    }

    /// Parses a lowercase name as written by [`as_str`](Self::as_str).
    pub fn from_name(name: &[u8]) -> Option<Priority> {
        match name {
            b"critical" => Some(Priority::Critical),
            b"normal" => Some(Priority::Normal),
            b"background" => Some(Priority::Background),
            _ => None,
        }
    }

    pub(crate) const fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Says which [`Priority`] class a request belongs to.
///
/// Asked only when a request has to queue, so it costs nothing on the admitted fast path.
pub trait PriorityExtractor<Req>: Send + Sync {
    /// The request's class.
    fn priority(&self, req: &Req) -> Priority;
}

/// Every request is [`Priority::Normal`] (the default).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoPriority;

impl<Req> PriorityExtractor<Req> for NoPriority {
    #[inline]
    fn priority(&self, _req: &Req) -> Priority {
        Priority::Normal
    }
}

/// A priority extractor from a closure `Fn(&Req) -> Priority`; build it with [`priority_fn`].
#[derive(Clone, Copy)]
pub struct PriorityFn<F> {
    f: F,
}

/// Wraps a closure as a [`PriorityExtractor`].
///
/// ```
/// use palisade_bulkhead::{priority_fn, Priority, PriorityExtractor};
///
/// let by_path = priority_fn(|req: &http::Request<()>| {
///     if req.uri().path().starts_with("/batch/") {
///         Priority::Background
///     } else {
///         Priority::Normal
///     }
/// });
/// let req = http::Request::get("/batch/report").body(()).unwrap();
/// assert_eq!(by_path.priority(&req), Priority::Background);
/// ```
pub fn priority_fn<F>(f: F) -> PriorityFn<F> {
    PriorityFn { f }
}

impl<F> fmt::Debug for PriorityFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PriorityFn").finish_non_exhaustive()
    }
}

impl<Req, F> PriorityExtractor<Req> for PriorityFn<F>
where
    F: Fn(&Req) -> Priority + Send + Sync,
{
    fn priority(&self, req: &Req) -> Priority {
        (self.f)(req)
    }
}

/// The class is read from one request header: `critical`, `normal` or `background`; a missing or
/// unknown value is `Normal`.
///
/// Trust: a client that may set this header may promote itself. Set it in a trusted layer (after
/// authentication, from the tenant's plan) or strip it at the edge.
#[derive(Debug, Clone)]
pub struct PriorityHeader {
    name: HeaderName,
}

impl PriorityHeader {
    /// Reads the class from `name`.
    pub fn new(name: HeaderName) -> Self {
        PriorityHeader { name }
    }

    /// Reads the class from `name`, a lowercase static header name.
    ///
    /// # Panics
    ///
    /// If `name` is not a valid lowercase header name (a programming error caught at startup).
    pub fn from_static(name: &'static str) -> Self {
        Self::new(HeaderName::from_static(name))
    }
}

impl<B> PriorityExtractor<Request<B>> for PriorityHeader {
    fn priority(&self, req: &Request<B>) -> Priority {
        req.headers()
            .get(&self.name)
            .and_then(|v| Priority::from_name(v.as_bytes()))
            .unwrap_or_default()
    }
}
