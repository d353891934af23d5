//! The image share (`--image-share`): images that exist only where the job starts (built
//! there, never pushed) or that the nodes cannot pull travel through a cache on the shared
//! filesystem, by default `~/.mnd/images`, readable by the user alone. An image is saved once,
//! gzip-compressed, keyed by its id (`sha256-HEX.tar.gz`), written to a temporary file and
//! renamed into place under a per-image lock; the tag it was saved for is recorded in
//! `tags/`. Nodes that lack the image load it from there in parallel; later jobs reuse it.
//! A node that needs the image and finds none leaves a note in `wanted/`, which the first
//! node serves.

use crate::docker::{DockerError, Engine};
use std::fs::{self, File};
use std::io::BufWriter;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};
use thiserror::Error;

/// The cache cannot be used.
#[derive(Debug, Error)]
pub enum CacheError {
    /// A file or folder of the cache.
    #[error("image cache {path}: {reason}")]
    Io {
        /// The path.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// Docker's save or load.
    #[error(transparent)]
    Docker(#[from] DockerError),
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> CacheError + '_ {
    move |e| CacheError::Io {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

/// One saved image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Image id (`sha256:...`).
    pub id: String,
    /// Tags it was saved for.
    pub tags: Vec<String>,
    /// Compressed size in bytes.
    pub size: u64,
    /// When it was saved.
    pub saved: SystemTime,
}

/// The cache folder of one user.
pub struct Cache {
    dir: PathBuf,
}

/// A tag as a file name (`registry:5000/team/img:1` -> `registry_5000_team_img_1`).
fn tag_file_name(tag: &str) -> String {
    tag.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// An image id as a file name stem (`sha256:ab..` -> `sha256-ab..`).
fn id_stem(id: &str) -> String {
    id.replace(':', "-")
}

impl Cache {
    /// Opens (creating, mode 0700) the cache folder `dir` of user `uid`; refused when someone
    /// else owns it or could write it.
    pub fn open(dir: &Path, uid: u32) -> Result<Self, CacheError> {
        crate::pathid::safe_parents(&dir.join("x"), uid, None).map_err(|bad| CacheError::Io {
            reason: match bad.owner {
                Some(owner) => format!(
                    "this folder above the image share is owned by uid {owner}, who could swap its archives; choose --image-cache under your home"
                ),
                None => format!(
                    "this folder above the image share has mode {:04o}: others could swap its archives; chmod go-w it or choose another --image-cache",
                    bad.mode
                ),
            },
            path: bad.path,
        })?;
        for sub in ["", "tags", "wanted"] {
            let d = dir.join(sub);
            let _ = fs::DirBuilder::new().recursive(true).mode(0o700).create(&d);
            let meta = fs::symlink_metadata(&d).map_err(io(&d))?;
            if !meta.is_dir() || meta.uid() != uid || meta.mode() & 0o077 != 0 {
                return Err(CacheError::Io {
                    path: d,
                    reason:
                        "must be a folder of yours that nobody else can read or write (chmod 700)"
                            .into(),
                });
            }
        }
        Ok(Cache {
            dir: dir.to_path_buf(),
        })
    }

    /// The saved archive of image `id`.
    pub fn archive(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{}.tar.gz", id_stem(id)))
    }

    /// Records that for job `job` `tag` is image `id` (the first node's resolution).
    pub fn record_tag(&self, tag: &str, id: &str, job: &str) -> Result<(), CacheError> {
        let path = self.dir.join("tags").join(tag_file_name(tag));
        write_atomically(&path, format!("{id}\n{tag}\n{job}\n").as_bytes())
    }

    /// The id the first node of job `job` recorded for `tag` (a record of another job,
    /// maybe of an older image under the same tag, does not count).
    pub fn id_for_job(&self, tag: &str, job: &str) -> Option<String> {
        let r = read_record(&self.dir.join("tags").join(tag_file_name(tag)))?;
        (r.job == job).then_some(r.id)
    }

    /// The id `tag` was last recorded as, by whatever job or commit, when its archive is in
    /// the share.
    pub fn saved_id_of(&self, tag: &str) -> Option<String> {
        let r = read_record(&self.dir.join("tags").join(tag_file_name(tag)))?;
        self.archive(&r.id).exists().then_some(r.id)
    }

    /// Leaves the note that a node needs `tag`.
    pub fn want(&self, tag: &str) -> Result<(), CacheError> {
        write_atomically(&self.dir.join("wanted").join(tag_file_name(tag)), b"")
    }

    /// Whether some node asked for `tag`; the note is taken away.
    pub fn take_want(&self, tag: &str) -> bool {
        fs::remove_file(self.dir.join("wanted").join(tag_file_name(tag))).is_ok()
    }

    /// Saves image `tag` (which is `id`) unless it is there already; `true` when this call
    /// saved it. Other savers of the same image wait on its lock and find it saved.
    pub async fn save(&self, engine: &Engine, tag: &str, id: &str) -> Result<bool, CacheError> {
        let archive = self.archive(id);
        let _lock = self.lock(id)?;
        if archive.exists() {
            return Ok(false);
        }
        let tmp = archive.with_extension(format!("tmp-{}", std::process::id()));
        let file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io(&tmp))?;
        let mut gz = flate2::write::GzEncoder::new(
            BufWriter::with_capacity(1 << 20, file),
            flate2::Compression::fast(),
        );
        let saved = engine.save_image(tag, &mut gz).await;
        let finished = saved.map_err(CacheError::from).and_then(|_| {
            gz.finish()
                .and_then(|w| w.into_inner().map_err(|e| e.into_error()))
                .and_then(|f| f.sync_all())
                .map_err(io(&tmp))
        });
        if let Err(e) = finished.and_then(|()| fs::rename(&tmp, &archive).map_err(io(&archive))) {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        Ok(true)
    }

    /// Loads image `id` from the cache into this node's Docker.
    pub async fn load(&self, engine: &Engine, id: &str) -> Result<(), CacheError> {
        let archive = self.archive(id);
        let file = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&archive)
            .map_err(io(&archive))?;
        let gz = flate2::read::GzDecoder::new(std::io::BufReader::with_capacity(1 << 20, file));
        engine.load_image(gz).await?;
        Ok(())
    }

    fn lock(&self, id: &str) -> Result<nix::fcntl::Flock<File>, CacheError> {
        let path = self.dir.join(format!(".{}.lock", id_stem(id)));
        crate::fsx::lock(&path).map_err(io(&path))
    }

    /// The saved images, newest first, with the tags recorded for them.
    pub fn list(&self) -> Result<Vec<Entry>, CacheError> {
        let tags: Vec<Record> = fs::read_dir(self.dir.join("tags"))
            .map(|dir| {
                dir.flatten()
                    .filter_map(|e| read_record(&e.path()))
                    .collect()
            })
            .unwrap_or_default();
        let mut entries = Vec::new();
        for e in fs::read_dir(&self.dir).map_err(io(&self.dir))?.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(stem) = name.strip_suffix(".tar.gz") else {
                continue;
            };
            let Ok(meta) = e.metadata() else { continue };
            let id = stem.replacen('-', ":", 1);
            entries.push(Entry {
                tags: tags
                    .iter()
                    .filter(|r| r.id == id)
                    .map(|r| r.tag.clone())
                    .collect(),
                id,
                size: meta.len(),
                saved: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            });
        }
        entries.sort_by_key(|e| std::cmp::Reverse(e.saved));
        Ok(entries)
    }

    /// Removes saved images older than `older_than` (all with zero) and their tag records;
    /// returns what was removed.
    pub fn prune(&self, older_than: Duration) -> Result<Vec<Entry>, CacheError> {
        let now = SystemTime::now();
        let old: Vec<Entry> = self
            .list()?
            .into_iter()
            .filter(|e| now.duration_since(e.saved).unwrap_or_default() >= older_than)
            .collect();
        for e in &old {
            let _lock = self.lock(&e.id)?;
            let archive = self.archive(&e.id);
            fs::remove_file(&archive).map_err(io(&archive))?;
            for t in &e.tags {
                let _ = fs::remove_file(self.dir.join("tags").join(tag_file_name(t)));
            }
        }
        Ok(old)
    }
}

/// What `record_tag` wrote: the image id, the tag, and the job that recorded it.
struct Record {
    id: String,
    tag: String,
    job: String,
}

/// Reads a tag record; `None` when it is missing or not whole.
fn read_record(path: &Path) -> Option<Record> {
    let mut text = String::new();
    std::io::Read::read_to_string(
        &mut fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
            .ok()?,
        &mut text,
    )
    .ok()?;
    match text.lines().collect::<Vec<_>>().as_slice() {
        [id, tag, job, ..] if !id.is_empty() => Some(Record {
            id: id.to_string(),
            tag: tag.to_string(),
            job: job.to_string(),
        }),
        _ => None,
    }
}

/// Writes a small file whole: a temporary file, then a rename.
fn write_atomically(path: &Path, content: &[u8]) -> Result<(), CacheError> {
    crate::fsx::write_whole(path, content, 0o644).map_err(io(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_and_wants_round_trip_and_a_shared_folder_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let uid = nix::unistd::getuid().as_raw();
        let cache = Cache::open(&tmp.path().join("images"), uid).unwrap();
        cache
            .record_tag("reg:5000/team/img:1", "sha256:ab", "7.0")
            .unwrap();
        assert_eq!(
            cache.id_for_job("reg:5000/team/img:1", "7.0").as_deref(),
            Some("sha256:ab")
        );
        assert_eq!(cache.id_for_job("reg:5000/team/img:1", "8.0"), None);
        assert_eq!(cache.id_for_job("other", "7.0"), None);
        assert_eq!(cache.saved_id_of("reg:5000/team/img:1"), None);
        assert!(!cache.take_want("img:1"));
        cache.want("img:1").unwrap();
        assert!(cache.take_want("img:1") && !cache.take_want("img:1"));
        assert_eq!(
            cache.archive("sha256:ab"),
            tmp.path().join("images/sha256-ab.tar.gz")
        );
        fs::write(cache.archive("sha256:ab"), b"x").unwrap();
        assert_eq!(
            cache.saved_id_of("reg:5000/team/img:1").as_deref(),
            Some("sha256:ab")
        );
        let listed = cache.list().unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].id, "sha256:ab");
        assert_eq!(listed[0].tags, ["reg:5000/team/img:1"]);
        assert_eq!(cache.prune(Duration::from_secs(3600)).unwrap(), vec![]);
        assert_eq!(cache.prune(Duration::ZERO).unwrap().len(), 1);
        assert!(cache.list().unwrap().is_empty());
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(tmp.path().join("images"), fs::Permissions::from_mode(0o755)).unwrap();
        let err = Cache::open(&tmp.path().join("images"), uid).err().unwrap();
        assert!(err.to_string().contains("nobody else"), "{err}");
    }
}
