//! Verifies an audit log written by palisade's `FileSink`.
//!
//! ```text
//! cargo run --example palisade_audit -- verify <PATH> --key-file <FILE> [--head <SEQ:HEX>] [--from <SEQ:HEX>]
//! ```
//!
//! `<PATH>` is one log file or a directory of `audit-NNNNNN.jsonl` files; the key file holds the
//! 32-byte audit key, raw or as 64 hex digits; `--head` is the head kept outside the log
//! (`Audit::head`), which finds records cut off the end. Exit status: 0 the log verifies, 1 the log
//! is damaged (the first bad sequence number and the kind of damage are printed), 2 usage or I/O
//! error. The logic is `palisade::audit::cli_verify`, tested there.

use std::process::ExitCode;

fn main() -> ExitCode {
    let (code, message) = palisade::audit::cli_verify(std::env::args_os().skip(1));
    if code == 2 {
        eprintln!("{message}");
    } else {
        println!("{message}");
    }
    ExitCode::from(code)
}
