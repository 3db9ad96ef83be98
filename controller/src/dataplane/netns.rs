//! Named network namespaces, made the way `ip netns add` makes them: a
//! file in /run/netns with the namespace bind-mounted on it, on a shared
//! mount so the namespace is visible to every mount namespace (and to a
//! DaemonSet's host through bidirectional propagation).
//!
//! `setns` and `unshare` only ever run on short-lived threads of our own or
//! the reconciler's dedicated thread, never on a tokio worker.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};

use super::netlink::{LinkChange, Netlink};
use super::sysctl::Ipv6Conf;
use super::LOOPBACK_INDEX;
use crate::plan::attachment::NETNS_DIR;

/// Makes /run/netns a shared mount point, as iproute2 does, once per
/// process: re-sharing it recursively walks every namespace mounted below,
/// which made creating N namespaces cost O(N^2).
fn ensure_netns_dir() -> io::Result<()> {
    static DONE: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    if DONE.get().is_some() {
        return Ok(());
    }
    make_netns_dir_shared()?;
    let _ = DONE.set(());
    Ok(())
}

fn make_netns_dir_shared() -> io::Result<()> {
    fs::create_dir_all(NETNS_DIR)?;
    let shared = |dir: &str| mount(None::<&str>, dir, None::<&str>, MsFlags::MS_SHARED | MsFlags::MS_REC, None::<&str>);
    match shared(NETNS_DIR) {
        Ok(()) => Ok(()),
        Err(nix::errno::Errno::EINVAL) => {
            // Not a mount point yet: bind it onto itself, then share it.
            mount(Some(NETNS_DIR), NETNS_DIR, None::<&str>, MsFlags::MS_BIND | MsFlags::MS_REC, None::<&str>)?;
            shared(NETNS_DIR).map_err(io::Error::from)
        }
        Err(e) => Err(e.into()),
    }
}

/// Is `path` a live namespace (an nsfs mount), not a leftover plain file?
pub fn is_namespace(path: &Path) -> bool {
    // nsfs files live on a filesystem whose device differs from the
    // directory holding them once mounted; a cheaper and sufficient check is
    // that setns-able files report an inode on the nsfs device (dev major 0).
    match (fs::metadata(path), path.parent().map(fs::metadata)) {
        (Ok(file), Some(Ok(dir))) => file.dev() != dir.dev(),
        _ => false,
    }
}

/// Creates `/run/netns/<name>` holding a new network namespace. Succeeds if
/// it already exists as a namespace. Takes the namespace from `spare` when
/// one is made; bringing lo up is left to the caller unless the returned
/// [`Created`] says the spare's already is.
pub fn create(name: &str, spare: &mut Spare) -> io::Result<Created> {
    ensure_netns_dir()?;
    let path = Path::new(NETNS_DIR).join(name);
    if is_namespace(&path) {
        return Ok(Created::default());
    }
    OpenOptions::new().write(true).create(true).truncate(false).open(&path)?;
    let result = match spare.take() {
        // The spare's descriptor is a link to the namespace, which a bind
        // mount follows, as for /proc/thread-self/ns/net below.
        Some(made) => {
            mount(Some(format!("/proc/self/fd/{}", made.ns.as_raw_fd()).as_str()), &path, None::<&str>, MsFlags::MS_BIND, None::<&str>)
                .map(|()| Created { ipv6_conf: Some(made.ipv6_conf), loopback_up: made.loopback_up })
                .map_err(io::Error::from)
        }
        None => {
            let target = path.clone();
            std::thread::spawn(move || -> io::Result<Created> {
                // unshare(CLONE_NEWNET) changes only this thread's namespace; the
                // thread ends right after, and the bind mount keeps the namespace.
                unshare(CloneFlags::CLONE_NEWNET)?;
                mount(Some("/proc/thread-self/ns/net"), &target, None::<&str>, MsFlags::MS_BIND, None::<&str>)?;
                Ok(Created::default())
            })
            .join()
            .map_err(|_| io::Error::other("netns creation thread panicked"))?
        }
    };
    if result.is_err() {
        let _ = fs::remove_file(&path);
    }
    result
}

/// What is known of a namespace [`create`] made.
#[derive(Default)]
pub struct Created {
    /// Its /proc/sys/net/ipv6/conf, when it was made ahead and opened then
    /// (walking there takes 1-2 ms with a thousand namespaces in place).
    pub ipv6_conf: Option<Ipv6Conf>,
    /// Its loopback was brought up when it was made ahead.
    pub loopback_up: bool,
}

/// A namespace made ahead of need, held open by descriptor only: the
/// kernel's setup of a namespace (~1 ms with a thousand in place) is then
/// done between passes, not on the path of the one that adds an
/// attachment. Unnamed, it is nobody's and goes with the agent's process.
#[derive(Default)]
pub struct Spare {
    /// Whether to make one at all (long-running agents).
    wanted: bool,
    making: Option<std::thread::JoinHandle<io::Result<MadeAhead>>>,
}

struct MadeAhead {
    ns: File,
    ipv6_conf: Ipv6Conf,
    loopback_up: bool,
}

impl Spare {
    pub fn wanted() -> Self {
        Spare { wanted: true, making: None }
    }

    /// Starts making the next spare when there is none.
    pub fn refill(&mut self) {
        if !self.wanted || self.making.is_some() {
            return;
        }
        let made = std::thread::Builder::new().name("spare-netns".into()).spawn(|| {
            unshare(CloneFlags::CLONE_NEWNET)?;
            let ns = File::open("/proc/thread-self/ns/net")?;
            let loopback_up = bring_loopback_up().inspect_err(|e| tracing::debug!(error = %e, "spare namespace: lo stays down")).is_ok();
            Ok(MadeAhead { ns, ipv6_conf: Ipv6Conf::open(), loopback_up })
        });
        self.making = made.inspect_err(|e| tracing::debug!(error = %e, "no spare namespace")).ok();
    }

    /// The spare, once made (waiting for it if it is being made).
    fn take(&mut self) -> Option<MadeAhead> {
        let made = self.making.take()?.join().ok()?;
        made.inspect_err(|e| tracing::debug!(error = %e, "the spare namespace could not be made")).ok()
    }
}

/// Sets lo up in the calling thread's namespace, with a netlink socket of
/// its own (the thread has no runtime; it makes a small one).
fn bring_loopback_up() -> io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_io().build()?;
    runtime.block_on(async {
        let lo = Netlink::connect().map_err(io::Error::other)?;
        lo.set_link(LOOPBACK_INDEX, "lo", LinkChange { up: true, ..Default::default() }).await.map_err(io::Error::other)
    })
}

/// Deletes `/run/netns/<name>`; succeeds if it is already gone.
pub fn delete(name: &str) -> io::Result<()> {
    let path = Path::new(NETNS_DIR).join(name);
    match umount2(&path, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
        Err(e) => return Err(e.into()),
    }
    match fs::remove_file(&path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Runs `f` with the calling thread switched into the namespace `ns`, and
/// switches back afterwards. Only for the reconciler's dedicated thread.
pub fn with_netns<T>(ns: &File, f: impl FnOnce() -> T) -> io::Result<T> {
    let home = File::open("/proc/thread-self/ns/net")?;
    setns(ns, CloneFlags::CLONE_NEWNET)?;
    let out = f();
    setns(&home, CloneFlags::CLONE_NEWNET).expect("returning to the agent's own namespace must not fail");
    Ok(out)
}
