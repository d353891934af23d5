//! This node's container: its files (accounts, sshd and ssh configs, ssh wrappers), the
//! image check or pull under the per-user lock, create, upload, start, and the wait for its
//! sshd.

use super::files::{container_path, files, session_env};
use super::script::{self, ScriptExec};
use super::share::obtain_image;
use crate::accounts::AccountCache;
use crate::docker::{DockerError, Engine, ImageFacts, Lifeline, PullReport};
use crate::phases::Phases;
use crate::plan::Plan;
use crate::probe;
use crate::spec::ContainerSpec;
use crate::ssh;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// PID 1 of every container: wait for the launcher's go (its files are in place), start
/// sshd, exit when the launcher's stdin closes or sshd dies.
const ENTRYPOINT: &str = r#"read -r _ || exit 0
sshd=$(command -v sshd 2>/dev/null || echo /usr/sbin/sshd)
if [ ! -x "$sshd" ]; then echo "mnd-srun: this image has no sshd ($sshd)" >&2; exit 127; fi
cfg=/.mnd/sshd_config
"$sshd" -t -f "$cfg" >/dev/null 2>&1 || cfg=/.mnd/sshd_config.compat
"$sshd" -D -e -f "$cfg" &
sshd_pid=$!
exec 3<&0
( while read -r _ <&3; do :; done; kill "$sshd_pid" 2>/dev/null ) &
wait "$sshd_pid"
"#;

/// Exit code the entrypoint uses when the image has no sshd.
const NO_SSHD: i64 = 127;

/// A container Docker runs for this launcher.
pub(super) struct Started {
    /// The engine that runs it.
    pub engine: Engine,
    /// Its stdin: when the launcher dies, the container ends.
    pub lifeline: Lifeline,
    /// The id of its image.
    pub image_id: String,
    /// The script's exec, started early behind its gate (the coordinator's, without a
    /// terminal).
    pub script: Option<ScriptExec>,
}

/// Creates, prepares and starts this node's container and waits until its sshd answers.
/// Its sshd listens on `port`. Pull progress (and waiting for another job's pull) is
/// reported through `progress`.
pub(super) async fn start(
    plan: &Plan,
    port: u16,
    progress: &watch::Sender<PullReport>,
) -> Result<Started, String> {
    let spec = &plan.container;
    let t0 = Instant::now();
    let mut phases = Phases::printing(plan.this_node());
    let engine = Engine::connect().await.map_err(|e| e.to_string())?;
    phases.mark("connect");
    let image = image_under_lock(plan, &engine, progress).await?;
    phases.mark("image");
    let env = session_env(plan, &image.env)?;
    let mut spec = spec.clone();
    spec.env
        .push(format!("PATH={}", container_path(&image.env)));
    spec.env.extend(
        plan.env_defaults_for(&image.env)
            .into_iter()
            .map(|(k, v)| format!("{k}={v}")),
    );
    let spec = &spec;
    engine.remove(&spec.name).await.map_err(|e| e.to_string())?;
    phases.mark("remove-stale");
    let entry = vec![
        "/bin/sh".to_string(),
        "-c".to_string(),
        ENTRYPOINT.to_string(),
        "mnd-entry".to_string(),
    ];
    engine
        .create(spec, entry)
        .await
        .map_err(|e| e.to_string())?;
    phases.mark("create");
    let prepared = async {
        let cache = AccountCache {
            root: &plan.user.home.join(".mnd/cache/v2"),
            owner: plan.user.uid,
        };
        let accounts = cache.accounts(&engine, &spec.name, &image.id).await?;
        phases.mark("read-passwd");
        let mut lifeline = engine.attach_stdin(&spec.name).await?;
        phases.mark("attach");
        // The files go in while the container starts; its entrypoint waits for the go.
        let files = files(plan, &env, &accounts, port);
        let (uploaded, started) =
            tokio::join!(engine.upload(&spec.name, &files), engine.start(&spec.name));
        uploaded?;
        started?;
        phases.mark("start+upload");
        lifeline.send_line().await?;
        Ok::<_, DockerError>(lifeline)
    }
    .await;
    let lifeline = match prepared {
        Ok(l) => l,
        Err(e) => {
            let _ = engine.remove(&spec.name).await;
            return Err(e.to_string());
        }
    };
    log::debug!("container started after {:?}", t0.elapsed());
    let gated = async {
        if !script::starts_gated(plan) {
            return None;
        }
        script::start_gated(plan, &engine)
            .await
            .inspect_err(|e| log::debug!("the script's exec did not start early: {e}"))
            .ok()
    };
    let (sshd, script) = tokio::join!(wait_sshd(plan, &engine, spec, port), gated);
    sshd?;
    phases.mark("sshd");
    log::info!(
        "{}: container {} up, sshd on port {port} after {:?}",
        plan.this_node(),
        spec.name,
        t0.elapsed()
    );
    Ok(Started {
        engine,
        lifeline,
        image_id: image.id,
        script,
    })
}

