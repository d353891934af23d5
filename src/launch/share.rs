//! The image share (`--image-share`): how a node obtains the job's image (pull, or load
//! from the user's share), and how the first node serves it to the others.

use crate::cli::{ImageShare, Pull};
use crate::docker::{self, DockerError, Engine, ImageFacts, PullReport};
use crate::imagecache;
use crate::plan::{Plan, Role};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// The image on this node: as `--pull` says, or through the image share. The first node
/// records which image the tag is for this job (and with `--image-share=shared` saves it);
/// a worker that lacks the image and cannot pull it (`auto`), or lacks it (`shared`), asks
/// for it and loads it from the share.
pub(super) async fn obtain_image(
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

/// A worker without the image: once the first node recorded which image the tag is for
/// this job, names it if it is here by id; else asks the first node for it (a note in the
/// share), waits (reporting progress, so the first node keeps waiting too) until it is
/// saved, then loads it.
async fn from_share(
    plan: &Plan,
    engine: &Engine,
    progress: &watch::Sender<PullReport>,
    why: &str,
) -> Result<ImageFacts, String> {
    let spec = &plan.container;
    let cache = share(plan)?;
    let by = Instant::now() + plan.wait_timeout;
    let mut asked = false;
    loop {
        if let Some(id) = cache.id_for_job(&spec.image, &plan.job_label) {
            if !asked {
                if let Some(here) = named_if_here(plan, engine, progress, &id).await {
                    return here.map_err(|e| e.to_string());
                }
                cache.want(&spec.image).map_err(|e| e.to_string())?;
                asked = true;
            }
            // Not here by id (checked before asking): it is loaded.
            if cache.has_archive(&id) {
                return load_and_name(plan, engine, progress, &cache, &id)
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

/// Image `id` named for the job when it is here by id without that name (kept by the
/// user's copy of it, or untagged): ids are content addresses, so it is the image, and
/// nothing needs loading. `None` when it is not here.
async fn named_if_here(
    plan: &Plan,
    engine: &Engine,
    progress: &watch::Sender<PullReport>,
    id: &str,
) -> Option<Result<ImageFacts, DockerError>> {
    match engine.tag_id(id, &plan.container.image).await {
        Ok(false) => None,
        Err(e) => Some(Err(e)),
        Ok(true) => Some(named_facts(plan, engine, progress).await),
    }
}

/// Loads image `id` from the share into this node's Docker (unless it is here by id);
/// the image as the tag now is.
async fn load_shared(
    plan: &Plan,
    engine: &Engine,
    progress: &watch::Sender<PullReport>,
    cache: &imagecache::Cache,
    id: &str,
) -> Result<ImageFacts, DockerError> {
    if let Some(here) = named_if_here(plan, engine, progress, id).await {
        return here;
    }
    load_and_name(plan, engine, progress, cache, id).await
}

/// Loads image `id` from the share and names it for the job; what the launcher needs to
/// know of it.
async fn load_and_name(
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
    load_by_id(plan, engine, cache, id).await?;
    eprintln!(
        "mnd-srun ({}): loaded {} from the image share in {:.1} s",
        plan.this_node(),
        plan.container.image,
        t0.elapsed().as_secs_f64()
    );
    named_facts(plan, engine, progress).await
}

/// What the launcher needs to know of the job's image, now named here.
async fn named_facts(
    plan: &Plan,
    engine: &Engine,
    progress: &watch::Sender<PullReport>,
) -> Result<ImageFacts, DockerError> {
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

/// Loads the share's archive of image `id` and names it for the job: the archive's own
/// tags are not trusted, the image must be the one its name promised.
async fn load_by_id(
    plan: &Plan,
    engine: &Engine,
    cache: &imagecache::Cache,
    id: &str,
) -> Result<(), DockerError> {
    cache
        .load(engine, id, plan.wait_timeout)
        .await
        .map_err(|e| DockerError::Api {
            action: "load from the image share".into(),
            reason: e.to_string(),
        })?;
    if !engine.tag_id(id, &plan.container.image).await? {
        return Err(DockerError::Image {
            image: plan.container.image.clone(),
            reason: format!(
                "the image share's archive {} held another image than {id} (changed since it was saved?); remove that file and run again",
                cache.archive(id).display()
            ),
        });
    }
    Ok(())
}

/// With `--image-share=auto`, while the workers start: a worker that lacks the image and
/// cannot pull it asks in the share, and the first node saves it there (once; a later job
/// finds it saved). Runs until the wait ends.
pub(super) async fn serve_share(plan: &Plan) -> std::convert::Infallible {
    let never = std::future::pending();
    if plan.image_share != ImageShare::Auto || plan.role != Role::Coordinator {
        return never.await;
    }
    let image = &plan.container.image;
    let cache = loop {
        if let Ok(cache) = share(plan) {
            break cache;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let Some(id) = cache.id_for_job(image, &plan.job_label) else {
            continue;
        };
        if !cache.take_want(image) {
            continue;
        }
        let saved = match docker::Engine::connect().await {
            Ok(engine) => cache
                .save(&engine, image, &id)
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match saved {
            Ok(now) => log_saved(plan, now),
            Err(e) => {
                log::error!("{}: could not share {image}: {e}", plan.this_node());
                return never.await;
            }
        }
    }
}
