//! meshd-testapp: the "app" that runs in test pods.
//!
//! ```text
//! meshd-testapp serve --listen 0.0.0.0:8080 [--greet]
//! meshd-testapp echo --connect 10.244.1.2:8080 --bytes N [--greet] [--timeout-secs S] [--seed X]
//! meshd-testapp udp-echo --listen 0.0.0.0:5353
//! meshd-testapp udp-ping --connect 10.244.1.2:5353 [--timeout-secs S]
//! meshd-testapp connect-loop --connect ADDR [--interval-ms 50] [--duration-secs S] [--greet]
//! meshd-testapp rr --connect ADDR [--size 1024] [--rate 1000] [--duration-secs S]
//! meshd-testapp cps --connect ADDR [--duration-secs S] [--concurrency N] [--size 64]
//! meshd-testapp hold --connect ADDR --count N [--hold-secs S] [--timeout-secs S]
//! meshd-testapp sink --listen ADDR
//! meshd-testapp http-serve --listen ADDR
//! meshd-testapp relay --listen ADDR --connect ADDR
//! meshd-testapp idle-load [--threads N]
//! meshd-testapp echo-many --connect ADDR --count N [--bytes B] [--timeout-secs S]
//! ```
//!
//! `rr`, `cps`, `hold`, `sink` and `http-serve` are the benchmark's load generators and
//! servers (see `meshd_tests::bench`); `relay` is its reference for "any user-space proxy":
//! the smallest TCP relay (a thread per direction, blocking copies through 64 KiB buffers).
//! `idle-load` keeps the CPUs out of idle with spinning threads of the `SCHED_IDLE` policy
//! (every other thread preempts them at once), for the benchmark's latency measured without
//! the cost of waking an idle CPU.
//!
//! Client commands print one JSON line on stdout and exit 0 on success, 1 on failure.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs, UdpSocket};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use serde_json::json;

const USAGE: &str = "usage:
  meshd-testapp serve --listen ADDR [--greet]
  meshd-testapp echo --connect ADDR --bytes N [--greet] [--timeout-secs S] [--seed X]
  meshd-testapp udp-echo --listen ADDR
  meshd-testapp udp-ping --connect ADDR [--timeout-secs S]
  meshd-testapp connect-loop --connect ADDR [--interval-ms MS] [--duration-secs S] [--greet] [--timeout-secs S]
  meshd-testapp rr --connect ADDR [--size BYTES] [--rate PER_SEC] [--duration-secs S] [--warmup N]
  meshd-testapp cps --connect ADDR [--duration-secs S] [--concurrency N] [--size BYTES]
  meshd-testapp hold --connect ADDR --count N [--hold-secs S] [--timeout-secs S]
  meshd-testapp sink --listen ADDR
  meshd-testapp http-serve --listen ADDR
  meshd-testapp relay --listen ADDR --connect ADDR
  meshd-testapp idle-load [--threads N]
  meshd-testapp echo-many --connect ADDR --count N [--bytes B] [--timeout-secs S]";

const FLAGS: [&str; 1] = ["--greet"];

struct Args {
    opts: HashMap<String, String>,
    flags: Vec<String>,
}

