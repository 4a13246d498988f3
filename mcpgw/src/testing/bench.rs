//! What the benchmarks share: the line naming the run's machine, and the rewrite of their
//! generated part of BENCHMARKS.md.

use std::path::Path;
use std::process::Command;

/// `2026-12-02, commit `abc1234`, 2 cores (CPU model)`, for the repository at `root`.
pub fn run_line(root: &Path) -> String {
    let sh = |cmd: &str| {
        Command::new("sh")
            .args(["-c", cmd])
            .current_dir(root)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default()
    };
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    format!(
        "{}, commit `{}`, {cores} cores ({cpu})",
        sh("date -u +%Y-%m-%d"),
        sh("git rev-parse --short HEAD 2>/dev/null")
    )
}

/// Replaces what lies between `start` and `end` (markers included) in `text` with
/// `generated`; `None` when the markers are not there, in that order.
pub fn replace_section(text: &str, start: &str, end: &str, generated: &str) -> Option<String> {
    match (text.find(start), text.find(end)) {
        (Some(a), Some(b)) if a < b => {
            text.get(..a).zip(text.get(b + end.len()..)).map(|(before, after)| format!("{before}{generated}{after}"))
        }
        _ => None,
    }
}
