//! What every Warren test suite shares: the one way a test says it did not run.
//!
//! A test that needs something this machine lacks (a kernel feature, a tool, the QEMU
//! lab) returns early, but it must not pass silently: libtest captures `println!` and
//! `eprintln!` of a passing test, so a skip said that way is never seen. [`skip`] writes
//! to the process's standard error directly, which libtest does not capture, so a plain
//! `cargo test` shows every skip with its reason. Where the variable it is given is set to
//! `1` (scripts/test sets them all: CI provides everything), the skip fails the test
//! instead.

use std::io::Write;

/// Says on the terminal that the calling test is skipped and why; panics instead (failing
/// the test) when `require` names an environment variable set to `1`. Call it as
/// `return skip("WARREN_REQUIRE_X", "why");`.
pub fn skip(require: &str, why: &str) {
    let test = std::thread::current()
        .name()
        .unwrap_or("a test")
        .to_string();
    if required(require) {
        panic!("{test}: {why} ({require}=1: this must run here)");
    }
    let line = format!("SKIPPED {test}: {why} (set {require}=1 to make this a failure)\n");
    // Straight to the file descriptor: `eprintln!` inside a test is captured.
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

/// Whether the environment variable `require` is set to `1`: the test must run.
pub fn required(require: &str) -> bool {
    std::env::var(require).is_ok_and(|v| v == "1")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_skip_passes_unless_required() {
        skip(
            "WARREN_TEST_SUPPORT_NEVER_SET",
            "showing what a skip looks like",
        );
        assert!(!required("WARREN_TEST_SUPPORT_NEVER_SET"));
    }

    #[test]
    fn a_required_skip_fails() {
        // PATH is set to something other than "1" everywhere; HOME too. Use a variable
        // this process sets for itself so the test does not depend on the environment.
        std::env::set_var("WARREN_TEST_SUPPORT_REQUIRED", "1");
        let result = std::panic::catch_unwind(|| skip("WARREN_TEST_SUPPORT_REQUIRED", "x"));
        assert!(result.is_err());
    }
}
