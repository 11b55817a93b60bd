//! How the program writes files: whole or not at all.
//!
//! Every file and folder the workbench writes (runs, checkpoints, caches, sessions, configs,
//! exports) is first written under a fresh temporary name in the same folder, then renamed into
//! place, so a crash or a full disk never leaves a half-written file where a reader expects a
//! whole one. The temporary names come from `tempfile` (unique per call, so two files such as
//! `a.json` and `a.jsonl` never share one), and a temporary that is not renamed is removed.

use std::io::Write;
use std::path::{Path, PathBuf};

/// A file or folder that could not be written, with the path a user recognises.
#[derive(Debug, thiserror::Error)]
#[error("{}: cannot write: {source}", path.display())]
pub struct WriteError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

impl WriteError {
    fn at(path: &Path) -> impl FnOnce(std::io::Error) -> WriteError + '_ {
        move |source| WriteError {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// The folder `path` is in (`.` for a bare file name), created if missing.
fn parent_of(path: &Path) -> Result<&Path, WriteError> {
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(WriteError::at(parent))?;
    Ok(parent)
}

/// Writes `bytes` to `path` atomically (creating its folder if needed).
pub fn write(path: &Path, bytes: impl AsRef<[u8]>) -> Result<(), WriteError> {
    write_with(path, |f| {
        f.write_all(bytes.as_ref()).map_err(WriteError::at(path))
    })
}

/// Writes `path` atomically through `fill`, for writers that stream (Parquet, large JSONL);
/// `fill`'s own error passes through, and the temporary is removed. The file is synced before
/// the rename so the rename never exposes unwritten data.
pub fn write_with<E: From<WriteError>>(
    path: &Path,
    fill: impl FnOnce(&mut std::fs::File) -> Result<(), E>,
) -> Result<(), E> {
    let parent = parent_of(path)?;
    let mut builder = tempfile::Builder::new();
    builder.prefix(".").suffix(".tmp");
    // tempfile creates files readable by the owner only; the files we write are ordinary user
    // files, so they get the usual mode (the umask still applies).
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        builder.permissions(std::fs::Permissions::from_mode(0o666));
    }
    let mut tmp = builder.tempfile_in(parent).map_err(WriteError::at(path))?;
    fill(tmp.as_file_mut())?;
    tmp.as_file().sync_all().map_err(WriteError::at(path))?;
    tmp.persist(path)
        .map_err(|e| WriteError::at(path)(e.error))?;
    Ok(())
}

/// A fresh, empty folder beside `out` (same file system, so [`replace_dir`] is one rename).
/// Removed when dropped unless it was moved into place.
pub fn temp_dir_beside(out: &Path) -> Result<tempfile::TempDir, WriteError> {
    let parent = parent_of(out)?;
    tempfile::Builder::new()
        .prefix(".")
        .suffix(".tmp")
        .tempdir_in(parent)
        .map_err(WriteError::at(out))
}

/// Moves the finished folder `tmp` to `out`. An existing `out` is first moved aside and removed
/// only after the rename, so a failure at any point leaves either the old or the new folder.
pub fn replace_dir(tmp: tempfile::TempDir, out: &Path) -> Result<(), WriteError> {
    // The old folder waits inside a temporary folder of its own, which takes it away when
    // dropped, once the new one is in place.
    let aside = if out.exists() {
        let holder = temp_dir_beside(out)?;
        let old = holder.path().join("old");
        std::fs::rename(out, &old).map_err(WriteError::at(out))?;
        Some((holder, old))
    } else {
        None
    };
    if let Err(source) = std::fs::rename(tmp.path(), out) {
        if let Some((_, old)) = &aside {
            let _ = std::fs::rename(old, out);
        }
        return Err(WriteError {
            path: out.to_path_buf(),
            source,
        });
    }
    // Moved: nothing is left at the temporary path for its drop to remove.
    let _ = tmp.keep();
    Ok(())
}

/// Makes `dst` the same file as `src`, replacing it atomically: a hard link where the file
/// system allows one (free for a large file that is never modified in place), else a copy.
pub fn place_copy(src: &Path, dst: &Path) -> Result<(), WriteError> {
    let holder = temp_dir_beside(dst)?;
    let staged = holder.path().join("file");
    if std::fs::hard_link(src, &staged).is_err() {
        std::fs::copy(src, &staged).map_err(WriteError::at(dst))?;
    }
    std::fs::rename(&staged, dst).map_err(WriteError::at(dst))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_replaces_whole_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("sub/a.json");
        write(&a, "one").unwrap();
        write(&a, "two").unwrap();
        // Names that differ only in extension get their own temporaries.
        write(&dir.path().join("sub/a.jsonl"), "three").unwrap();
        assert_eq!(std::fs::read_to_string(&a).unwrap(), "two");
        let names: Vec<_> = std::fs::read_dir(dir.path().join("sub"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }

    #[test]
    fn a_failed_fill_leaves_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.txt");
        write(&a, "old").unwrap();
        let err = write_with(&a, |f| {
            f.write_all(b"half").map_err(WriteError::at(&a))?;
            Err(WriteError::at(&a)(std::io::Error::other("disk full")))
        })
        .unwrap_err();
        assert!(
            err.to_string().contains("a.txt: cannot write: disk full"),
            "{err}"
        );
        assert_eq!(std::fs::read_to_string(&a).unwrap(), "old");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[cfg(unix)]
    #[test]
    fn written_files_get_the_usual_mode() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.txt");
        write(&a, "x").unwrap();
        let plain = dir.path().join("plain.txt");
        std::fs::write(&plain, "x").unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode();
        assert_eq!(mode(&a), mode(&plain));
    }

    #[test]
    fn a_folder_is_replaced_whole() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("ckpt");
        for text in ["first", "second"] {
            let tmp = temp_dir_beside(&out).unwrap();
            std::fs::write(tmp.path().join("f"), text).unwrap();
            replace_dir(tmp, &out).unwrap();
        }
        assert_eq!(std::fs::read_to_string(out.join("f")).unwrap(), "second");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        // A folder that is dropped before it is moved into place leaves nothing.
        let tmp = temp_dir_beside(&out).unwrap();
        drop(tmp);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
