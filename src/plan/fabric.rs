//! Fabrics: which of the site's device profiles (`[fabrics.NAME]` in the site config) a
//! container gets, and GPUs named through CDI. A user names profiles, never devices: what a
//! profile holds is the admin's, from root-owned files only.
//!
//! Pass 1 (the request and the node's facts): the profiles asked for, or the site's
//! default ones where the node has every device they name; their devices, CDI names,
//! read-only mounts and environment defaults. Pass 2 ([`for_engine`], once the engine is
//! known): CDI names need an engine with CDI, and the step's NVIDIA GPUs go by their
//! UUIDs through CDI where the node's CDI specs name them.

use super::error::{usage, PlanError};
use crate::config::{valid_fabric_name, FabricProfile, SiteConfig};
use crate::spec::{ContainerSpec, Device, Gpus, Mount};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

/// What the job asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FabricAsk {
    /// Nothing said: the site's default profiles, where the node has their devices.
    Default,
    /// `none`: no profile, not even a default one.
    None,
    /// These profiles, each required.
    Named(Vec<String>),
}

/// The fabric facts of a node: which of the site's profile devices exist, and what its CDI
/// specs name (gathered by `node::gather` and `cdi::read`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FabricFacts {
    /// Device paths of the site's profiles that exist here (a device, or a folder of them).
    pub present: BTreeSet<String>,
    /// CDI devices the node's specs define, fully named (`vendor.com/class=name`).
    pub cdi_devices: BTreeSet<String>,
    /// For each GPU device node (`/dev/nvidia3`), the CDI name that gives it by UUID
    /// (`nvidia.com/gpu=GPU-...`).
    pub cdi_gpus: BTreeMap<String, String>,
    /// Why the node's CDI specs cannot be trusted, if they cannot: a spec folder or file
    /// that someone other than root can change (Docker would still read it).
    pub cdi_untrusted: Option<String>,
    /// Profile mount sources that are not root's alone, and why (a folder another user
    /// can change would put their files in every job's container).
    pub unsafe_sources: BTreeMap<String, String>,
}

/// Where Docker (and Podman) read CDI specs unless told otherwise; the only folders whose
/// specs are checked, so an engine reading others is not used for CDI.
pub const CDI_SPEC_DIRS: [&str; 2] = ["/etc/cdi", "/var/run/cdi"];

/// What the chosen profiles give a container.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fabric {
    /// The profiles, for messages and the job's `MND_FABRICS`.
    pub names: Vec<String>,
    /// Device nodes (or folders of them), at the same path.
    pub devices: Vec<Device>,
    /// CDI devices, fully named.
    pub cdi: Vec<String>,
    /// Read-only mounts.
    pub mounts: Vec<Mount>,
    /// Defaults, given where neither the user nor the image sets the variable.
    pub env: Vec<(String, String)>,
}

/// Parses `--mnd-fabric` / `--fabric` (`flag` names it in messages): `none`, or profile
/// names separated by commas.
pub fn ask(text: Option<&str>, flag: &str) -> Result<FabricAsk, PlanError> {
    let Some(text) = text.map(str::trim) else {
        return Ok(FabricAsk::Default);
    };
    if text == "none" {
        return Ok(FabricAsk::None);
    }
    let mut names: Vec<String> = Vec::new();
    for n in text.split(',').map(|n| n.trim().to_string()) {
        if !names.contains(&n) {
            names.push(n);
        }
    }
    match names.iter().find(|n| !valid_fabric_name(n)) {
        Some(bad) => Err(usage(format!(
            "{flag}='{text}': '{bad}' is not a profile name (letters, digits, '-' and '_'). Fix: name profiles of the site config, e.g. {flag}=ib, or {flag}=none"
        ))),
        None => Ok(FabricAsk::Named(names)),
    }
}

