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

/// With `MND_TIMING=1`, prints how long each step of a container start took.
pub(super) struct Phases<'a> {
    node: &'a str,
    last: Instant,
}

impl<'a> Phases<'a> {
    pub(super) fn new(node: &'a str) -> Self {
        Phases {
            node,
            last: Instant::now(),
        }
    }

    pub(super) fn mark(&mut self, phase: &str) {
        if timing_enabled() {
            eprintln!(
                "mnd-srun timing: {} phase {phase} {:.3} s",
                self.node,
                self.last.elapsed().as_secs_f64()
            );
        }
        self.last = Instant::now();
    }
}

/// With `MND_TIMING=1`, prints a phase's duration (for benchmarks; quiet otherwise).
pub(super) fn eprintln_timing(phase: &str, since: Instant) {
    if timing_enabled() {
        eprintln!(
            "mnd-srun timing: {phase} {:.3} s",
            since.elapsed().as_secs_f64()
        );
    }
}
