//! A `docker save` archive from a place the user controls, checked on its way into root's
//! Docker: it must hold exactly the image whose id root vouched for (the id is the digest
//! of the image's config, and Docker checks every layer against that config; on Docker's
//! containerd image store it is the digest of the image's manifest, which names every
//! blob by its digest), and it may
//! change no tag (its `RepoTags`, `repositories` and index names are dropped, so loading
//! it touches no image name of anyone's). The check runs while the archive streams through;
//! the manifest is passed on last, after the check, so a failed check cuts the load off
//! before Docker keeps anything.

use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use thiserror::Error;

/// Why an archive was refused.
#[derive(Debug, Error)]
pub enum ArchiveError {
    /// It holds another image than the one vouched for.
    #[error("the archive holds image sha256:{found}, not {expected}: it was changed since it was saved (remove it from the image share and run again)")]
    OtherImage {
        /// The id root vouched for.
        expected: String,
        /// The digest of the archive's config.
        found: String,
    },
    /// It is not a `docker save` archive of one image.
    #[error("not a docker save archive of one image: {0}")]
    Malformed(String),
    /// It unpacks to more than the first node's signed size allows.
    #[error("the archive unpacks to more than {limit} bytes, the most a saved image of {image_size} bytes (the size the first node vouched for) may take: it was changed since it was saved (remove it from the image share and run again)")]
    OverSize {
        /// The bound, from [`most_bytes`].
        limit: u64,
        /// The image's size as vouched for.
        image_size: u64,
    },
    /// Reading or passing it on failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// The most bytes a `docker save` archive of an image of `image_size` bytes (unpacked, as
/// Docker counts it) may take: twice that (tar headers and padding of many small files),
/// plus 256 MiB. A forged archive that unpacks past it (a decompression bomb) is cut off
/// while it streams, before Docker has stored more than this.
pub fn most_bytes(image_size: u64) -> u64 {
    image_size.saturating_mul(2).saturating_add(256 << 20)
}

/// What root vouched for: the image's id and its size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vouched {
    /// `sha256:HEX`.
    pub id: String,
    /// Unpacked, in bytes, as Docker counts it on the first node.
    pub size: u64,
}

/// Files up to this size are hashed on the way (an image config is a few KiB; layers are
/// passed on unhashed, Docker checks them against the config).
const HASHED_UP_TO: u64 = 64 << 20;

/// The manifest and index are read whole; they are small.
const SMALL_FILE: u64 = 4 << 20;

/// Passes the archive `input` (a tar stream) on to `out`, checked to hold the image
/// `vouched` for, at most [`most_bytes`] of its size, and stripped of every tag.
pub fn pass_checked(
    input: impl Read,
    vouched: &Vouched,
    out: impl Write,
) -> Result<(), ArchiveError> {
    let limit = most_bytes(vouched.size);
    let over = std::rc::Rc::new(std::cell::Cell::new(false));
    let capped = Capped {
        inner: input,
        left: limit,
        over: over.clone(),
    };
    pass_capped(capped, &vouched.id, out).map_err(|e| match over.get() {
        true => ArchiveError::OverSize {
            limit,
            image_size: vouched.size,
        },
        false => e,
    })
}

