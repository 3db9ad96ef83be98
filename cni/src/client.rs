//! The plugin's side of the socket: one request, one reply, within a
//! deadline.

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::protocol::{Reply, Request, MAX_MESSAGE_BYTES};

/// Why a call got no reply.
#[derive(Debug)]
pub enum CallError {
    /// No agent listens: the socket is missing or refuses connections.
    Unreachable(io::Error),
    /// Connected, but no complete reply before the deadline.
    TimedOut(Duration),
    /// The exchange broke off.
    Io(io::Error),
    /// The reply is not a [`Reply`].
    Malformed(String),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Unreachable(e) => write!(f, "no netlet agent listens ({e})"),
            CallError::TimedOut(after) => write!(f, "no reply from the netlet agent within {} s", after.as_secs_f64()),
            CallError::Io(e) => write!(f, "talking to the netlet agent: {e}"),
            CallError::Malformed(e) => write!(f, "the netlet agent's reply is not understood: {e}"),
        }
    }
}

/// Whoever answers a request: the agent over its socket, or a test's fake.
pub trait Agent {
    fn call(&self, socket: &Path, request: &Request, timeout: Duration) -> Result<Reply, CallError>;
}

/// The agent behind its unix socket.
pub struct SocketAgent;

impl Agent for SocketAgent {
    fn call(&self, socket: &Path, request: &Request, timeout: Duration) -> Result<Reply, CallError> {
        call(socket, request, timeout)
    }
}

/// Sends `request` to the agent at `socket` and waits at most `timeout`
/// (connecting, writing and reading together) for its reply.
pub fn call(socket: &Path, request: &Request, timeout: Duration) -> Result<Reply, CallError> {
    let deadline = Instant::now() + timeout;
    let mut stream = UnixStream::connect(socket).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => CallError::Unreachable(e),
        _ => CallError::Io(e),
    })?;
    let timed_out = |e: io::Error| match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => CallError::TimedOut(timeout),
        _ => CallError::Io(e),
    };
    let message = serde_json::to_vec(request).map_err(|e| CallError::Io(e.into()))?;
    stream.set_write_timeout(Some(timeout)).map_err(CallError::Io)?;
    stream.write_all(&message).map_err(timed_out)?;
    stream.shutdown(Shutdown::Write).map_err(CallError::Io)?;

    let mut reply = Vec::with_capacity(4096);
    let mut buf = [0u8; 8192];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(CallError::TimedOut(timeout));
        }
        stream.set_read_timeout(Some(left)).map_err(CallError::Io)?;
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => reply.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(timed_out(e)),
        }
        if reply.len() as u64 > MAX_MESSAGE_BYTES {
            return Err(CallError::Malformed(format!("longer than {MAX_MESSAGE_BYTES} bytes")));
        }
    }
    if reply.is_empty() {
        return Err(CallError::Io(io::Error::new(io::ErrorKind::UnexpectedEof, "the agent closed the connection without a reply")));
    }
    serde_json::from_slice(&reply).map_err(|e| CallError::Malformed(e.to_string()))
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixListener;
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;
    use crate::protocol::{Added, Command, NetworkConfig};

    static COUNTER: AtomicU32 = AtomicU32::new(0);

    /// A socket path of this test's own, removed on drop.
    struct TempSocket(PathBuf);

    impl TempSocket {
        fn new() -> TempSocket {
            let n = COUNTER.fetch_add(1, Ordering::SeqCst);
            TempSocket(std::env::temp_dir().join(format!("netlet-cni-client-{}-{n}.sock", std::process::id())))
        }
    }

    impl Drop for TempSocket {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn request() -> Request {
        Request {
            command: Command::Add,
            container_id: "c1".into(),
            netns: "/run/netns/x".into(),
            ifname: "eth0".into(),
            pod: None,
            config: NetworkConfig { cni_version: "1.0.0".into(), name: "n".into(), ..NetworkConfig::default() },
        }
    }

    /// Serves one connection: reads the request to its end, then writes
    /// `reply` (after `delay`).
    fn serve_once(socket: &TempSocket, delay: Duration, reply: Vec<u8>) -> std::thread::JoinHandle<Vec<u8>> {
        let listener = UnixListener::bind(&socket.0).unwrap();
        std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut got = Vec::new();
            stream.read_to_end(&mut got).unwrap();
            std::thread::sleep(delay);
            let _ = stream.write_all(&reply);
            got
        })
    }

    #[test]
    fn a_call_sends_the_request_and_reads_the_reply() {
        let socket = TempSocket::new();
        let server = serve_once(&socket, Duration::ZERO, serde_json::to_vec(&Ok::<_, ()>(Added::default())).unwrap());
        let reply = call(&socket.0, &request(), Duration::from_secs(5)).unwrap();
        assert_eq!(reply, Ok(Added::default()));
        let sent: Request = serde_json::from_slice(&server.join().unwrap()).unwrap();
        assert_eq!(sent, request());
    }

    #[test]
    fn no_listener_is_unreachable() {
        let socket = TempSocket::new();
        assert!(matches!(call(&socket.0, &request(), Duration::from_secs(1)), Err(CallError::Unreachable(_))));
        // A socket file left by an agent that exited: refused.
        drop(UnixListener::bind(&socket.0).unwrap());
        assert!(matches!(call(&socket.0, &request(), Duration::from_secs(1)), Err(CallError::Unreachable(_))));
    }

    #[test]
    fn a_slow_agent_times_out_at_the_deadline() {
        let socket = TempSocket::new();
        let _server = serve_once(&socket, Duration::from_secs(3), b"{}".to_vec());
        let started = Instant::now();
        let e = call(&socket.0, &request(), Duration::from_millis(300)).unwrap_err();
        assert!(matches!(e, CallError::TimedOut(_)), "{e}");
        assert!(started.elapsed() < Duration::from_secs(2), "gave up after {:?}", started.elapsed());
    }

    #[test]
    fn an_empty_or_garbled_reply_is_an_error() {
        let socket = TempSocket::new();
        let _server = serve_once(&socket, Duration::ZERO, Vec::new());
        assert!(matches!(call(&socket.0, &request(), Duration::from_secs(5)), Err(CallError::Io(_))));
        let socket = TempSocket::new();
        let _server = serve_once(&socket, Duration::ZERO, b"{\"Ok\": 3}".to_vec());
        assert!(matches!(call(&socket.0, &request(), Duration::from_secs(5)), Err(CallError::Malformed(_))));
        let socket = TempSocket::new();
        let _server = serve_once(&socket, Duration::ZERO, vec![b' '; MAX_MESSAGE_BYTES as usize + 10]);
        assert!(matches!(call(&socket.0, &request(), Duration::from_secs(5)), Err(CallError::Malformed(_))));
    }
}
