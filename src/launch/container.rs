//! This node's container: its files (accounts, sshd and ssh configs, ssh wrappers), the
//! image check or pull under the per-user lock, create, upload, start, and the wait for its
//! sshd.

use super::timing::Phases;
use super::{inside, port_is_free, Running, Runtime};
use crate::cli::{ImageShare, Pull};
use crate::docker::{DockerError, Engine, FileUpload, ImageFacts, PullReport};
use crate::identity::Identity;
use crate::imagecache;
use crate::plan::{self, Plan};
use crate::probe;
use crate::ssh;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// PID 1 of every container: start sshd, exit when the launcher's stdin closes or sshd dies.
const ENTRYPOINT: &str = r#"sshd=$(command -v sshd 2>/dev/null || echo /usr/sbin/sshd)
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

/// `PATH` of the container and its ssh sessions: the ssh wrappers, then the image's.
fn container_path(image_env: &[String]) -> String {
    let image_path = image_env.iter().find_map(|e| e.strip_prefix("PATH="));
    ssh::path_with_wrappers(image_path)
}

/// Environment for ssh sessions: the image's (CUDA paths, ...), PATH with the wrappers,
/// then the job's. A value sshd's `SetEnv` cannot carry is refused, naming the variable.
pub(super) fn session_env(
    plan: &Plan,
    image_env: &[String],
) -> Result<Vec<(String, String)>, String> {
    let skip = [
        "HOME", "USER", "LOGNAME", "SHELL", "HOSTNAME", "TERM", "PATH",
    ];
    let mut env: Vec<(String, String)> = image_env
        .iter()
        .filter_map(|e| e.split_once('='))
        .filter(|(k, _)| !skip.contains(k))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    for (k, v) in &env {
        plan::env::check_env_value(k, v).map_err(|e| format!("the image's ENV: {e}"))?;
    }
    env.push(("PATH".into(), container_path(image_env)));
    env.extend(plan.job_env.iter().cloned());
    env.extend(plan.env_defaults_for(image_env));
    Ok(env)
}

/// Each node's sshd port as this node first assumes it: the preferred one, but its own.
fn assumed_ports(plan: &Plan, own: u16) -> Vec<(String, u16)> {
    let preferred = plan.ports.preferred().sshd;
    plan.nodes
        .iter()
        .map(|n| {
            (
                n.clone(),
                if n == plan.this_node() {
                    own
                } else {
                    preferred
                },
            )
        })
        .collect()
}

/// The container's ssh client config, for these sshd ports of the job's nodes.
pub(super) fn ssh_config_file(plan: &Plan, node_ports: &[(String, u16)]) -> FileUpload {
    FileUpload {
        path: format!("{}/ssh_config", ssh::CONTAINER_DIR),
        content: ssh::client_config(&plan.ssh, &plan.user.name, node_ports),
        mode: 0o644,
    }
}

/// The files this node's container gets: its accounts in /etc (the container's own layer:
/// no mount may cover /etc) and its sshd's and ssh's in `/.mnd`.
fn files(
    plan: &Plan,
    env: &[(String, String)],
    image: &ImageAccounts,
    port: u16,
) -> Vec<FileUpload> {
    let mut files = Vec::from(account_files(&plan.user, image));
    files.extend(ssh_files(plan, env, port));
    files
}

/// The sshd configs (with the session environment `env`), the ssh config and the ssh
/// wrappers, in `/.mnd`.
pub(super) fn ssh_files(plan: &Plan, env: &[(String, String)], port: u16) -> Vec<FileUpload> {
    let user: &Identity = &plan.user;
    let file = |path: String, content: String, mode: u32| FileUpload {
        path,
        content,
        mode,
    };
    let dir = ssh::CONTAINER_DIR;
    let mut files = vec![
        ssh_config_file(plan, &assumed_ports(plan, port)),
        file(
            format!("{dir}/sshd_config"),
            ssh::sshd_config(&plan.ssh, &user.name, port, env),
            0o644,
        ),
        file(
            format!("{dir}/sshd_config.compat"),
            ssh::sshd_config(&plan.ssh, &user.name, port, &[]),
            0o644,
        ),
    ];
    files.extend(
        ssh::WRAPPED
            .iter()
            .map(|p| file(format!("{dir}/bin/{p}"), ssh::wrapper(p), 0o755)),
    );
    files
}