/// [`pass_checked`]'s work, on a stream that fails past its bound.
fn pass_capped(input: impl Read, expected: &str, out: impl Write) -> Result<(), ArchiveError> {
    let malformed = |what: String| ArchiveError::Malformed(what);
    let mut archive = tar::Archive::new(input);
    let mut builder = tar::Builder::new(out);
    let mut digests: BTreeMap<String, String> = BTreeMap::new();
    let mut held: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for entry in archive.entries()? {
        let mut entry = entry?;
        let path = entry
            .path()?
            .to_string_lossy()
            .trim_start_matches("./")
            .to_string();
        if path.starts_with('/') || path.split('/').any(|c| c == "..") {
            return Err(malformed(format!("the path {path:?} leaves the archive")));
        }
        // A fresh header with the size the entry really has (a PAX record may say another
        // than the header's own field): what goes on is exactly what was read and checked.
        let size = entry.size();
        let mut header = fresh_header(&entry, size)?;
        match path.as_str() {
            "repositories" => continue,
            "manifest.json" | "index.json" => {
                if size > SMALL_FILE {
                    return Err(malformed(format!("{path} is {size} bytes")));
                }
                let mut text = Vec::new();
                entry.read_to_end(&mut text)?;
                held.insert(path, text);
                continue;
            }
            _ => {}
        }
        if header.entry_type().is_symlink() || header.entry_type().is_hard_link() {
            let target = entry
                .link_name()?
                .ok_or_else(|| malformed(format!("{path}: a link to nothing")))?
                .into_owned();
            builder.append_link(&mut header, &path, target)?;
        } else if header.entry_type().is_file() && size <= HASHED_UP_TO {
            let mut hashing = Hashing {
                inner: &mut entry,
                hash: Sha256::new(),
            };
            builder.append_data(&mut header, &path, &mut hashing)?;
            digests.insert(path, hex(&hashing.hash.finalize()));
        } else {
            builder.append_data(&mut header, &path, &mut entry)?;
        }
    }
    let manifest = held
        .remove("manifest.json")
        .ok_or_else(|| malformed("no manifest.json".into()))?;
    let index = held.remove("index.json");
    match (checked_manifest(&manifest, expected, &digests), &index) {
        (Ok(manifest), _) => {
            append_file(&mut builder, "manifest.json", &manifest)?;
            if let Some(index) = &index {
                append_file(&mut builder, "index.json", &untagged_index(index)?)?;
            }
        }
        // Docker's containerd image store: the id is the digest of the image's manifest,
        // which the OCI index names. The archive then goes in as an OCI layout alone (no
        // manifest.json that would make Docker build the image afresh under another id).
        (Err(e @ ArchiveError::OtherImage { .. }), Some(index)) => {
            match held_manifest(index, expected, &digests)? {
                Some(found) if Some(found.as_str()) == expected.strip_prefix("sha256:") => {
                    append_file(&mut builder, "index.json", &untagged_index(index)?)?;
                }
                Some(found) => {
                    let expected = expected.to_string();
                    return Err(ArchiveError::OtherImage { expected, found });
                }
                None => return Err(e),
            }
        }
        (Err(e), _) => return Err(e),
    }
    builder.into_inner()?.flush()?;
    Ok(())
}

/// A GNU header for `entry` (its kind, mode and time; owner root) of `size` bytes: only
/// files, folders and links pass, anything else (devices, FIFOs, sparse files) is refused.
pub(crate) fn fresh_header<R: Read>(
    entry: &tar::Entry<R>,
    size: u64,
) -> Result<tar::Header, std::io::Error> {
    let old = entry.header();
    let kind = match old.entry_type() {
        tar::EntryType::Regular | tar::EntryType::Continuous => tar::EntryType::Regular,
        k @ (tar::EntryType::Directory | tar::EntryType::Symlink | tar::EntryType::Link) => k,
        other => {
            return Err(std::io::Error::other(format!(
                "an entry of kind {other:?}, neither a file, a folder nor a link"
            )))
        }
    };
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(kind);
    header.set_size(if kind == tar::EntryType::Regular {
        size
    } else {
        0
    });
    header.set_mode(old.mode().unwrap_or(0o644) & 0o7777);
    header.set_mtime(old.mtime().unwrap_or(0));
    header.set_uid(0);
    header.set_gid(0);
    Ok(header)
}

/// When the OCI `index.json` names one image, `expected`: the digest of what the archive
/// holds under that name (containerd then checks every blob below it by its digest).
fn held_manifest(
    text: &[u8],
    expected: &str,
    digests: &BTreeMap<String, String>,
) -> Result<Option<String>, ArchiveError> {
    let malformed = |what: &str| ArchiveError::Malformed(format!("index.json: {what}"));
    let index: serde_json::Value =
        serde_json::from_slice(text).map_err(|e| malformed(&e.to_string()))?;
    let images = index
        .get("manifests")
        .and_then(|m| m.as_array())
        .ok_or_else(|| malformed("no manifests"))?;
    let [image] = images.as_slice() else {
        return Err(malformed(&format!("{} images, not one", images.len())));
    };
    let named = image.get("digest").and_then(|d| d.as_str());
    if named != Some(expected) {
        return Ok(None);
    }
    let path = format!("blobs/{}", expected.replacen(':', "/", 1));
    let held = digests
        .get(&path)
        .ok_or_else(|| malformed(&format!("its image {path} is not in the archive")))?;
    Ok(Some(held.clone()))
}

