//! The image share (`--image-share`): images that exist only where the job starts (built
//! there, never pushed) or that the nodes cannot pull travel through a cache on the shared
//! filesystem, by default `~/.mnd/images`, readable by the user alone. An image is saved once,
//! zstd-compressed, keyed by its id (`sha256-HEX.tar.zst`), written to a temporary file and
//! renamed into place under a per-image lock; the tag it was saved for is recorded in
//! `tags/`. Nodes that lack the image load it from there in parallel; later jobs reuse it.
//! A node that needs the image and finds none leaves a note in `wanted/`, which the first
//! node serves.

use crate::docker::{DockerError, Engine};
use std::fs::{self, File};
use std::io::{BufWriter, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};
use thiserror::Error;

/// The archives' compression: zstd, whose fastest level compresses five times faster than
/// gzip's, smaller, and passes incompressible data (random weights) through at disk speed;
/// the share's first job waits for it on every byte.
const ARCHIVE_EXT: &str = "tar.zst";
/// Archives of earlier versions (gzip): never loaded any more, listed and pruned.
const LEGACY_EXT: &str = "tar.gz";
const LEVEL: i32 = 1;

/// An archive's `docker save` stream, decompressed as it is read.
pub fn unpacked(archive: impl Read) -> std::io::Result<impl Read> {
    zstd::stream::read::Decoder::with_buffer(std::io::BufReader::with_capacity(1 << 20, archive))
}

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
    /// Its archive (a legacy gzip one is never loaded, only listed and pruned).
    pub path: PathBuf,
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
        self.dir.join(format!("{}.{ARCHIVE_EXT}", id_stem(id)))
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
    /// Docker's stream is received here while a thread of its own compresses and writes it
    /// (one core each, as `docker save | zstd` would).
    pub async fn save(&self, engine: &Engine, tag: &str, id: &str) -> Result<bool, CacheError> {
        let Some(mut saving) = self.begin_save(id)? else {
            return Ok(false);
        };
        // `None` says the stream is whole; a sender gone without it leaves the part unfinished.
        let (tx, rx) = std::sync::mpsc::sync_channel::<Option<Vec<u8>>>(8);
        let writer = std::thread::spawn(move || -> Result<bool, CacheError> {
            for chunk in rx {
                match chunk {
                    Some(data) => saving.write_all(&data).map_err(io(&saving.part))?,
                    None => return saving.finish().map(|()| true),
                }
            }
            Ok(false)
        });
        let mut sender = ChunkPipe(tx);
        let received = engine.save_image(tag, &mut sender).await;
        if received.is_ok() {
            let _ = sender.0.send(None);
        }
        drop(sender);
        let written = writer
            .join()
            .unwrap_or_else(|_| Err(io(&self.part(id))(std::io::Error::other("the writer died"))));
        match (written, received) {
            (Err(e), _) => Err(e),
            (_, Err(e)) => Err(e.into()),
            (Ok(true), Ok(_)) => Ok(true),
            (Ok(false), Ok(_)) => Err(io(&self.part(id))(std::io::Error::other(
                "the archive was not finished",
            ))),
        }
    }

    /// Starts saving image `id` (write the uncompressed `docker save` stream into what this
    /// returns, then [`Saving::finish`]); `None` when it is saved already. The archive grows
    /// as `ID.tar.zst.part`, which nodes that need it load meanwhile ([`Cache::open_archive`]),
    /// and is renamed into place when whole. Other savers of the image wait on its lock.
    pub fn begin_save(&self, id: &str) -> Result<Option<Saving>, CacheError> {
        let (archive, part) = (self.archive(id), self.part(id));
        let lock = self.lock(id)?;
        if archive.exists() {
            return Ok(None);
        }
        // A part left by a saver that died: nobody writes it now (the lock is ours).
        let _ = fs::remove_file(&part);
        let file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&part)
            .map_err(io(&part))?;
        let zst = zstd::stream::write::Encoder::new(BufWriter::with_capacity(1 << 20, file), LEVEL)
            .map_err(io(&part))?;
        Ok(Some(Saving {
            zst: Some(zst),
            part,
            archive,
            _lock: lock,
        }))
    }

    /// The growing archive of image `id`.
    fn part(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{}.{ARCHIVE_EXT}.part", id_stem(id)))
    }

    /// Whether image `id` is saved or being saved.
    pub fn has_archive(&self, id: &str) -> bool {
        self.archive(id).exists() || self.part(id).exists()
    }

    /// The saved archive of image `id` (zstd-compressed), or the one being saved, followed as
    /// it grows until its saver renames it into place; `None` when there is neither. A saver
    /// that writes nothing for `stall` ends the reading with an error.
    pub fn open_archive(
        &self,
        id: &str,
        stall: Duration,
    ) -> Result<Option<Box<dyn Read + Send>>, CacheError> {
        let (archive, part) = (self.archive(id), self.part(id));
        let open = |path: &Path| {
            fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(path)
        };
        if let Ok(file) = open(&archive) {
            return Ok(Some(Box::new(file)));
        }
        match open(&part) {
            Ok(file) => Ok(Some(Box::new(Following {
                file,
                archive,
                part,
                stall,
                grew: std::time::Instant::now(),
            }))),
            Err(_) if archive.exists() => Err(io(&archive)(std::io::Error::other(
                "cannot be opened (is it a link?)",
            ))),
            Err(_) => Ok(None),
        }
    }

    /// Loads image `id` from the cache into this node's Docker (following an archive still
    /// being saved).
    pub async fn load(&self, engine: &Engine, id: &str, stall: Duration) -> Result<(), CacheError> {
        let archive = self
            .open_archive(id, stall)?
            .ok_or_else(|| CacheError::Io {
                path: self.archive(id),
                reason: "not in the image share".into(),
            })?;
        engine
            .load_image(unpacked(archive).map_err(io(&self.archive(id)))?)
            .await?;
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
            let Some(stem) = [ARCHIVE_EXT, LEGACY_EXT]
                .iter()
                .find_map(|ext| name.strip_suffix(&format!(".{ext}")))
            else {
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
                path: e.path(),
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
            fs::remove_file(&e.path).map_err(io(&e.path))?;
            for t in &e.tags {
                let _ = fs::remove_file(self.dir.join("tags").join(tag_file_name(t)));
            }
        }
        Ok(old)
    }
}

