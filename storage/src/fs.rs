//! The filesystem backend, the embedded default: one file per blob under a
//! root directory, the key's segments as directories.
//!
//! Crash safety comes from the usual sequence: a put writes a temp file in
//! `<root>/.tmp` (same filesystem, so `rename` is atomic), `fsync`s it,
//! renames it into place and `fsync`s the directories whose entries changed.
//! A reader therefore sees either no blob or the whole blob, and a blob whose
//! put returned survives a power loss. Temp files of puts that failed or were
//! dropped are removed at once; those of a killed process by
//! [`Backend::sweep_partial`].
//!
//! One difference from S3: a key cannot hold a blob and also be the prefix
//! of other keys (`a` and `a/b`), since `a` is then a directory. Keys made
//! of ids never do that; a put onto such a key fails as `Unavailable`.

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
use tokio_util::io::ReaderStream;

use crate::{Backend, BackendError, BlobInfo, BlobKey, ByteRange, ByteStream};

/// Where puts and copies stage their files. A dot name: [`BlobKey::validate`]
/// refuses dot segments, so no key can reach it, and listings skip it.
const TMP_DIR: &str = ".tmp";
/// Read size for gets: large enough that a 1 GiB read is not dominated by
/// per-read overhead (each read is a blocking-pool round trip in tokio).
const READ_CHUNK: usize = 256 * 1024;
/// A put whose rename finds a parent directory gone (a concurrent delete
/// pruned it after we created it) recreates it and tries again.
const INSTALL_ATTEMPTS: usize = 5;

#[derive(Debug, Clone)]
pub struct FsBackend {
    root: PathBuf,
    tmp: PathBuf,
}

impl FsBackend {
    /// Opens (and creates, if missing) the root directory.
    pub async fn open(root: impl AsRef<Path>) -> Result<Self, BackendError> {
        let root = root.as_ref().to_path_buf();
        blocking(move || {
            std::fs::create_dir_all(&root).map_err(|e| ctx(e, "create storage root", &root))?;
            // Canonical, so `describe` shows where the bytes really are and
            // a relative root does not depend on a later working directory.
            let root = root
                .canonicalize()
                .map_err(|e| ctx(e, "resolve storage root", &root))?;
            let tmp = root.join(TMP_DIR);
            std::fs::create_dir_all(&tmp).map_err(|e| ctx(e, "create temp dir", &tmp))?;
            Ok(Self { root, tmp })
        })
        .await
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, key: &BlobKey) -> Result<PathBuf, BackendError> {
        // The one check that keeps keys inside the root: no empty, dot or
        // dot-dot segment, no leading `/`, no backslash or NUL.
        key.validate()?;
        Ok(self.root.join(key.as_str()))
    }

    fn temp_path(&self, what: &str) -> PathBuf {
        self.tmp.join(format!("{what}-{}", uuid::Uuid::new_v4()))
    }
}

