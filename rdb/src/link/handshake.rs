//! The replica handshake, as redis `syncWithMaster` does it: AUTH, PING, REPLCONF, PSYNC, then
//! the line that announces how the RDB is framed.

use super::error::LinkError;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use sluice_common::resp::{encode_command, parse_int};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::timeout;

/// Longest status line accepted during the handshake (Redis's own inline limit).
const MAX_LINE: usize = 64 * 1024;

/// Length of the random delimiter of a diskless transfer (`$EOF:<40 bytes>`).
pub(super) const EOF_MARK_LEN: usize = 40;

/// How the master frames the RDB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transfer {
    /// `$<len>`: a file written to disk first, sent with its length.
    Disk { len: u64 },
    /// `$EOF:<mark>`: streamed while it is produced; it ends just before the same 40 bytes.
    Diskless { mark: [u8; EOF_MARK_LEN] },
}

/// What `PSYNC ? -1` got us.
#[derive(Debug)]
pub(super) struct FullResync {
    pub replid: String,
    pub offset: u64,
    pub transfer: Transfer,
}

/// Reads once into `buf` (at most `chunk` bytes), within `limit`.
pub(super) async fn fill<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut BytesMut,
    chunk: usize,
    limit: Duration,
    what: &'static str,
) -> Result<(), LinkError> {
    let chunk = chunk.max(1);
    buf.reserve(chunk);
    let mut window = (&mut *buf).limit(chunk);
    let n = match timeout(limit, reader.read_buf(&mut window)).await {
        Ok(read) => read?,
        Err(_) => return Err(LinkError::Timeout(what)),
    };
    if n == 0 {
        return Err(LinkError::Closed(what));
    }
    Ok(())
}

/// Reads one line, without its `\r\n` (or bare `\n`: the master's keep-alive is a lone `\n`).
async fn read_line<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut BytesMut,
    limit: Duration,
    what: &'static str,
) -> Result<Bytes, LinkError> {
    loop {
        if let Some(i) = buf.iter().position(|&b| b == b'\n') {
            let mut line = buf.split_to(i + 1).freeze();
            line.truncate(i);
            if line.last() == Some(&b'\r') {
                line.truncate(i - 1);
            }
            return Ok(line);
        }
        if buf.len() > MAX_LINE {
            return Err(LinkError::Protocol(format!("line longer than {MAX_LINE} bytes while {what}")));
        }
        fill(reader, buf, 4096, limit, what).await?;
    }
}

/// Sends one command and reads its status reply. `-` replies become [`LinkError::Refused`].
async fn call<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
    args: &[&[u8]],
    step: &'static str,
    limit: Duration,
) -> Result<Bytes, LinkError> {
    let mut out = BytesMut::new();
    encode_command(args, &mut out);
    match timeout(limit, stream.write_all(&out)).await {
        Ok(written) => written?,
        Err(_) => return Err(LinkError::Timeout(step)),
    }
    let line = read_line(stream, buf, limit, step).await?;
    match line.first() {
        Some(b'+') => Ok(line.slice(1..)),
        Some(b'-') => Err(LinkError::Refused { step, message: lossy(&line[1..]) }),
        _ => Err(LinkError::Protocol(format!("unexpected reply to {step}: {:?}", lossy(&line)))),
    }
}

/// Runs the handshake up to the start of the RDB payload; `buf` keeps whatever followed.
pub(super) async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
    user: Option<&str>,
    password: Option<&str>,
    listening_port: u16,
    step_timeout: Duration,
    read_timeout: Duration,
) -> Result<FullResync, LinkError> {
    if let Some(password) = password {
        let auth: Vec<&[u8]> = match user {
            Some(user) => vec![b"AUTH", user.as_bytes(), password.as_bytes()],
            None => vec![b"AUTH", password.as_bytes()],
        };
        match call(stream, buf, &auth, "AUTH", step_timeout).await {
            Ok(_) => {}
            Err(LinkError::Refused { message, .. }) => return Err(LinkError::Auth(message)),
            Err(e) => return Err(e),
        }
    }
    // PING first, as Redis does: it surfaces NOAUTH and LOADING before anything else.
    match call(stream, buf, &[b"PING"], "PING", step_timeout).await {
        Ok(_) => {}
        Err(LinkError::Refused { message, .. }) if message.starts_with("NOAUTH") => {
            return Err(LinkError::Auth(message));
        }
        Err(e) => return Err(e),
    }
    let port = listening_port.to_string();
    call(stream, buf, &[b"REPLCONF", b"listening-port", port.as_bytes()], "REPLCONF listening-port", step_timeout)
        .await?;
    // eof: we understand the diskless `$EOF:` framing; psync2: the modern PSYNC replies.
    call(stream, buf, &[b"REPLCONF", b"capa", b"eof", b"capa", b"psync2"], "REPLCONF capa", step_timeout).await?;

    // The master may take a while to start the BGSAVE (another one running, the diskless
    // delay); it sends a bare `\n` every second meanwhile, so `read_timeout` is a silence bound.
    let reply = {
        let mut out = BytesMut::new();
        encode_command(&[b"PSYNC".as_slice(), b"?", b"-1"], &mut out);
        match timeout(step_timeout, stream.write_all(&out)).await {
            Ok(written) => written?,
            Err(_) => return Err(LinkError::Timeout("sending PSYNC")),
        }
        loop {
            let line = read_line(stream, buf, read_timeout, "waiting for the PSYNC reply").await?;
            if !line.is_empty() {
                break line;
            }
        }
    };
    let (replid, offset) = parse_fullresync(&reply)?;

    let transfer = loop {
        let line = read_line(stream, buf, read_timeout, "waiting for the RDB").await?;
        if !line.is_empty() {
            break parse_bulk_header(&line)?;
        }
    };
    Ok(FullResync { replid, offset, transfer })
}

