//! Admin and user tools over the labelled containers: listing (`mnd ps`) and removal
//! (`mnd cleanup`, also the Slurm Epilog's command), and the removal of users' copies of
//! images that lost their name.

use crate::docker::{DockerError, Engine, Listed};
use crate::spec::labels;
use std::collections::{HashMap, HashSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use thiserror::Error;

/// Which containers a listing or cleanup covers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selection {
    /// Only this job.
    pub job: Option<u64>,
    /// Only containers of this uid (`None`: every user's; root only).
    pub uid: Option<u32>,
    /// Only containers older than this.
    pub older_than: Option<Duration>,
}

/// A cleanup that could not be done.
#[derive(Debug, Error)]
pub enum CleanupError {
    /// Docker failed.
    #[error(transparent)]
    Docker(#[from] DockerError),
    /// Bad arguments.
    #[error("{0}")]
    Usage(String),
}

/// Parses durations like "90s", "30m", "2h", "1d".
pub fn parse_duration(text: &str) -> Result<Duration, CleanupError> {
    let t = text.trim();
    let bad = || {
        CleanupError::Usage(format!(
            "'{text}' is not a duration like 90s, 30m, 2h or 1d"
        ))
    };
    let (num, unit) = t.split_at(t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len()));
    let n: u64 = num.parse().map_err(|_| bad())?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86400,
        _ => return Err(bad()),
    };
    Ok(Duration::from_secs(secs))
}

impl Selection {
    /// Docker label filters for this selection.
    fn labels(&self) -> Vec<String> {
        let mut l = vec![labels::JOB.to_string()];
        if let Some(j) = self.job {
            l.push(format!("{}={j}", labels::JOB));
        }
        if let Some(u) = self.uid {
            l.push(format!("{}={u}", labels::UID));
        }
        l
    }

