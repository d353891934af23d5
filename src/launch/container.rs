//! This node's container: the image check or pull and the user's copy of it under the
//! per-user lock, create, start, its files over stdin, and the wait for its sshd.

use super::derived;
use super::files::{container_path, job_files, session_env};
use super::script::{self, ScriptExec};
use super::share::obtain_image;
use crate::docker::{DockerError, Engine, ImageFacts, Lifeline, PullReport};
use crate::phases::Phases;
use crate::plan::{fabric, policy, Plan};
use crate::probe;
use crate::spec::{labels, ContainerSpec};
use crate::ssh;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// PID 1 of every container: write the files the launcher sends (`docker::setup_records`)
/// until its go, start sshd, exit when the launcher's stdin closes or sshd dies. An sshd
/// that refuses its config (255: one too old for `SetEnv`, OpenSSH before 7.8) runs again
/// with the compat config, which carries no session environment; no `sshd -t` first, so
/// the usual start pays for one sshd, not two.
const ENTRYPOINT: &str = r#"while IFS= read -r rec; do
  case $rec in
    go) break ;;
    "mnd-file "*)
      set -- $rec; n=$3
      while [ "$n" -gt 0 ] && IFS= read -r l; do printf '%s\n' "$l"; n=$((n - 1)); done > "$2" ;;
    *) echo "mnd-srun: unexpected setup line from the launcher" >&2; exit 2 ;;
  esac
done
[ "$rec" = go ] || exit 0
sshd=$(command -v sshd 2>/dev/null || echo /usr/sbin/sshd)
if [ ! -x "$sshd" ]; then echo "mnd-srun: this image has no sshd ($sshd)" >&2; exit 127; fi
( "$sshd" -D -e -f /.mnd/sshd_config; rc=$?; [ "$rc" = 255 ] || exit "$rc"
  exec "$sshd" -D -e -f /.mnd/sshd_config.compat ) &
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
    let (image, copy, lock) = image_under_lock(plan, &engine, progress).await?;
    phases.mark("image");
    let env = session_env(plan, &image.env)?;
    let mut spec = spec.clone();
    // Made from the user's copy; `mnd ps` shows the image the user named. The copy's own
    // labels are blanked, so an image committed from this container is no copy.
    spec.labels.insert(labels::IMAGE.into(), spec.image.clone());
    for copy_only in [labels::ACCOUNTS, labels::BASE] {
        spec.labels.insert(copy_only.into(), String::new());
    }
    spec.image = copy;
    let cdi_dirs = match fabric::engine_cdi_matters(&spec, &plan.fabric) {
        true => engine.cdi_dirs().await.map_err(|e| e.to_string())?,
        false => vec![],
    };
    fabric::for_engine(&mut spec, &cdi_dirs, &plan.fabric).map_err(|e| e.to_string())?;
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
    drop(lock);
    phases.mark("create");
    let prepared = async {
        // The files go out before the start: Docker holds them for PID 1, which writes
        // them and starts sshd while Docker is still finishing the start.
        let mut lifeline = engine.attach_stdin(&spec.name).await?;
        lifeline.send_setup(&job_files(plan, &env, port)).await?;
        phases.mark("attach");
        engine.start(&spec.name).await?;
        phases.mark("start");
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

/// This user's image lock on this node, while held.
type ImageLock = Option<nix::fcntl::Flock<std::fs::File>>;

/// The image, checked or pulled, and the id of the user's copy of it (`derived`), under
/// this user's image lock on this node; the lock is returned for the caller to hold until
/// its container is made (another job's new copy may remove a copy no container uses).
async fn image_under_lock(
    plan: &Plan,
    engine: &Engine,
    progress: &watch::Sender<PullReport>,
) -> Result<(ImageFacts, String, ImageLock), String> {
    // One image check/pull at a time per user on this node: several jobs starting at once
    // then pull once (Docker alone re-downloads when two pulls overlap).
    // Waiting for another job's pull counts as progress: that pull has its own bound.
    let waiting = "waiting for another job's pull of the image";
    let every = plan.progress_every();
    let lock = with_heartbeat(progress, waiting, Beat::Always, every, pull_lock(plan)).await;
    let image = obtain_image(plan, engine, progress).await?;
    let fits = policy::check_image_size(&plan.image_bound, &plan.container.image, image.size);
    engine
        .drop_if_refused(&image, fits)
        .await
        .map_err(|e| e.to_string())?;
    let copy = derived::accounts_image(plan, engine, &image)
        .await
        .map_err(|e| format!("{e} (while making this user's copy of image {})", image.id))?;
    Ok((image, copy, lock))
}

/// When [`with_heartbeat`] beats.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Beat {
    /// Every period, saying what the node does.
    Always,
    /// In every period without other progress, once this node has reported some (a pull,
    /// or a wait for one); the last summary stands.
    AfterProgress,
}

