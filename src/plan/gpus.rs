//! GPUs: what the user or Slurm asks for, the devices and groups that gives, and the
//! variables that number them inside the container.

use super::error::{usage, PlanError};
use super::facts::NodeFacts;
use super::policy::GpuAsk;
use crate::cli::{Args, GpuVendor};
use crate::slurm::StepContext;
use crate::spec::{Device, Gpus};

/// The GPUs asked for: `--gpus` (or `MND_GPUS`), else the seed's `NV_GPU`; and which of
/// the two it was, for messages.
pub(super) fn gpu_ask(args: &Args, facts: &NodeFacts) -> Result<(GpuAsk, &'static str), PlanError> {
    let (text, source) = match (&args.gpus, facts.env.get("NV_GPU")) {
        (Some(g), _) => (g.as_str(), "--gpus"),
        (None, Some(nv)) => (nv.as_str(), "NV_GPU"),
        (None, None) => return Ok((GpuAsk::Default, "--gpus")),
    };
    let ask = match text.trim() {
        "none" | "" => GpuAsk::None,
        "all" => GpuAsk::All,
        list => GpuAsk::Ids(
            list.split(',')
                .map(|s| {
                    s.trim().parse().map_err(|_| {
                        usage(format!(
                            "{source} '{list}': use all, none or physical GPU ids like 0,1"
                        ))
                    })
                })
                .collect::<Result<_, _>>()?,
        ),
    };
    Ok((ask, source))
}

/// GPU request, devices and groups, from what Slurm gave the step (physical ids) or what
/// was asked (already checked against the step by the policy).
pub(super) fn gpus(
    step: &StepContext,
    args: &Args,
    facts: &NodeFacts,
    ask: GpuAsk,
) -> (Gpus, Vec<Device>, Vec<u32>) {
    let want = match ask {
        GpuAsk::Default if !step.gpus.is_empty() => GpuAsk::Ids(step.gpus.clone()),
        GpuAsk::Default if step.under_slurm() => GpuAsk::None,
        GpuAsk::Default => GpuAsk::All,
        other => other,
    };
    match gpu_devices(args.gpu_vendor, want, facts) {
        (Gpus::Nvidia(ids), devices, groups) => (by_uuid(ids, step), devices, groups),
        other => other,
    }
}

/// The GPUs `ids` (the step's, checked by the policy) by Slurm's unique ids, where Slurm
/// gave them for every one.
fn by_uuid(ids: Vec<u32>, step: &StepContext) -> Gpus {
    let uuids: Option<Vec<String>> = ids
        .iter()
        .map(|id| {
            let at = step.gpus.iter().position(|g| g == id)?;
            step.gpu_uuids.get(at).cloned()
        })
        .collect();
    match uuids {
        Some(uuids) if !uuids.is_empty() => Gpus::NvidiaUuids(uuids),
        _ => Gpus::Nvidia(ids),
    }
}

/// What Docker is asked for to give a container the GPUs `want` of `vendor` (`Auto`: NVIDIA
/// when the node has /dev/nvidia0, else AMD when it has /dev/kfd): NVIDIA's device request,
/// or AMD's device nodes and the groups that own them.
pub(crate) fn gpu_devices(
    vendor: GpuVendor,
    want: GpuAsk,
    facts: &NodeFacts,
) -> (Gpus, Vec<Device>, Vec<u32>) {
    let vendor = match vendor {
        GpuVendor::Auto if facts.nvidia => GpuVendor::Nvidia,
        GpuVendor::Auto if facts.amd.is_some() => GpuVendor::Amd,
        GpuVendor::Auto => GpuVendor::None,
        v => v,
    };
    match (vendor, want) {
        (_, GpuAsk::None | GpuAsk::Default) | (GpuVendor::None | GpuVendor::Auto, _) => {
            (Gpus::None, vec![], vec![])
        }
        (GpuVendor::Nvidia, GpuAsk::All) => (Gpus::NvidiaAll, vec![], vec![]),
        (GpuVendor::Nvidia, GpuAsk::Ids(ids)) => (Gpus::Nvidia(ids), vec![], vec![]),
        (GpuVendor::Amd, want) => {
            let amd = facts.amd.clone().unwrap_or_default();
            let nodes: Vec<u32> = match want {
                GpuAsk::Ids(ids) => ids
                    .iter()
                    .map(|&i| amd.render_nodes.get(i as usize).copied().unwrap_or(128 + i))
                    .collect(),
                _ => amd.render_nodes.clone(),
            };
            let dev = |p: String| Device {
                host: p.clone(),
                container: p,
                permissions: "rwm".into(),
            };
            let mut devices = vec![dev("/dev/kfd".into())];
            devices.extend(nodes.iter().map(|n| dev(format!("/dev/dri/renderD{n}"))));
            (Gpus::None, devices, amd.device_gids)
        }
    }
}

/// What programs in the container are told about their GPUs, consistent with what they
/// see: the GPUs given appear as 0..n-1 (NVIDIA's runtime and AMD's render nodes alike),
/// and `NVIDIA_VISIBLE_DEVICES` names the node's physical ones.
pub(crate) fn gpu_env(gpus: &Gpus, devices: &[Device]) -> Vec<(String, String)> {
    let first_n = |n: usize| (0..n).map(|i| i.to_string()).collect::<Vec<_>>().join(",");
    match gpus {
        Gpus::Nvidia(ids) => vec![
            ("CUDA_VISIBLE_DEVICES".into(), first_n(ids.len())),
            (
                "NVIDIA_VISIBLE_DEVICES".into(),
                ids.iter().map(u32::to_string).collect::<Vec<_>>().join(","),
            ),
        ],
        Gpus::NvidiaUuids(uuids) => vec![
            ("CUDA_VISIBLE_DEVICES".into(), first_n(uuids.len())),
            ("NVIDIA_VISIBLE_DEVICES".into(), uuids.join(",")),
        ],
        Gpus::NvidiaAll => vec![("NVIDIA_VISIBLE_DEVICES".into(), "all".into())],
        // CDI gives the devices; NVIDIA's runtime, where it is the default, adds none.
        Gpus::Cdi(names) => vec![
            ("CUDA_VISIBLE_DEVICES".into(), first_n(names.len())),
            ("NVIDIA_VISIBLE_DEVICES".into(), "void".into()),
        ],
        // An image's own NVIDIA_VISIBLE_DEVICES=all (CUDA images have it) would hand every
        // GPU of a node whose default runtime is nvidia: a step without NVIDIA GPUs gets none.
        Gpus::None => {
            let mut env = vec![("NVIDIA_VISIBLE_DEVICES".to_string(), "void".to_string())];
            let render = devices
                .iter()
                .filter(|d| d.host.starts_with("/dev/dri/renderD"))
                .count();
            if render > 0 {
                env.push(("ROCR_VISIBLE_DEVICES".into(), first_n(render)));
                env.push(("HIP_VISIBLE_DEVICES".into(), first_n(render)));
            }
            env
        }
    }
}