/// The manifest, checked to name one image whose config is `expected`, without its tags.
fn checked_manifest(
    text: &[u8],
    expected: &str,
    digests: &BTreeMap<String, String>,
) -> Result<Vec<u8>, ArchiveError> {
    let malformed = |what: &str| ArchiveError::Malformed(format!("manifest.json: {what}"));
    let mut manifest: serde_json::Value =
        serde_json::from_slice(text).map_err(|e| malformed(&e.to_string()))?;
    let images = manifest
        .as_array_mut()
        .ok_or_else(|| malformed("not a list"))?;
    let [image] = images.as_mut_slice() else {
        return Err(malformed(&format!("{} images, not one", images.len())));
    };
    let config = image
        .get("Config")
        .and_then(|c| c.as_str())
        .ok_or_else(|| malformed("no Config"))?;
    let found = digests
        .get(config.trim_start_matches("./"))
        .ok_or_else(|| malformed(&format!("its Config {config} is not in the archive")))?;
    let want = expected.strip_prefix("sha256:").unwrap_or(expected);
    if found != want {
        return Err(ArchiveError::OtherImage {
            expected: expected.to_string(),
            found: found.clone(),
        });
    }
    image["RepoTags"] = serde_json::Value::Null;
    serde_json::to_vec(&manifest).map_err(|e| malformed(&e.to_string()))
}

/// An OCI `index.json` without the annotations that name its images.
fn untagged_index(text: &[u8]) -> Result<Vec<u8>, ArchiveError> {
    let malformed = |e: serde_json::Error| ArchiveError::Malformed(format!("index.json: {e}"));
    let mut index: serde_json::Value = serde_json::from_slice(text).map_err(malformed)?;
    if let Some(all) = index.get_mut("manifests").and_then(|m| m.as_array_mut()) {
        for m in all.iter_mut().filter_map(|m| m.as_object_mut()) {
            m.remove("annotations");
        }
    }
    serde_json::to_vec(&index).map_err(malformed)
}

