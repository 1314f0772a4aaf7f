//! Whether a request may be sent more than once — the one rule the retry and hedge layers share.

use http::request::Parts;
use http::Method;

/// Whether a request is safe to send more than once on its own: an idempotent method (RFC 9110 §9.2.2:
/// `GET`, `HEAD`, `PUT`, `DELETE`, `OPTIONS`, `TRACE`) or an `Idempotency-Key` header (the server
/// deduplicates it; the key travels with every attempt). Layers that repeat requests (retry, hedge) add
/// their own predicate for the rest (e.g. gRPC methods known to be idempotent).
///
/// ```
/// use palisade_core::repeat::is_safe_to_repeat;
///
/// let get = http::Request::get("/items").body(()).unwrap().into_parts().0;
/// let post = http::Request::post("/orders").body(()).unwrap().into_parts().0;
/// let keyed = http::Request::post("/orders")
///     .header("idempotency-key", "\"order-1\"")
///     .body(())
///     .unwrap()
///     .into_parts()
///     .0;
/// assert!(is_safe_to_repeat(&get));
/// assert!(!is_safe_to_repeat(&post));
/// assert!(is_safe_to_repeat(&keyed));
/// ```
#[inline]
pub fn is_safe_to_repeat(parts: &Parts) -> bool {
    let m = &parts.method;
    *m == Method::GET
        || *m == Method::HEAD
        || *m == Method::PUT
        || *m == Method::DELETE
        || *m == Method::OPTIONS
        || *m == Method::TRACE
        || parts.headers.contains_key("idempotency-key")
}
