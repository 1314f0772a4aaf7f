//! gRPC status codes, without a dependency on tonic.
//!
//! Classification reads `grpc-status` from response headers and trailers, and the rescue layer writes
//! it; both need the codes, and neither should pull in a gRPC framework to get them.

use std::fmt;

/// A gRPC status code, as carried in the `grpc-status` header or trailer.
///
/// The numeric values are the wire values from the gRPC specification.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum GrpcCode {
    /// `OK` (0): not an error.
    Ok = 0,
    /// `CANCELLED` (1): the operation was cancelled, typically by the caller.
    Cancelled = 1,
    /// `UNKNOWN` (2): an error without more specific information.
    Unknown = 2,
    /// `INVALID_ARGUMENT` (3): the client specified an invalid argument.
    InvalidArgument = 3,
    /// `DEADLINE_EXCEEDED` (4): the deadline expired before the operation could complete.
    DeadlineExceeded = 4,
    /// `NOT_FOUND` (5): a requested entity was not found.
    NotFound = 5,
    /// `ALREADY_EXISTS` (6): the entity a client tried to create already exists.
    AlreadyExists = 6,
    /// `PERMISSION_DENIED` (7): the caller may not execute the operation.
    PermissionDenied = 7,
    /// `RESOURCE_EXHAUSTED` (8): a resource (a quota, a queue) has been exhausted.
    ResourceExhausted = 8,
    /// `FAILED_PRECONDITION` (9): the system is not in a state required for the operation.
    FailedPrecondition = 9,
    /// `ABORTED` (10): the operation was aborted, e.g. by a concurrency conflict.
    Aborted = 10,
    /// `OUT_OF_RANGE` (11): the operation was attempted past the valid range.
    OutOfRange = 11,
    /// `UNIMPLEMENTED` (12): the operation is not implemented or supported.
    Unimplemented = 12,
    /// `INTERNAL` (13): an internal invariant was broken.
    Internal = 13,
    /// `UNAVAILABLE` (14): the service is currently unavailable; a retry may succeed.
    Unavailable = 14,
    /// `DATA_LOSS` (15): unrecoverable data loss or corruption.
    DataLoss = 15,
    /// `UNAUTHENTICATED` (16): the request lacks valid authentication credentials.
    Unauthenticated = 16,
}

impl GrpcCode {
    const ALL: [GrpcCode; 17] = [
        GrpcCode::Ok,
        GrpcCode::Cancelled,
        GrpcCode::Unknown,
        GrpcCode::InvalidArgument,
        GrpcCode::DeadlineExceeded,
        GrpcCode::NotFound,
        GrpcCode::AlreadyExists,
        GrpcCode::PermissionDenied,
        GrpcCode::ResourceExhausted,
        GrpcCode::FailedPrecondition,
        GrpcCode::Aborted,
        GrpcCode::OutOfRange,
        GrpcCode::Unimplemented,
        GrpcCode::Internal,
        GrpcCode::Unavailable,
        GrpcCode::DataLoss,
        GrpcCode::Unauthenticated,
    ];

    /// The code for a wire value; values outside 0–16 are `UNKNOWN`, as the gRPC spec requires.
    pub fn from_i32(value: i32) -> GrpcCode {
        usize::try_from(value)
            .ok()
            .and_then(|i| Self::ALL.get(i).copied())
            .unwrap_or(GrpcCode::Unknown)
    }

    /// Parses the value of a `grpc-status` header or trailer.
    ///
    /// Returns `None` if the value is not a decimal number (a malformed status is the caller's decision);
    /// a well-formed number outside 0–16 maps to `UNKNOWN`.
    pub fn from_header(value: &[u8]) -> Option<GrpcCode> {
        if value.is_empty() || value.len() > 10 || !value.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let n = value
            .iter()
            .fold(0i64, |acc, d| acc * 10 + i64::from(d - b'0'));
        Some(Self::from_i32(i32::try_from(n).unwrap_or(i32::MAX)))
    }

    /// The wire value.
    pub fn as_i32(self) -> i32 {
        self as i32
    }