/// Runs `work`, telling `progress` every period `every` (as `beat` says) that this node is `doing`
/// it, so that the first node's wait holds while the node works: a wait for another job's
/// pull, or a start after a pull (making the user's copy alone takes about 1 s on Docker's
/// containerd image store). Quick work, the usual case, sends nothing; each Docker call,
/// and a pull that stalls, has its own bound.
pub(super) async fn with_heartbeat<T>(
    progress: &watch::Sender<PullReport>,
    doing: &str,
    beat: Beat,
    every: Duration,
    work: impl std::future::Future<Output = T>,
) -> T {
    tokio::pin!(work);
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    let mut seen = progress.borrow().events;
    loop {
        tokio::select! {
            done = &mut work => return done,
            _ = ticks.tick() => {
                progress.send_if_modified(|r| {
                    let silent = r.events == seen;
                    let beats = match beat {
                        Beat::Always => true,
                        Beat::AfterProgress => silent && r.events > 0,
                    };
                    if beats {
                        r.events += 1;
                        if beat == Beat::Always {
                            r.summary = doing.to_string();
                        }
                    }
                    seen = r.events;
                    beats
                });
            }
        }
    }
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
        r = probe::wait_listening(port, plan.user.uid, sshd_by) => {
            if let Err(e) = r {
                let _ = engine.remove(&spec.name).await;
                return Err(format!("sshd in the container did not answer on port {port}: {e}"));
            }
        }
        code = engine.wait_exit(&spec.name) => {
            let tail = engine.log_tail(&spec.name).await;
            let _ = engine.remove(&spec.name).await;
            return Err(if code == NO_SSHD {
                format!("image '{}' has no sshd. Fix: install openssh-server in the image (apt-get install openssh-server)", plan.container.image)
            } else {
                format!("the container exited with code {code} before sshd answered{}", if tail.is_empty() { String::new() } else { format!(": {tail}") })
            });
        }
    }
    Ok(())
}

/// Takes this user's image lock on this node (`~/.mnd/locks/pull-NODE.lock`); released when
/// dropped. Without a usable lock file the pull goes ahead unlocked (logged).
async fn pull_lock(plan: &Plan) -> ImageLock {
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

#[cfg(test)]
mod tests {
    use super::ENTRYPOINT;
    use crate::docker::{setup_records, FileUpload};
    use std::io::{BufRead, BufReader, Write};
    use std::os::unix::fs::PermissionsExt;
    use std::path::Path;
    use std::process::{Command, Stdio};

    /// Runs the entrypoint with `/.mnd` at `dir` and the stand-in `sshd` (a script) first
    /// on PATH, sends it `input`, and returns the first line it prints; its stdin then
    /// closes, as when the launcher ends, and it ends.
    fn entrypoint_with(dir: &Path, sshd: &str, input: &[u8]) -> String {
        let d = dir.display();
        std::fs::write(dir.join("sshd"), sshd).unwrap();
        std::fs::set_permissions(dir.join("sshd"), std::fs::Permissions::from_mode(0o755)).unwrap();
        let script = ENTRYPOINT.replace("/.mnd/", &format!("{d}/"));
        let mut child = Command::new("/bin/sh")
            .args(["-c", &script, "mnd-entry"])
            .env("PATH", format!("{d}:/usr/bin:/bin"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(input).unwrap();
        let mut first = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut first)
            .unwrap();
        drop(stdin);
        child.wait().unwrap();
        first
    }

    #[test]
    fn the_entrypoint_writes_the_files_it_is_sent_then_starts_sshd() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display().to_string();
        let tricky = "  leading blanks, a \\backslash, $HOME and `x`\r\nno newline at the end";
        let file = |name: &str, content: &str| FileUpload {
            path: format!("{d}/{name}"),
            content: content.into(),
            mode: 0o644,
        };
        let files = [
            file("sshd_config", "Port 1\nSetEnv A=\"b c\"\n"),
            file("tricky", tricky),
            file("empty", ""),
        ];
        let ran = entrypoint_with(
            dir.path(),
            "#!/bin/sh\nwhile [ \"$1\" != -f ]; do shift; done\necho \"ran with $2\"\n",
            setup_records(&files).unwrap().as_bytes(),
        );
        let read = |f: &str| std::fs::read_to_string(dir.path().join(f)).unwrap();
        assert_eq!(read("sshd_config"), "Port 1\nSetEnv A=\"b c\"\n");
        assert_eq!(read("tricky"), format!("{tricky}\n"));
        assert_eq!(read("empty"), "");
        assert_eq!(ran, format!("ran with {d}/sshd_config\n"));
    }

    #[test]
    fn an_sshd_that_refuses_its_config_runs_with_the_compat_one() {
        let dir = tempfile::tempdir().unwrap();
        // A stand-in for an sshd too old for SetEnv: its config is fatal (255).
        let ran = entrypoint_with(
            dir.path(),
            "#!/bin/sh\nwhile [ \"$1\" != -f ]; do shift; done\ncase $2 in *.compat) echo \"ran with $2\" ;; *) exit 255 ;; esac\n",
            b"go\n",
        );
        assert_eq!(
            ran,
            format!("ran with {}/sshd_config.compat\n", dir.path().display())
        );
    }

    #[test]
    fn a_launcher_gone_before_its_go_starts_nothing() {
        let out = Command::new("/bin/sh")
            .args(["-c", ENTRYPOINT, "mnd-entry"])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(out.status.success() && out.stdout.is_empty() && out.stderr.is_empty());
    }
}
