//! A poor field link on loopback: a TCP proxy in front of a server that cuts every
//! connection after a while, carries a limited number of bytes per second, can lose the
//! server's answers and can go silent (stop carrying bytes without closing).
//!
//! Every connection gets its own pair of forwarding threads; the proxy counts the bytes
//! it carried each way and the connections it cut, so tests can check that a transfer
//! really needed many connections.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How the link behaves; changeable while it runs with [`Link::set`].
#[derive(Debug, Clone, Default)]
pub struct Conditions {
    /// Each connection is cut (both sides closed) this long after it opened.
    pub cut_after: Option<Duration>,
    /// Bytes per second each way, per connection.
    pub bytes_per_sec: Option<u64>,
    /// Every Nth connection loses the server's answer: whatever the server sends back
    /// is swallowed, and the connection is closed once the server has answered.
    pub drop_answer_every: Option<u64>,
    /// Carry nothing, close nothing: the connection hangs.
    pub silent: bool,
    /// Cut a connection once its client has sent something and then nothing for this
    /// long (its request is out, it waits for the answer): the link drops while the
    /// server works on the request.
    pub cut_when_waiting: Option<Duration>,
}

struct Shared {
    conditions: Mutex<Conditions>,
    up_bytes: AtomicU64,
    down_bytes: AtomicU64,
    connections: AtomicU64,
    cuts: AtomicU64,
    stop: AtomicBool,
    /// An FTP control connection: passive-mode answers are rewritten to data ports of
    /// the link's own (see [`Link::ftp`]).
    ftp: bool,
}

/// The proxy; it stops when dropped.
pub struct Link {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
}

impl Link {
    /// A proxy on a free loopback port that forwards to `target`.
    pub fn new(target: SocketAddr, conditions: Conditions) -> Link {
        Link::start(target, conditions, false)
    }

    /// A proxy in front of an FTP server (plain FTP, passive mode) that carries the data
    /// connections too, under the same conditions: the server's `227` and `229` answers
    /// are rewritten to a port of the link's own that forwards one data connection to
    /// the port the server named. A data connection is cut with its control connection
    /// (the link drops as a whole). FTPS hides those answers from the link: plain only.
    pub fn ftp(target: SocketAddr, conditions: Conditions) -> Link {
        Link::start(target, conditions, true)
    }

    fn start(target: SocketAddr, conditions: Conditions, ftp: bool) -> Link {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the link");
        let addr = listener.local_addr().expect("link address");
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let shared = Arc::new(Shared {
            conditions: Mutex::new(conditions),
            up_bytes: AtomicU64::new(0),
            down_bytes: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            cuts: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            ftp,
        });
        let s = shared.clone();
        std::thread::spawn(move || accept(listener, target, s));
        Link { addr, shared }
    }

    /// The port to give clients instead of the server's.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn set(&self, conditions: Conditions) {
        *self.shared.conditions.lock().unwrap() = conditions;
    }

    /// Bytes carried from the client to the server.
    pub fn up_bytes(&self) -> u64 {
        self.shared.up_bytes.load(Ordering::SeqCst)
    }

    /// Bytes carried from the server to the client.
    pub fn down_bytes(&self) -> u64 {
        self.shared.down_bytes.load(Ordering::SeqCst)
    }

    pub fn connections(&self) -> u64 {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// Connections the link cut (by time).
    pub fn cuts(&self) -> u64 {
        self.shared.cuts.load(Ordering::SeqCst)
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
    }
}

