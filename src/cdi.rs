//! The node's CDI specs (Container Device Interface, `/etc/cdi` and `/var/run/cdi`), read
//! for what the planner needs: which devices they name, and which of them gives a GPU
//! device node by its UUID. Only files that root owns and only root can change are read
//! (the specs say what a container gets), at most 1 MiB each, never through a link.

use crate::plan::fabric::FabricFacts;
pub use crate::plan::fabric::CDI_SPEC_DIRS as SPEC_DIRS;
use serde::Deserialize;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

/// Largest spec file read.
const MAX_SPEC: u64 = 1 << 20;

/// A CDI spec, as much of it as the planner reads.
#[derive(Debug, Deserialize)]
struct Spec {
    kind: String,
    #[serde(default)]
    devices: Vec<SpecDevice>,
}

#[derive(Debug, Deserialize)]
struct SpecDevice {
    name: String,
    #[serde(default, rename = "containerEdits")]
    edits: Edits,
}

#[derive(Debug, Default, Deserialize)]
struct Edits {
    #[serde(default, rename = "deviceNodes")]
    device_nodes: Vec<DeviceNode>,
}

#[derive(Debug, Deserialize)]
struct DeviceNode {
    path: String,
}

/// Adds what the specs in `dirs` name to `facts`. A spec that cannot be parsed is skipped
/// with a warning (Docker refuses it too); a folder or spec that someone other than root
/// can change makes the node's CDI untrusted (Docker would read it all the same).
pub fn read(dirs: &[&str], facts: &mut FabricFacts) {
    for dir in dirs {
        if !Path::new(dir).exists() {
            continue;
        }
        if let Err(why) = crate::config::owner_alone(Path::new(dir), 0) {
            facts.cdi_untrusted.get_or_insert(why);
            continue;
        }
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        let mut files: Vec<_> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        files.sort();
        for file in files.iter().filter(|f| is_spec_name(f)) {
            match read_spec(file) {
                Ok(spec) => add(&spec, facts),
                Err(Unread::Untrusted(why)) => {
                    facts
                        .cdi_untrusted
                        .get_or_insert(format!("{}: {why}", file.display()));
                }
                Err(Unread::Invalid(e)) => {
                    log::warn!("CDI spec {} is not used: {e}", file.display())
                }
            }
        }
    }
}

fn is_spec_name(f: &Path) -> bool {
    matches!(
        f.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml" | "json")
    )
}

/// Why a spec was not read.
enum Unread {
    /// Someone other than root can change it (or it is a link, a FIFO, ...).
    Untrusted(String),
    /// It does not parse, or cannot be read.
    Invalid(String),
}

fn read_spec(file: &Path) -> Result<Spec, Unread> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(file)
        .map_err(|e| Unread::Untrusted(e.to_string()))?;
    let meta = f.metadata().map_err(|e| Unread::Invalid(e.to_string()))?;
    if !meta.is_file() || meta.uid() != 0 || meta.mode() & 0o022 != 0 {
        return Err(Unread::Untrusted(
            "not a regular file that only root can change".into(),
        ));
    }
    let mut text = String::new();
    f.take(MAX_SPEC)
        .read_to_string(&mut text)
        .map_err(|e| Unread::Invalid(e.to_string()))?;
    parse(&text).map_err(Unread::Invalid)
}

fn parse(text: &str) -> Result<Spec, String> {
    serde_norway::from_str(text).map_err(|e| e.to_string())
}

/// Records the devices of `spec`, and the GPU device node each UUID-named NVIDIA device
/// gives.
fn add(spec: &Spec, facts: &mut FabricFacts) {
    for d in &spec.devices {
        let name = format!("{}={}", spec.kind, d.name);
        if spec.kind == "nvidia.com/gpu" && d.name.starts_with("GPU-") {
            let gpu_node = d.edits.device_nodes.iter().find(|n| {
                n.path
                    .strip_prefix("/dev/nvidia")
                    .is_some_and(|i| !i.is_empty() && i.chars().all(|c| c.is_ascii_digit()))
            });
            if let Some(n) = gpu_node {
                facts.cdi_gpus.insert(n.path.clone(), name.clone());
            }
        }
        facts.cdi_devices.insert(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NVIDIA: &str = r#"---
cdiVersion: 0.5.0
kind: nvidia.com/gpu
devices:
- name: "0"
  containerEdits:
    deviceNodes:
    - path: /dev/nvidia0
- name: GPU-5a1c0f5e-0000-4d2b-9d7e-000000000001
  containerEdits:
    deviceNodes:
    - path: /dev/nvidia0
    - path: /dev/dri/card1
- name: all
  containerEdits:
    deviceNodes:
    - path: /dev/nvidia0
containerEdits:
  deviceNodes:
  - path: /dev/nvidiactl
"#;

    #[test]
    fn nvidia_ctks_spec_names_each_gpu_node_by_uuid() {
        let mut f = FabricFacts::default();
        add(&parse(NVIDIA).unwrap(), &mut f);
        assert_eq!(
            f.cdi_gpus.get("/dev/nvidia0").map(String::as_str),
            Some("nvidia.com/gpu=GPU-5a1c0f5e-0000-4d2b-9d7e-000000000001")
        );
        assert_eq!(f.cdi_gpus.len(), 1);
        assert!(f.cdi_devices.contains("nvidia.com/gpu=all"));
        assert!(f.cdi_devices.contains("nvidia.com/gpu=0"));
    }

    #[test]
    fn a_json_spec_reads_too() {
        let mut f = FabricFacts::default();
        add(
            &parse(r#"{"cdiVersion":"0.6.0","kind":"hpe.com/cxi","devices":[{"name":"cxi0","containerEdits":{"deviceNodes":[{"path":"/dev/cxi0"}]}}]}"#).unwrap(),
            &mut f,
        );
        assert!(f.cdi_devices.contains("hpe.com/cxi=cxi0"));
        assert!(parse("kind: [").is_err());
    }
}