    fn keeps(&self, c: &Listed, now: i64) -> bool {
        self.older_than
            .is_none_or(|age| now - c.created >= age.as_secs() as i64)
    }
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// The mnd containers on this node matching the selection.
pub async fn list(engine: &Engine, sel: &Selection) -> Result<Vec<Listed>, CleanupError> {
    let t = now();
    let mut found: Vec<Listed> = engine
        .list(&sel.labels())
        .await?
        .into_iter()
        .filter(|c| sel.keeps(c, t))
        .collect();
    found.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(found)
}

/// Removes the copies of images (ssh mode's, one per user, image and node: unnamed, label
/// `mnd.accounts`) of user `uid` (`None`: every user's) whose image lost its name (`docker
/// rmi`, or its tag moved to a newer pull), but `keep` and any a container uses. Each goes
/// with the unnamed image below it when nothing else holds that: a copy must not keep an
/// image the site removed. Returns the ids removed.
pub async fn remove_stale_copies(
    engine: &Engine,
    uid: Option<u32>,
    keep: Option<&str>,
) -> Result<Vec<String>, DockerError> {
    Ok(remove_listed_copies(engine, uid, keep).await?.0)
}

/// The Epilog's sweep (`mnd cleanup`): [`remove_stale_copies`], then the same rule once
/// more through Docker's prune, which also reaches the copies the containerd image store
/// stops listing when their base's layers go. Not on a job's start: a prune walks every
/// image.
pub async fn sweep_stale_copies(
    engine: &Engine,
    uid: Option<u32>,
) -> Result<Vec<String>, DockerError> {
    let (mut removed, named) = remove_listed_copies(engine, uid, None).await?;
    match engine
        .prune_unnamed(stale_copy_filters(uid, &named, now()))
        .await
    {
        Ok(pruned) => removed.extend(pruned),
        Err(e) => log::debug!("prune of stale copies: {e}"),
    }
    Ok(removed)
}

/// [`remove_stale_copies`] over the images Docker lists; what it removed, and the ids of
/// the named images it went by.
async fn remove_listed_copies(
    engine: &Engine,
    uid: Option<u32>,
    keep: Option<&str>,
) -> Result<(Vec<String>, HashSet<String>), DockerError> {
    let mut filter = vec![labels::ACCOUNTS.to_string()];
    filter.extend(uid.map(|u| format!("{}={u}", labels::UID)));
    let (copies, named) = tokio::join!(engine.unnamed_images(&filter), engine.named_images());
    let named = named?;
    let label = |l: &HashMap<String, String>, k: &str| l.get(k).cloned().unwrap_or_default();
    let mut removed = Vec::new();
    for (id, _) in copies?.into_iter().filter(|(id, l)| {
        // An empty key: an image committed from a job's container, not a copy.
        !label(l, labels::ACCOUNTS).is_empty()
            && Some(id.as_str()) != keep
            && !named.contains(&label(l, labels::BASE))
    }) {
        if engine.remove_unused_image(&id).await? == crate::docker::Removal::Removed {
            removed.push(id);
        }
    }
    Ok((removed, named))
}

/// Docker's prune filters for the copies of user `uid` (`None`: anyone's) whose base is none
/// of the `named` images, made over a minute before `now` (seconds since the epoch): one
/// made for a job that is still starting is kept.
fn stale_copy_filters(
    uid: Option<u32>,
    named: &HashSet<String>,
    now: i64,
) -> HashMap<String, Vec<String>> {
    let mut has = vec![format!("{}=accounts", labels::ROLE)];
    has.extend(uid.map(|u| format!("{}={u}", labels::UID)));
    let mut named: Vec<String> = named
        .iter()
        .map(|id| format!("{}={id}", labels::BASE))
        .collect();
    named.sort();
    let mut filters = HashMap::from([
        ("label".to_string(), has),
        ("until".to_string(), vec![(now - 60).to_string()]),
    ]);
    if !named.is_empty() {
        filters.insert("label!".to_string(), named);
    }
    filters
}

/// One `mnd ps` line: node, job, step, user, image, age, state, CPU, memory, name.
fn table_line(f: [&str; 10]) -> String {
    format!(
        "{:<10} {:<9} {:>4} {:<10} {:<24} {:>5} {:<8} {:>6} {:>7} {}\n",
        f[0], f[1], f[2], f[3], f[4], f[5], f[6], f[7], f[8], f[9]
    )
}

/// The header of `mnd ps`.
pub fn table_header() -> String {
    table_line([
        "NODE", "JOB", "STEP", "USER", "IMAGE", "AGE", "STATE", "CPU%", "MEM", "NAME",
    ])
}

/// Renders `mnd ps` rows: one per container, with its CPU and memory use when known.
pub fn table(containers: &[Listed], usage: &[Option<(f64, u64)>]) -> String {
    let t = now();
    let mut out = String::new();
    for (i, c) in containers.iter().enumerate() {
        let l = |k: &str| c.labels.get(k).cloned().unwrap_or_default();
        let (cpu, mem) = match usage.get(i).copied().flatten() {
            Some((cpu, mem)) => (
                format!("{cpu:.1}"),
                format!("{:.0}M", mem as f64 / 1048576.0),
            ),
            None => ("-".into(), "-".into()),
        };
        let named = c.labels.get(labels::IMAGE).unwrap_or(&c.image);
        let image: String = named.chars().take(24).collect();
        out.push_str(&table_line([
            &l(labels::NODE),
            &l(labels::JOB),
            &l(labels::STEP),
            &l(labels::USER),
            &image,
            &age(t - c.created),
            &c.state,
            &cpu,
            &mem,
            &c.name,
        ]));
    }
    out
}

pub fn age(secs: i64) -> String {
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

/// A job's end keeps its global `--mnd-name` containers (`container_scope=global`): they
/// are the user's across jobs, stopped, not removed. Any other cleanup removes them.
fn kept_at_job_end(sel: &Selection, c: &Listed) -> bool {
    sel.job.is_some() && c.labels.get(labels::SCOPE).map(String::as_str) == Some("global")
}

/// Removes every matching container (all at once; a job's global ones are stopped and
/// kept); returns the names removed or stopped.
pub async fn remove(engine: &Engine, sel: &Selection) -> Result<Vec<String>, CleanupError> {
    let victims = list(engine, sel).await?;
    let removals = victims
        .iter()
        // By the id that was listed: a new container may take a listed name meanwhile.
        .map(|c| async move {
            let done = match kept_at_job_end(sel, c) {
                true => engine.stop(&c.id).await,
                false => engine.remove(&c.id).await,
            };
            (c.name.clone(), done)
        });
    let mut removed = Vec::new();
    let mut failed = Vec::new();
    for (name, r) in futures_util::future::join_all(removals).await {
        match r {
            Ok(()) => removed.push(name),
            Err(e) => failed.push(format!("{name}: {e}")),
        }
    }
    if !failed.is_empty() {
        return Err(CleanupError::Usage(format!(
            "could not remove {}",
            failed.join("; ")
        )));
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_copies_are_pruned_by_role_owner_base_and_age() {
        let named = ["sha256:b".to_string(), "sha256:a".to_string()].into();
        let f = stale_copy_filters(Some(1001), &named, 1_000);
        assert_eq!(f["label"], ["mnd.role=accounts", "mnd.uid=1001"]);
        assert_eq!(f["label!"], ["mnd.base=sha256:a", "mnd.base=sha256:b"]);
        assert_eq!(f["until"], ["940"]);
        let f = stale_copy_filters(None, &Default::default(), 1_000);
        assert_eq!(f["label"], ["mnd.role=accounts"]);
        assert!(!f.contains_key("label!"));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("30m").unwrap(), Duration::from_secs(1800));
        assert_eq!(parse_duration("2h").unwrap(), Duration::from_secs(7200));
        assert_eq!(parse_duration("1d").unwrap(), Duration::from_secs(86400));
        assert!(parse_duration("2 weeks").is_err());
        assert!(parse_duration("h").is_err());
    }

    #[test]
    fn selection_labels() {
        let s = Selection {
            job: Some(7),
            uid: Some(1001),
            older_than: None,
        };
        assert_eq!(s.labels(), ["mnd.job", "mnd.job=7", "mnd.uid=1001"]);
        assert_eq!(Selection::default().labels(), ["mnd.job"]);
    }

    #[test]
    fn ages() {
        assert_eq!(age(5), "5s");
        assert_eq!(age(600), "10m");
        assert_eq!(age(10000), "2h");
        assert_eq!(age(200000), "2d");
    }
}