/// Hands what is written to the archive's writer thread.
struct ChunkPipe(std::sync::mpsc::SyncSender<Option<Vec<u8>>>);

impl Write for ChunkPipe {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .send(Some(buf.to_vec()))
            .map_err(|_| std::io::Error::other("the archive's writer stopped"))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// An archive being saved: the compressed stream into its `.part` file, under its lock.
pub struct Saving {
    zst: Option<zstd::stream::write::Encoder<'static, BufWriter<File>>>,
    part: PathBuf,
    archive: PathBuf,
    _lock: nix::fcntl::Flock<File>,
}

impl Write for Saving {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match &mut self.zst {
            Some(zst) => zst.write(buf),
            None => Err(std::io::Error::other("the archive is finished")),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.zst.as_mut().map_or(Ok(()), |zst| zst.flush())
    }
}

impl Saving {
    /// The archive whole: compressed to its end, on disk, renamed into place.
    pub fn finish(mut self) -> Result<(), CacheError> {
        let Some(zst) = self.zst.take() else {
            return Ok(());
        };
        zst.finish()
            .and_then(|w| w.into_inner().map_err(|e| e.into_error()))
            .and_then(|f| f.sync_all())
            .map_err(io(&self.part))?;
        fs::rename(&self.part, &self.archive).map_err(io(&self.archive))
    }
}

impl Drop for Saving {
    /// Not finished: the part goes (its readers see their saver gone).
    fn drop(&mut self) {
        if self.zst.is_some() {
            let _ = fs::remove_file(&self.part);
        }
    }
}

/// Reads an archive while its saver writes it: at the end of the part it waits for more,
/// and ends once the saver renamed the same file into place.
struct Following {
    file: File,
    archive: PathBuf,
    part: PathBuf,
    stall: Duration,
    grew: std::time::Instant,
}

impl Read for Following {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let same = |path: &Path, ino: u64| fs::symlink_metadata(path).is_ok_and(|m| m.ino() == ino);
        loop {
            let n = self.file.read(buf)?;
            if n > 0 {
                self.grew = std::time::Instant::now();
                return Ok(n);
            }
            let ino = self.file.metadata()?.ino();
            if same(&self.archive, ino) {
                // Renamed, so written to its end: what is left, then the end.
                return self.file.read(buf);
            }
            if !same(&self.part, ino) {
                return Err(std::io::Error::other(format!(
                    "{}: its saver stopped before the end",
                    self.part.display()
                )));
            }
            if self.grew.elapsed() > self.stall {
                return Err(std::io::Error::other(format!(
                    "{}: its saver wrote nothing for {} s",
                    self.part.display(),
                    self.stall.as_secs()
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
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
    let text = String::from_utf8(crate::fsx::read_no_follow(path).ok()?).ok()?;
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
            tmp.path().join("images/sha256-ab.tar.zst")
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
        // An earlier version's gzip archive is never loaded, but listed and pruned.
        let legacy = tmp.path().join("images/sha256-ef.tar.gz");
        fs::write(&legacy, b"x").unwrap();
        cache.record_tag("legacy:1", "sha256:ef", "9.0").unwrap();
        assert_eq!(cache.saved_id_of("legacy:1"), None);
        assert_eq!(cache.list().unwrap()[0].path, legacy);
        assert_eq!(cache.prune(Duration::ZERO).unwrap().len(), 1);
        assert!(!legacy.exists());
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(tmp.path().join("images"), fs::Permissions::from_mode(0o755)).unwrap();
        let err = Cache::open(&tmp.path().join("images"), uid).err().unwrap();
        assert!(err.to_string().contains("nobody else"), "{err}");
    }

    #[test]
    fn an_archive_is_read_while_it_is_saved_and_a_dead_saver_is_noticed() {
        let tmp = tempfile::tempdir().unwrap();
        let uid = nix::unistd::getuid().as_raw();
        let cache = Cache::open(&tmp.path().join("images"), uid).unwrap();
        assert!(cache
            .open_archive("sha256:cd", Duration::from_secs(5))
            .unwrap()
            .is_none());
        let mut saving = cache.begin_save("sha256:cd").unwrap().unwrap();
        assert!(cache.has_archive("sha256:cd") && !cache.archive("sha256:cd").exists());
        let mut reader = cache
            .open_archive("sha256:cd", Duration::from_secs(5))
            .unwrap()
            .unwrap();
        let writer = std::thread::spawn(move || {
            for i in 0..20u8 {
                saving.write_all(&[i; 70_000]).unwrap();
                saving.flush().unwrap();
                std::thread::sleep(Duration::from_millis(20));
            }
            saving.finish().unwrap();
        });
        let mut whole = Vec::new();
        unpacked(&mut reader)
            .unwrap()
            .read_to_end(&mut whole)
            .unwrap();
        writer.join().unwrap();
        assert_eq!(whole.len(), 20 * 70_000);
        assert!(whole
            .chunks(70_000)
            .enumerate()
            .all(|(i, c)| c.iter().all(|b| *b == i as u8)));
        assert!(cache.archive("sha256:cd").exists() && !cache.has_archive("sha256:ef"));
        // Saved already: nobody saves it again.
        assert!(cache.begin_save("sha256:cd").unwrap().is_none());
        // A saver that ends before finishing takes its part away; its reader says so.
        let mut saving = cache.begin_save("sha256:ef").unwrap().unwrap();
        saving.write_all(&[1; 10]).unwrap();
        let mut reader = cache
            .open_archive("sha256:ef", Duration::from_secs(5))
            .unwrap()
            .unwrap();
        drop(saving);
        let err = reader.read_to_end(&mut Vec::new()).unwrap_err();
        assert!(err.to_string().contains("stopped before the end"), "{err}");
    }
}