fn accept(listener: TcpListener, target: SocketAddr, shared: Arc<Shared>) {
    while !shared.stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((client, _)) => {
                let n = shared.connections.fetch_add(1, Ordering::SeqCst) + 1;
                let shared = shared.clone();
                std::thread::spawn(move || connect(client, target, shared, n));
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(10))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

fn connect(client: TcpStream, target: SocketAddr, shared: Arc<Shared>, n: u64) {
    forward(client, target, shared, n, None);
}

/// Carries one connection; `data_of`: a data connection, cut when its control
/// connection (opened then) is.
fn forward(
    client: TcpStream,
    target: SocketAddr,
    shared: Arc<Shared>,
    n: u64,
    data_of: Option<Instant>,
) {
    let _ = client.set_nonblocking(false);
    let Ok(server) = TcpStream::connect(target) else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let opened = data_of.unwrap_or_else(Instant::now);
    let conditions = shared.conditions.lock().unwrap().clone();
    let lose_answer = data_of.is_none()
        && conditions
            .drop_answer_every
            .is_some_and(|k| k > 0 && n.is_multiple_of(k));
    // The FTP control connection's answers name data ports: rewritten to the link's.
    let rewrite = (shared.ftp && data_of.is_none()).then(|| Passive {
        server_ip: target.ip(),
        shared: shared.clone(),
        opened,
        pending: Vec::new(),
    });
    let closed = Arc::new(AtomicBool::new(false));
    let (c2, s2) = (
        client.try_clone().expect("clone"),
        server.try_clone().expect("clone"),
    );
    let (sh, cl) = (shared.clone(), closed.clone());
    let up = std::thread::spawn(move || pump(c2, s2, &sh, &cl, opened, Dir::Up, false, None));
    pump(
        server,
        client,
        &shared,
        &closed,
        opened,
        Dir::Down,
        lose_answer,
        rewrite,
    );
    let _ = up.join();
}

/// Rewrites an FTP control connection's passive-mode answers (`227 … (h1,h2,h3,h4,p1,p2)`,
/// `229 … (|||port|)`) to ports of the link's own that forward to the server's.
struct Passive {
    server_ip: std::net::IpAddr,
    shared: Arc<Shared>,
    /// When the control connection opened: its data connections are cut with it.
    opened: Instant,
    /// The start of a line not yet complete.
    pending: Vec<u8>,
}

impl Passive {
    /// The complete lines of what has come so far, rewritten; the rest waits.
    fn feed(&mut self, bytes: &[u8]) -> Vec<u8> {
        self.pending.extend_from_slice(bytes);
        let Some(end) = self.pending.iter().rposition(|&b| b == b'\n') else {
            return Vec::new();
        };
        let lines: Vec<u8> = self.pending.drain(..=end).collect();
        let mut out = Vec::with_capacity(lines.len());
        for line in lines.split_inclusive(|&b| b == b'\n') {
            out.extend_from_slice(&self.line(line));
        }
        out
    }

    fn line(&self, line: &[u8]) -> Vec<u8> {
        let text = String::from_utf8_lossy(line);
        let (Some(open), Some(close)) = (text.find('('), text.rfind(')')) else {
            return line.to_vec();
        };
        let inner = &text[open + 1..close];
        let target = if text.starts_with("227 ") {
            let n: Vec<u16> = inner
                .split(',')
                .filter_map(|x| x.trim().parse().ok())
                .collect();
            if n.len() != 6 {
                return line.to_vec();
            }
            let ip = std::net::Ipv4Addr::new(n[0] as u8, n[1] as u8, n[2] as u8, n[3] as u8);
            SocketAddr::from((ip, n[4] * 256 + n[5]))
        } else if text.starts_with("229 ") {
            match inner.trim_matches('|').parse::<u16>() {
                Ok(port) => SocketAddr::new(self.server_ip, port),
                Err(_) => return line.to_vec(),
            }
        } else {
            return line.to_vec();
        };
        let port = self.data_port(target);
        let inner = if text.starts_with("227 ") {
            format!("127,0,0,1,{},{}", port / 256, port % 256)
        } else {
            format!("|||{port}|")
        };
        format!("{}({inner}){}", &text[..open], &text[close + 1..]).into_bytes()
    }

    /// A port on the link that forwards the next connection to `target` (one data
    /// connection; given up after 30 s without one).
    fn data_port(&self, target: SocketAddr) -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a data port");
        let port = listener.local_addr().expect("data port").port();
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let (shared, opened) = (self.shared.clone(), self.opened);
        std::thread::spawn(move || {
            let until = Instant::now() + Duration::from_secs(30);
            while Instant::now() < until && !shared.stop.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((client, _)) => {
                        forward(client, target, shared, 0, Some(opened));
                        return;
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        port
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Dir {
    Up,
    Down,
}

/// Copies `from` to `to` under the link's conditions until either side closes, the
/// connection's time is up or the link stops; `rewrite` (an FTP control connection's
/// answers) passes what it carries through [`Passive`].
#[allow(clippy::too_many_arguments)]
fn pump(
    mut from: TcpStream,
    mut to: TcpStream,
    shared: &Shared,
    closed: &AtomicBool,
    opened: Instant,
    dir: Dir,
    swallow: bool,
    mut rewrite: Option<Passive>,
) {
    let _ = from.set_read_timeout(Some(Duration::from_millis(50)));
    let mut buf = vec![0u8; 16 * 1024];
    // Bytes this direction may still carry in the current 100 ms slice.
    let mut slice_start = Instant::now();
    let mut slice_used = 0u64;
    let mut carried = 0u64;
    let mut last_sent = Instant::now();
    let close = |from: &TcpStream, to: &TcpStream| {
        closed.store(true, Ordering::SeqCst);
        let _ = from.shutdown(Shutdown::Both);
        let _ = to.shutdown(Shutdown::Both);
    };
    loop {
        if closed.load(Ordering::SeqCst) || shared.stop.load(Ordering::SeqCst) {
            close(&from, &to);
            return;
        }
        let c = shared.conditions.lock().unwrap().clone();
        if c.cut_after.is_some_and(|t| opened.elapsed() >= t) {
            shared
                .cuts
                .fetch_add(u64::from(dir == Dir::Up), Ordering::SeqCst);
            close(&from, &to);
            return;
        }
        let waiting = c.cut_when_waiting.is_some_and(|t| last_sent.elapsed() >= t);
        if dir == Dir::Up && carried > 0 && waiting {
            shared.cuts.fetch_add(1, Ordering::SeqCst);
            close(&from, &to);
            return;
        }
        if c.silent {
            std::thread::sleep(Duration::from_millis(50));
            continue;
        }
        let mut want = buf.len();
        if let Some(rate) = c.bytes_per_sec {
            let per_slice = (rate / 10).max(1);
            if slice_start.elapsed() >= Duration::from_millis(100) {
                slice_start = Instant::now();
                slice_used = 0;
            }
            if slice_used >= per_slice {
                std::thread::sleep(
                    Duration::from_millis(100).saturating_sub(slice_start.elapsed()),
                );
                continue;
            }
            want = want.min((per_slice - slice_used) as usize);
        }
        match from.read(&mut buf[..want]) {
            Ok(0) => {
                // One side finished: let the other finish too.
                let _ = to.shutdown(Shutdown::Write);
                if dir == Dir::Down {
                    close(&from, &to);
                }
                return;
            }
            Ok(k) => {
                slice_used += k as u64;
                if swallow {
                    // The server has answered: the answer is lost with the connection.
                    close(&from, &to);
                    return;
                }
                let out = match rewrite.as_mut() {
                    Some(r) => r.feed(&buf[..k]),
                    None => buf[..k].to_vec(),
                };
                if to.write_all(&out).is_err() {
                    close(&from, &to);
                    return;
                }
                let counter = match dir {
                    Dir::Up => &shared.up_bytes,
                    Dir::Down => &shared.down_bytes,
                };
                counter.fetch_add(k as u64, Ordering::SeqCst);
                carried += k as u64;
                last_sent = Instant::now();
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => {
                close(&from, &to);
                return;
            }
        }
    }
}
