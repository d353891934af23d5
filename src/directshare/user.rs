//! `mnd direct share`: the user's side of direct mode's image share. The root helper runs
//! this as the job's user (its ids, no environment), so every file of the share is opened
//! with the user's rights; what it hands over is checked as root (`super`).

use crate::imagecache::Cache;
use std::io::{BufRead, Read, Write};
use std::path::Path;
use std::time::Duration;

/// What `mnd direct share` does, as the user.
#[derive(Debug, Clone)]
pub enum UserOp {
    /// The first node's word (stdin) into `words/NAME`.
    PutWord(String),
    /// `words/NAME` to stdout, waiting for it to appear.
    GetWord(String, Duration),
    /// The image `ID`'s archive from stdin (raw `docker save`), unless saved; with a word's
    /// name, stdin's first line is that word, left first.
    Save(String, Option<String>),
    /// The image `ID`'s archive (compressed) to stdout, following one being saved.
    GetArchive(String, Duration),
}

/// `mnd direct share`: one operation on the user's share, as the user (refused as root).
pub fn as_user_op(dir: &Path, op: UserOp) -> Result<(), String> {
    let uid = nix::unistd::getuid().as_raw();
    if uid == 0 {
        return Err("mnd direct share acts as the job's user; the root helper runs it".into());
    }
    let cache = Cache::open(dir, uid).map_err(|e| e.to_string())?;
    let words = dir.join("words");
    let name_ok = |n: &str| {
        !n.is_empty()
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | ':' | '-'))
    };
    let checked = |n: String| {
        if name_ok(&n) {
            Ok(n)
        } else {
            Err(format!("{n:?}: not a name of the share"))
        }
    };
    let mut stdout = std::io::stdout().lock();
    match op {
        UserOp::PutWord(name) => {
            let mut word = Vec::new();
            std::io::stdin()
                .take(64 << 10)
                .read_to_end(&mut word)
                .map_err(|e| e.to_string())?;
            put_word(&words, &checked(name)?, &word)
        }
        UserOp::GetWord(name, wait) => {
            let path = words.join(checked(name)?);
            // A word given on stdin was stale: only another one is an answer.
            let mut unlike = Vec::new();
            std::io::stdin()
                .take(64 << 10)
                .read_to_end(&mut unlike)
                .map_err(|e| e.to_string())?;
            let fresh = |w: &Vec<u8>| unlike.is_empty() || w.trim_ascii() != unlike.trim_ascii();
            let word = wait_for(wait, || crate::fsx::read_no_follow(&path).ok().filter(fresh)).ok_or_else(|| {
                format!("no word from the step's first node in {} within {} s: is it on a filesystem every node shares, and does the first node have the image?", dir.display(), wait.as_secs())
            })?;
            stdout.write_all(&word).map_err(|e| e.to_string())
        }
        UserOp::Save(id, word) => {
            let mut input = std::io::stdin().lock();
            if let Some(name) = word {
                let mut line = String::new();
                (&mut input)
                    .take(64 << 10)
                    .read_line(&mut line)
                    .map_err(|e| e.to_string())?;
                put_word(&words, &checked(name)?, line.trim().as_bytes())?;
            }
            match cache.begin_save(&checked(id)?).map_err(|e| e.to_string())? {
                None => writeln!(stdout, "present").map_err(|e| e.to_string()),
                Some(mut saving) => {
                    writeln!(stdout, "ready")
                        .and_then(|()| stdout.flush())
                        .map_err(|e| e.to_string())?;
                    let n = std::io::copy(&mut input, &mut saving).map_err(|e| e.to_string())?;
                    if n == 0 {
                        return Err("the image share got nothing to save".into());
                    }
                    saving.finish().map_err(|e| e.to_string())
                }
            }
        }
        UserOp::GetArchive(id, wait) => {
            let id = checked(id)?;
            let mut archive = wait_for(wait, || cache.open_archive(&id, wait).ok().flatten())
                .ok_or_else(|| {
                    format!(
                        "{} is not in the image share {} (nor being saved) after {} s",
                        id,
                        dir.display(),
                        wait.as_secs()
                    )
                })?;
            std::io::copy(&mut archive, &mut stdout)
                .map(|_| ())
                .map_err(|e| e.to_string())
        }
    }
}

/// Leaves `word` as `words/NAME` (whole, readable by the user alone); old words go.
fn put_word(words: &Path, name: &str, word: &[u8]) -> Result<(), String> {
    crate::ssh::create_private_dir(words).map_err(|e| format!("{}: {e}", words.display()))?;
    let path = words.join(name);
    crate::fsx::write_whole(&path, word, 0o600).map_err(|e| format!("{}: {e}", path.display()))?;
    prune_words(words);
    Ok(())
}

/// Polls `look` every 50 ms until it finds something or `wait` passes.
fn wait_for<T>(wait: Duration, mut look: impl FnMut() -> Option<T>) -> Option<T> {
    let by = std::time::Instant::now() + wait;
    loop {
        if let Some(found) = look() {
            return Some(found);
        }
        if std::time::Instant::now() > by {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Words older than a day are of steps long gone.
fn prune_words(words: &Path) {
    let day = Duration::from_secs(24 * 3600);
    for e in std::fs::read_dir(words).into_iter().flatten().flatten() {
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|t| t.elapsed().unwrap_or_default() > day);
        if old {
            let _ = std::fs::remove_file(e.path());
        }
    }
}
