//! With `MND_TIMING=1`: how long each step of a launch took and the launcher's peak memory
//! (for `scripts/bench`; quiet otherwise).

use tokio::time::Instant;

pub(super) fn timing_enabled() -> bool {
    std::env::var_os("MND_TIMING").is_some()
}

/// Peak resident set size of this process (VmHWM), in KiB.
pub(super) fn peak_rss_kb() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// With `MND_TIMING=1`, prints a phase's duration (for benchmarks; quiet otherwise).
pub(super) fn eprintln_timing(phase: &str, since: Instant) {
    if timing_enabled() {
        eprintln!(
            "mnd-srun timing: {phase} {:.3} s{}",
            since.elapsed().as_secs_f64(),
            crate::phases::wall_clock()
        );
    }
}
