//! `mnd_spank.so`: the SPANK plugin of mnd-srun. `srun --mnd-image=IMAGE cmd` runs every
//! task of the step inside its node's Docker container, as an ordinary Slurm task.
//!
//! Per step and node, the first task (in `task_init_privileged`, as root, under a lock)
//! runs the root helper `mnd direct up`, which checks the request against the root-owned
//! site policy and starts the container; every task then joins the container's mount
//! namespace, takes the image's environment and can gain no privilege. `slurm_spank_exit`
//! removes the step's container (`--mnd-name` ones live until the Epilog).
//!
//! The plugin starts no thread: slurmstepd forks the task children from it, and joining a
//! mount namespace needs a single-threaded process. Docker work happens in the helper.

#[cfg(all(feature = "slurm-22", not(feature = "slurm-23")))]
extern crate slurm_spank_0_2 as slurm_spank;
#[cfg(feature = "slurm-23")]
extern crate slurm_spank_0_4 as slurm_spank;

mod fakeroot;
mod join;
#[cfg(test)]
mod manpage;
mod options;
mod relay;
mod step;
mod version;

use mnd::plan::options::CheckOptions;
use options::{PluginArgs, OPTIONS};
use slurm_spank::{spank_log_error, Context, Plugin, SpankHandle, SpankOption, SPANK_PLUGIN};
use std::error::Error;
use step::TaskFacts;

/// Slurm's PMIx server tells its clients how it runs; an image's own PMIx (another version,
/// other defaults) connects only when told the same through its MCA variables (as pyxis
/// does).
const PMIX_REMAP: [(&str, &str); 3] = [
    ("PMIX_SECURITY_MODE", "PMIX_MCA_psec"),
    ("PMIX_GDS_MODULE", "PMIX_MCA_gds"),
    ("PMIX_PTL_MODULE", "PMIX_MCA_ptl"),
];

/// Per-task GPU variables Slurm sets, renumbered for the container.
const GPU_VARS: [&str; 4] = [
    "CUDA_VISIBLE_DEVICES",
    "ROCR_VISIBLE_DEVICES",
    "HIP_VISIBLE_DEVICES",
    "GPU_DEVICE_ORDINAL",
];

// `SPANK_PLUGIN!(b"mnd_spank", VERSION, MndSpank)` with the version of the headers
// (slurmstepd compares major.minor when it loads the plugin; slurm-spank 0.2's macro takes
// only a literal, so build.rs writes the call).
include!(concat!(env!("OUT_DIR"), "/plugin.rs"));

/// The plugin's state in one slurmstepd (or srun/sbatch/salloc).
#[derive(Default)]
struct MndSpank {
    args: PluginArgs,
    step: Option<step::Step>,
    /// In a task child: what the helper answered.
    reply: Option<mnd::spank::Reply>,
    /// In the first task child under `MND_TIMING=1`: where its start went, printed on the
    /// task's stderr just before the program (the only output the user sees from here).
    timing: Option<String>,
    /// In slurmstepd: how many of the node's tasks have exited.
    exited: u32,
    /// In the node's first task child: what the helper said for `--mnd-containers`,
    /// printed on the task's stdout as the user.
    said: Vec<String>,
}

unsafe impl Plugin for MndSpank {
    fn init(&mut self, spank: &mut SpankHandle) -> Result<(), Box<dyn Error>> {
        version::started();
        self.args = PluginArgs::parse(&spank.plugin_argv()?)?;
        if matches!(
            spank.context()?,
            Context::Local | Context::Remote | Context::Allocator
        ) {
            for o in OPTIONS {
                let option = SpankOption::new(o.name).usage(&o.usage());
                spank.register_option(match o.value {
                    Some(v) => option.takes_value(v),
                    None => option,
                })?;
            }
        }
        Ok(())
    }

