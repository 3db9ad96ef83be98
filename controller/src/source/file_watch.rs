//! Wakes the standalone agent as soon as its manifests change (inotify on
//! the directory holding them), instead of at the next poll. Polling stays
//! as the fallback: for nested directories, filesystems without inotify,
//! or when the watch cannot be set up.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use tokio::io::unix::AsyncFd;

pub struct FileWatch {
    inotify: AsyncFd<Handle>,
    /// The directory watched.
    dir: PathBuf,
    /// Names in the directory written to and not closed since: a write in
    /// progress, which must not be read half-done.
    writing: BTreeSet<OsString>,
    /// Names with an event since the set was last read. A file that
    /// changed without one may be mid-write: the kernel updates a file's
    /// size before it queues the event (`open(O_TRUNC)` empties it first).
    touched: BTreeSet<OsString>,
}

/// The inotify instance, as tokio's readiness wants it.
struct Handle(Inotify);

impl std::os::fd::AsRawFd for Handle {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsFd;
        self.0.as_fd().as_raw_fd()
    }
}

impl FileWatch {
    /// Watches `path` if it is a directory, else the directory holding it
    /// (editors and `kubectl`-style tools replace files by renaming).
    pub fn new(path: &Path) -> Option<Self> {
        let dir = if path.is_dir() { path } else { path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")) };
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC).ok()?;
        let mask = AddWatchFlags::IN_CLOSE_WRITE
            | AddWatchFlags::IN_MODIFY
            | AddWatchFlags::IN_MOVED_TO
            | AddWatchFlags::IN_MOVED_FROM
            | AddWatchFlags::IN_DELETE
            | AddWatchFlags::IN_CREATE;
        if let Err(e) = inotify.add_watch(dir, mask) {
            tracing::debug!(dir = %dir.display(), error = %e, "no inotify watch; polling only");
            return None;
        }
        // `new` is deprecated for fds that may close while registered; this
        // one is owned by the registration itself (its replacement is unsafe).
        #[allow(deprecated)]
        let inotify = AsyncFd::new(Handle(inotify)).ok()?;
        Some(FileWatch { inotify, dir: dir.to_path_buf(), writing: BTreeSet::new(), touched: BTreeSet::new() })
    }

    /// Returns once something in the directory changed.
    pub async fn changed(&mut self) {
        loop {
            let Ok(mut guard) = self.inotify.readable().await else {
                return std::future::pending().await;
            };
            match guard.get_inner().0.read_events() {
                Ok(events) if !events.is_empty() => {
                    drop(guard);
                    self.note(events);
                    return;
                }
                Ok(_) => guard.clear_ready(),
                Err(nix::errno::Errno::EAGAIN) => guard.clear_ready(),
                Err(_) => return std::future::pending().await,
            }
        }
    }

    /// Whether no file named as `matters` says is being written, after
    /// taking in the events queued so far. A file is written from its
    /// creation or first modification to its close; renames and deletions
    /// end it too. (A file created empty and read before its first write
    /// was a wasted pass, or worse.)
    pub fn quiet(&mut self, matters: impl Fn(&Path) -> bool) -> bool {
        if let Ok(events) = self.inotify.get_ref().0.read_events() {
            self.note(events);
        }
        !self.writing.iter().any(|name| matters(Path::new(name)))
    }

    /// Whether `file` (in the directory watched) had an event since
    /// [`FileWatch::forget_touched`]: its change is one inotify saw, so
    /// [`FileWatch::quiet`] speaks for it.
    pub fn touched(&self, file: &Path) -> bool {
        file.file_name().is_some_and(|n| self.touched.contains(n))
    }

    /// The set was read: changes from now on need events of their own.
    pub fn forget_touched(&mut self) {
        self.touched.clear();
    }

    fn note(&mut self, events: Vec<nix::sys::inotify::InotifyEvent>) {
        for e in events {
            let Some(name) = e.name else { continue };
            self.touched.insert(name.clone());
            // A directory, symlink or hard link made here is never closed.
            let opened = e.mask.contains(AddWatchFlags::IN_CREATE)
                && !e.mask.contains(AddWatchFlags::IN_ISDIR)
                && fs::symlink_metadata(self.dir.join(&name)).is_ok_and(|m| m.file_type().is_file() && m.nlink() == 1);
            if e.mask.contains(AddWatchFlags::IN_MODIFY) || opened {
                self.writing.insert(name);
            } else if e.mask.intersects(AddWatchFlags::IN_CLOSE_WRITE | AddWatchFlags::IN_DELETE | AddWatchFlags::IN_MOVED_FROM) {
                self.writing.remove(&name);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn temp_dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("netlet-watch-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[tokio::test]
    async fn a_file_is_written_from_its_creation_to_its_close() {
        let dir = temp_dir("create");
        let mut watch = FileWatch::new(&dir).expect("inotify works here");
        let any = |_: &Path| true;
        let mut file = fs::File::create(dir.join("new.yaml")).unwrap();
        assert!(!watch.quiet(any), "created, nothing written yet: not to be read");
        file.write_all(b"kind: Network\n").unwrap();
        assert!(!watch.quiet(any), "written, still open");
        drop(file);
        assert!(watch.quiet(any), "closed");
        std::os::unix::fs::symlink(dir.join("new.yaml"), dir.join("link.yaml")).unwrap();
        fs::create_dir(dir.join("sub")).unwrap();
        assert!(watch.quiet(any), "a symlink or a directory is never closed: not a write");
        let _ = fs::remove_dir_all(&dir);
    }
}
