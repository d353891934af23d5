//! Direct mode's root file system owned by the user (the site's `user_rootfs`), as enroot
//! unpacks an image as the user: every file of the container's root is theirs, so they can
//! change it where the image's modes allow, and under `--mnd-remap-root` (where they are
//! root) the files are root's, so `apt-get install` works.
//!
//! Root makes the user's copy of an image once per node (its file system exported from a
//! container that never starts, every entry given to the user and stripped of set-id bits
//! while it streams, imported as an image of one layer), and keeps which copy is whose in
//! its own records (`/var/lib/mnd-srun/owned`), never in anything a user can make: an image
//! label could be forged by anyone who can build an image. Nothing of the image runs as
//! root, and nothing is written where a user reaches.

use crate::docker::{DockerError, Engine, ImageFacts};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// Root's records of the users' copies: `UID-BASEHEX` holds the copy's id.
pub const DIR: &str = "/var/lib/mnd-srun/owned";

/// Passes a tar stream on with every entry owned by `uid`:`gid` (no user or group names),
/// set-user-id and set-group-id bits dropped; paths, links, modes and contents kept.
pub fn give_to(input: impl Read, out: impl Write, uid: u32, gid: u32) -> std::io::Result<()> {
    let mut archive = tar::Archive::new(input);
    let mut builder = tar::Builder::new(out);
    for entry in archive.entries()? {
        let mut entry = entry?;
        let path = entry.path()?.into_owned();
        // A fresh header of the size really read (a PAX record may say another than the
        // header's field); devices, FIFOs and anything but files, folders and links stay out.
        let Ok(mut header) = crate::imagearchive::fresh_header(&entry, entry.size()) else {
            continue;
        };
        header.set_uid(uid.into());
        header.set_gid(gid.into());
        header.set_mode(header.mode()? & 0o1777);
        let kind = header.entry_type();
        if kind.is_symlink() || kind.is_hard_link() {
            let target = entry
                .link_name()?
                .ok_or_else(|| {
                    std::io::Error::other(format!("{}: a link to nothing", path.display()))
                })?
                .into_owned();
            builder.append_link(&mut header, &path, target)?;
        } else {
            builder.append_data(&mut header, &path, &mut entry)?;
        }
    }
    builder.into_inner()?.flush()
}

/// Root's record of `uid`'s copy of image `base`.
fn record(dir: &Path, uid: u32, base: &str) -> PathBuf {
    dir.join(format!("{uid}-{}", base.trim_start_matches("sha256:")))
}

/// `uid`'s copy of image `base` (facts of `base` for its variables, working directory and
/// volumes; the copy's id and layers), made now unless root's record names one that exists.
/// A lock per user and image keeps two steps from making it twice.
pub async fn ensure(
    engine: &Engine,
    base: &ImageFacts,
    uid: u32,
    gid: u32,
) -> Result<ImageFacts, DockerError> {
    let io = |e: std::io::Error| DockerError::Api {
        action: format!("the user's copy of {}", base.id),
        reason: e.to_string(),
    };
    let dir = Path::new(DIR);
    crate::fsx::roots_dir(dir).map_err(io)?;
    let path = record(dir, uid, &base.id);
    let _held = crate::fsx::lock(&path.with_extension("lock")).map_err(io)?;
    let known = crate::fsx::read_no_follow(&path)
        .ok()
        .and_then(|text| String::from_utf8(text).ok());
    if let Some(copy) = known {
        if let Ok(facts) = copy_facts(engine, base, copy.trim()).await {
            return Ok(facts);
        }
    }
    let copy = engine
        .import_rewritten(&base.id, move |input, out| give_to(input, out, uid, gid))
        .await?;
    crate::fsx::write_whole(&path, copy.as_bytes(), 0o600).map_err(io)?;
    copy_facts(engine, base, &copy).await
}

/// The copy `copy` as the container is made from it: by id, with its own layers (where its
/// account files are read) and the base's variables, working directory and volumes.
async fn copy_facts(
    engine: &Engine,
    base: &ImageFacts,
    copy: &str,
) -> Result<ImageFacts, DockerError> {
    let facts = engine.image_by_id(copy).await?;
    Ok(ImageFacts {
        id: facts.id,
        layers: facts.layers,
        size: facts.size,
        by_id_only: true,
        pulled: false,
        names: vec![],
        ..base.clone()
    })
}

