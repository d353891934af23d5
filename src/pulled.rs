//! Images the root side pulled for direct mode, and the jobs that used them: root's storage
//! would otherwise keep every image any user ever named. A record per image in a root-only
//! folder lists the jobs; when the last of them ends (the Epilog says so), the image is
//! removed unless something still uses it. Images the node had before, or that only the
//! launcher (as the user) pulled, have no record and are never touched.

use std::fs;
use std::io::{Read, Seek, Write};

use std::path::{Path, PathBuf};

/// Where the records live.
pub const DIR: &str = "/var/lib/mnd-srun/pulled";

/// The records folder.
pub struct Pulled {
    dir: PathBuf,
}

impl Pulled {
    /// Opens (creating, 0700) the records folder; it must be root's and writable by nobody
    /// else.
    pub fn open(dir: &Path) -> std::io::Result<Self> {
        crate::fsx::roots_dir(dir)?;
        Ok(Pulled {
            dir: dir.to_path_buf(),
        })
    }

    fn record_of(&self, image: &str) -> PathBuf {
        use sha2::{Digest, Sha256};
        let digest = Sha256::digest(image.as_bytes());
        let name: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
        self.dir.join(name)
    }

    /// Job `job` uses `image`: recorded when this helper pulled it (`pulled`) or when an
    /// earlier job's pull is recorded already.
    pub fn used(&self, image: &str, job: u32, pulled: bool) -> std::io::Result<()> {
        let path = self.record_of(image);
        if !pulled && !path.exists() {
            return Ok(());
        }
        let mut file = crate::fsx::lock(&path)?;
        let mut text = String::new();
        file.read_to_string(&mut text)?;
        let (mut name, mut jobs) = parse(&text);
        if name.is_empty() {
            name = image.to_string();
        }
        if !jobs.contains(&job) {
            jobs.push(job);
        }
        rewrite(&mut file, &name, &jobs)
    }

    /// An image the Epilog could not remove (a container still used it): recorded with no
    /// job, so every later Epilog on this node tries again until it is gone.
    pub fn keep(&self, image: &str) -> std::io::Result<()> {
        let mut file = crate::fsx::lock(&self.record_of(image))?;
        rewrite(&mut file, image, &[])
    }

    /// Job `job` ended: it is taken off every record; the images no job uses any more are
    /// returned (and their records removed), with those kept by an earlier Epilog.
    pub fn job_ended(&self, job: u32) -> std::io::Result<Vec<String>> {
        let mut unused = Vec::new();
        for entry in fs::read_dir(&self.dir)?.flatten() {
            let path = entry.path();
            let mut file = crate::fsx::lock(&path)?;
            let mut text = String::new();
            file.read_to_string(&mut text)?;
            let (name, mut jobs) = parse(&text);
            // A record of no job: an image an earlier Epilog could not remove yet.
            if !jobs.contains(&job) && !jobs.is_empty() {
                continue;
            }
            jobs.retain(|j| *j != job);
            if jobs.is_empty() {
                fs::remove_file(&path)?;
                unused.push(name);
            } else {
                rewrite(&mut file, &name, &jobs)?;
            }
        }
        Ok(unused)
    }
}

fn parse(text: &str) -> (String, Vec<u32>) {
    let mut lines = text.lines();
    let name = lines.next().unwrap_or_default().to_string();
    (name, lines.filter_map(|l| l.trim().parse().ok()).collect())
}

fn rewrite(file: &mut fs::File, name: &str, jobs: &[u32]) -> std::io::Result<()> {
    let mut text = format!("{name}\n");
    for j in jobs {
        text.push_str(&format!("{j}\n"));
    }
    file.set_len(0)?;
    file.rewind()?;
    file.write_all(text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pulled_in(dir: &Path) -> Pulled {
        Pulled {
            dir: dir.to_path_buf(),
        }
    }

    #[test]
    fn an_image_goes_when_the_last_job_that_used_it_ends() {
        let t = tempfile::tempdir().unwrap();
        let p = pulled_in(t.path());
        p.used("reg/a:1", 7, true).unwrap();
        p.used("reg/a:1", 8, false).unwrap();
        // Never pulled here: no record, never removed.
        p.used("local:1", 7, false).unwrap();
        assert_eq!(p.job_ended(7).unwrap(), Vec::<String>::new());
        assert_eq!(p.job_ended(8).unwrap(), vec!["reg/a:1".to_string()]);
        assert!(p.job_ended(8).unwrap().is_empty());
        assert_eq!(fs::read_dir(t.path()).unwrap().count(), 0);
    }

    #[test]
    fn an_image_kept_because_in_use_is_offered_again_by_the_next_jobs_end() {
        let t = tempfile::tempdir().unwrap();
        let p = pulled_in(t.path());
        p.used("python:3.12", 7, true).unwrap();
        assert_eq!(p.job_ended(7).unwrap(), vec!["python:3.12".to_string()]);
        // A container of another job still used it: the Epilog keeps the record.
        p.keep("python:3.12").unwrap();
        assert_eq!(p.job_ended(9).unwrap(), vec!["python:3.12".to_string()]);
        assert!(p.job_ended(10).unwrap().is_empty());
    }
}