/// Creates, prepares and starts this node's container and waits until its sshd answers.
/// Its sshd listens on `port`. Pull progress (and waiting for another job's pull) is
/// reported through `progress`.
pub(super) async fn start_container(
    plan: &Plan,
    port: u16,
    progress: &watch::Sender<PullReport>,
) -> Result<Running, String> {
    let spec = &plan.container;
    if !port_is_free(port) {
        return Err(format!(
            "port {port} is already in use on this node (another job's sshd or another program). Fix: pick another with --sshd-port"
        ));
    }
    if plan.inside.is_some() {
        return inside::start(plan, port).await;
    }
    let t0 = Instant::now();
    let mut phases = Phases::new(plan.this_node());
    let engine = Engine::connect().await.map_err(|e| e.to_string())?;
    phases.mark("connect");
    // One image check/pull at a time per user on this node: several jobs starting at once
    // then pull once (Docker alone re-downloads when two pulls overlap).
    let image = {
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
        obtain_image(plan, &engine, progress).await?
    };
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
        let accounts = image_accounts(plan, &engine, &image.id).await?;
        phases.mark("read-passwd");
        engine
            .upload(&spec.name, &files(plan, &env, &accounts, port))
            .await?;
        phases.mark("upload");
        let lifeline = engine.attach_stdin(&spec.name).await?;
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
    phases.mark("sshd");
    log::info!(
        "{}: container {} up, sshd on port {port} after {:?}",
        plan.this_node(),
        spec.name,
        t0.elapsed()
    );
    Ok(Running {
        sshd_port: port,
        image_id: image.id,
        runtime: Runtime::Docker {
            engine,
            _lifeline: lifeline,
        },
    })
}

/// The image on this node: as `--pull` says, or through the image share. The first node
/// records which image the tag is for this job (and with `--image-share=shared` saves it);
/// a worker that lacks the image and cannot pull it (`auto`), or lacks it (`shared`), asks
/// for it and loads it from the share.
async fn obtain_image(
    plan: &Plan,
    engine: &Engine,
    progress: &watch::Sender<PullReport>,
) -> Result<ImageFacts, String> {
    let spec = &plan.container;
    let first = plan.node_rank == 0;
    let pull = match (plan.image_share, first) {
        (ImageShare::Shared, false) => Pull::Never,
        _ => spec.pull,
    };
    let mut found = engine
        .ensure_image(
            &spec.image,
            pull,
            plan.this_node(),
            plan.wait_timeout,
            progress,
        )
        .await;
    // The first node without the image: the share's copy (saved by an earlier job or by
    // `mnd commit`), when there is one.
    let mut opened = None;
    if let (Err(_), true, false) = (&found, first, plan.image_share == ImageShare::Off) {
        if let Ok(cache) = share(plan) {
            if let Some(id) = cache.saved_id_of(&spec.image) {
                found = load_shared(plan, engine, progress, &cache, &id).await;
            }
            opened = Some(cache);
        }
    }
    match found {
        Ok(image) => {
            if first && plan.image_share != ImageShare::Off {
                let cache = match opened {
                    Some(cache) => cache,
                    None => share(plan)?,
                };
                cache
                    .record_tag(&spec.image, &image.id, &plan.job_label)
                    .map_err(|e| e.to_string())?;
                if plan.image_share == ImageShare::Shared {
                    progress.send_modify(|r| r.summary = "saving the image into the share".into());
                    let saved = cache.save(engine, &spec.image, &image.id).await;
                    log_saved(plan, saved.map_err(|e| e.to_string())?);
                }
            }
            Ok(image)
        }
        Err(e) if first || plan.image_share == ImageShare::Off => Err(e.to_string()),
        Err(e) => from_share(plan, engine, progress, &e.to_string()).await,
    }
}

