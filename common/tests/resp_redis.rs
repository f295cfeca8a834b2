//! The command parser against a real `redis-server` (issue 22): generated command streams —
//! valid multibulk and inline commands, some with a mangled header — are sent to Redis and
//! decoded by [`CommandCodec`]; both must take the same commands (Redis answers each one once,
//! `ECHO` with the very argument we parsed) and refuse the stream at the same command.
//!
//! One `redis-server` on a Unix socket serves every case (no port to race for); each case has
//! its own connection, written whole, then half-closed, then read to the end: Redis answers
//! what it took and closes (after `Protocol error` or at our end of input), so nothing waits
//! on a timer. `PROPTEST_CASES` runs longer.
//!
//! Deliberate differences, kept out of the generator: Redis does not check the two bytes after
//! a bulk string's data nor the `\n` after a header's `\r` (we refuse both), and it stalls on
//! a NUL byte where it looks for a line's end (we refuse it).

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use sluice_common::resp::{encode_command, parse_frame, CommandCodec, Frame, Limits, ReplyCodec};
use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio_util::codec::Decoder;

/// A `redis-server` from PATH on a Unix socket in a fresh directory; killed when dropped.
struct Redis {
    child: Child,
    dir: PathBuf,
    socket: PathBuf,
}

impl Redis {
    fn start() -> Redis {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let dir = std::env::temp_dir().join(format!("sluice-resp-redis-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let socket = dir.join("redis.sock");
        let child = Command::new("redis-server")
            .args(["--port", "0", "--save", "", "--appendonly", "no", "--unixsocket"])
            .arg(&socket)
            .arg("--dir")
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be on PATH (scripts/deps.sh installs it)");
        let redis = Redis { child, dir, socket };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(reply) = redis.exchange(b"PING\r\n") {
                if reply == b"+PONG\r\n" {
                    return redis;
                }
            }
            assert!(Instant::now() < deadline, "redis-server did not answer PING on {:?} within 30 s", redis.socket);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends `input`, half-closes, reads until Redis closes.
    fn exchange(&self, input: &[u8]) -> std::io::Result<Vec<u8>> {
        let mut conn = UnixStream::connect(&self.socket)?;
        // A safety net only: Redis closes as soon as it read our end of input.
        conn.set_read_timeout(Some(Duration::from_secs(30)))?;
        conn.write_all(input)?;
        conn.shutdown(Shutdown::Write)?;
        let mut out = Vec::new();
        conn.read_to_end(&mut out)?;
        Ok(out)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Argument bytes. No `$` (so bytes read as a header when a count is mangled upwards are never
/// a bulk header: both sides refuse them), no NUL (Redis's `strchr` stops there), and no
/// letters that could spell a real command other than the ones we mean.
fn arg_bytes() -> impl Strategy<Value = Vec<u8>> {
    let byte = prop::sample::select(&b"xyz019 \t\r\n\x0b\x0c\"'\\*:-+\x01\x80\xff"[..]);
    prop::collection::vec(byte, 0..10)
}

/// One command as bytes.
#[derive(Debug, Clone)]
enum Piece {
    /// A multibulk command; `count` / `bulk` replace its count line or one bulk length line.
    Multibulk { args: Vec<Vec<u8>>, count: Option<&'static str>, bulk: Option<(usize, &'static str)> },
    /// An inline line (its bytes, then `\r\n` or `\n`).
    Inline { line: Vec<u8>, crlf: bool },
}

impl Piece {
    fn bytes(&self, out: &mut Vec<u8>) {
        match self {
            Piece::Multibulk { args, count, bulk } => {
                out.extend_from_slice(
                    format!("*{}\r\n", count.map_or(args.len().to_string(), str::to_string)).as_bytes(),
                );
                for (i, a) in args.iter().enumerate() {
                    let len = match bulk {
                        Some((at, with)) if *at % args.len() == i => with.to_string(),
                        _ => a.len().to_string(),
                    };
                    out.extend_from_slice(format!("${len}\r\n").as_bytes());
                    out.extend_from_slice(a);
                    out.extend_from_slice(b"\r\n");
                }
            }
            Piece::Inline { line, crlf } => {
                out.extend_from_slice(line);
                out.extend_from_slice(if *crlf { b"\r\n" } else { b"\n" });
            }
        }
    }
}

fn command_args() -> impl Strategy<Value = Vec<Vec<u8>>> {
    let name =
        prop::sample::select(vec!["ECHO", "echo", "PING", "GET", "SET", "xzy"]).prop_map(|n| n.as_bytes().to_vec());
    (name, prop::collection::vec(arg_bytes(), 0..3)).prop_map(|(name, rest)| {
        let mut args = vec![name];
        args.extend(rest);
        args
    })
}

fn piece() -> impl Strategy<Value = Piece> {
    // Count lines Redis refuses, ignores (≤ 0) or reads differently from the real count.
    let counts = prop::sample::select(vec![
        "0",
        "-1",
        "-5",
        "-0",
        "02",
        "+1",
        "",
        "x",
        " 1",
        "1 ",
        "1",
        "3",
        "2147483647",
        "2147483648",
        "99999999999999999999",
        "-9223372036854775808",
    ]);
    // Bulk lengths Redis refuses (a wrong but valid length would shift the data, whose
    // terminator Redis does not check and we do).
    let bulks = prop::sample::select(vec!["-1", "-0", "03", "+3", "", "x", "536870913", "99999999999999999999"]);
    let multibulk =
        (command_args(), prop::option::weighted(0.1, counts), prop::option::weighted(0.1, (0..4usize, bulks)))
            .prop_map(|(args, count, bulk)| Piece::Multibulk { args, count, bulk });
    let inline =
        (command_args(), prop::collection::vec(prop::sample::select(vec![" ", "  ", "\t", "\x0b"]), 3), any::<bool>())
            .prop_map(|(args, seps, crlf)| {
                let mut line = Vec::new();
                for (i, a) in args.iter().enumerate() {
                    if i > 0 {
                        line.extend_from_slice(seps[i % seps.len()].as_bytes());
                    }
                    // An argument quoted now and then, with escapes inside.
                    if i > 0 && a.first() == Some(&b'x') {
                        line.push(b'"');
                        line.extend_from_slice(a);
                        line.extend_from_slice(b"\\x41\\n\"");
                    } else {
                        line.extend_from_slice(a);
                    }
                }
                Piece::Inline { line, crlf }
            });
    prop_oneof![3 => multibulk, 1 => inline]
}

/// What one side made of a stream: the commands taken (their arguments), and whether it
/// then refused the stream.
#[derive(Debug, PartialEq)]
struct Outcome {
    taken: usize,
    refused: bool,
}

/// Our commands, and our refusal if we refused the stream.
fn ours(input: &[u8]) -> (Vec<Vec<Bytes>>, Option<String>) {
    let mut codec = CommandCodec::default();
    let mut buf = BytesMut::from(input);
    let mut cmds = Vec::new();
    loop {
        match codec.decode(&mut buf) {
            Ok(Some(cmd)) => cmds.push(cmd.args().to_vec()),
            Ok(None) => return (cmds, None),
            Err(e) => return (cmds, Some(e.to_string())),
        }
    }
}

/// Our refusals where Redis reads on regardless (see the module doc): a `\r` not followed by
/// `\n` (Redis skips two bytes blindly), a bulk string not ended by `\r\n`.
fn stricter_than_redis(refusal: &str) -> bool {
    refusal.contains("expected \\r\\n after line") || refusal.contains("not terminated")
}

/// Redis's answers, one frame each, and whether the last is its `Protocol error`.
fn theirs(output: &[u8]) -> Result<(Vec<Frame>, bool), TestCaseError> {
    let mut codec = ReplyCodec::new(Limits::SERVER);
    let mut buf = BytesMut::from(output);
    let mut replies = Vec::new();
    while let Some(raw) = codec.decode(&mut buf).map_err(|e| TestCaseError::fail(format!("Redis's reply: {e}")))? {
        let (frame, _) = parse_frame(&raw, &Limits::SERVER).map_err(|e| TestCaseError::fail(e.to_string()))?;
        replies.push(frame);
    }
    if !buf.is_empty() {
        return Err(TestCaseError::fail(format!("a partial reply from Redis: {:?}", String::from_utf8_lossy(&buf))));
    }
    let refused = matches!(replies.last(), Some(Frame::Error(e)) if e.starts_with(b"ERR Protocol error"));
    if refused {
        replies.pop();
    }
    Ok((replies, refused))
}

#[test]
fn the_parser_takes_exactly_what_redis_takes() {
    let redis = Redis::start();
    let mut runner = TestRunner::new(Config::default());
    let cases = runner.config().cases;
    let refused_cases = std::cell::Cell::new(0usize);
    let stricter = std::cell::Cell::new(0usize);
    let commands = std::cell::Cell::new(0usize);
    let result = runner.run(&prop::collection::vec(piece(), 1..8), |pieces| {
        let mut input = Vec::new();
        for p in &pieces {
            p.bytes(&mut input);
        }
        let (cmds, refusal) = ours(&input);
        let we_refuse = refusal.is_some();
        let output = redis.exchange(&input).map_err(|e| TestCaseError::fail(format!("talking to Redis: {e}")))?;
        let (replies, they_refuse) = theirs(&output)?;
        let shown = String::from_utf8_lossy(&input).into_owned();
        if refusal.as_deref().is_some_and(stricter_than_redis) {
            // Stricter on purpose: Redis took at least what we took, and read it the same.
            prop_assert!(replies.len() >= cmds.len(), "input {:?}", shown);
            stricter.set(stricter.get() + 1);
            return Ok(());
        }
        prop_assert_eq!(
            Outcome { taken: cmds.len(), refused: we_refuse },
            Outcome { taken: replies.len(), refused: they_refuse },
            "input {:?}\nours {:?}\nRedis {:?}",
            shown,
            cmds,
            replies
        );
        commands.set(commands.get() + cmds.len());
        refused_cases.set(refused_cases.get() + usize::from(we_refuse));
        // Where the reply shows the arguments Redis parsed, they are ours.
        for (args, reply) in cmds.iter().zip(&replies) {
            if args.len() == 2 && args[0].eq_ignore_ascii_case(b"echo") {
                prop_assert_eq!(reply, &Frame::Bulk(args[1].clone()), "input {:?}", shown);
            }
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    eprintln!(
        "{cases} generated streams agreed with redis-server: {} commands taken, {} streams refused by both, \
         {} refused only by our stricter checks",
        commands.get(),
        refused_cases.get(),
        stricter.get()
    );
    assert!(refused_cases.get() > 0 && commands.get() > cases as usize, "the generator reaches both outcomes");
    let mut enc = BytesMut::new();
    encode_command(&[&b"ECHO"[..], b"a\0b"], &mut enc);
    let (_, refused) = theirs(&redis.exchange(&enc).expect("Redis")).expect("replies");
    assert!(!refused, "binary arguments are taken");
    let (_, refused) = theirs(&redis.exchange(b"*02\r\n").expect("Redis")).expect("replies");
    assert!(refused && ours(b"*02\r\n").1.is_some(), "a leading zero is refused by both");
}
