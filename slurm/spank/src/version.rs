//! A plugin built for another Slurm: slurmstepd, slurmd and srun refuse it with a line that
//! names only the plugin's version ("Incompatible Slurm plugin ... version (24.11.0)") and
//! go on without it, or stop. Slurm never calls such a plugin, but the library is loaded
//! and unloaded: when it goes without its `init` having run, it says which Slurm it was
//! built for, which Slurm refused it, and how to rebuild.

use std::sync::atomic::{AtomicBool, Ordering};

static STARTED: AtomicBool = AtomicBool::new(false);

/// Slurm called the plugin: it was not refused.
pub fn started() {
    STARTED.store(true, Ordering::Relaxed);
}

#[cfg(not(test))]
#[used]
#[unsafe(link_section = ".fini_array")]
static AT_UNLOAD: extern "C" fn() = at_unload;

#[cfg_attr(test, allow(dead_code))]
extern "C" fn at_unload() {
    if STARTED.load(Ordering::Relaxed) {
        return;
    }
    let running = running_slurm().unwrap_or_else(|| "this Slurm".into());
    eprintln!(
        "mnd_spank: this plugin was built for Slurm {} and {running} refused it (slurmstepd loads a SPANK plugin only of its own major.minor). Fix: rebuild it for this Slurm: scripts/install.sh --plugin (or scripts/package.sh) on a machine with its libslurm-dev",
        crate::BUILT_FOR
    );
}

/// The release of the Slurm library in this process, read from its mapped file (only when
/// the plugin was refused): the most frequent `NN.NN.N` string in it.
fn running_slurm() -> Option<String> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    let lib = maps
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .find(|p| p.contains("libslurmfull") || p.contains("libslurm.so"))?;
    let bytes = std::fs::read(lib).ok()?;
    most_frequent_release(&bytes).map(|v| format!("Slurm {v}"))
}

/// The most frequent NUL-delimited `MM.mm.p` (MM 20 to 40) string in `bytes`.
fn most_frequent_release(bytes: &[u8]) -> Option<String> {
    let mut counts: std::collections::BTreeMap<&str, usize> = Default::default();
    for s in bytes.split(|b| *b == 0) {
        let Ok(s) = std::str::from_utf8(s) else {
            continue;
        };
        let parts: Vec<&str> = s.split('.').collect();
        let release = matches!(parts.as_slice(), [a, b, c]
            if a.len() == 2 && b.len() == 2 && !c.is_empty()
            && [a, b, c].iter().all(|p| p.bytes().all(|d| d.is_ascii_digit()))
            && (20..=40).contains(&a.parse::<u32>().unwrap_or(0)));
        if release {
            *counts.entry(s).or_default() += 1;
        }
    }
    counts
        .into_iter()
        .max_by_key(|(_, n)| *n)
        .map(|(s, _)| s.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_release_is_the_most_frequent_version_string() {
        let lib = [
            &b"\x7fELF"[..],
            b"22.05.8",
            b"x 1.2.3",
            b"22.05.8",
            b"slurm 22.05",
            b" 23.11.1",
            b"23.11.1",
        ]
        .join(&0u8);
        assert_eq!(most_frequent_release(&lib).as_deref(), Some("22.05.8"));
        assert_eq!(most_frequent_release(b"\0no\0version\0"), None);
    }
}
