//! How `pema` reports a failure: one line per cause, each said once, exit status 1; a
//! backtrace only when asked for with `PEMA_BACKTRACE=1`.

use std::process::ExitCode;

/// The variable that asks for backtraces with errors (`RUST_BACKTRACE` alone does not: it is
/// often set machine-wide, and ordinary errors — a missing file — need none).
pub const BACKTRACE_VAR: &str = "PEMA_BACKTRACE";

/// Whether the user asked for backtraces.
pub fn backtraces_wanted() -> bool {
    std::env::var_os(BACKTRACE_VAR).is_some_and(|v| v != "0" && !v.is_empty())
}

/// The lines that report `error`: `error: <context>`, then `  caused by: <cause>` for each
/// cause not already stated by a line before it (typed errors often embed their source's
/// text, and the chain then repeats it).
pub fn error_lines(error: &anyhow::Error) -> Vec<String> {
    let mut said: Vec<String> = Vec::new();
    for cause in error.chain() {
        let text = cause.to_string();
        let text = text.trim();
        if text.is_empty() || said.iter().any(|s| s.contains(text)) {
            continue;
        }
        said.push(text.to_string());
    }
    said.iter()
        .enumerate()
        .map(|(i, s)| {
            // A cause spanning lines stays readable, indented under its first line.
            let s = s.replace('\n', "\n    ");
            if i == 0 {
                format!("error: {s}")
            } else {
                format!("  caused by: {s}")
            }
        })
        .collect()
}

/// Prints `error` to standard error and returns the failure exit status.
pub fn fail(error: &anyhow::Error) -> ExitCode {
    for line in error_lines(error) {
        eprintln!("{line}");
    }
    if backtraces_wanted() {
        eprintln!("\nbacktrace:\n{}", error.backtrace());
    }
    ExitCode::FAILURE
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("GGUF file m.gguf: {source}")]
    struct Outer {
        #[source]
        source: std::io::Error,
    }

    #[test]
    fn each_cause_is_said_once() {
        let inner = std::io::Error::other("bad magic");
        let e = anyhow::Error::new(Outer { source: inner }).context("loading model m");
        assert_eq!(
            error_lines(&e),
            [
                "error: loading model m",
                "  caused by: GGUF file m.gguf: bad magic"
            ]
        );
    }
}