/// Pass 1: the profiles `ask` gives on `node`. A named profile must exist and the node must
/// have every device it names (else the step is refused, saying which and how to fix); a
/// default profile applies only where the node has them all.
pub fn choose(
    ask: &FabricAsk,
    flag: &str,
    site: &SiteConfig,
    facts: &FabricFacts,
    node: &str,
) -> Result<Fabric, PlanError> {
    let profiles = site.fabric_profiles();
    let chosen: Vec<(&String, &FabricProfile)> = match ask {
        FabricAsk::None => vec![],
        FabricAsk::Default => profiles
            .iter()
            .filter(|(_, p)| p.default && missing(p, facts).is_none())
            .collect(),
        FabricAsk::Named(names) => names
            .iter()
            .map(|n| named(n, &profiles, flag, site, facts, node))
            .collect::<Result<_, _>>()?,
    };
    let mut out = Fabric::default();
    for (name, p) in chosen {
        if let Some((src, why)) = p
            .mounts
            .iter()
            .find_map(|m| facts.unsafe_sources.get_key_value(source_of(m)))
        {
            return Err(usage(format!(
                "fabric profile '{name}' mounts {src}, which is not root's alone ({why}; site config {}). Fix (admin): make {src} and every folder above it owned by root and writable by no one else",
                site.name()
            )));
        }
        out.names.push(name.clone());
        out.devices.extend(p.devices.iter().map(|d| Device {
            host: d.clone(),
            container: d.clone(),
            permissions: "rwm".into(),
        }));
        out.cdi.extend(p.cdi.iter().cloned());
        out.mounts
            .extend(p.mounts.iter().map(|m| read_only_mount(m)));
        for (k, v) in p.env.iter().filter_map(|e| e.split_once('=')) {
            if !out.env.iter().any(|(have, _)| have == k) {
                out.env.push((k.to_string(), v.to_string()));
            }
        }
    }
    out.devices.dedup();
    out.cdi.dedup();
    out.mounts.dedup();
    Ok(out)
}

/// The profile `name`, which the node must be able to give.
fn named<'a>(
    name: &str,
    profiles: &'a BTreeMap<String, FabricProfile>,
    flag: &str,
    site: &SiteConfig,
    facts: &FabricFacts,
    node: &str,
) -> Result<(&'a String, &'a FabricProfile), PlanError> {
    let Some((key, p)) = profiles.get_key_value(name) else {
        let have: Vec<&str> = profiles.keys().map(String::as_str).collect();
        return Err(usage(format!(
            "{flag}={name}: the site has no fabric profile '{name}' (profiles: {}; site config {}, [fabrics]). Fix: name one of them, or ask your admin to add one",
            have.join(", "),
            site.name()
        )));
    };
    match missing(p, facts) {
        Some(what) => Err(usage(format!(
            "{flag}={name}: {node} does not have {what}, which fabric profile '{name}' needs (site config {}). Fix: ask Slurm for nodes that have the fabric (e.g. --constraint), drop {flag}, or ask your admin",
            site.name()
        ))),
        None => Ok((key, p)),
    }
}

/// The first device or CDI name of `p` this node lacks, if any.
fn missing(p: &FabricProfile, facts: &FabricFacts) -> Option<String> {
    if let Some(d) = p.devices.iter().find(|d| !facts.present.contains(*d)) {
        return Some(d.clone());
    }
    let why = match &facts.cdi_untrusted {
        Some(why) => format!("the node's CDI specs cannot be trusted: {why}"),
        None => "in no CDI spec of the node".into(),
    };
    p.cdi
        .iter()
        .find(|c| !facts.cdi_devices.contains(*c))
        .map(|c| format!("the CDI device {c} ({why})"))
}

/// The source of a profile's `SRC[:DST]`.
pub fn source_of(mount: &str) -> &str {
    mount.split_once(':').map_or(mount, |(s, _)| s)
}

/// `SRC[:DST]` of a profile, always read-only.
fn read_only_mount(text: &str) -> Mount {
    let (source, target) = text.split_once(':').unwrap_or((text, text));
    Mount {
        source: PathBuf::from(source),
        target: PathBuf::from(target),
        read_only: true,
        propagation: None,
    }
}

/// Whether the engine's CDI matters to `spec`: it names CDI devices, or NVIDIA GPUs the
/// node's CDI specs name (asking the engine costs a call, so only then).
pub fn engine_cdi_matters(spec: &ContainerSpec, facts: &FabricFacts) -> bool {
    !spec.cdi_devices.is_empty()
        || (matches!(spec.gpus, Gpus::Nvidia(_)) && !facts.cdi_gpus.is_empty())
}