fn parse_fullresync(reply: &[u8]) -> Result<(String, u64), LinkError> {
    if let Some(message) = reply.strip_prefix(b"-") {
        return Err(LinkError::Refused { step: "PSYNC", message: lossy(message) });
    }
    if reply.starts_with(b"+CONTINUE") {
        return Err(LinkError::Protocol("the master offered a partial resync (+CONTINUE) to PSYNC ? -1".into()));
    }
    let bad = || LinkError::Protocol(format!("unexpected reply to PSYNC: {:?}", lossy(reply)));
    let rest = reply.strip_prefix(b"+FULLRESYNC ").ok_or_else(bad)?;
    let mut parts = rest.split(|&b| b == b' ');
    let replid = parts.next().filter(|id| id.len() == 40 && id.iter().all(u8::is_ascii_hexdigit)).ok_or_else(bad)?;
    let offset = parts.next().and_then(parse_int).filter(|&o| o >= 0).ok_or_else(bad)?;
    if parts.next().is_some() {
        return Err(bad());
    }
    Ok((lossy(replid), offset as u64))
}

fn parse_bulk_header(line: &[u8]) -> Result<Transfer, LinkError> {
    let bad = || LinkError::Protocol(format!("expected the RDB's $ header, got {:?}", lossy(line)));
    if let Some(message) = line.strip_prefix(b"-") {
        return Err(LinkError::Refused { step: "the full sync", message: lossy(message) });
    }
    let rest = line.strip_prefix(b"$").ok_or_else(bad)?;
    if let Some(mark) = rest.strip_prefix(b"EOF:") {
        let mark: [u8; EOF_MARK_LEN] = mark.try_into().map_err(|_| bad())?;
        return Ok(Transfer::Diskless { mark });
    }
    let len = parse_int(rest).filter(|&n| n >= 0).ok_or_else(bad)?;
    Ok(Transfer::Disk { len: len as u64 })
}

/// Consumes the 40-byte mark that ends a diskless RDB, if `buf` starts with it.
pub(super) fn strip_mark(buf: &mut BytesMut, mark: &[u8; EOF_MARK_LEN]) -> Result<(), LinkError> {
    if &buf[..EOF_MARK_LEN] != mark {
        return Err(LinkError::Protocol("the diskless RDB is not followed by its EOF mark".into()));
    }
    buf.advance(EOF_MARK_LEN);
    Ok(())
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fullresync_replies() {
        let id = "0123456789abcdef0123456789abcdef01234567";
        assert_eq!(parse_fullresync(format!("+FULLRESYNC {id} 42").as_bytes()).unwrap(), (id.to_string(), 42));
        assert!(matches!(parse_fullresync(b"+CONTINUE"), Err(LinkError::Protocol(_))));
        assert!(matches!(parse_fullresync(b"-NOMASTERLINK Can't SYNC"), Err(LinkError::Refused { .. })));
        assert!(parse_fullresync(b"+FULLRESYNC short 1").is_err());
        assert!(parse_fullresync(format!("+FULLRESYNC {id} -1").as_bytes()).is_err());
    }

    #[test]
    fn bulk_headers() {
        assert_eq!(parse_bulk_header(b"$1234").unwrap(), Transfer::Disk { len: 1234 });
        let mark = [b'x'; 40];
        let line = [b"$EOF:".as_slice(), &mark].concat();
        assert_eq!(parse_bulk_header(&line).unwrap(), Transfer::Diskless { mark });
        assert!(parse_bulk_header(b"$EOF:short").is_err());
        assert!(parse_bulk_header(b"+OK").is_err());
        assert!(parse_bulk_header(b"$-1").is_err());
    }

    #[tokio::test]
    async fn handshake_against_a_scripted_master() {
        let id = "0123456789abcdef0123456789abcdef01234567";
        let script = format!("+OK\r\n+PONG\r\n+OK\r\n+OK\r\n\n\n+FULLRESYNC {id} 7\r\n\n\n$5\r\nREDIS");
        let (mut ours, mut theirs) = tokio::io::duplex(1 << 16);
        theirs.write_all(script.as_bytes()).await.unwrap();
        let mut buf = BytesMut::new();
        let secs = Duration::from_secs(5);
        let got = handshake(&mut ours, &mut buf, None, Some("pw"), 6390, secs, secs).await.unwrap();
        assert_eq!((got.replid.as_str(), got.offset, got.transfer), (id, 7, Transfer::Disk { len: 5 }));
        assert_eq!(&buf[..], b"REDIS");
        drop(ours);
        let mut sent = Vec::new();
        theirs.read_to_end(&mut sent).await.unwrap();
        let sent = String::from_utf8(sent).unwrap();
        for part in [
            "AUTH\r\n$2\r\npw",
            "PING",
            "listening-port\r\n$4\r\n6390",
            "capa\r\n$3\r\neof",
            "PSYNC\r\n$1\r\n?\r\n$2\r\n-1",
        ] {
            assert!(sent.contains(part), "{part:?} missing from {sent:?}");
        }
    }

    #[tokio::test]
    async fn auth_errors_are_reported_as_such() {
        let (mut ours, mut theirs) = tokio::io::duplex(1 << 16);
        theirs.write_all(b"-NOAUTH Authentication required.\r\n").await.unwrap();
        let mut buf = BytesMut::new();
        let secs = Duration::from_secs(5);
        let err = handshake(&mut ours, &mut buf, None, None, 1, secs, secs).await.unwrap_err();
        assert!(matches!(err, LinkError::Auth(ref m) if m.starts_with("NOAUTH")), "{err}");
    }
}