#[async_trait::async_trait]
impl Backend for FsBackend {
    async fn put(
        &self,
        key: &BlobKey,
        mut body: ByteStream,
        size_hint: Option<u64>,
    ) -> Result<u64, BackendError> {
        let dest = self.path(key)?;
        let temp = TempFile(self.temp_path("put"));
        let mut file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temp.0)
            .await
            .map_err(|e| ctx(e, "create temp file", &temp.0))?;
        let mut written: u64 = 0;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(BackendError::Body)?;
            file.write_all(&chunk)
                .await
                .map_err(|e| ctx(e, "write temp file", &temp.0))?;
            written += chunk.len() as u64;
        }
        check_length(size_hint, written)?;
        file.flush()
            .await
            .map_err(|e| ctx(e, "write temp file", &temp.0))?;
        file.sync_all()
            .await
            .map_err(|e| ctx(e, "fsync temp file", &temp.0))?;
        drop(file);
        let root = self.root.clone();
        let from = temp.0.clone();
        blocking(move || install(&root, &from, &dest)).await?;
        // `temp` is dropped here: its unlink finds nothing, the file is in place.
        Ok(written)
    }

    async fn get(
        &self,
        key: &BlobKey,
        range: Option<ByteRange>,
    ) -> Result<ByteStream, BackendError> {
        let path = self.path(key)?;
        let mut file = tokio::fs::File::open(&path)
            .await
            .map_err(|e| not_found_or(e, "open blob", &path))?;
        let meta = file
            .metadata()
            .await
            .map_err(|e| ctx(e, "stat blob", &path))?;
        if !meta.is_file() {
            // A key that names one of our directories holds no blob.
            return Err(BackendError::NotFound);
        }
        let Some(range) = range else {
            return Ok(Box::pin(ReaderStream::with_capacity(file, READ_CHUNK)));
        };
        if range.start > range.end || range.end > meta.len() {
            return Err(BackendError::InvalidRange(format!(
                "bytes {}..{} of a blob of {} bytes",
                range.start,
                range.end,
                meta.len()
            )));
        }
        file.seek(io::SeekFrom::Start(range.start))
            .await
            .map_err(|e| ctx(e, "seek blob", &path))?;
        Ok(Box::pin(ReaderStream::with_capacity(
            file.take(range.len()),
            READ_CHUNK,
        )))
    }

    async fn copy(&self, from: &BlobKey, to: &BlobKey) -> Result<(), BackendError> {
        let src = self.path(from)?;
        let dest = self.path(to)?;
        let temp = TempFile(self.temp_path("copy"));
        let root = self.root.clone();
        let staged = temp.0.clone();
        blocking(move || {
            let meta = std::fs::metadata(&src).map_err(|e| not_found_or(e, "stat blob", &src))?;
            if !meta.is_file() {
                return Err(BackendError::NotFound);
            }
            // Blobs are never modified in place, so a second name for the
            // same inode is a copy, made in O(1) without moving any bytes.
            if let Err(link_err) = std::fs::hard_link(&src, &staged) {
                if link_err.kind() == io::ErrorKind::NotFound {
                    return Err(BackendError::NotFound);
                }
                // No hard links here (some network and FUSE filesystems):
                // copy the bytes, and make them durable before the rename.
                std::fs::copy(&src, &staged).map_err(|e| not_found_or(e, "copy blob", &src))?;
                std::fs::File::open(&staged)
                    .and_then(|f| f.sync_all())
                    .map_err(|e| ctx(e, "fsync copied blob", &staged))?;
            }
            install(&root, &staged, &dest)
        })
        .await
        // `temp` is dropped here. After a copy onto itself the rename was a
        // no-op (same inode) and this unlink removes the extra link.
    }

    async fn delete(&self, key: &BlobKey) -> Result<(), BackendError> {
        let path = self.path(key)?;
        let root = self.root.clone();
        blocking(move || {
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                // One of our directories: it is no blob, so there is none to delete.
                Err(e) if e.kind() == io::ErrorKind::IsADirectory || path.is_dir() => {
                    return Ok(());
                }
                Err(e) => return Err(ctx(e, "remove blob", &path)),
            }
            // Prune directories the delete left empty, best effort, so that
            // deleted tenants and buckets leave no trees behind. A put racing
            // with this recreates what it needs (see `install`).
            let mut dir = path.parent();
            while let Some(d) = dir {
                if d == root || !d.starts_with(&root) || std::fs::remove_dir(d).is_err() {
                    break;
                }
                dir = d.parent();
            }
            Ok(())
        })
        .await
    }

    async fn list(
        &self,
        prefix: &str,
        after: Option<&BlobKey>,
        limit: usize,
    ) -> Result<Vec<BlobInfo>, BackendError> {
        let root = self.root.clone();
        let prefix = prefix.to_owned();
        let after = after.map(|a| a.as_str().to_owned());
        blocking(move || {
            let mut out = Vec::new();
            if limit > 0 {
                let filter = ListFilter {
                    prefix: &prefix,
                    after: after.as_deref(),
                    limit,
                };
                walk(&root, "", &filter, &mut out).map_err(|e| ctx(e, "list", &root))?;
            }
            Ok(out)
        })
        .await
    }

    async fn check(&self) -> Result<(), BackendError> {
        let probe = TempFile(self.temp_path("check"));
        let root = self.root.clone();
        let path = probe.0.clone();
        blocking(move || {
            if !std::fs::metadata(&root)
                .map_err(|e| ctx(e, "stat storage root", &root))?
                .is_dir()
            {
                return Err(BackendError::Unavailable(format!(
                    "storage root {} is not a directory",
                    root.display()
                )));
            }
            // Writable, really: permissions, a read-only mount and a full
            // disk all show here, not on the first upload.
            std::fs::write(&path, b"strata storage check")
                .map_err(|e| ctx(e, "write probe file", &path))?;
            Ok(())
        })
        .await
    }

    fn describe(&self) -> String {
        format!("file://{}", self.root.display())
    }

    async fn sweep_partial(&self, older_than: Duration) -> Result<u64, BackendError> {
        let tmp = self.tmp.clone();
        blocking(move || {
            let cutoff = SystemTime::now()
                .checked_sub(older_than)
                .unwrap_or(UNIX_EPOCH);
            let mut removed = 0;
            let entries = std::fs::read_dir(&tmp).map_err(|e| ctx(e, "read temp dir", &tmp))?;
            for entry in entries {
                let entry = entry.map_err(|e| ctx(e, "read temp dir", &tmp))?;
                let Ok(meta) = entry.metadata() else {
                    continue; // removed meanwhile by the put that owned it
                };
                if meta.is_file()
                    && meta.modified().is_ok_and(|m| m < cutoff)
                    && std::fs::remove_file(entry.path()).is_ok()
                {
                    removed += 1;
                }
            }
            Ok(removed)
        })
        .await
    }
}