impl Args {
    fn parse(args: &[String]) -> Result<Args, String> {
        let mut opts = HashMap::new();
        let mut flags = Vec::new();
        let mut it = args.iter();
        while let Some(a) = it.next() {
            if FLAGS.contains(&a.as_str()) {
                flags.push(a.clone());
            } else if a.starts_with("--") {
                let v = it.next().ok_or_else(|| format!("{a} needs a value"))?;
                opts.insert(a.clone(), v.clone());
            } else {
                return Err(format!("unexpected argument {a:?}"));
            }
        }
        Ok(Args { opts, flags })
    }
    fn flag(&self, f: &str) -> bool {
        self.flags.iter().any(|x| x == f)
    }
    fn req(&self, k: &str) -> Result<&str, String> {
        self.opts
            .get(k)
            .map(String::as_str)
            .ok_or_else(|| format!("missing {k}"))
    }
    fn num<T: std::str::FromStr>(&self, k: &str, default: T) -> Result<T, String> {
        match self.opts.get(k) {
            None => Ok(default),
            Some(v) => v.parse().map_err(|_| format!("bad value for {k}: {v:?}")),
        }
    }
    fn addr(&self, k: &str) -> Result<SocketAddr, String> {
        let v = self.req(k)?;
        v.to_socket_addrs()
            .map_err(|e| format!("bad address {v:?}: {e}"))?
            .next()
            .ok_or_else(|| format!("no address for {v:?}"))
    }
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let Some((cmd, rest)) = argv.split_first() else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    let args = match Args::parse(rest) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("meshd-testapp: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let r = match cmd.as_str() {
        "serve" => serve(&args),
        "echo" => echo(&args),
        "udp-echo" => udp_echo(&args),
        "udp-ping" => udp_ping(&args),
        "connect-loop" => connect_loop(&args),
        "rr" => rr(&args),
        "cps" => cps(&args),
        "hold" => hold(&args),
        "sink" => sink(&args),
        "http-serve" => http_serve(&args),
        "relay" => relay(&args),
        "idle-load" => idle_load(&args),
        "echo-many" => echo_many(&args),
        "connect-until" => connect_until(&args),
        "reset-serve" => reset_serve(&args),
        "reset-client" => reset_client(&args),
        "-h" | "--help" | "help" => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        other => Err(format!("unknown command {other:?}\n{USAGE}")),
    };
    match r {
        Ok(code) => code,
        Err(e) => {
            eprintln!("meshd-testapp: {e}");
            ExitCode::from(2)
        }
    }
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

// ---------------------------------------------------------------------------- serve

fn serve(args: &Args) -> Result<ExitCode, String> {
    let addr = args.addr("--listen")?;
    let greet = args.flag("--greet");
    let l = TcpListener::bind(addr).map_err(|e| format!("bind {addr}: {e}"))?;
    let local = l.local_addr().map_err(|e| e.to_string())?;
    say(&format!("listening on {local}"));
    for conn in l.incoming() {
        match conn {
            Ok(s) => {
                std::thread::spawn(move || handle(s, greet));
            }
            Err(e) => eprintln!("accept: {e}"),
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The socket's `SO_MARK`: a connection the agent delivered carries the agent's delivery
/// mark (the pod's `tcp_fwmark_accept` copies it from the SYN); a direct one carries 0.
fn socket_mark(s: &TcpStream) -> u32 {
    use std::os::fd::AsRawFd as _;
    let mut mark: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: a valid socket and an `int` out buffer with its length.
    let rc = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_MARK,
            (&raw mut mark).cast(),
            &mut len,
        )
    };
    if rc == 0 {
        mark as u32
    } else {
        0
    }
}

fn handle(mut s: TcpStream, greet: bool) {
    let peer = s
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| "?".into());
    let local = s
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| "?".into());
    say(&format!(
        "accepted peer={peer} local={local} mark={:#x}",
        socket_mark(&s)
    ));
    let _ = s.set_read_timeout(Some(Duration::from_secs(300)));
    let _ = s.set_write_timeout(Some(Duration::from_secs(300)));
    if greet
        && s.write_all(format!("hello peer={peer} local={local}\n").as_bytes())
            .is_err()
    {
        return;
    }
    if pump(&mut &s, &mut &s).is_ok() {
        let _ = s.shutdown(Shutdown::Write);
    }
}

/// Copies `from` to `to` through a 64 KiB buffer until `from` ends (`Ok`) or either side
/// fails.
fn pump(from: &mut impl Read, to: &mut impl Write) -> std::io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => to.write_all(&buf[..n])?,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

// ---------------------------------------------------------------------------- relay

/// Accepts on `--listen` and relays each connection to `--connect`, with half-close.
/// Spins `--threads` threads (default: one per CPU) at the `SCHED_IDLE` policy until killed.
fn idle_load(args: &Args) -> Result<ExitCode, String> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads: usize = args.num("--threads", cpus)?;
    if threads == 0 {
        return Err("--threads must be at least 1".into());
    }
    let (tx, rx) = std::sync::mpsc::channel();
    for _ in 0..threads {
        let tx = tx.clone();
        std::thread::spawn(move || {
            let param = libc::sched_param { sched_priority: 0 };
            // SAFETY: sets the calling thread's policy; `param` outlives the call.
            if unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) } != 0 {
                let _ = tx.send(format!(
                    "sched_setscheduler(SCHED_IDLE): {}",
                    std::io::Error::last_os_error()
                ));
                return;
            }
            loop {
                std::hint::spin_loop();
            }
        });
    }
    drop(tx);
    match rx.recv() {
        Ok(e) => Err(e),
        Err(_) => Ok(ExitCode::SUCCESS),
    }
}