/// The image, checked or pulled under this user's image lock on this node.
async fn image_under_lock(
    plan: &Plan,
    engine: &Engine,
    progress: &watch::Sender<PullReport>,
) -> Result<ImageFacts, String> {
    // One image check/pull at a time per user on this node: several jobs starting at once
    // then pull once (Docker alone re-downloads when two pulls overlap).
    // Waiting for another job's pull counts as progress: that pull has its own bound.
    let _lock = {
        let lock = pull_lock(plan);
        tokio::pin!(lock);
        let mut beat = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                l = &mut lock => break l,
                _ = beat.tick() => progress.send_modify(|r| {
                    r.events += 1;
                    r.summary = "waiting for another job's pull of the image".into();
                }),
            }
        }
    };
    obtain_image(plan, engine, progress).await
}

/// Waits for the container's sshd to answer on `port`; a container that ends first, or an
/// sshd that never answers, is removed and named.
async fn wait_sshd(
    plan: &Plan,
    engine: &Engine,
    spec: &ContainerSpec,
    port: u16,
) -> Result<(), String> {
    // Readiness once the image is there is bounded by --wait-timeout (at most 30 s).
    let sshd_by = Instant::now() + plan.sshd_wait();
    tokio::select! {
        r = probe::wait_banner("127.0.0.1", port, sshd_by) => {
            if let Err(e) = r {
                let _ = engine.remove(&spec.name).await;
                return Err(format!("sshd in the container did not answer on port {port}: {e}"));
            }
        }
        code = engine.wait_exit(&spec.name) => {
            let tail = engine.log_tail(&spec.name).await;
            let _ = engine.remove(&spec.name).await;
            return Err(if code == NO_SSHD {
                format!("image '{}' has no sshd. Fix: install openssh-server in the image (apt-get install openssh-server)", spec.image)
            } else {
                format!("the container exited with code {code} before sshd answered{}", if tail.is_empty() { String::new() } else { format!(": {tail}") })
            });
        }
    }
    Ok(())
}

/// Takes this user's image lock on this node (`~/.mnd/locks/pull-NODE.lock`); released when
/// dropped. Without a usable lock file the pull goes ahead unlocked (logged).
async fn pull_lock(plan: &Plan) -> Option<nix::fcntl::Flock<std::fs::File>> {
    let dir = plan.user.home.join(".mnd/locks");
    let path = dir.join(format!("pull-{}.lock", plan.this_node()));
    if let Err(e) = ssh::create_private_dir(&dir) {
        log::warn!("no image lock ({}: {e}); pulling without it", dir.display());
        return None;
    }
    let locking = path.clone();
    match tokio::task::spawn_blocking(move || crate::fsx::lock(&locking)).await {
        Ok(Ok(lock)) => Some(lock),
        Ok(Err(e)) => {
            log::warn!(
                "no image lock ({}: {e}); pulling without it",
                path.display()
            );
            None
        }
        Err(e) => {
            log::warn!("could not lock {}: {e}; pulling without it", path.display());
            None
        }
    }
}
