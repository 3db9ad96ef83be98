//! The socket `netlet-cni` calls: bound root-only, one task per
//! connection, each request handed to the consumer as a [`CniCall`] and
//! its reply written back. Nothing a client sends can panic it: a request
//! that cannot be read or decoded is answered with a CNI error.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use netlet_cni::protocol::MAX_MESSAGE_BYTES;
use netlet_cni::{CniError, Reply, Request};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};

/// A client has this long to send its request, and to take the reply.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// One CNI call for the consumer: the request, and where its reply goes.
/// Dropping it unanswered answers the plugin with code 11 (try again).
#[derive(Debug)]
pub struct CniCall {
    pub request: Request,
    reply: oneshot::Sender<Reply>,
}

impl CniCall {
    /// Answers the plugin (ignored if it stopped waiting).
    pub fn reply(self, reply: Reply) {
        let _ = self.reply.send(reply);
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CniSocketError {
    #[error("CNI socket {path}: not in a directory")]
    NoDirectory { path: PathBuf },
    #[error("CNI socket directory {dir}: {source}")]
    Directory {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("CNI socket directory {dir} belongs to uid {owner}, not to the agent: refusing to serve pods' sandboxes from it")]
    ForeignDirectory { dir: PathBuf, owner: u32 },
    #[error("CNI socket {path}: another agent is serving it")]
    InUse { path: PathBuf },
    #[error("CNI socket {path}: exists and is not a socket (not removing it)")]
    NotASocket { path: PathBuf },
    #[error("CNI socket {path}: {source}")]
    Bind {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The bound socket, not yet serving.
pub struct CniSocket {
    listener: std::os::unix::net::UnixListener,
    path: PathBuf,
    /// Device and inode of the socket file we made: removed on shutdown
    /// only if it is still ours.
    identity: (u64, u64),
}

impl CniSocket {
    /// Binds `path`, mode 0600, in a directory made root-only (0700; it
    /// is created if missing, and must belong to the agent's user). A
    /// socket file left by an agent that exited is replaced; one a live
    /// agent serves is not.
    pub fn bind(path: &Path) -> Result<CniSocket, CniSocketError> {
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).ok_or_else(|| CniSocketError::NoDirectory { path: path.into() })?;
        private_dir(dir)?;
        remove_stale(path)?;
        let bind_error = |source| CniSocketError::Bind { path: path.into(), source };
        let listener = std::os::unix::net::UnixListener::bind(path).map_err(bind_error)?;
        // The directory already keeps others out; the mode says so too.
        fs::set_permissions(path, fs::Permissions::from_mode(0o600)).map_err(bind_error)?;
        listener.set_nonblocking(true).map_err(bind_error)?;
        let meta = fs::symlink_metadata(path).map_err(bind_error)?;
        Ok(CniSocket { listener, path: path.into(), identity: (meta.dev(), meta.ino()) })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Accepts connections until the consumer drops its receiver, handing
    /// each request to `calls`; then removes the socket file. Needs a tokio
    /// runtime with I/O enabled.
    pub async fn serve(self, calls: mpsc::Sender<CniCall>) {
        let _remove_on_exit = SocketFile { path: self.path.clone(), identity: self.identity };
        let listener = match UnixListener::from_std(self.listener) {
            Ok(listener) => listener,
            Err(e) => {
                tracing::error!(socket = %self.path.display(), error = %e, "CNI socket: cannot serve");
                return;
            }
        };
        tracing::info!(socket = %self.path.display(), "serving CNI calls");
        loop {
            tokio::select! {
                _ = calls.closed() => return,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        tokio::spawn(handle(stream, calls.clone()));
                    }
                    Err(e) => {
                        // Out of descriptors or memory: wait instead of spinning.
                        tracing::warn!(socket = %self.path.display(), error = %e, "CNI socket: accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
            }
        }
    }
}

/// Removes the socket file when serving ends, if it is still the one made.
struct SocketFile {
    path: PathBuf,
    identity: (u64, u64),
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        if fs::symlink_metadata(&self.path).is_ok_and(|m| (m.dev(), m.ino()) == self.identity) {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// Makes `dir` (and missing parents) 0700 if it does not exist; an
/// existing one must belong to us and is tightened to 0700.
fn private_dir(dir: &Path) -> Result<(), CniSocketError> {
    let dir_error = |source| CniSocketError::Directory { dir: dir.into(), source };
    fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(dir_error)?;
    let meta = fs::metadata(dir).map_err(dir_error)?;
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != me {
        return Err(CniSocketError::ForeignDirectory { dir: dir.into(), owner: meta.uid() });
    }
    if meta.mode() & 0o077 != 0 {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(dir_error)?;
        tracing::info!(dir = %dir.display(), was = format!("{:o}", meta.mode() & 0o777), "CNI socket directory made root-only (0700)");
    }
    Ok(())
}

fn remove_stale(path: &Path) -> Result<(), CniSocketError> {
    let meta = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => return Err(CniSocketError::Bind { path: path.into(), source }),
    };
    if !meta.file_type().is_socket() {
        return Err(CniSocketError::NotASocket { path: path.into() });
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err(CniSocketError::InUse { path: path.into() }),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            fs::remove_file(path).map_err(|source| CniSocketError::Bind { path: path.into(), source })
        }
        Err(source) => Err(CniSocketError::Bind { path: path.into(), source }),
    }
}

/// One connection: read the request, wait for the consumer, write the reply.
async fn handle(mut stream: UnixStream, calls: mpsc::Sender<CniCall>) {
    let reply = match read_request(&mut stream).await {
        Err(error) => {
            tracing::warn!(%error, "CNI socket: rejected a request");
            Err(error)
        }
        Ok(request) => {
            let (reply, answer) = oneshot::channel();
            let what = format!("{} {}", request.command.as_str(), request.container_id);
            if calls.send(CniCall { request, reply }).await.is_err() {
                Err(CniError::new(CniError::TRY_AGAIN_LATER, "the netlet agent is shutting down"))
            } else {
                answer.await.unwrap_or_else(|_| {
                    tracing::warn!(call = %what, "CNI call dropped without a reply");
                    Err(CniError::new(CniError::TRY_AGAIN_LATER, format!("the netlet agent dropped the call ({what})")))
                })
            }
        }
    };
    let bytes = serde_json::to_vec(&reply).expect("a reply is plain data");
    let written = tokio::time::timeout(IO_TIMEOUT, async {
        stream.write_all(&bytes).await?;
        stream.shutdown().await
    })
    .await;
    if !matches!(written, Ok(Ok(()))) {
        tracing::debug!("CNI socket: the plugin left before its reply");
    }
}

async fn read_request(stream: &mut UnixStream) -> Result<Request, CniError> {
    let mut bytes = Vec::with_capacity(4096);
    let read = tokio::time::timeout(IO_TIMEOUT, stream.take(MAX_MESSAGE_BYTES + 1).read_to_end(&mut bytes)).await;
    match read {
        Err(_) => return Err(CniError::new(CniError::IO_FAILURE, format!("no complete request within {} s", IO_TIMEOUT.as_secs()))),
        Ok(Err(e)) => return Err(CniError::new(CniError::IO_FAILURE, format!("reading the request: {e}"))),
        Ok(Ok(_)) if bytes.len() as u64 > MAX_MESSAGE_BYTES => {
            return Err(CniError::new(CniError::DECODING_FAILURE, format!("request longer than {MAX_MESSAGE_BYTES} bytes")))
        }
        Ok(Ok(_)) => {}
    }
    serde_json::from_slice(&bytes).map_err(|e| CniError::new(CniError::DECODING_FAILURE, format!("cannot decode the request: {e}")))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use netlet_cni::client::{self, CallError};
    use netlet_cni::{Added, Command, Interface, NetworkConfig, Pod};

    use super::*;

    static COUNTER: AtomicU32 = AtomicU32::new(0);

    /// A directory of this test's own (removed on drop), with the socket
    /// one level down so that its directory is made by `bind`.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> TempDir {
            let n = COUNTER.fetch_add(1, Ordering::SeqCst);
            let dir = std::env::temp_dir().join(format!("netlet-cni-server-{}-{n}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }
        fn socket(&self) -> PathBuf {
            self.0.join("run/cni.sock")
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn request(container: &str) -> Request {
        Request {
            command: Command::Add,
            container_id: container.into(),
            netns: format!("/run/netns/{container}"),
            ifname: "eth0".into(),
            pod: Some(Pod { namespace: "default".into(), name: container.into(), uid: None }),
            config: NetworkConfig { cni_version: "0.4.0".into(), name: "primary".into(), ..NetworkConfig::default() },
        }
    }

    /// The plugin's own client, off the runtime's threads.
    async fn call(socket: PathBuf, request: Request) -> Result<Reply, CallError> {
        tokio::task::spawn_blocking(move || client::call(&socket, &request, Duration::from_secs(10))).await.unwrap()
    }

    /// Serves `dir`'s socket; returns the consumer's end.
    fn serve(dir: &TempDir) -> mpsc::Receiver<CniCall> {
        let socket = CniSocket::bind(&dir.socket()).unwrap();
        let (calls, consumer) = mpsc::channel(8);
        tokio::spawn(socket.serve(calls));
        consumer
    }

    #[test]
    fn the_socket_is_root_only_in_a_private_directory() {
        let dir = TempDir::new();
        let _socket = CniSocket::bind(&dir.socket()).unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().mode() & 0o777;
        assert_eq!(mode(&dir.socket()), 0o600);
        assert_eq!(mode(dir.socket().parent().unwrap()), 0o700);

        // An existing directory open to others is tightened.
        let open = TempDir::new();
        fs::create_dir_all(open.socket().parent().unwrap()).unwrap();
        fs::set_permissions(open.socket().parent().unwrap(), fs::Permissions::from_mode(0o755)).unwrap();
        let _socket = CniSocket::bind(&open.socket()).unwrap();
        assert_eq!(mode(open.socket().parent().unwrap()), 0o700);
    }

    #[test]
    fn a_stale_socket_is_replaced_but_a_served_one_or_a_file_is_not() {
        let dir = TempDir::new();
        drop(CniSocket::bind(&dir.socket()).unwrap()); // an agent that exited without cleaning up
        let served = CniSocket::bind(&dir.socket()).expect("the stale socket is replaced");
        assert!(matches!(CniSocket::bind(&dir.socket()), Err(CniSocketError::InUse { .. })));
        drop(served);
        fs::remove_file(dir.socket()).unwrap();
        fs::write(dir.socket(), "precious").unwrap();
        assert!(matches!(CniSocket::bind(&dir.socket()), Err(CniSocketError::NotASocket { .. })));
        assert_eq!(fs::read_to_string(dir.socket()).unwrap(), "precious");
    }

    #[tokio::test]
    async fn a_call_reaches_the_consumer_and_its_reply_the_plugin() {
        let dir = TempDir::new();
        let mut consumer = serve(&dir);
        let added =
            Added { interfaces: vec![Interface { name: "net1".into(), mac: None, sandbox: Some("/x".into()) }], ..Added::default() };
        let answer = added.clone();
        let consumer = tokio::spawn(async move {
            let call = consumer.recv().await.unwrap();
            let request = call.request.clone();
            call.reply(Ok(answer));
            request
        });
        assert_eq!(call(dir.socket(), request("web")).await.unwrap(), Ok(added));
        assert_eq!(consumer.await.unwrap(), request("web"));
    }

    #[tokio::test]
    async fn calls_are_served_concurrently_and_each_gets_its_own_reply() {
        let dir = TempDir::new();
        let mut consumer = serve(&dir);
        // The consumer holds every call until all ten are in, then answers
        // them last to first: only concurrent connections get there.
        let consumer = tokio::spawn(async move {
            let mut held = Vec::new();
            while held.len() < 10 {
                held.push(consumer.recv().await.unwrap());
            }
            for call in held.into_iter().rev() {
                let name = call.request.container_id.clone();
                call.reply(Err(CniError::new(CniError::ATTACHMENT_FAILED, name)));
            }
        });
        let calls: Vec<_> = (0..10).map(|i| tokio::spawn(call(dir.socket(), request(&format!("pod{i}"))))).collect();
        for (i, c) in calls.into_iter().enumerate() {
            let reply = c.await.unwrap().unwrap();
            assert_eq!(reply.unwrap_err().msg, format!("pod{i}"));
        }
        consumer.await.unwrap();
    }

    #[tokio::test]
    async fn malformed_requests_get_a_cni_error_and_the_server_carries_on() {
        let dir = TempDir::new();
        let mut consumer = serve(&dir);
        for garbage in [&b"{not json"[..], b"", b"{\"command\": \"GC\"}", &vec![b'x'; MAX_MESSAGE_BYTES as usize + 1]] {
            let mut stream = UnixStream::connect(dir.socket()).await.unwrap();
            // The server may answer before it has read everything.
            let _ = stream.write_all(garbage).await;
            let _ = stream.shutdown().await;
            let mut answer = Vec::new();
            stream.read_to_end(&mut answer).await.unwrap();
            let reply: Reply = serde_json::from_slice(&answer).unwrap();
            assert_eq!(
                reply.unwrap_err().code,
                CniError::DECODING_FAILURE,
                "{:?}",
                String::from_utf8_lossy(&garbage[..garbage.len().min(40)])
            );
        }
        assert!(consumer.try_recv().is_err(), "nothing malformed reached the consumer");
        tokio::spawn(async move { consumer.recv().await.unwrap().reply(Ok(Added::default())) });
        assert_eq!(call(dir.socket(), request("web")).await.unwrap(), Ok(Added::default()));
    }

    #[tokio::test]
    async fn a_call_dropped_unanswered_tells_the_plugin_to_try_again() {
        let dir = TempDir::new();
        let mut consumer = serve(&dir);
        tokio::spawn(async move { drop(consumer.recv().await) });
        let e = call(dir.socket(), request("web")).await.unwrap().unwrap_err();
        assert_eq!(e.code, CniError::TRY_AGAIN_LATER);
        assert!(e.msg.contains("ADD web"), "{e}");
    }

    #[tokio::test]
    async fn the_socket_goes_when_the_consumer_does() {
        let dir = TempDir::new();
        let socket = CniSocket::bind(&dir.socket()).unwrap();
        let (calls, consumer) = mpsc::channel(8);
        let server = tokio::spawn(socket.serve(calls));
        tokio::task::yield_now().await;
        drop(consumer);
        server.await.unwrap();
        assert!(!dir.socket().exists());
        assert!(matches!(call(dir.socket(), request("web")).await, Err(CallError::Unreachable(_))));
    }
}