fn relay(args: &Args) -> Result<ExitCode, String> {
    let addr = args.addr("--listen")?;
    let to = args.addr("--connect")?;
    let l = TcpListener::bind(addr).map_err(|e| format!("bind {addr}: {e}"))?;
    say(&format!("relaying {addr} to {to}"));
    for conn in l.incoming() {
        match conn {
            Ok(client) => {
                std::thread::spawn(move || {
                    if let Err(e) = relay_one(client, to) {
                        eprintln!("relay: {e}");
                    }
                });
            }
            Err(e) => eprintln!("accept: {e}"),
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn relay_one(client: TcpStream, to: SocketAddr) -> Result<(), String> {
    let upstream = TcpStream::connect(to).map_err(|e| format!("connect {to}: {e}"))?;
    for s in [&client, &upstream] {
        s.set_nodelay(true).map_err(|e| e.to_string())?;
    }
    let (c2, u2) = (
        client.try_clone().map_err(|e| e.to_string())?,
        upstream.try_clone().map_err(|e| e.to_string())?,
    );
    let up = std::thread::spawn(move || copy_half(c2, u2));
    copy_half(upstream, client);
    let _ = up.join();
    Ok(())
}

/// Copies until `from` ends or fails, then shuts down `to`'s sending side.
fn copy_half(mut from: TcpStream, mut to: TcpStream) {
    let _ = pump(&mut from, &mut to);
    let _ = to.shutdown(Shutdown::Write);
}

// ----------------------------------------------------------------------------- echo

/// A deterministic byte stream (xorshift64*), identical however it is cut into chunks.
struct Stream {
    state: u64,
    buf: [u8; 8],
    pos: usize,
}

impl Stream {
    fn new(seed: u64) -> Stream {
        Stream {
            state: (seed ^ 0x9e37_79b9_7f4a_7c15) | 1,
            buf: [0; 8],
            pos: 8,
        }
    }
    fn fill(&mut self, out: &mut [u8]) {
        for b in out.iter_mut() {
            if self.pos == 8 {
                self.state ^= self.state >> 12;
                self.state ^= self.state << 25;
                self.state ^= self.state >> 27;
                self.buf = self.state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
                self.pos = 0;
            }
            *b = self.buf[self.pos];
            self.pos += 1;
        }
    }
}

fn fail(error: String) -> Result<ExitCode, String> {
    say(&json!({"ok": false, "error": error}).to_string());
    Ok(ExitCode::from(1))
}

/// Reads one line (up to 1 KiB) byte by byte, so that nothing after it is consumed.
fn read_line(s: &mut TcpStream) -> std::io::Result<String> {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while line.len() < 1024 {
        match s.read(&mut b)? {
            0 => break,
            _ if b[0] == b'\n' => break,
            _ => line.push(b[0]),
        }
    }
    Ok(String::from_utf8_lossy(&line).into_owned())
}

fn echo(args: &Args) -> Result<ExitCode, String> {
    let addr = args.addr("--connect")?;
    let total: u64 = args.num("--bytes", 1024)?;
    let timeout = Duration::from_secs(args.num("--timeout-secs", 30)?);
    let seed: u64 = args.num("--seed", 42)?;
    let greet = args.flag("--greet");
    let deadline = Instant::now() + timeout;
    let mut s = match TcpStream::connect_timeout(&addr, timeout) {
        Ok(s) => s,
        Err(e) => return fail(format!("connect {addr}: {e}")),
    };
    let local = s.local_addr().map(|a| a.to_string()).unwrap_or_default();
    let _ = s.set_read_timeout(Some(timeout));
    let _ = s.set_write_timeout(Some(timeout));
    let greeting = if greet {
        match read_line(&mut s) {
            Ok(l) => Some(l),
            Err(e) => return fail(format!("reading the greeting: {e}")),
        }
    } else {
        None
    };
    let writer = match s.try_clone() {
        Ok(w) => w,
        Err(e) => return fail(format!("clone socket: {e}")),
    };
    let sender = spawn_sender(writer, seed, total, 64 * 1024);
    let mut check = Stream::new(seed);
    let mut buf = vec![0u8; 64 * 1024];
    let mut want = vec![0u8; 64 * 1024];
    let mut received: u64 = 0;
    let mut error = None;
    loop {
        if Instant::now() > deadline {
            error = Some(format!(
                "timed out after {timeout:?} with {received} of {total} bytes back"
            ));
            break;
        }
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if received + n as u64 > total {
                    error = Some(format!("received more than the {total} bytes sent"));
                    break;
                }
                check.fill(&mut want[..n]);
                if buf[..n] != want[..n] {
                    let i = buf[..n]
                        .iter()
                        .zip(&want[..n])
                        .position(|(a, b)| a != b)
                        .unwrap_or(0);
                    error = Some(format!("echo differs at byte {}", received + i as u64));
                    break;
                }
                received += n as u64;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                error = Some(format!("read after {received} bytes: {e}"));
                break;
            }
        }
    }
    if error.is_some() {
        let _ = s.shutdown(Shutdown::Both);
    }
    let sent = sender
        .join()
        .unwrap_or_else(|_| Err("sender panicked".into()));
    if let Some(e) = error {
        return fail(e);
    }
    if let Err(e) = sent {
        return fail(e);
    }
    if received != total {
        return fail(format!("received {received} of {total} bytes"));
    }
    say(&json!({
        "ok": true,
        "bytes_sent": total,
        "bytes_received": received,
        "greeting": greeting,
        "local": local,
        "peer": addr.to_string(),
    })
    .to_string());
    Ok(ExitCode::SUCCESS)
}

// ------------------------------------------------------------------------------ udp

fn udp_echo(args: &Args) -> Result<ExitCode, String> {
    let addr = args.addr("--listen")?;
    let s = UdpSocket::bind(addr).map_err(|e| format!("bind {addr}: {e}"))?;
    let local = s.local_addr().map_err(|e| e.to_string())?;
    say(&format!("listening on udp {local}"));
    let mut buf = vec![0u8; 65536];
    loop {
        match s.recv_from(&mut buf) {
            Ok((n, peer)) => {
                say(&format!("udp peer={peer} local={local} bytes={n}"));
                if let Err(e) = s.send_to(&buf[..n], peer) {
                    eprintln!("send_to {peer}: {e}");
                }
            }
            Err(e) => eprintln!("recv: {e}"),
        }
    }
}

fn udp_ping(args: &Args) -> Result<ExitCode, String> {
    let addr = args.addr("--connect")?;
    let timeout = Duration::from_secs(args.num("--timeout-secs", 5)?);
    let bind: SocketAddr = if addr.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    }
    .parse()
    .map_err(|e| format!("{e}"))?;
    let s = match UdpSocket::bind(bind).and_then(|s| s.connect(addr).map(|_| s)) {
        Ok(s) => s,
        Err(e) => return fail(format!("udp socket to {addr}: {e}")),
    };
    let _ = s.set_read_timeout(Some(timeout));
    let local = s.local_addr().map(|a| a.to_string()).unwrap_or_default();
    let nonce = format!(
        "ping {} {}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    );
    if let Err(e) = s.send(nonce.as_bytes()) {
        return fail(format!("send to {addr}: {e}"));
    }
    let mut buf = vec![0u8; 65536];
    let deadline = Instant::now() + timeout;
    loop {
        match s.recv(&mut buf) {
            Ok(n) if buf[..n] == *nonce.as_bytes() => break,
            Ok(_) if Instant::now() < deadline => continue,
            Ok(_) => return fail("only wrong replies".into()),
            Err(e) => return fail(format!("no echo from {addr}: {e}")),
        }
    }
    say(
        &json!({"ok": true, "local": local, "peer": addr.to_string(), "bytes": nonce.len()})
            .to_string(),
    );
    Ok(ExitCode::SUCCESS)
}

// --------------------------------------------------------------------- connect-loop

fn one_round(addr: SocketAddr, greet: bool, timeout: Duration, i: u64) -> Result<(), String> {
    let mut s = TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    if greet {
        let l = read_line(&mut s).map_err(|e| format!("greeting: {e}"))?;
        if !l.starts_with("hello ") {
            return Err(format!("bad greeting {l:?}"));
        }
    }
    let msg = format!("ping {i}\n");
    s.write_all(msg.as_bytes())
        .map_err(|e| format!("write: {e}"))?;
    s.shutdown(Shutdown::Write)
        .map_err(|e| format!("shutdown: {e}"))?;
    let mut back = Vec::new();
    s.read_to_end(&mut back).map_err(|e| format!("read: {e}"))?;
    if back != msg.as_bytes() {
        return Err(format!(
            "echo mismatch: {:?}",
            String::from_utf8_lossy(&back)
        ));
    }
    Ok(())
}

fn connect_loop(args: &Args) -> Result<ExitCode, String> {
    let addr = args.addr("--connect")?;
    let interval = Duration::from_millis(args.num("--interval-ms", 50)?);
    let duration = Duration::from_secs(args.num("--duration-secs", 5)?);
    let timeout = Duration::from_secs(args.num("--timeout-secs", 5)?);
    let greet = args.flag("--greet");
    let end = Instant::now() + duration;
    rounds(addr, greet, timeout, interval, false, || {
        Instant::now() < end
    })
}

// ------------------------------------------------------------------------ benchmarks
//
// Load generators and servers of `meshd_tests::bench`: each client prints one JSON line.

/// Raises the soft RLIMIT_NOFILE to the hard limit; returns the new soft limit.
fn raise_nofile() -> u64 {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls on a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) != 0 {
            return 0;
        }
        r.rlim_cur = r.rlim_max;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &r) != 0 {
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut r);
        }
    }
    r.rlim_cur
}

