//! The user's copy of the job's image on this node: their account in /etc/passwd and
//! /etc/group, the ssh wrappers, and `/.mnd` owned by them. A job's container is made from
//! it and gets its per-job files (the sshd and ssh configs) over its stdin, so no upload
//! stands between its create and its sshd (Docker 20.10 unpacks an upload in a re-executed
//! dockerd and the container's start waits for it: 50 to 100 ms per node).
//!
//! The copy is made once per user, image and node, has no name, and carries the label
//! `mnd.accounts`: a digest of everything it is made from, keyed with the user's secret,
//! so a changed image, account or launcher makes a new one and nobody else can make one. Having no name, it is what `docker image prune` removes; the
//! next job then makes it again. A copy holds its image: a copy whose image lost its name
//! (`docker rmi`, or the tag now names a newer pull) is removed, with that image, when the
//! user's next copy is made and by `mnd cleanup` (the Epilog), so copies do not pile up
//! and a removed image's space comes back (`cleanup::remove_stale_copies`).

use super::files::{image_files, job_files};
use crate::accounts::read_image_accounts;
use crate::docker::{DockerError, Engine, ImageFacts, OwnedFolder};
use crate::identity::Identity;
use crate::plan::Plan;
use crate::spec::labels;
use crate::ssh;
use sha2::Sha256;
use std::collections::BTreeMap;

/// The label that names what a copy was made from.
const LABEL: &str = labels::ACCOUNTS;

/// Bumped when what goes into a copy changes shape.
const FORMAT: &str = "mnd-accounts/1";

/// The id of this user's copy of `base` on this node, made now if there is none.
pub(super) async fn accounts_image(
    plan: &Plan,
    engine: &Engine,
    base: &ImageFacts,
) -> Result<String, DockerError> {
    let secret = std::fs::read(&plan.ssh.control_key).map_err(|e| DockerError::Api {
        action: "making this user's copy of the image".into(),
        reason: format!("{}: {e}", plan.ssh.control_key.display()),
    })?;
    let key = key(&secret, &plan.user, &base.id);
    // A copy is unnamed (an image committed from a job's container is named, or carries
    // an empty key: job containers blank it).
    let made_before = engine.unnamed_images(&[format!("{LABEL}={key}")]).await?;
    if let Some((id, _)) = made_before.into_iter().next() {
        return Ok(id);
    }
    log::info!(
        "{}: making this user's copy of {}",
        plan.this_node(),
        base.id
    );
    let name = format!("mnd-accounts-{}-{}", plan.user.uid, std::process::id());
    engine.remove(&name).await?;
    engine
        .create_idle(&name, &base.id, &copy_labels(plan, &key, &base.id))
        .await?;
    let made = async {
        let accounts = read_image_accounts(engine, &name).await?;
        // The job's files, empty and the user's: PID 1 (the user) then writes them even
        // where the image has its own (one committed from another user's container).
        let home = OwnedFolder {
            path: ssh::CONTAINER_DIR.to_string(),
            uid: plan.user.uid,
            gid: plan.user.gid,
            empty_files: job_files(plan, &[], 0)
                .iter()
                .filter_map(|f| f.path.rsplit_once('/').map(|(_, name)| name.to_string()))
                .collect(),
        };
        engine
            .upload_with_folders(&name, &[home], &image_files(plan, &accounts))
            .await?;
        engine.commit_as(&name, None, &base.id).await
    }
    .await;
    let _ = engine.remove(&name).await;
    if let Ok(id) = &made {
        // Best effort: a copy left is only disk, and `mnd cleanup` (the Epilog) tries again.
        match crate::cleanup::remove_stale_copies(engine, Some(plan.user.uid), Some(id)).await {
            Ok(gone) => log::debug!("copies of images without a name removed: {gone:?}"),
            Err(e) => log::debug!("copies of images without a name not removed: {e}"),
        }
    }
    made
}

/// What a copy is made from, as one digest keyed with the user's own secret (their control
/// key, 0600 in their `~/.mnd/ssh`): the image, the user's account and groups, the
/// wrappers, and this launcher's format. Everything else in it is public; without the key,
/// anyone could compute the label and have root pull an image carrying it, which this
/// user's launcher would then run as their copy.
fn key(secret: &[u8], user: &Identity, base_id: &str) -> String {
    use hmac::{Hmac, Mac};
    let mut h = <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("HMAC takes any key length");
    for part in [
        FORMAT.to_string(),
        base_id.to_string(),
        format!("{user:?}"),
        ssh::WRAPPED.iter().map(|p| ssh::wrapper(p)).collect(),
    ] {
        h.update(part.as_bytes());
        h.update(&[0]);
    }
    format!("{:x}", h.finalize().into_bytes())
}

/// The labels of the container a copy is committed from, which the copy keeps: the key,
/// the image it is made from (for `cleanup::remove_stale_copies`), and the job labels
/// every container sets again (so none of them outlives this job in a later job's
/// container), with the role `accounts` (the Epilog removes the container if the launcher
/// dies while making the copy).
fn copy_labels(plan: &Plan, key: &str, base_id: &str) -> BTreeMap<String, String> {
    let mut l: BTreeMap<String, String> = plan
        .container
        .labels
        .iter()
        .filter(|(k, _)| {
            [
                labels::JOB,
                labels::STEP,
                labels::USER,
                labels::UID,
                labels::NODE,
            ]
            .contains(&k.as_str())
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    l.insert(labels::ROLE.into(), "accounts".into());
    l.insert(LABEL.into(), key.into());
    l.insert(labels::BASE.into(), base_id.into());
    l
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Group;
    use std::path::PathBuf;

    fn alice() -> Identity {
        Identity {
            name: "alice".into(),
            uid: 1001,
            gid: 1001,
            home: PathBuf::from("/home/alice"),
            shell: "/bin/bash".into(),
            groups: vec![Group {
                name: "alice".into(),
                gid: 1001,
            }],
        }
    }

    #[test]
    fn a_copy_is_new_for_another_image_user_or_group() {
        let k = key(b"k", &alice(), "sha256:a");
        assert_eq!(
            k,
            key(b"k", &alice(), "sha256:a"),
            "the same inputs find the same copy"
        );
        assert_ne!(k, key(b"k", &alice(), "sha256:b"));
        let mut bob = alice();
        bob.uid = 1002;
        assert_ne!(k, key(b"k", &bob, "sha256:a"));
        let mut grouped = alice();
        grouped.groups.push(Group {
            name: "gpu".into(),
            gid: 44,
        });
        assert_ne!(k, key(b"k", &grouped, "sha256:a"));
        assert_ne!(
            k,
            key(b"another user's key", &alice(), "sha256:a"),
            "only the key's holder finds it"
        );
        assert_eq!(k.len(), 64);
    }
}