    fn init_post_opt(&mut self, spank: &mut SpankHandle) -> Result<(), Box<dyn Error>> {
        let given = options::given(spank)?;
        match spank.context()? {
            // Early and advisory: the root helper checks again, with the site policy.
            Context::Local | Context::Allocator => {
                if let Some(o) = &given {
                    let checked = o.check().map_err(|e| format!("mnd: {e}"))?;
                    if let Some(to) = &checked.save {
                        mnd::stepsave::check_writable(to).map_err(|e| format!("mnd: {e}"))?;
                    }
                }
            }
            Context::Remote => {
                if let Some(o) = given {
                    self.step = step::Step::from_job(spank, o, &self.args)?;
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn task_init_privileged(&mut self, spank: &mut SpankHandle) -> Result<(), Box<dyn Error>> {
        let Some(step) = &self.step else {
            return Ok(());
        };
        // Slurm has set the step's GPUs on this node in the task's environment by now (and
        // replaced any value of the user's for these two).
        let task = TaskFacts {
            gpu_indices: spank.getenv("SLURM_STEP_GPUS")?,
            cuda_visible: spank.getenv("CUDA_VISIBLE_DEVICES")?,
            step_nodes: spank.getenv("SLURM_STEP_NODELIST")?,
        };
        let t0 = std::time::Instant::now();
        let reply = step
            .container(&self.args, task)
            .map_err(|e| format!("mnd: {}: {e}", step.node()))?;
        let started = t0.elapsed();
        // --mnd-name=NAME:no_exec: the container is made or found; the tasks stay outside.
        // --mnd-containers: there is none; the node's first task says what the node said.
        if reply.no_exec {
            if spank.task_id().ok() == Some(0) {
                self.said = reply.said;
            }
            return Ok(());
        }
        join::enter(&reply).map_err(|e| format!("mnd: {}: {e}", step.node()))?;
        let first_task = spank.task_id().ok() == Some(0);
        if first_task && spank.getenv("MND_TIMING")?.is_some() {
            let phases: Vec<String> = reply
                .phases
                .iter()
                .map(|(name, ms)| format!("{name} {ms}"))
                .collect();
            self.timing = Some(format!(
                "mnd timing: {} container {} ms (helper: {}), joined after {} ms",
                step.node(),
                started.as_millis(),
                phases.join(", "),
                t0.elapsed().as_millis()
            ));
        }
        for name in &reply.unset_env {
            spank.unsetenv(name)?;
        }
        for (name, value) in &reply.set_env {
            spank.setenv(name, value, true)?;
        }
        // The network defaults: never over a value of the task's, and not at all when the
        // user turned them off (MND_NO_NET_DEFAULTS, as for the launcher).
        let off = spank
            .getenv("MND_NO_NET_DEFAULTS")?
            .is_some_and(|v| !matches!(v.as_str(), "" | "0" | "false" | "no"));
        if !off {
            for (name, value) in &reply.defaults {
                set_unless_set(spank, name, value)?;
            }
        }
        self.reply = Some(reply);
        Ok(())
    }

    fn task_init(&mut self, spank: &mut SpankHandle) -> Result<(), Box<dyn Error>> {
        for line in &self.said {
            println!("{line}");
        }
        let Some(reply) = &self.reply else {
            return Ok(());
        };
        if let Some(line) = &self.timing {
            eprintln!("{line}");
        }
        in_task(reply, spank)
    }

    /// slurmstepd, as each task of the node exits, before srun hears of it: once the last
    /// one did, `--mnd-save` saves the container (so srun, and the job, wait for it).
    fn task_exit(&mut self, spank: &mut SpankHandle) -> Result<(), Box<dyn Error>> {
        let Some(step) = &self.step else {
            return Ok(());
        };
        self.exited += 1;
        if self.exited == spank.job_local_task_count()? {
            step.save(&self.args);
        }
        Ok(())
    }

    fn exit(&mut self, spank: &mut SpankHandle) -> Result<(), Box<dyn Error>> {
        if let (Ok(Context::Remote), Some(step)) = (spank.context(), &self.step) {
            step.finish(&self.args);
        }
        Ok(())
    }

    /// No tracing subscriber: slurm-spank's default one takes its filter from the user's
    /// `RUST_LOG`, and with spans enabled srun's exit callback (run after Rust's thread-locals
    /// are gone) panics in the subscriber's registry. The plugin speaks through SPANK only.
    #[cfg(feature = "slurm-23")]
    fn setup(&mut self, _spank: &mut SpankHandle) -> Result<(), Box<dyn Error>> {
        Ok(())
    }

    #[cfg(not(feature = "slurm-23"))]
    fn setup(&self, _spank: &mut SpankHandle) -> Result<(), Box<dyn Error>> {
        Ok(())
    }

    #[cfg(feature = "slurm-23")]
    fn report_error(&self, _spank: &mut SpankHandle, error: &dyn Error) {
        report(error);
    }

    #[cfg(not(feature = "slurm-23"))]
    fn report_error(&self, error: &dyn Error) {
        report(error);
    }
}

/// The one place a callback's error reaches the user (srun's stderr, or the task's) and
/// slurmd's log: the error and its causes on one line.
fn report(error: &dyn Error) {
    let mut line = error.to_string();
    let mut cause = error.source();
    while let Some(c) = cause {
        line.push_str(&format!(": {c}"));
        cause = c.source();
    }
    spank_log_error!("{line}");
}

/// A task, as the job's user, just before its program: root remapped, the working
/// directory, Slurm's PMIx settings for the image's PMIx, the GPUs renumbered.
fn in_task(reply: &mnd::spank::Reply, spank: &mut SpankHandle) -> Result<(), Box<dyn Error>> {
    if reply.remap_root {
        join::remap_root().map_err(|e| format!("mnd: {e}"))?;
        fakeroot::install().map_err(|e| format!("mnd: {e}"))?;
    }
    if let Some(dir) = &reply.workdir {
        std::env::set_current_dir(dir)
            .map_err(|e| format!("mnd: the working directory {}: {e}", dir.display()))?;
    }
    // Slurm's PMI variables are set by now (after task_init_privileged).
    if spank.getenv("PMIX_RANK")?.is_some() {
        for (from, to) in PMIX_REMAP {
            if let Some(value) = spank.getenv(from)? {
                set_unless_set(spank, to, &value)?;
            }
        }
    }
    // Slurm has set this task's GPUs by now, in its numbering; the container has the
    // step's GPUs as 0..n-1.
    for var in GPU_VARS {
        let mapped = spank
            .getenv(var)?
            .and_then(|v| mnd::spank::container_gpu_ids(&reply.gpus, &v));
        if let Some(ids) = mapped {
            spank.setenv(var, ids, true)?;
        }
    }
    Ok(())
}

/// Sets a task variable where the task has none (the user's own value wins).
fn set_unless_set(spank: &mut SpankHandle, name: &str, value: &str) -> Result<(), Box<dyn Error>> {
    if spank.getenv(name)?.is_none() {
        spank.setenv(name, value, true)?;
    }
    Ok(())
}