fn append_file<W: Write>(
    builder: &mut tar::Builder<W>,
    path: &str,
    content: &[u8],
) -> std::io::Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_size(content.len() as u64);
    header.set_mode(0o644);
    header.set_entry_type(tar::EntryType::Regular);
    builder.append_data(&mut header, path, content)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A reader that fails once more than `left` bytes passed, and says so in `over` (the tar
/// reader wraps the error it gets in one of its own).
struct Capped<R> {
    inner: R,
    left: u64,
    over: std::rc::Rc<std::cell::Cell<bool>>,
}

impl<R: Read> Read for Capped<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n as u64 > self.left {
            self.over.set(true);
            return Err(std::io::Error::other("over the archive's bound"));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// A reader that hashes what passes through it.
struct Hashing<'a, R> {
    inner: &'a mut R,
    hash: Sha256,
}

impl<R: Read> Read for Hashing<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Root's word for image `id` of 1 MiB.
    fn vouched(id: &str) -> Vouched {
        Vouched {
            id: id.to_string(),
            size: 1 << 20,
        }
    }

    #[test]
    fn an_archive_that_unpacks_past_the_signed_size_is_cut_off_while_it_streams() {
        let (_, id) = archive(b"{}", &[], 1);
        let small = Vouched { id, size: 1000 };
        let limit = most_bytes(small.size);
        assert_eq!(limit, 2000 + (256 << 20));
        let mut header = tar::Header::new_gnu();
        header.set_size(limit);
        header.set_entry_type(tar::EntryType::Regular);
        header.set_path("abc/layer.tar").unwrap();
        header.set_cksum();
        let bomb = std::io::Read::chain(&header.as_bytes()[..], std::io::repeat(0).take(limit));
        let mut passed = Counted(0);
        let err = pass_checked(bomb, &small, &mut passed).unwrap_err();
        assert!(
            matches!(err, ArchiveError::OverSize { limit: l, image_size: 1000 } if l == limit),
            "{err}"
        );
        assert!(
            err.to_string().contains("remove it from the image share"),
            "{err}"
        );
        assert!(passed.0 <= limit, "{} bytes passed on", passed.0);
    }

    /// T1 of the review: a PAX `size` record that differs from the header's own field. What
    /// goes on to Docker carries the size that was really read and checked, so no hidden
    /// entry (an `index.json` naming someone's image) can ride in a file's content.
    #[test]
    fn what_goes_on_has_the_size_that_was_read() {
        let (good, id) = archive(br#"{"rootfs":{}}"#, &[], 1);
        let mut b = tar::Builder::new(Vec::new());
        b.append_pax_extensions([("size", &b"1024"[..])]).unwrap();
        let mut h = tar::Header::new_ustar();
        h.set_size(0);
        h.set_mode(0o644);
        h.set_path("abc/extra").unwrap();
        h.set_cksum();
        b.append(&h, &[b'x'; 1024][..]).unwrap();
        let mut forged = b.into_inner().unwrap();
        forged.truncate(forged.len() - 1024); // drop the end-of-archive blocks
        forged.extend_from_slice(&good);
        let mut out = Vec::new();
        pass_checked(&forged[..], &vouched(&id), &mut out).unwrap();
        let mut a = tar::Archive::new(&out[..]);
        let extra = a
            .entries()
            .unwrap()
            .map(|e| e.unwrap())
            .find(|e| e.path().unwrap().to_str() == Some("abc/extra"))
            .unwrap();
        assert_eq!(extra.header().size().unwrap(), 1024);
        // Devices never pass.
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Char);
        h.set_size(0);
        b.append_data(&mut h, "dev/null", &[][..]).unwrap();
        assert!(pass_checked(&b.into_inner().unwrap()[..], &vouched(&id), Vec::new()).is_err());
    }

    /// A sink that counts what it is given.
    struct Counted(u64);

    impl Write for Counted {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len() as u64;
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// A small `docker save`-like archive: a config, a layer, tags everywhere.
    fn archive(config: &[u8], tags: &[&str], images: usize) -> (Vec<u8>, String) {
        let id = format!("sha256:{}", hex(&Sha256::digest(config)));
        let name = format!("{}.json", id.trim_start_matches("sha256:"));
        let mut b = tar::Builder::new(Vec::new());
        append_file(&mut b, &name, config).unwrap();
        append_file(&mut b, "abc/layer.tar", &[7u8; 3000]).unwrap();
        let one =
            serde_json::json!({"Config": name, "RepoTags": tags, "Layers": ["abc/layer.tar"]});
        let manifest = serde_json::Value::Array(vec![one; images]);
        append_file(&mut b, "manifest.json", manifest.to_string().as_bytes()).unwrap();
        append_file(&mut b, "repositories", br#"{"ubuntu":{"22.04":"abc"}}"#).unwrap();
        (b.into_inner().unwrap(), id)
    }

    /// A `docker save` archive from Docker's containerd image store: an OCI layout whose
    /// index names the manifest (the image's id), with a manifest.json beside it. The
    /// manifest blob holds `manifest` under the name `named` (default: its digest, the id
    /// returned).
    fn oci_archive(manifest: &[u8], named: Option<&str>) -> (Vec<u8>, String) {
        let id = format!("sha256:{}", hex(&Sha256::digest(manifest)));
        let named = named.unwrap_or(&id);
        let mut b = tar::Builder::new(Vec::new());
        let blob = format!("blobs/sha256/{}", named.trim_start_matches("sha256:"));
        append_file(&mut b, &blob, manifest).unwrap();
        append_file(&mut b, "blobs/sha256/c0ffee", b"{}").unwrap();
        let index = serde_json::json!({"schemaVersion": 2, "manifests": [{"digest": named,
            "annotations": {"io.containerd.image.name": "docker.io/library/other:1"}}]});
        append_file(&mut b, "index.json", index.to_string().as_bytes()).unwrap();
        let compat =
            serde_json::json!([{"Config": "blobs/sha256/c0ffee", "RepoTags": ["other:1"]}]);
        append_file(&mut b, "manifest.json", compat.to_string().as_bytes()).unwrap();
        (b.into_inner().unwrap(), id)
    }

    #[test]
    fn a_containerd_store_archive_passes_by_its_manifest_digest_as_an_oci_layout_alone() {
        let (tar_bytes, id) = oci_archive(br#"{"config":{}}"#, None);
        let mut out = Vec::new();
        pass_checked(&tar_bytes[..], &vouched(&id), &mut out).unwrap();
        let got = files(&out);
        assert!(
            !got.contains_key("manifest.json"),
            "Docker would rebuild the image"
        );
        let index: serde_json::Value = serde_json::from_slice(&got["index.json"]).unwrap();
        assert_eq!(index["manifests"][0]["digest"], id.as_str());
        assert_eq!(
            index["manifests"][0]["annotations"],
            serde_json::Value::Null
        );
    }

    #[test]
    fn a_containerd_store_archive_with_a_changed_manifest_or_another_image_is_refused() {
        let (good, id) = oci_archive(br#"{"config":{}}"#, None);
        // The manifest changed under the vouched name: its digest is another.
        let (changed, other) = oci_archive(br#"{"config":{"evil":1}}"#, Some(&id));
        let err = pass_checked(&changed[..], &vouched(&id), Vec::new()).unwrap_err();
        let found = other.trim_start_matches("sha256:").to_string();
        assert!(
            matches!(&err, ArchiveError::OtherImage { found: f, .. } if *f == found),
            "{err}"
        );
        // Another image altogether.
        let err = pass_checked(&good[..], &vouched(&other), Vec::new()).unwrap_err();
        assert!(matches!(err, ArchiveError::OtherImage { .. }), "{err}");
    }

    fn files(tar_bytes: &[u8]) -> BTreeMap<String, Vec<u8>> {
        let mut a = tar::Archive::new(tar_bytes);
        a.entries()
            .unwrap()
            .map(|e| {
                let mut e = e.unwrap();
                let mut v = Vec::new();
                e.read_to_end(&mut v).unwrap();
                (e.path().unwrap().to_string_lossy().into_owned(), v)
            })
            .collect()
    }

    #[test]
    fn the_vouched_image_passes_without_any_tag() {
        let (tar_bytes, id) = archive(br#"{"rootfs":{}}"#, &["ubuntu:22.04"], 1);
        let mut out = Vec::new();
        pass_checked(&tar_bytes[..], &vouched(&id), &mut out).unwrap();
        let got = files(&out);
        assert!(!got.contains_key("repositories"));
        assert_eq!(got["abc/layer.tar"], vec![7u8; 3000]);
        let manifest: serde_json::Value = serde_json::from_slice(&got["manifest.json"]).unwrap();
        assert_eq!(manifest[0]["RepoTags"], serde_json::Value::Null);
        assert_eq!(manifest[0]["Layers"][0], "abc/layer.tar");
    }

    #[test]
    fn another_image_or_two_images_or_an_escaping_path_are_refused() {
        let (tar_bytes, _) = archive(br#"{"evil":1}"#, &["ubuntu:22.04"], 1);
        let (_, wanted) = archive(br#"{"rootfs":{}}"#, &[], 1);
        let err = pass_checked(&tar_bytes[..], &vouched(&wanted), Vec::new()).unwrap_err();
        assert!(matches!(err, ArchiveError::OtherImage { .. }), "{err}");
        assert!(err.to_string().contains(&wanted), "{err}");
        let (two, id) = archive(b"{}", &[], 2);
        let err = pass_checked(&two[..], &vouched(&id), Vec::new()).unwrap_err();
        assert!(err.to_string().contains("2 images, not one"), "{err}");
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(1);
        h.set_entry_type(tar::EntryType::Regular);
        // `append_data` refuses `..`; the raw name is written as an attacker would.
        h.as_gnu_mut().unwrap().name[..9].copy_from_slice(b"../escape");
        h.set_cksum();
        b.append(&h, &b"x"[..]).unwrap();
        let err =
            pass_checked(&b.into_inner().unwrap()[..], &vouched(&id), Vec::new()).unwrap_err();
        assert!(err.to_string().contains("leaves the archive"), "{err}");
    }
}