/// Timer slack of 1 ns, so that sleeping until a request's scheduled time wakes up on time.
fn precise_timers() {
    // SAFETY: prctl(PR_SET_TIMERSLACK) only changes this thread's timer slack.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong, 0, 0, 0);
    }
}

/// The `q` quantile (0..=1) of sorted nanoseconds, in microseconds.
fn quantile_us(sorted: &[u64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    let i = rank.clamp(1, sorted.len()) - 1;
    sorted[i] as f64 / 1000.0
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn exchange(s: &mut TcpStream, msg: &[u8], back: &mut [u8]) -> std::io::Result<()> {
    s.write_all(msg)?;
    s.read_exact(back)
}

/// Request/response at a fixed rate over one persistent connection to an echo server.
/// Latency is measured from each request's scheduled send time (coordinated omission
/// corrected): a request that could only be sent late because the previous one was slow
/// counts the wait.
fn rr(args: &Args) -> Result<ExitCode, String> {
    let addr = args.addr("--connect")?;
    let size: usize = args.num("--size", 1024)?;
    let rate: f64 = args.num("--rate", 1000.0)?;
    let duration: f64 = args.num("--duration-secs", 5.0)?;
    let warmup: u64 = args.num("--warmup", 100)?;
    let timeout = Duration::from_secs(args.num("--timeout-secs", 10)?);
    if rate <= 0.0 || duration <= 0.0 || size == 0 {
        return Err("--rate, --duration-secs and --size must be positive".into());
    }
    precise_timers();
    let mut s = match TcpStream::connect_timeout(&addr, timeout) {
        Ok(s) => s,
        Err(e) => return fail(format!("connect {addr}: {e}")),
    };
    let _ = s.set_nodelay(true);
    let _ = s.set_read_timeout(Some(timeout));
    let _ = s.set_write_timeout(Some(timeout));
    let msg = vec![0x5au8; size];
    let mut back = vec![0u8; size];
    for i in 0..warmup {
        if let Err(e) = exchange(&mut s, &msg, &mut back) {
            return fail(format!("warm-up request {i}: {e}"));
        }
    }
    let n = (rate * duration).round().max(1.0) as u64;
    let interval_ns = 1e9 / rate;
    let start = Instant::now() + Duration::from_millis(1);
    let mut lat: Vec<u64> = Vec::with_capacity(n as usize);
    let mut late = 0u64;
    for i in 0..n {
        let sched = start + Duration::from_nanos((i as f64 * interval_ns) as u64);
        let now = Instant::now();
        if sched > now {
            std::thread::sleep(sched - now);
        } else if (now - sched).as_nanos() as f64 > interval_ns {
            late += 1;
        }
        if let Err(e) = exchange(&mut s, &msg, &mut back) {
            return fail(format!("request {i} of {n}: {e}"));
        }
        lat.push(u64::try_from(sched.elapsed().as_nanos()).unwrap_or(u64::MAX));
    }
    let elapsed = start.elapsed().as_secs_f64();
    lat.sort_unstable();
    let mean = lat.iter().map(|&x| x as f64).sum::<f64>() / lat.len() as f64 / 1000.0;
    say(&json!({
        "ok": true,
        "requests": n,
        "rate": rate,
        "size": size,
        "elapsed_secs": elapsed,
        "late": late,
        "p50_us": round1(quantile_us(&lat, 0.50)),
        "p90_us": round1(quantile_us(&lat, 0.90)),
        "p99_us": round1(quantile_us(&lat, 0.99)),
        "p999_us": round1(quantile_us(&lat, 0.999)),
        "max_us": round1(quantile_us(&lat, 1.0)),
        "mean_us": round1(mean),
    })
    .to_string());
    Ok(ExitCode::SUCCESS)
}

fn one_connection(addr: SocketAddr, msg: &[u8], timeout: Duration) -> Result<(), String> {
    let mut s = TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("connect: {e}"))?;
    let _ = s.set_nodelay(true);
    s.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    let mut back = vec![0u8; msg.len()];
    exchange(&mut s, msg, &mut back).map_err(|e| format!("exchange: {e}"))?;
    if back != msg {
        return Err("echo mismatch".into());
    }
    Ok(())
}

/// New connections per second: each of N threads connects, exchanges one small message
/// with an echo server and closes, as fast as it can, for the duration.
fn cps(args: &Args) -> Result<ExitCode, String> {
    let addr = args.addr("--connect")?;
    let duration: f64 = args.num("--duration-secs", 5.0)?;
    let concurrency: usize = args.num("--concurrency", 4)?;
    let size: usize = args.num("--size", 64)?;
    let timeout = Duration::from_secs(args.num("--timeout-secs", 5)?);
    raise_nofile();
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(duration.max(0.01));
    let workers: Vec<_> = (0..concurrency.max(1))
        .map(|_| {
            std::thread::spawn(move || {
                let msg = vec![0x33u8; size.max(1)];
                let (mut ok, mut failed) = (0u64, 0u64);
                let mut errors = Vec::new();
                while Instant::now() < end {
                    match one_connection(addr, &msg, timeout) {
                        Ok(()) => ok += 1,
                        Err(e) => {
                            failed += 1;
                            if errors.len() < 3 {
                                errors.push(e);
                            }
                        }
                    }
                }
                (ok, failed, errors)
            })
        })
        .collect();
    let (mut ok, mut failed, mut errors) = (0u64, 0u64, Vec::<String>::new());
    for w in workers {
        let (o, f, e) = w.join().map_err(|_| "worker panicked".to_string())?;
        ok += o;
        failed += f;
        errors.extend(e.into_iter().take(10usize.saturating_sub(errors.len())));
    }
    let elapsed = start.elapsed().as_secs_f64();
    say(&json!({
        "ok": ok > 0,
        "connections": ok,
        "failed": failed,
        "elapsed_secs": elapsed,
        "cps": ok as f64 / elapsed,
        "errors": errors,
    })
    .to_string());
    Ok(if ok > 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Opens N connections one after another (each confirmed by the one byte `sink` sends on
/// accept), prints a JSON line, then holds them open for `--hold-secs`. Gives up after 3
/// failures in a row or 20 in all (an agent out of file descriptors makes every further
/// attempt wait for the timeout).
fn hold(args: &Args) -> Result<ExitCode, String> {
    let addr = args.addr("--connect")?;
    let count: usize = args.num("--count", 100)?;
    let hold_secs: u64 = args.num("--hold-secs", 30)?;
    let timeout = Duration::from_secs(args.num("--timeout-secs", 3)?);
    let limit = raise_nofile();
    let start = Instant::now();
    let mut conns = Vec::with_capacity(count);
    let (mut failed, mut in_a_row) = (0u64, 0u32);
    let mut errors: Vec<String> = Vec::new();
    for i in 0..count {
        if in_a_row >= 3 || failed >= 20 {
            break;
        }
        let r = TcpStream::connect_timeout(&addr, timeout).and_then(|mut s| {
            s.set_read_timeout(Some(timeout))?;
            let mut b = [0u8; 1];
            s.read_exact(&mut b)?;
            Ok(s)
        });
        match r {
            Ok(s) => {
                conns.push(s);
                in_a_row = 0;
            }
            Err(e) => {
                failed += 1;
                in_a_row += 1;
                if errors.len() < 5 {
                    errors.push(format!("connection #{i}: {e}"));
                }
            }
        }
    }
    let ok = conns.len() == count;
    say(&json!({
        "ok": ok,
        "requested": count,
        "opened": conns.len(),
        "failed": failed,
        "errors": errors,
        "nofile_limit": limit,
        "elapsed_secs": start.elapsed().as_secs_f64(),
    })
    .to_string());
    std::thread::sleep(Duration::from_secs(hold_secs));
    drop(conns);
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Accepts connections, sends one byte on each and keeps them open until it is killed.
fn sink(args: &Args) -> Result<ExitCode, String> {
    let addr = args.addr("--listen")?;
    let limit = raise_nofile();
    let l = TcpListener::bind(addr).map_err(|e| format!("bind {addr}: {e}"))?;
    let local = l.local_addr().map_err(|e| e.to_string())?;
    say(&format!("listening on {local} (nofile {limit})"));
    let mut held = Vec::new();
    for conn in l.incoming() {
        match conn {
            Ok(mut s) => {
                if s.write_all(b"k").is_ok() {
                    held.push(s);
                }
            }
            Err(e) => {
                eprintln!("accept: {e} (holding {})", held.len());
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

const HTTP_RESPONSE: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 12\r\n\r\nhello world\n";

/// A small HTTP/1.1 keep-alive responder (a thread per connection): every request gets
/// `200 OK` with a 12-byte body.
fn http_serve(args: &Args) -> Result<ExitCode, String> {
    let addr = args.addr("--listen")?;
    raise_nofile();
    let l = TcpListener::bind(addr).map_err(|e| format!("bind {addr}: {e}"))?;
    let local = l.local_addr().map_err(|e| e.to_string())?;
    say(&format!("listening on {local}"));
    for conn in l.incoming() {
        match conn {
            Ok(s) => {
                std::thread::spawn(move || http_conn(s));
            }
            Err(e) => {
                eprintln!("accept: {e}");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn http_conn(s: TcpStream) {
    use std::io::BufRead;
    let _ = s.set_nodelay(true);
    let Ok(r) = s.try_clone() else { return };
    let mut r = std::io::BufReader::with_capacity(16 * 1024, r);
    let mut w = s;
    let mut line = Vec::with_capacity(256);
    loop {
        // The request line and headers.
        let (mut length, mut close, mut first) = (0u64, false, true);
        loop {
            line.clear();
            match r.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            let text = String::from_utf8_lossy(&line);
            let text = text.trim_end();
            if first {
                first = false;
                close = text.ends_with("HTTP/1.0");
                continue;
            }
            if text.is_empty() {
                break;
            }
            if let Some((k, v)) = text.split_once(':') {
                let v = v.trim();
                if k.eq_ignore_ascii_case("content-length") {
                    length = v.parse().unwrap_or(0);
                } else if k.eq_ignore_ascii_case("connection") {
                    close = v.eq_ignore_ascii_case("close");
                }
            }
        }
        if length > 0 && std::io::copy(&mut (&mut r).take(length), &mut std::io::sink()).is_err() {
            return;
        }
        if w.write_all(HTTP_RESPONSE).is_err() || close {
            return;
        }
    }
}

// ------------------------------------------------------------- lifecycle and resets
//
// `connect-until --connect ADDR --stop-file PATH [--interval-ms MS] [--greet] [--timeout-secs S]`:
// the rounds of `connect-loop`, until PATH exists (the test decides when the traffic ends);
// prints `round N ok` or `round N failed: ERROR` per round, then the same JSON summary.
//
// `reset-serve --listen ADDR`: per connection, reads one line. `reset-me`: closes at once
// with SO_LINGER 0 (a reset). `wait-reset`: answers `ready`, then reads until the peer goes
// and prints `ended peer=P reset|eof|error: E`.
//
// `reset-client --connect ADDR --mode server|client [--timeout-secs S]`: `server` sends
// `reset-me` and reports how the connection ended (`"outcome": "reset"|"eof"|"error: E"`);
// `client` sends `wait-reset`, waits for `ready` and closes with SO_LINGER 0.

fn connect_until(args: &Args) -> Result<ExitCode, String> {
    let addr = args.addr("--connect")?;
    let stop = std::path::PathBuf::from(args.req("--stop-file")?);
    let interval = Duration::from_millis(args.num("--interval-ms", 50)?);
    let timeout = Duration::from_secs(args.num("--timeout-secs", 5)?);
    let greet = args.flag("--greet");
    rounds(addr, greet, timeout, interval, true, || !stop.exists())
}

/// The rounds of `connect-loop` and `connect-until`: one every `interval` while `go_on`
/// says so, each printed as it ends if `print_each`; then the JSON summary. Succeeds if
/// no round failed and at least one did not.
fn rounds(
    addr: SocketAddr,
    greet: bool,
    timeout: Duration,
    interval: Duration,
    print_each: bool,
    mut go_on: impl FnMut() -> bool,
) -> Result<ExitCode, String> {
    let (mut ok, mut failed) = (0u64, 0u64);
    let mut errors: Vec<String> = Vec::new();
    let mut i = 0;
    while go_on() {
        match one_round(addr, greet, timeout, i) {
            Ok(()) => {
                ok += 1;
                if print_each {
                    say(&format!("round {i} ok"));
                }
            }
            Err(e) => {
                failed += 1;
                if print_each {
                    say(&format!("round {i} failed: {e}"));
                }
                if errors.len() < 10 {
                    errors.push(format!("#{i}: {e}"));
                }
            }
        }
        i += 1;
        std::thread::sleep(interval);
    }
    say(&json!({"ok": ok, "failed": failed, "errors": errors}).to_string());
    Ok(if failed == 0 && ok > 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Closes `s` with SO_LINGER 0: the kernel sends a RST instead of a FIN.
fn close_with_reset(s: TcpStream) {
    use std::os::fd::AsRawFd;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on a socket we own, with a correctly sized struct.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
    drop(s);
}

/// How a read loop ended: the peer reset, closed (eof), or another error.
fn read_until_end(s: &mut TcpStream) -> String {
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return "eof".into(),
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return "reset".into(),
            Err(e) => return format!("error: {e}"),
        }
    }
}

fn reset_serve(args: &Args) -> Result<ExitCode, String> {
    let addr = args.addr("--listen")?;
    let l = TcpListener::bind(addr).map_err(|e| format!("bind {addr}: {e}"))?;
    let local = l.local_addr().map_err(|e| e.to_string())?;
    say(&format!("listening on {local}"));
    for conn in l.incoming() {
        let Ok(mut s) = conn else { continue };
        std::thread::spawn(move || {
            let peer = s
                .peer_addr()
                .map(|a| a.to_string())
                .unwrap_or_else(|_| "?".into());
            let _ = s.set_read_timeout(Some(Duration::from_secs(60)));
            let line = read_line(&mut s).unwrap_or_default();
            say(&format!("accepted peer={peer} asked={line}"));
            match line.as_str() {
                "reset-me" => close_with_reset(s),
                "wait-reset" if s.write_all(b"ready\n").is_ok() => {
                    let how = read_until_end(&mut s);
                    say(&format!("ended peer={peer} {how}"));
                }
                _ => {}
            }
        });
    }
    Ok(ExitCode::SUCCESS)
}

fn reset_client(args: &Args) -> Result<ExitCode, String> {
    let addr = args.addr("--connect")?;
    let mode = args.req("--mode")?.to_string();
    let timeout = Duration::from_secs(args.num("--timeout-secs", 10)?);
    let mut s = match TcpStream::connect_timeout(&addr, timeout) {
        Ok(s) => s,
        Err(e) => return fail(format!("connect {addr}: {e}")),
    };
    let _ = s.set_read_timeout(Some(timeout));
    match mode.as_str() {
        "server" => {
            if let Err(e) = s.write_all(b"reset-me\n") {
                return fail(format!("write: {e}"));
            }
            let outcome = read_until_end(&mut s);
            say(&json!({"ok": true, "outcome": outcome}).to_string());
        }
        "client" => {
            if let Err(e) = s.write_all(b"wait-reset\n") {
                return fail(format!("write: {e}"));
            }
            match read_line(&mut s) {
                Ok(l) if l == "ready" => {}
                Ok(l) => return fail(format!("expected ready, got {l:?}")),
                Err(e) => return fail(format!("reading ready: {e}")),
            }
            close_with_reset(s);
            say(&json!({"ok": true}).to_string());
        }
        other => return Err(format!("--mode is server or client, not {other:?}")),
    }
    Ok(ExitCode::SUCCESS)
}

// ------------------------------------------------------------------------ echo-many

/// `count` connections opened at the same instant (a barrier before `connect`), each reads
/// the server's greeting (so its path is established end to end), then waits until all
/// are established, so that `count` connections are open at once; then each echoes
/// `bytes` of its own stream (seed = its index) and checks every byte.
fn echo_many(args: &Args) -> Result<ExitCode, String> {
    let addr = args.addr("--connect")?;
    let count: usize = args.num("--count", 150)?;
    let total: u64 = args.num("--bytes", 65536)?;
    let timeout = Duration::from_secs(args.num("--timeout-secs", 30)?);
    raise_nofile();
    let start = std::sync::Arc::new(std::sync::Barrier::new(count));
    let open = std::sync::Arc::new(std::sync::Barrier::new(count));
    let threads: Vec<_> = (0..count)
        .map(|i| {
            let (start, open) = (start.clone(), open.clone());
            std::thread::spawn(move || -> Result<u64, String> {
                start.wait();
                let conn = TcpStream::connect_timeout(&addr, timeout)
                    .map_err(|e| format!("connect: {e}"))
                    .and_then(|mut s| {
                        s.set_read_timeout(Some(timeout))
                            .map_err(|e| e.to_string())?;
                        s.set_write_timeout(Some(timeout))
                            .map_err(|e| e.to_string())?;
                        let l = read_line(&mut s).map_err(|e| format!("greeting: {e}"))?;
                        if !l.starts_with("hello ") {
                            return Err(format!("bad greeting {l:?}"));
                        }
                        Ok(s)
                    });
                open.wait();
                let mut s = conn.map_err(|e| format!("#{i}: {e}"))?;
                echo_one(&mut s, total, i as u64 + 1).map_err(|e| format!("#{i}: {e}"))
            })
        })
        .collect();
    let (mut ok, mut failed, mut bytes) = (0u64, 0u64, 0u64);
    let mut errors: Vec<String> = Vec::new();
    for t in threads {
        match t.join().unwrap_or_else(|_| Err("panicked".into())) {
            Ok(n) => {
                ok += 1;
                bytes += n;
            }
            Err(e) => {
                failed += 1;
                if errors.len() < 10 {
                    errors.push(e);
                }
            }
        }
    }
    say(
        &json!({"ok": failed == 0, "connections": ok, "failed": failed,
        "bytes_received": bytes, "errors": errors})
        .to_string(),
    );
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// A thread that writes `total` bytes of the stream `seed` on `writer` in chunks of
/// `chunk` bytes, then half-closes it.
fn spawn_sender(
    mut writer: TcpStream,
    seed: u64,
    total: u64,
    chunk: usize,
) -> std::thread::JoinHandle<Result<(), String>> {
    std::thread::spawn(move || -> Result<(), String> {
        let mut gen = Stream::new(seed);
        let mut buf = vec![0u8; chunk];
        let mut left = total;
        while left > 0 {
            let n = usize::try_from(left.min(buf.len() as u64)).unwrap_or(buf.len());
            gen.fill(&mut buf[..n]);
            writer
                .write_all(&buf[..n])
                .map_err(|e| format!("write: {e}"))?;
            left -= n as u64;
        }
        writer
            .shutdown(Shutdown::Write)
            .map_err(|e| format!("shutdown: {e}"))
    })
}

/// Sends `total` bytes of the stream `seed` on `s` (then half-closes) and checks that
/// exactly the same bytes come back; returns the bytes received.
fn echo_one(s: &mut TcpStream, total: u64, seed: u64) -> Result<u64, String> {
    let writer = s.try_clone().map_err(|e| format!("clone: {e}"))?;
    let sender = spawn_sender(writer, seed, total, 16 * 1024);
    let mut check = Stream::new(seed);
    let (mut buf, mut want) = (vec![0u8; 16 * 1024], vec![0u8; 16 * 1024]);
    let mut received = 0u64;
    let result = loop {
        match s.read(&mut buf) {
            Ok(0) => break Ok(()),
            Ok(n) => {
                if received + n as u64 > total {
                    break Err(format!("more than the {total} bytes sent"));
                }
                check.fill(&mut want[..n]);
                if buf[..n] != want[..n] {
                    break Err(format!("echo differs after byte {received}"));
                }
                received += n as u64;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => break Err(format!("read after {received} bytes: {e}")),
        }
    };
    if result.is_err() {
        let _ = s.shutdown(Shutdown::Both);
    }
    let sent = sender
        .join()
        .unwrap_or_else(|_| Err("sender panicked".into()));
    result?;
    sent?;
    if received != total {
        return Err(format!("received {received} of {total} bytes"));
    }
    Ok(received)
}
