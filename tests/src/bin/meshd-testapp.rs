//! meshd-testapp: the "app" that runs in test pods.
//!
//! ```text
//! meshd-testapp serve --listen 0.0.0.0:8080 [--greet]
//! meshd-testapp echo --connect 10.244.1.2:8080 --bytes N [--greet] [--timeout-secs S] [--seed X]
//! meshd-testapp udp-echo --listen 0.0.0.0:5353
//! meshd-testapp udp-ping --connect 10.244.1.2:5353 [--timeout-secs S]
//! meshd-testapp connect-loop --connect ADDR [--interval-ms 50] [--duration-secs S] [--greet]
//! ```
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
  meshd-testapp connect-loop --connect ADDR [--interval-ms MS] [--duration-secs S] [--greet] [--timeout-secs S]";

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

fn handle(mut s: TcpStream, greet: bool) {
    let peer = s
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| "?".into());
    let local = s
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| "?".into());
    say(&format!("accepted peer={peer} local={local}"));
    let _ = s.set_read_timeout(Some(Duration::from_secs(300)));
    let _ = s.set_write_timeout(Some(Duration::from_secs(300)));
    if greet
        && s.write_all(format!("hello peer={peer} local={local}\n").as_bytes())
            .is_err()
    {
        return;
    }
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if s.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return,
        }
    }
    let _ = s.shutdown(Shutdown::Write);
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
    let mut writer = match s.try_clone() {
        Ok(w) => w,
        Err(e) => return fail(format!("clone socket: {e}")),
    };
    let sender = std::thread::spawn(move || -> Result<(), String> {
        let mut gen = Stream::new(seed);
        let mut buf = vec![0u8; 64 * 1024];
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
    });
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
    let (mut ok, mut failed) = (0u64, 0u64);
    let mut errors: Vec<String> = Vec::new();
    let mut i = 0;
    while Instant::now() < end {
        match one_round(addr, greet, timeout, i) {
            Ok(()) => ok += 1,
            Err(e) => {
                failed += 1;
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