/// The image share's folder.
pub(super) fn share(plan: &Plan) -> Result<imagecache::Cache, String> {
    imagecache::Cache::open(&plan.image_cache, plan.user.uid).map_err(|e| e.to_string())
}

pub(super) fn log_saved(plan: &Plan, saved_now: bool) {
    if saved_now {
        eprintln!(
            "mnd-srun ({}): saved {} into the image share {}",
            plan.this_node(),
            plan.container.image,
            plan.image_cache.display()
        );
    }
}

/// A worker without the image: asks the first node for it (a note in the share), waits
/// (reporting progress, so the first node keeps waiting too) until the first node of this
/// job recorded and saved it, then loads it.
async fn from_share(
    plan: &Plan,
    engine: &Engine,
    progress: &watch::Sender<PullReport>,
    why: &str,
) -> Result<ImageFacts, String> {
    let spec = &plan.container;
    let cache = share(plan)?;
    cache.want(&spec.image).map_err(|e| e.to_string())?;
    let by = Instant::now() + plan.wait_timeout;
    loop {
        if let Some(id) = cache.id_for_job(&spec.image, &plan.job_label) {
            if cache.archive(&id).exists() {
                return load_shared(plan, engine, progress, &cache, &id)
                    .await
                    .map_err(|e| e.to_string());
            }
        }
        if Instant::now() > by {
            return Err(format!(
                "{why}; and the image share {} got no copy from {} within {} s (--image-share)",
                plan.image_cache.display(),
                plan.nodes[0],
                plan.wait_timeout.as_secs()
            ));
        }
        progress.send_modify(|r| {
            r.events += 1;
            r.summary = format!("waiting for {} to share the image", plan.nodes[0]);
        });
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Loads image `id` from the share into this node's Docker; the image as the tag now is.
async fn load_shared(
    plan: &Plan,
    engine: &Engine,
    progress: &watch::Sender<PullReport>,
    cache: &imagecache::Cache,
    id: &str,
) -> Result<ImageFacts, DockerError> {
    progress.send_modify(|r| {
        r.events += 1;
        r.summary = "loading the image from the share".into();
    });
    let t0 = Instant::now();
    cache.load(engine, id).await.map_err(|e| DockerError::Api {
        action: "load from the image share".into(),
        reason: e.to_string(),
    })?;
    // The archive's own tags are not trusted: the image must be the one its name promised,
    // and the job's tag is pointed at it here.
    if !engine.tag_id(id, &plan.container.image).await? {
        return Err(DockerError::Image {
            image: plan.container.image.clone(),
            reason: format!(
                "the image share's archive {} held another image than {id} (changed since it was saved?); remove that file and run again",
                cache.archive(id).display()
            ),
        });
    }
    eprintln!(
        "mnd-srun ({}): loaded {} from the image share in {:.1} s",
        plan.this_node(),
        plan.container.image,
        t0.elapsed().as_secs_f64()
    );
    engine
        .ensure_image(
            &plan.container.image,
            Pull::Never,
            plan.this_node(),
            plan.wait_timeout,
            progress,
        )
        .await
}

/// The container's `/etc/passwd` and `/etc/group` (its own layer: no mount may cover /etc):
/// the image's accounts with the user's merged in.
pub(crate) fn account_files(user: &Identity, image: &ImageAccounts) -> [FileUpload; 2] {
    let shell = user.container_shell(&image.shells);
    [
        FileUpload {
            path: "/etc/passwd".into(),
            content: user.merge_passwd(&image.passwd, &shell),
            mode: 0o644,
        },
        FileUpload {
            path: "/etc/group".into(),
            content: user.merge_group(&image.group),
            mode: 0o644,
        },
    ]
}

/// What the container's accounts are made from: the image's own files.
pub(crate) struct ImageAccounts {
    passwd: String,
    group: String,
    shells: String,
}

/// The files of the image that `ImageAccounts` holds.
const ACCOUNT_FILES: [&str; 3] = ["passwd", "group", "shells"];

/// The image's `/etc/passwd`, `/etc/group` and `/etc/shells`: from
/// `~/.mnd/cache/v2/ID/` when there, else read from the created container and cached (image
/// ids are content addresses, so the cache is never stale). The user can write the cache,
/// so what is read from it is never trusted to grant anything (`Identity::merge_passwd`,
/// `merge_group`). A cache folder others could write is ignored.
async fn image_accounts(
    plan: &Plan,
    engine: &Engine,
    image_id: &str,
) -> Result<ImageAccounts, DockerError> {
    let root = plan.user.home.join(".mnd/cache/v2");
    let dir = root.join(image_id.replace(':', "-"));
    // The same rule as for ssh material: a folder of ours that nobody else can write.
    let ours = |p: &std::path::Path| p.is_dir() && ssh::check_safe(p, plan.user.uid, false).is_ok();
    if ours(&root) && ours(&dir) {
        let read = |f: &str| std::fs::read_to_string(dir.join(f));
        if let (Ok(passwd), Ok(group), Ok(shells)) = (read("passwd"), read("group"), read("shells"))
        {
            return Ok(ImageAccounts {
                passwd,
                group,
                shells,
            });
        }
    }
    let accounts = read_image_accounts(engine, &plan.container.name).await?;
    // Best effort: write into a temporary folder, then rename it into place.
    let stored = ssh::create_private_dir(&root).and_then(|()| {
        let tmp = tempfile::Builder::new().prefix(".tmp-").tempdir_in(&root)?;
        for (file, text) in
            ACCOUNT_FILES
                .iter()
                .zip([&accounts.passwd, &accounts.group, &accounts.shells])
        {
            std::fs::write(tmp.path().join(file), text)?;
        }
        let tmp = tmp.keep();
        if std::fs::rename(&tmp, &dir).is_err() {
            let _ = std::fs::remove_dir_all(&tmp);
        }
        Ok(())
    });
    if let Err(e) = stored {
        log::debug!("image account cache not written: {e}");
    }
    Ok(accounts)
}

/// The image's account files, read from a created container.
pub(crate) async fn read_image_accounts(
    engine: &Engine,
    name: &str,
) -> Result<ImageAccounts, DockerError> {
    let (passwd, group, shells) = tokio::join!(
        engine.read_file(name, "/etc/passwd"),
        engine.read_file(name, "/etc/group"),
        engine.read_file(name, "/etc/shells")
    );
    Ok(ImageAccounts {
        passwd: passwd?.unwrap_or_default(),
        group: group?.unwrap_or_default(),
        shells: shells?.unwrap_or_default(),
    })
}

/// Takes this user's image lock on this node (`~/.mnd/locks/pull-NODE.lock`); released when
/// dropped. Without a usable lock file the pull goes ahead unlocked (logged).
async fn pull_lock(plan: &Plan) -> Option<nix::fcntl::Flock<std::fs::File>> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = plan.user.home.join(".mnd/locks");
    let path = dir.join(format!("pull-{}.lock", plan.this_node()));
    let opened = ssh::create_private_dir(&dir).and_then(|()| {
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
    });
    let file = match opened {
        Ok(f) => f,
        Err(e) => {
            log::warn!(
                "no image lock ({}: {e}); pulling without it",
                path.display()
            );
            return None;
        }
    };
    let locked = tokio::task::spawn_blocking(move || {
        nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
    })
    .await;
    match locked {
        Ok(Ok(lock)) => Some(lock),
        _ => {
            log::warn!("could not lock {}; pulling without it", path.display());
            None
        }
    }
}
