//! Working out a request's priority class.

use std::fmt;
use std::sync::Arc;

use http::{Extensions, HeaderMap, HeaderName, Method, Request, Uri};

use crate::level::Priority;

/// What a [`priority_fn`](crate::Builder::priority_fn) closure sees of a request.
#[derive(Debug, Clone, Copy)]
pub struct RequestInfo<'a> {
    method: &'a Method,
    uri: &'a Uri,
    headers: &'a HeaderMap,
    extensions: &'a Extensions,
}

impl<'a> RequestInfo<'a> {
    pub(crate) fn of<B>(req: &'a Request<B>) -> Self {
        RequestInfo {
            method: req.method(),
            uri: req.uri(),
            headers: req.headers(),
            extensions: req.extensions(),
        }
    }

    /// The request method.
    pub fn method(&self) -> &'a Method {
        self.method
    }

    /// The request URI.
    pub fn uri(&self) -> &'a Uri {
        self.uri
    }

    /// The request path.
    pub fn path(&self) -> &'a str {
        self.uri.path()
    }

    /// The request headers.
    pub fn headers(&self) -> &'a HeaderMap {
        self.headers
    }

    /// The request extensions (e.g. what an authentication layer put there).
    pub fn extensions(&self) -> &'a Extensions {
        self.extensions
    }
}

pub(crate) type PriorityFn = Arc<dyn Fn(&RequestInfo<'_>) -> Option<Priority> + Send + Sync>;

/// The rules, in the order they are asked.
pub(crate) struct Rules {
    pub(crate) default: Priority,
    /// Path prefixes, longest first.
    pub(crate) routes: Box<[(Box<str>, Priority)]>,
    /// The header and the highest class it may claim.
    pub(crate) header: Option<(HeaderName, Priority)>,
    pub(crate) func: Option<PriorityFn>,
}

impl Rules {
    pub(crate) fn classify<B>(&self, req: &Request<B>) -> Priority {
        if let Some(p) = req.extensions().get::<Priority>() {
            return *p;
        }
        if let Some(f) = &self.func {
            if let Some(p) = f(&RequestInfo::of(req)) {
                return p;
            }
        }
        if let Some((name, cap)) = &self.header {
            // A malformed or unknown value is ignored, as if the header were absent.
            if let Some(p) = req
                .headers()
                .get(name)
                .and_then(|v| Priority::from_header_value(v.as_bytes()))
            {
                return p.min(*cap);
            }
        }
        self.route(req.uri().path()).unwrap_or(self.default)
    }

    pub(crate) fn route(&self, path: &str) -> Option<Priority> {
        self.routes
            .iter()
            .find(|(prefix, _)| prefix_matches(prefix, path))
            .map(|&(_, p)| p)
    }
}

/// `prefix` matches `path` on a segment boundary: `/api` matches `/api` and `/api/x`, not `/apix`;
/// a prefix ending in `/` matches everything under it.
fn prefix_matches(prefix: &str, path: &str) -> bool {
    path.starts_with(prefix)
        && (prefix.ends_with('/')
            || path.len() == prefix.len()
            || path.as_bytes()[prefix.len()] == b'/')
}

impl fmt::Debug for Rules {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rules")
            .field("default", &self.default)
            .field("routes", &self.routes)
            .field("header", &self.header)
            .field("func", &self.func.as_ref().map(|_| "Fn"))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_match_on_segment_boundaries() {
        assert!(prefix_matches("/api", "/api"));
        assert!(prefix_matches("/api", "/api/orders"));
        assert!(!prefix_matches("/api", "/apix"));
        assert!(prefix_matches("/api/", "/api/x"));
        assert!(!prefix_matches("/api/", "/api"));
        assert!(prefix_matches("/", "/anything"));
    }
}