/// Why CDI cannot be used with an engine that reads specs from `engine_dirs` (none: CDI
/// is off), if it cannot: it must be on, read only the folders whose specs were checked,
/// and those must be root's alone.
fn cdi_unusable(engine_dirs: &[String], facts: &FabricFacts) -> Option<String> {
    if engine_dirs.is_empty() {
        return Some("this node's Docker has CDI turned off. Fix (admin): set \"features\": {\"cdi\": true} in /etc/docker/daemon.json and restart Docker".into());
    }
    if let Some(d) = engine_dirs
        .iter()
        .find(|d| !CDI_SPEC_DIRS.contains(&d.as_str()))
    {
        return Some(format!("this node's Docker reads CDI specs from {d}, which mnd-srun does not check. Fix (admin): keep Docker's cdi-spec-dirs at {}", CDI_SPEC_DIRS.join(" and ")));
    }
    facts.cdi_untrusted.as_ref().map(|why| format!("this node's CDI specs cannot be trusted: {why}. Fix (admin): make the spec folders and files owned by root and writable by no one else"))
}

/// Pass 2, once the engine is known: CDI devices need an engine with CDI turned on
/// (`engine_dirs`: the spec folders `docker info` names) reading only root's checked specs,
/// and there the step's NVIDIA GPUs are asked by their UUIDs, when the node's CDI specs
/// name every one; the `nvidia` request stays otherwise. `NVIDIA_VISIBLE_DEVICES` is then
/// `void`, so a node whose default runtime is NVIDIA's adds nothing by index.
pub fn for_engine(
    spec: &mut ContainerSpec,
    engine_dirs: &[String],
    facts: &FabricFacts,
) -> Result<(), PlanError> {
    let unusable = cdi_unusable(engine_dirs, facts);
    if let (false, Some(why)) = (spec.cdi_devices.is_empty(), &unusable) {
        return Err(usage(format!(
            "the fabric asks for CDI devices ({}) but {why}; or drop the profile's cdi names",
            spec.cdi_devices.join(", ")
        )));
    }
    let cdi_on = unusable.is_none();
    let Gpus::Nvidia(ids) = &spec.gpus else {
        return Ok(());
    };
    let by_uuid: Option<Vec<String>> = ids
        .iter()
        .map(|id| facts.cdi_gpus.get(&format!("/dev/nvidia{id}")).cloned())
        .collect();
    if let (true, Some(names)) = (cdi_on, by_uuid) {
        spec.gpus = Gpus::Cdi(names);
        for e in spec.env.iter_mut() {
            if e.starts_with("NVIDIA_VISIBLE_DEVICES=") {
                *e = "NVIDIA_VISIBLE_DEVICES=void".into();
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn site(text: &str) -> SiteConfig {
        SiteConfig::parse(text, Path::new("/etc/mnd-srun/config.toml")).unwrap()
    }

    const SITE: &str = r#"
[fabrics.ib]
devices = ["/dev/infiniband"]
env = ["NCCL_IB_DISABLE=0", "UCX_NET_DEVICES=mlx5_0:1"]
default = true
[fabrics.gdr]
devices = ["/dev/gdrdrv"]
mounts = ["/opt/site/nccl-net:/usr/local/nccl-net"]
env = ["NCCL_NET_GDR_LEVEL=PHB"]
[fabrics.cxi]
cdi = ["hpe.com/cxi=cxi0"]
"#;

    fn facts(present: &[&str]) -> FabricFacts {
        FabricFacts {
            present: present.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn defaults_apply_only_where_the_node_has_the_devices() {
        let s = site(SITE);
        let f = choose(
            &FabricAsk::Default,
            "--mnd-fabric",
            &s,
            &facts(&["/dev/infiniband"]),
            "n1",
        )
        .unwrap();
        assert_eq!(f.names, ["ib"]);
        assert_eq!(f.devices[0].host, "/dev/infiniband");
        assert!(f.env.contains(&("NCCL_IB_DISABLE".into(), "0".into())));
        let none = choose(&FabricAsk::Default, "--mnd-fabric", &s, &facts(&[]), "n1").unwrap();
        assert_eq!(none, Fabric::default());
        let off = choose(
            &FabricAsk::None,
            "--mnd-fabric",
            &s,
            &facts(&["/dev/infiniband"]),
            "n1",
        )
        .unwrap();
        assert_eq!(off, Fabric::default());
    }

    #[test]
    fn a_named_profile_is_given_whole_or_refused_naming_what_is_missing() {
        let s = site(SITE);
        let ask = self::ask(Some("ib,gdr"), "--mnd-fabric").unwrap();
        let f = choose(
            &ask,
            "--mnd-fabric",
            &s,
            &facts(&["/dev/infiniband", "/dev/gdrdrv"]),
            "n1",
        )
        .unwrap();
        assert_eq!(f.names, ["ib", "gdr"]);
        assert_eq!(f.mounts[0].target, Path::new("/usr/local/nccl-net"));
        assert!(f.mounts[0].read_only);
        let refused = |ask: &FabricAsk, present: &[&str], node: &str| {
            choose(ask, "--mnd-fabric", &s, &facts(present), node)
                .unwrap_err()
                .to_string()
        };
        let e = refused(&ask, &["/dev/infiniband"], "node3");
        assert!(
            e.contains("node3 does not have /dev/gdrdrv")
                && e.contains("'gdr'")
                && e.contains("Fix"),
            "{e}"
        );
        let e = refused(&FabricAsk::Named(vec!["efa".into()]), &[], "n1");
        assert!(
            e.contains("no fabric profile 'efa'")
                && e.contains("cxi, gdr, ib")
                && e.contains("/etc/mnd-srun/config.toml"),
            "{e}"
        );
        let e = refused(&FabricAsk::Named(vec!["cxi".into()]), &[], "n1");
        assert!(e.contains("CDI device hpe.com/cxi=cxi0"), "{e}");
    }

    #[test]
    fn names_are_profile_names_never_paths() {
        for bad in ["/dev/sda", "ib,", "ib;rm", "../x"] {
            let e = ask(Some(bad), "--mnd-fabric").unwrap_err().to_string();
            assert!(e.contains("not a profile name"), "{bad}: {e}");
        }
        assert_eq!(ask(None, "--fabric").unwrap(), FabricAsk::Default);
        assert_eq!(ask(Some("none"), "--fabric").unwrap(), FabricAsk::None);
    }

    #[test]
    fn the_builtin_ib_profile_is_there_unless_the_site_writes_its_own() {
        let s = SiteConfig::default();
        let f = choose(
            &FabricAsk::Named(vec!["ib".into()]),
            "--fabric",
            &s,
            &facts(&["/dev/infiniband"]),
            "n1",
        )
        .unwrap();
        assert_eq!(f.devices.len(), 1);
        // Not a default: the built-in profile applies only when asked.
        let d = choose(
            &FabricAsk::Default,
            "--fabric",
            &s,
            &facts(&["/dev/infiniband"]),
            "n1",
        )
        .unwrap();
        assert!(d.names.is_empty());
    }

    fn spec_with(gpus: Gpus, cdi: &[&str]) -> ContainerSpec {
        ContainerSpec {
            gpus,
            cdi_devices: cdi.iter().map(|c| c.to_string()).collect(),
            env: vec!["NVIDIA_VISIBLE_DEVICES=1,3".into()],
            ..Default::default()
        }
    }

    fn on() -> Vec<String> {
        CDI_SPEC_DIRS.map(String::from).to_vec()
    }

    #[test]
    fn gpus_go_by_uuid_through_cdi_where_the_engine_and_the_specs_allow() {
        let mut facts = FabricFacts::default();
        facts
            .cdi_gpus
            .insert("/dev/nvidia1".into(), "nvidia.com/gpu=GPU-b".into());
        facts
            .cdi_gpus
            .insert("/dev/nvidia3".into(), "nvidia.com/gpu=GPU-d".into());
        let mut s = spec_with(Gpus::Nvidia(vec![1, 3]), &[]);
        for_engine(&mut s, &on(), &facts).unwrap();
        assert_eq!(
            s.gpus,
            Gpus::Cdi(vec![
                "nvidia.com/gpu=GPU-b".into(),
                "nvidia.com/gpu=GPU-d".into()
            ])
        );
        assert_eq!(s.env, ["NVIDIA_VISIBLE_DEVICES=void"]);
        // No CDI in the engine, or a GPU the specs do not name: the nvidia request stays.
        let mut s = spec_with(Gpus::Nvidia(vec![1, 3]), &[]);
        for_engine(&mut s, &[], &facts).unwrap();
        assert_eq!(s.gpus, Gpus::Nvidia(vec![1, 3]));
        let mut s = spec_with(Gpus::Nvidia(vec![1, 2]), &[]);
        for_engine(&mut s, &on(), &facts).unwrap();
        assert_eq!(s.gpus, Gpus::Nvidia(vec![1, 2]));
        // CDI devices of a profile on an engine without CDI: refused, saying the fix.
        let mut s = spec_with(Gpus::None, &["hpe.com/cxi=cxi0"]);
        let e = for_engine(&mut s, &[], &facts).unwrap_err().to_string();
        assert!(
            e.contains("CDI turned off") && e.contains("daemon.json"),
            "{e}"
        );
    }
}
