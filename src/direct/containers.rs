//! `--mnd-containers` (`mnd containers ls|rm`): a user outside the docker group lists or
//! removes their own `--mnd-name` containers on a node, as pyxis users run `enroot list`
//! and `enroot remove`. The plugin runs the helper with the uid Slurm gives; only that
//! user's containers are ever seen here.

use super::{rootfiles, unnamed, HelperError};
use crate::docker::{Engine, Listed};
use crate::plan::direct::removal;
use crate::plan::options::ContainersOp;
use crate::spank::Request;
use crate::spec::labels;

/// Does `op` for the user of `req` on this node: one line per container listed, removed
/// or left (with why).
pub async fn serve(req: &Request, op: &ContainersOp) -> Result<Vec<String>, HelperError> {
    let engine = Engine::connect().await?;
    let mine = engine
        .list(&[
            format!("{}={}", labels::UID, req.uid),
            format!("{}=direct", labels::ROLE),
        ])
        .await?;
    let named: Vec<&Listed> = mine
        .iter()
        .filter(|c| !label(c, labels::NAME).is_empty())
        .collect();
    match op {
        ContainersOp::List => Ok(listing(&req.node, &named)),
        ContainersOp::Remove(asked) => {
            let mut said = Vec::new();
            for c in &named {
                let name = label(c, labels::NAME);
                match removal(asked, &name, c.state == "running") {
                    None => {}
                    Some(Err(why)) => said.push(format!("{}: left {why}", req.node)),
                    Some(Ok(())) => said.push(remove(&engine, &req.node, c).await?),
                }
            }
            if said.is_empty() {
                said.push(format!("{}: no such container of yours", req.node));
            }
            Ok(said)
        }
    }
}

fn label(c: &Listed, key: &str) -> String {
    c.labels.get(key).cloned().unwrap_or_default()
}

/// One line per container: node, name, scope, state, the job that made or last ran it,
/// its image and age.
fn listing(node: &str, named: &[&Listed]) -> Vec<String> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    if named.is_empty() {
        return vec![format!("{node}: no named containers of yours")];
    }
    named
        .iter()
        .map(|c| {
            format!(
                "{node}: {} scope={} state={} job={} image={} age={}",
                label(c, labels::NAME),
                label(c, labels::SCOPE),
                c.state,
                label(c, labels::JOB),
                label(c, labels::IMAGE),
                crate::cleanup::age(now - c.created)
            )
        })
        .collect()
}

/// Removes `c` (by the id listed), root's files for it, and the image saved from it when
/// nothing else needs it.
async fn remove(engine: &Engine, node: &str, c: &Listed) -> Result<String, HelperError> {
    engine.remove(&c.id).await?;
    rootfiles::remove(&c.name);
    if unnamed(engine, &c.image).await {
        let _ = engine.remove_unused_image(&c.image).await;
    }
    Ok(format!("{node}: removed {}", label(c, labels::NAME)))
}
