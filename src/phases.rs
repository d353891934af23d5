//! How long each phase of a container's start took, for `MND_TIMING=1` (benchmarks): the
//! launcher prints each phase as it ends; direct mode's root helper returns them in its
//! reply and the plugin prints them.

use std::time::Instant;

/// The phases so far.
pub struct Phases {
    last: Instant,
    marks: Vec<(String, u32)>,
    /// Print each phase as it ends, for this node (the launcher, under `MND_TIMING`).
    printing_for: Option<String>,
}

impl Phases {
    /// Starts counting now; the phases are kept for [`Phases::done`].
    pub fn start() -> Self {
        Phases {
            last: Instant::now(),
            marks: Vec::new(),
            printing_for: None,
        }
    }

    /// Starts counting now, printing each phase of `node` as it ends when `MND_TIMING` is
    /// set.
    pub fn printing(node: &str) -> Self {
        let p = Phases {
            printing_for: std::env::var_os("MND_TIMING").map(|_| node.to_string()),
            ..Phases::start()
        };
        if p.printing_for.is_some() {
            eprintln!(
                "mnd-srun timing: {node} phase begin 0.000 s{}",
                wall_clock()
            );
        }
        p
    }

    /// The phase `name` ended now.
    pub fn mark(&mut self, name: &str) {
        let now = Instant::now();
        let took = now.duration_since(self.last);
        if let Some(node) = &self.printing_for {
            eprintln!(
                "mnd-srun timing: {node} phase {name} {:.3} s{}",
                took.as_secs_f64(),
                wall_clock()
            );
        }
        let ms = u32::try_from(took.as_millis()).unwrap_or(u32::MAX);
        self.marks.push((name.to_string(), ms));
        self.last = now;
    }

    /// The phases, in order, in milliseconds.
    pub fn done(self) -> Vec<(String, u32)> {
        self.marks
    }
}

/// With `MND_TIMING=at`: " at SECONDS" (since the epoch), to line up the phases of every
/// node and srun on one timeline; empty otherwise.
pub fn wall_clock() -> String {
    if std::env::var_os("MND_TIMING").is_none_or(|v| v != "at") {
        return String::new();
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format!(" at {:.6}", now.as_secs_f64())
}
