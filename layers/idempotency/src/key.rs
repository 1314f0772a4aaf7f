//! Parsing and validating the `Idempotency-Key` header.

use std::borrow::Cow;

use http::header::{GetAll, HeaderValue};
use palisade_core::error::InvalidIdempotencyKey;

/// The longest key accepted, in characters (= bytes: keys are ASCII).
pub const MAX_KEY_LEN: usize = 255;

/// The header's name, lowercase as HTTP/2 sends it.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// The header added to replayed responses.
pub const IDEMPOTENT_REPLAYED: &str = "idempotent-replayed";

/// The rule a key that is too short or too long broke.
pub(crate) const RULE_LENGTH: &str = "must be 1 to 255 characters long";
/// The rule a key with other than visible ASCII broke.
pub(crate) const RULE_CHARSET: &str =
    "must contain only visible ASCII characters (0x21-0x7E: no spaces, control or non-ASCII characters)";

/// Reads the client's key from the header values: `Ok(None)` when there is no header.
///
/// Accepted forms (the decoded key must be 1 to 255 visible ASCII characters):
///
/// - an RFC 8941 sf-string, `"8e03978e-40d5-43e8-bc93-6894a57f9324"`: the quotes are removed and the
///   escapes `\"` and `\\` decoded;
/// - a bare value, `8e03978e-40d5-43e8-bc93-6894a57f9324`, taken literally (any visible ASCII, so
///   UUIDs and base64 keys work even where they are not sf-tokens).
///
/// A quoted key and the same characters bare are the same key.
pub(crate) fn parse(
    values: GetAll<'_, HeaderValue>,
) -> Result<Option<Cow<'_, [u8]>>, InvalidIdempotencyKey> {
    let mut iter = values.iter();
    let Some(value) = iter.next() else {
        return Ok(None);
    };
    if iter.next().is_some() {
        return Err(InvalidIdempotencyKey::new("must be sent at most once"));
    }
    parse_value(value.as_bytes()).map(Some)
}

/// Parses one header value; see [`parse`].
pub(crate) fn parse_value(raw: &[u8]) -> Result<Cow<'_, [u8]>, InvalidIdempotencyKey> {
    let key: Cow<'_, [u8]> = match raw {
        [b'"', inner @ ..] => {
            let Some((&b'"', inner)) = inner.split_last() else {
                return Err(InvalidIdempotencyKey::new(
                    "a quoted key (sf-string) must end with a closing quote",
                ));
            };
            unquote(inner)?
        }
        _ => Cow::Borrowed(raw),
    };
    if key.is_empty() || key.len() > MAX_KEY_LEN {
        return Err(InvalidIdempotencyKey::new(RULE_LENGTH));
    }
    if !key.iter().all(|b| matches!(b, 0x21..=0x7E)) {
        return Err(InvalidIdempotencyKey::new(RULE_CHARSET));
    }
    Ok(key)
}

/// Decodes the inside of an sf-string: `\"` and `\\` are the only escapes, a bare `"` is an error.
fn unquote(inner: &[u8]) -> Result<Cow<'_, [u8]>, InvalidIdempotencyKey> {
    if !inner.iter().any(|&b| b == b'\\' || b == b'"') {
        return Ok(Cow::Borrowed(inner));
    }
    let mut out = Vec::with_capacity(inner.len());
    let mut bytes = inner.iter();
    while let Some(&b) = bytes.next() {
        match b {
            b'\\' => match bytes.next() {
                Some(&e @ (b'"' | b'\\')) => out.push(e),
                _ => {
                    return Err(InvalidIdempotencyKey::new(
                        "a quoted key (sf-string) may only escape `\"` and `\\`",
                    ))
                }
            },
            b'"' => return Err(InvalidIdempotencyKey::new(
                "a quoted key (sf-string) must be a single string: an unescaped quote inside it",
            )),
            b => out.push(b),
        }
    }
    Ok(Cow::Owned(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(raw: &str) -> Vec<u8> {
        parse_value(raw.as_bytes()).unwrap().into_owned()
    }

    fn err(raw: &[u8]) -> String {
        parse_value(raw).unwrap_err().reason.into_owned()
    }

    #[test]
    fn quoted_and_bare_forms() {
        assert_eq!(ok("\"abc-123\""), b"abc-123");
        assert_eq!(ok("abc-123"), b"abc-123");
        assert_eq!(ok(r#""a\"b\\c""#), br#"a"b\c"#);
        assert_eq!(ok("dGVzdA=="), b"dGVzdA==");
        assert!(matches!(
            parse_value(b"\"plain\"").unwrap(),
            Cow::Borrowed(_)
        ));
    }

    #[test]
    fn length_rule() {
        assert_eq!(err(b""), RULE_LENGTH);
        assert_eq!(err(b"\"\""), RULE_LENGTH);
        let max = "k".repeat(255);
        assert_eq!(ok(&max).len(), 255);
        assert_eq!(ok(&format!("\"{max}\"")).len(), 255);
        assert_eq!(err("k".repeat(256).as_bytes()), RULE_LENGTH);
    }

    #[test]
    fn charset_rule() {
        assert_eq!(err("caf\u{e9}".as_bytes()), RULE_CHARSET);
        assert_eq!(err(b"a b"), RULE_CHARSET);
        assert_eq!(err(b"\"a b\""), RULE_CHARSET);
        assert_eq!(err(b"a\tb"), RULE_CHARSET);
    }

    #[test]
    fn malformed_sf_strings() {
        assert!(err(b"\"abc").contains("closing quote"));
        assert!(err(b"\"").contains("closing quote"));
        assert!(err(br#""a\nb""#).contains("escape"));
        assert!(err(br#""a"b""#).contains("single string"));
        assert!(err(br#""abc";p=1"#).contains("closing quote"));
    }

    #[test]
    fn header_must_appear_once() {
        let mut headers = http::HeaderMap::new();
        assert!(parse(headers.get_all(IDEMPOTENCY_KEY)).unwrap().is_none());
        headers.append(IDEMPOTENCY_KEY, HeaderValue::from_static("a"));
        assert_eq!(
            parse(headers.get_all(IDEMPOTENCY_KEY)).unwrap().as_deref(),
            Some(&b"a"[..])
        );
        headers.append(IDEMPOTENCY_KEY, HeaderValue::from_static("b"));
        assert!(parse(headers.get_all(IDEMPOTENCY_KEY))
            .unwrap_err()
            .reason
            .contains("at most once"));
    }
}