    /// The wire value as it is written in a `grpc-status` header: `"0"` … `"16"`.
    pub fn as_header_str(self) -> &'static str {
        const STR: [&str; 17] = [
            "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15",
            "16",
        ];
        STR[self as usize]
    }

    /// The canonical upper-case name, e.g. `"UNAVAILABLE"`.
    pub fn name(self) -> &'static str {
        match self {
            GrpcCode::Ok => "OK",
            GrpcCode::Cancelled => "CANCELLED",
            GrpcCode::Unknown => "UNKNOWN",
            GrpcCode::InvalidArgument => "INVALID_ARGUMENT",
            GrpcCode::DeadlineExceeded => "DEADLINE_EXCEEDED",
            GrpcCode::NotFound => "NOT_FOUND",
            GrpcCode::AlreadyExists => "ALREADY_EXISTS",
            GrpcCode::PermissionDenied => "PERMISSION_DENIED",
            GrpcCode::ResourceExhausted => "RESOURCE_EXHAUSTED",
            GrpcCode::FailedPrecondition => "FAILED_PRECONDITION",
            GrpcCode::Aborted => "ABORTED",
            GrpcCode::OutOfRange => "OUT_OF_RANGE",
            GrpcCode::Unimplemented => "UNIMPLEMENTED",
            GrpcCode::Internal => "INTERNAL",
            GrpcCode::Unavailable => "UNAVAILABLE",
            GrpcCode::DataLoss => "DATA_LOSS",
            GrpcCode::Unauthenticated => "UNAUTHENTICATED",
        }
    }
}

impl fmt::Display for GrpcCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A set of gRPC codes, e.g. the codes a classifier counts as failures. Copy, 4 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct GrpcCodes(u32);

impl GrpcCodes {
    /// The empty set.
    pub const fn empty() -> Self {
        GrpcCodes(0)
    }

    /// Every code except `OK`.
    pub const fn all_errors() -> Self {
        GrpcCodes(((1u32 << 17) - 1) & !1)
    }

    /// The codes that say the *server* or the path to it failed, and that a circuit breaker or retry should
    /// count: `UNKNOWN`, `DEADLINE_EXCEEDED`, `RESOURCE_EXHAUSTED`, `INTERNAL`, `UNAVAILABLE`, `DATA_LOSS`.
    ///
    /// Client mistakes (`INVALID_ARGUMENT`, `NOT_FOUND`, `PERMISSION_DENIED`, ...) are not in it: a caller
    /// sending bad requests must not open a breaker for everyone else.
    pub const fn server_errors() -> Self {
        Self::empty()
            .with(GrpcCode::Unknown)
            .with(GrpcCode::DeadlineExceeded)
            .with(GrpcCode::ResourceExhausted)
            .with(GrpcCode::Internal)
            .with(GrpcCode::Unavailable)
            .with(GrpcCode::DataLoss)
    }

    /// This set plus `code`.
    pub const fn with(self, code: GrpcCode) -> Self {
        GrpcCodes(self.0 | 1 << code as u32)
    }

    /// This set minus `code`.
    pub const fn without(self, code: GrpcCode) -> Self {
        GrpcCodes(self.0 & !(1 << code as u32))
    }

    /// Whether `code` is in the set.
    pub const fn contains(self, code: GrpcCode) -> bool {
        self.0 & (1 << code as u32) != 0
    }
}

impl FromIterator<GrpcCode> for GrpcCodes {
    fn from_iter<I: IntoIterator<Item = GrpcCode>>(iter: I) -> Self {
        iter.into_iter().fold(GrpcCodes::empty(), GrpcCodes::with)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_header_values() {
        assert_eq!(GrpcCode::from_header(b"0"), Some(GrpcCode::Ok));
        assert_eq!(GrpcCode::from_header(b"14"), Some(GrpcCode::Unavailable));
        assert_eq!(
            GrpcCode::from_header(b"16"),
            Some(GrpcCode::Unauthenticated)
        );
        assert_eq!(GrpcCode::from_header(b"17"), Some(GrpcCode::Unknown));
        assert_eq!(GrpcCode::from_header(b"99999999999"), None);
        assert_eq!(GrpcCode::from_header(b""), None);
        assert_eq!(GrpcCode::from_header(b"-1"), None);
        assert_eq!(GrpcCode::from_header(b"1 4"), None);
    }

    #[test]
    fn round_trips_every_code() {
        for (i, code) in GrpcCode::ALL.iter().enumerate() {
            assert_eq!(code.as_i32(), i as i32);
            assert_eq!(
                GrpcCode::from_header(code.as_header_str().as_bytes()),
                Some(*code)
            );
        }
    }

    #[test]
    fn code_sets() {
        let s = GrpcCodes::server_errors();
        assert!(s.contains(GrpcCode::Unavailable));
        assert!(!s.contains(GrpcCode::InvalidArgument));
        assert!(!s.contains(GrpcCode::Ok));
        assert!(!GrpcCodes::all_errors().contains(GrpcCode::Ok));
        assert!(GrpcCodes::all_errors().contains(GrpcCode::Unauthenticated));
        let t: GrpcCodes = [GrpcCode::Aborted].into_iter().collect();
        assert!(
            t.contains(GrpcCode::Aborted)
                && !t.without(GrpcCode::Aborted).contains(GrpcCode::Aborted)
        );
    }
}