/// A staged file, unlinked when dropped: on success it was renamed away and
/// the unlink finds nothing; on an error, or when the put's future is dropped
/// (client gone), nothing is left behind.
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        // One unlink: cheap enough to run on an async worker thread.
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Moves a staged, fsynced file to `dest`, creating its parent directories,
/// then fsyncs every directory from `dest`'s parent up to the root: the new
/// entry must be durable, and so must each directory on the way, whether this
/// put created it or a concurrent one did that has not fsynced it yet.
fn install(root: &Path, staged: &Path, dest: &Path) -> Result<(), BackendError> {
    let parent = dest
        .parent()
        .ok_or_else(|| BackendError::InvalidKey(format!("{} has no parent", dest.display())))?;
    let mut attempt = 0;
    loop {
        attempt += 1;
        std::fs::create_dir_all(parent).map_err(|e| ctx(e, "create directory", parent))?;
        match std::fs::rename(staged, dest) {
            Ok(()) => break,
            // A concurrent delete pruned a directory between our create and
            // our rename: create it again.
            Err(e) if e.kind() == io::ErrorKind::NotFound && attempt < INSTALL_ATTEMPTS => {}
            Err(e) => return Err(ctx(e, "rename into place", dest)),
        }
    }
    let mut dir = Some(parent);
    while let Some(d) = dir {
        if !d.starts_with(root) {
            break;
        }
        match std::fs::File::open(d).and_then(|f| f.sync_all()) {
            Ok(()) => {}
            // Pruned by a concurrent delete of the blob we just wrote: then
            // there is nothing left to make durable above it.
            Err(e) if e.kind() == io::ErrorKind::NotFound => break,
            Err(e) => return Err(ctx(e, "fsync directory", d)),
        }
        dir = d.parent();
    }
    Ok(())
}

struct ListFilter<'a> {
    prefix: &'a str,
    after: Option<&'a str>,
    limit: usize,
}

/// Depth-first walk in key order. Siblings are sorted with directories as
/// `name/`, which makes the walk's order the byte order of whole keys (`a-c`
/// comes before `a/b`, as `-` < `/`), and lets whole subtrees be skipped when
/// they cannot match the prefix or lie entirely before `after`.
fn walk(dir: &Path, rel: &str, f: &ListFilter<'_>, out: &mut Vec<BlobInfo>) -> io::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        // Pruned by a concurrent delete while we walked.
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let mut items: Vec<(String, bool)> = Vec::new();
    for entry in entries {
        let entry = entry?;
        // Non-UTF-8 and dot names are not blobs of ours (dot names: temp
        // files and directories).
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        if name.starts_with('.') {
            continue;
        }
        let file_type = entry.file_type()?;
        if file_type.is_dir() {
            items.push((format!("{rel}{name}/"), true));
        } else if file_type.is_file() {
            items.push((format!("{rel}{name}"), false));
        }
    }
    items.sort();
    for (full, is_dir) in items {
        if out.len() >= f.limit {
            break;
        }
        if is_dir {
            let reachable = full.starts_with(f.prefix) || f.prefix.starts_with(&full);
            // Every key below starts with `full`; if `full` sorts before
            // `after` and is not a prefix of it, so does every key below.
            let all_before = f
                .after
                .is_some_and(|a| full.as_str() < a && !a.starts_with(&full));
            if reachable && !all_before {
                let name = &full[rel.len()..full.len() - 1];
                walk(&dir.join(name), &full, f, out)?;
            }
        } else if full.starts_with(f.prefix) && f.after.is_none_or(|a| full.as_str() > a) {
            let name = &full[rel.len()..];
            let meta = match std::fs::metadata(dir.join(name)) {
                Ok(meta) => meta,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            let modified_unix = meta
                .modified()
                .ok()
                .and_then(|m| m.duration_since(UNIX_EPOCH).ok())
                .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
            out.push(BlobInfo {
                key: BlobKey::from_stored(full),
                size: meta.len(),
                modified_unix,
            });
        }
    }
    Ok(())
}

/// A body shorter or longer than the `Content-Length` it came with is a
/// broken body, not a blob.
pub(crate) fn check_length(size_hint: Option<u64>, received: u64) -> Result<(), BackendError> {
    match size_hint {
        Some(expected) if expected != received => Err(BackendError::Body(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("body has {received} bytes, {expected} announced"),
        ))),
        _ => Ok(()),
    }
}

fn ctx(e: io::Error, what: &str, path: &Path) -> BackendError {
    BackendError::Unavailable(format!("{what} {}: {e}", path.display()))
}

fn not_found_or(e: io::Error, what: &str, path: &Path) -> BackendError {
    if e.kind() == io::ErrorKind::NotFound {
        BackendError::NotFound
    } else {
        ctx(e, what, path)
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, BackendError> + Send + 'static,
) -> Result<T, BackendError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| BackendError::Unavailable(format!("storage task failed: {e}")))?
}