/// Removes the users' copies whose base image is gone from this node (the Epilog, after it
/// removed the images root pulled), with their records; the number removed.
pub async fn sweep(engine: &Engine) -> usize {
    let Ok(entries) = std::fs::read_dir(DIR) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some((_, base)) = name.split_once('-').filter(|_| !name.ends_with(".lock")) else {
            continue;
        };
        if engine.has_image(&format!("sha256:{base}")).await {
            continue;
        }
        // Not while a step makes or takes this copy.
        let Ok(_held) = crate::fsx::lock(&entry.path().with_extension("lock")) else {
            continue;
        };
        let copy = std::fs::read_to_string(entry.path()).unwrap_or_default();
        let gone = match copy.trim() {
            "" => true,
            copy => matches!(
                engine.remove_unused_image(copy).await,
                Ok(crate::docker::Removal::Removed | crate::docker::Removal::Gone)
            ),
        };
        if gone {
            // The lock file stays: a step waiting on it holds that very file.
            let _ = std::fs::remove_file(entry.path());
            removed += 1;
        }
    }
    removed + sweep_exports(engine).await
}

/// The never-started containers a copy is exported from, left by a helper that was killed
/// meanwhile (its pid, in the name, is gone): they would keep their image for good.
async fn sweep_exports(engine: &Engine) -> usize {
    let role = format!("{}=export", crate::spec::labels::ROLE);
    let Ok(found) = engine.list(&[role]).await else {
        return 0;
    };
    let mut removed = 0;
    for c in found {
        let pid = c
            .name
            .strip_prefix("mnd-export-")
            .and_then(|r| r.split('-').next());
        let gone = pid.is_some_and(|p| !Path::new("/proc").join(p).exists());
        if gone && engine.remove(&c.id).await.is_ok() {
            removed += 1;
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_entry_becomes_the_users_without_set_id_bits_and_links_stay_links() {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_size(0);
        b.append_data(&mut h, "etc/", &[][..]).unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o4755);
        h.set_uid(0);
        h.set_size(3);
        b.append_data(&mut h, "usr/bin/passwd", &b"elf"[..])
            .unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        let long = format!("usr/share/{}/x", "d".repeat(150));
        b.append_link(&mut h, &long, "../../bin/passwd").unwrap();
        let mut out = Vec::new();
        give_to(&b.into_inner().unwrap()[..], &mut out, 1004, 1005).unwrap();
        let mut a = tar::Archive::new(&out[..]);
        let mut seen = Vec::new();
        for e in a.entries().unwrap() {
            let mut e = e.unwrap();
            let h = e.header().clone();
            assert_eq!((h.uid().unwrap(), h.gid().unwrap()), (1004, 1005));
            let path = e.path().unwrap().display().to_string();
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            if path == "usr/bin/passwd" {
                assert_eq!(h.mode().unwrap(), 0o755, "the set-uid bit went");
                assert_eq!(data, b"elf");
            }
            if path == long {
                assert_eq!(
                    e.link_name().unwrap().unwrap().to_str(),
                    Some("../../bin/passwd")
                );
            }
            seen.push(path);
        }
        assert_eq!(seen, ["etc/", "usr/bin/passwd", long.as_str()]);
    }

    /// A PAX `size` record that differs from the header's field (how a file of 8 GiB or
    /// more is written, or a forged one): what goes on says the size that was really read,
    /// so nothing of the content can be taken for entries; devices stay out.
    #[test]
    fn the_size_read_is_the_size_written_and_devices_stay_out() {
        let mut b = tar::Builder::new(Vec::new());
        b.append_pax_extensions([("size", &b"600"[..])]).unwrap();
        let mut h = tar::Header::new_ustar();
        h.set_size(0);
        h.set_mode(0o644);
        h.set_path("big").unwrap();
        h.set_cksum();
        b.append(&h, &[b'x'; 600][..]).unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Block);
        h.set_size(0);
        h.set_mode(0o666);
        b.append_data(&mut h, "dev/sda", &[][..]).unwrap();
        let mut out = Vec::new();
        give_to(&b.into_inner().unwrap()[..], &mut out, 1004, 1004).unwrap();
        let mut a = tar::Archive::new(&out[..]);
        let got: Vec<(String, u64)> = a
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.path().unwrap().display().to_string(),
                    e.header().size().unwrap(),
                )
            })
            .collect();
        assert_eq!(got, [("big".to_string(), 600)]);
    }

    #[test]
    fn a_record_is_per_user_and_image() {
        let base = format!("sha256:{}", "a".repeat(64));
        let r = record(Path::new(DIR), 1004, &base);
        assert_eq!(r, Path::new(DIR).join(format!("1004-{}", "a".repeat(64))));
    }
}
