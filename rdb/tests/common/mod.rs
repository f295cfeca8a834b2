//! Test helpers: redis-server processes on free loopback ports, killed when dropped, and a
//! small RESP client.

#![allow(dead_code)]

use bytes::{Bytes, BytesMut};
use sluice_common::resp::{encode_command, measure, parse_frame, Frame, Limits, Scan};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A redis-server child process with its own directory; killed and cleaned up on drop.
pub struct RedisServer {
    pub port: u16,
    child: Child,
    dir: PathBuf,
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

impl RedisServer {
    /// Starts `redis-server` from PATH with persistence off and `extra` arguments, and waits
    /// until it answers PING. Retries on another port if the one picked was taken meanwhile.
    pub async fn start(extra: &[&str]) -> RedisServer {
        for _ in 0..5 {
            let port = free_port();
            let dir = std::env::temp_dir().join(format!("sluice-rdb-test-{}-{port}", std::process::id()));
            std::fs::create_dir_all(&dir).expect("test directory");
            let mut args: Vec<String> = [
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
                "--protected-mode",
                "no",
                "--loglevel",
                "warning",
                "--dir",
                dir.to_str().expect("utf-8 temp dir"),
                "--logfile",
                "redis.log",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            args.extend(extra.iter().map(|s| s.to_string()));
            let child = Command::new("redis-server")
                .args(&args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server in PATH");
            let mut server = RedisServer { port, child, dir };
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = server.child.try_wait() {
                    break; // exited: probably the port; try another
                }
                if let Ok(mut c) = Client::connect(port).await {
                    // PONG, or NOAUTH when a password is set: either way it is serving.
                    let reply = c.cmd(&["PING"]).await;
                    if reply == Frame::Simple("PONG".into())
                        || matches!(reply, Frame::Error(ref e) if e.starts_with(b"NOAUTH"))
                    {
                        return server;
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let log = std::fs::read_to_string(server.dir.join("redis.log")).unwrap_or_default();
            eprintln!("redis-server on port {port} did not start: {log}");
        }
        panic!("could not start redis-server");
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub async fn client(&self) -> Client {
        Client::connect(self.port).await.expect("connect to redis-server")
    }
}

/// A minimal RESP2 client: one command at a time.
pub struct Client {
    stream: TcpStream,
    buf: BytesMut,
}

impl Client {
    pub async fn connect(port: u16) -> std::io::Result<Client> {
        let stream = TcpStream::connect(("127.0.0.1", port)).await?;
        Ok(Client { stream, buf: BytesMut::new() })
    }

    /// Sends a command, returns its reply (errors come back as `Frame::Error`).
    pub async fn cmd<A: AsRef<[u8]>>(&mut self, args: &[A]) -> Frame {
        let mut out = BytesMut::new();
        encode_command(args, &mut out);
        self.stream.write_all(&out).await.expect("write to redis-server");
        loop {
            if let Scan::Complete(n) = measure(&self.buf, &Limits::SERVER).expect("valid reply") {
                let bytes = self.buf.split_to(n).freeze();
                return parse_frame(&bytes, &Limits::SERVER).expect("valid reply").0;
            }
            let n = self.stream.read_buf(&mut self.buf).await.expect("read from redis-server");
            assert!(n > 0, "redis-server closed the connection");
        }
    }

    /// A command whose reply must not be an error.
    pub async fn ok<A: AsRef<[u8]>>(&mut self, args: &[A]) -> Frame {
        let reply = self.cmd(args).await;
        if let Frame::Error(e) = &reply {
            let shown: Vec<String> = args.iter().take(4).map(|a| String::from_utf8_lossy(a.as_ref()).into()).collect();
            panic!("{shown:?} failed: {}", String::from_utf8_lossy(e));
        }
        reply
    }

    pub async fn int<A: AsRef<[u8]>>(&mut self, args: &[A]) -> i64 {
        match self.ok(args).await {
            Frame::Integer(i) => i,
            other => panic!("expected an integer, got {other:?}"),
        }
    }

    pub async fn bulk<A: AsRef<[u8]>>(&mut self, args: &[A]) -> Option<Bytes> {
        match self.ok(args).await {
            Frame::Bulk(b) | Frame::Simple(b) => Some(b),
            Frame::Null => None,
            other => panic!("expected a bulk string, got {other:?}"),
        }
    }

    /// An array reply as a list of byte strings.
    pub async fn list<A: AsRef<[u8]>>(&mut self, args: &[A]) -> Vec<Bytes> {
        match self.ok(args).await {
            Frame::Array(items) => items
                .into_iter()
                .map(|f| match f {
                    Frame::Bulk(b) | Frame::Simple(b) => b,
                    Frame::Integer(i) => Bytes::from(i.to_string()),
                    other => panic!("expected strings, got {other:?}"),
                })
                .collect(),
            other => panic!("expected an array, got {other:?}"),
        }
    }

    /// One field of `INFO <section>`.
    pub async fn info_field(&mut self, section: &str, field: &str) -> Option<String> {
        let info = self.bulk(&["INFO", section]).await.unwrap_or_default();
        let text = String::from_utf8_lossy(&info).into_owned();
        text.lines().find_map(|l| l.strip_prefix(&format!("{field}:")).map(|v| v.trim().to_string()))
    }
}
