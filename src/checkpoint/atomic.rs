//! Crash-safe directory writes: build a whole folder beside the target, then rename it in.
//!
//! Key decision: a checkpoint folder is only ever *renamed* into its final path, never
//! written there file by file. [`write_dir_atomically`] hands the caller a fresh sibling
//! directory `.<name>.tmp-<pid>-<n>` (same filesystem, so `rename` is atomic), fsyncs
//! every file in it, and then moves it to the target. An existing target is first
//! renamed aside to `.<name>.old-<pid>-<n>` and removed only after the new folder is in
//! place, so at every instant the target path holds either the complete old folder,
//! the complete new one, or nothing — never a half-written one. (A true atomic swap
//! would need `renameat2(RENAME_EXCHANGE)`, which is Linux-only and outside std.)

use crate::error::{Error, Result};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Distinguishes concurrent writes from one process (threads saving different targets).
static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// Writes a directory at `target` atomically: `fill` writes the contents into the
/// temporary directory it is given; only if it succeeds is that directory fsynced and
/// renamed to `target`, replacing any previous folder there wholly.
///
/// If `fill` fails, the temporary directory is removed and `target` is left untouched.
pub fn write_dir_atomically<F>(target: &Path, fill: F) -> Result<()>
where
    F: FnOnce(&Path) -> Result<()>,
{
    let name = target
        .file_name()
        .ok_or_else(|| {
            Error::Invalid(format!(
                "{}: a checkpoint target needs a final path component",
                target.display()
            ))
        })?
        .to_string_lossy()
        .into_owned();
    let parent = match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    fs::create_dir_all(&parent).map_err(|e| Error::io(&parent, e))?;
    if let Ok(meta) = fs::symlink_metadata(target) {
        if meta.is_file() {
            return Err(Error::checkpoint(
                target,
                "exists and is a file, not a directory; refusing to replace it",
            ));
        }
    }
    let tag = format!(
        "{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    let tmp = parent.join(format!(".{name}.tmp-{tag}"));
    if tmp.exists() {
        fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    }
    fs::create_dir(&tmp).map_err(|e| Error::io(&tmp, e))?;

    let filled = fill(&tmp).and_then(|()| sync_tree(&tmp));
    if let Err(e) = filled {
        let _ = fs::remove_dir_all(&tmp);
        return Err(e);
    }

    let old = parent.join(format!(".{name}.old-{tag}"));
    let had_old = fs::symlink_metadata(target).is_ok();
    if had_old {
        if let Err(e) = fs::rename(target, &old) {
            let _ = fs::remove_dir_all(&tmp);
            return Err(Error::io(target, e));
        }
    }
    if let Err(e) = fs::rename(&tmp, target) {
        if had_old {
            // Put the previous folder back so the target is not left empty.
            let _ = fs::rename(&old, target);
        }
        let _ = fs::remove_dir_all(&tmp);
        return Err(Error::io(target, e));
    }
    sync_dir(&parent)?;
    if had_old {
        let removed = match fs::symlink_metadata(&old) {
            Ok(m) if m.is_dir() => fs::remove_dir_all(&old),
            _ => fs::remove_file(&old),
        };
        removed.map_err(|e| Error::io(&old, e))?;
    }
    Ok(())
}

/// Writes the file `path` atomically: `fill` writes into a temporary sibling
/// (`.<name>.tmp-<pid>-<n>`), which is fsynced and renamed over `path`, then the folder
/// is fsynced. `path` holds either its old contents or the complete new ones; if `fill`
/// or any step fails the temporary file is removed and `path` is untouched. Missing
/// parent folders are created.
pub fn write_file_atomically<F>(path: &Path, fill: F) -> Result<()>
where
    F: FnOnce(&mut std::io::BufWriter<fs::File>) -> Result<()>,
{
    let name = path
        .file_name()
        .ok_or_else(|| Error::Invalid(format!("{}: not a file path", path.display())))?
        .to_string_lossy()
        .into_owned();
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    fs::create_dir_all(&parent).map_err(|e| Error::io(&parent, e))?;
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let tmp = parent.join(format!(".{name}.tmp-{}-{n}", std::process::id()));
    let written = (|| {
        let file = fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
        let mut w = std::io::BufWriter::new(file);
        fill(&mut w)?;
        let file = w
            .into_inner()
            .map_err(|e| Error::io(&tmp, e.into_error()))?;
        file.sync_all().map_err(|e| Error::io(&tmp, e))?;
        fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written?;
    sync_dir(&parent)
}

/// [`write_file_atomically`] of a byte buffer.
pub fn write_bytes_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    write_file_atomically(path, |w| w.write_all(bytes).map_err(|e| Error::io(path, e)))
}

/// Fsyncs every regular file under `dir` (recursively), then each directory itself.
fn sync_tree(dir: &Path) -> Result<()> {
    for entry in fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let path = entry.path();
        let kind = entry.file_type().map_err(|e| Error::io(&path, e))?;
        if kind.is_dir() {
            sync_tree(&path)?;
        } else if kind.is_file() {
            let f = fs::File::open(&path).map_err(|e| Error::io(&path, e))?;
            f.sync_all().map_err(|e| Error::io(&path, e))?;
        }
    }
    sync_dir(dir)
}

/// Fsyncs a directory so renames and new entries in it are durable (a no-op where
/// directories cannot be opened, e.g. Windows).
fn sync_dir(dir: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        let f = fs::File::open(dir).map_err(|e| Error::io(dir, e))?;
        f.sync_all().map_err(|e| Error::io(dir, e))?;
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "smelt-atomic-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn replaces_existing_folder_wholly() {
        let root = tmpdir();
        let target = root.join("ckpt");
        fs::create_dir_all(&target).unwrap();
        fs::write(target.join("stale.txt"), "old").unwrap();
        write_dir_atomically(&target, |d| {
            fs::write(d.join("new.txt"), "new").map_err(|e| Error::io(d, e))
        })
        .unwrap();
        assert!(!target.join("stale.txt").exists());
        assert_eq!(fs::read_to_string(target.join("new.txt")).unwrap(), "new");
        // No temp or old folders are left beside it.
        let leftovers: Vec<_> = fs::read_dir(&root)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(leftovers, vec![std::ffi::OsString::from("ckpt")]);
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn failing_fill_leaves_previous_folder_untouched() {
        let root = tmpdir();
        let target = root.join("ckpt");
        fs::create_dir_all(&target).unwrap();
        fs::write(target.join("keep.txt"), "old").unwrap();
        let err = write_dir_atomically(&target, |d| {
            fs::write(d.join("partial.txt"), "half").unwrap();
            Err(Error::Invalid("simulated failure".into()))
        })
        .unwrap_err();
        assert!(err.to_string().contains("simulated failure"));
        assert_eq!(fs::read_to_string(target.join("keep.txt")).unwrap(), "old");
        assert!(!target.join("partial.txt").exists());
        assert_eq!(fs::read_dir(&root).unwrap().count(), 1);
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn refuses_to_replace_a_file() {
        let root = tmpdir();
        let target = root.join("ckpt");
        fs::write(&target, "x").unwrap();
        let err = write_dir_atomically(&target, |_| Ok(()))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("ckpt") && err.contains("not a directory"),
            "{err}"
        );
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn file_writes_replace_whole_or_not_at_all() {
        let dir = tmpdir();
        let path = dir.join("sub").join("f.json");
        write_bytes_atomically(&path, b"old").unwrap();
        let failed = write_file_atomically(&path, |w| {
            use std::io::Write;
            w.write_all(b"half").unwrap();
            Err(Error::Invalid("boom".into()))
        });
        assert!(failed.is_err());
        assert_eq!(fs::read(&path).unwrap(), b"old");
        write_bytes_atomically(&path, b"new").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"new");
        let leftovers = fs::read_dir(dir.join("sub")).unwrap().count();
        assert_eq!(leftovers, 1, "no temporary file is left behind");
        fs::remove_dir_all(&dir).unwrap();
    }
}
