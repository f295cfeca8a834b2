//! A minimal RESP client for starting and checking processes (readiness, configuring proxies,
//! checking nodes), built on sluice's own codec. Tests use real client libraries for what
//! they assert.

use anyhow::{anyhow, bail, Context, Result};
use bytes::BytesMut;
use sluice_common::resp::{encode_command, parse_frame, Frame, Limits, ReplyCodec};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::codec::Decoder;

/// A plain or TLS stream.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// One connection; commands are sent one at a time.
pub struct RespConn {
    stream: Box<dyn Io>,
    buf: BytesMut,
    codec: ReplyCodec,
}

impl RespConn {
    /// Connects to `addr`, with TLS if it is a TLS proxy this process started
    /// ([`crate::tls`]).
    pub async fn connect(addr: &str) -> Result<RespConn> {
        RespConn::connect_with(addr, crate::tls::tls_for(addr).as_ref()).await
    }

    /// Connects with TLS when `tls` is given, plain TCP otherwise.
    pub async fn connect_with(addr: &str, tls: Option<&crate::tls::ClientTls>) -> Result<RespConn> {
        let connect = async {
            let tcp = TcpStream::connect(addr).await.with_context(|| format!("connect to {addr}"))?;
            let stream: Box<dyn Io> = match tls {
                Some(tls) => Box::new(tls.connect(addr, tcp).await?),
                None => Box::new(tcp),
            };
            anyhow::Ok(stream)
        };
        let stream = tokio::time::timeout(Duration::from_secs(2), connect)
            .await
            .map_err(|_| anyhow!("connect to {addr} timed out"))??;
        Ok(RespConn { stream, buf: BytesMut::new(), codec: ReplyCodec::new(Limits::SERVER) })
    }

    /// Sends a command and reads its reply (an error reply is a `Frame::Error`, not `Err`).
    pub async fn call<A: AsRef<[u8]>>(&mut self, args: &[A]) -> Result<Frame> {
        let mut out = BytesMut::new();
        encode_command(args, &mut out);
        self.stream.write_all(&out).await?;
        self.stream.flush().await?;
        self.read_reply().await
    }

    /// Sends every command in one write (a pipeline), then reads one reply per command.
    pub async fn pipeline<A: AsRef<[u8]>>(&mut self, commands: &[Vec<A>]) -> Result<Vec<Frame>> {
        let mut out = BytesMut::new();
        for args in commands {
            encode_command(args, &mut out);
        }
        self.stream.write_all(&out).await?;
        self.stream.flush().await?;
        let mut replies = Vec::with_capacity(commands.len());
        for _ in commands {
            replies.push(self.read_reply().await?);
        }
        Ok(replies)
    }

    pub async fn read_reply(&mut self) -> Result<Frame> {
        loop {
            if let Some(raw) = self.codec.decode(&mut self.buf)? {
                return Ok(parse_frame(&raw, &Limits::SERVER)?.0);
            }
            let n = tokio::time::timeout(Duration::from_secs(30), self.stream.read_buf(&mut self.buf))
                .await
                .map_err(|_| anyhow!("no reply within 30 s"))??;
            if n == 0 {
                bail!("connection closed");
            }
        }
    }

    pub fn stream(&mut self) -> &mut Box<dyn Io> {
        &mut self.stream
    }
}

/// Connects, sends one command, returns the reply.
pub async fn call<A: AsRef<[u8]>>(addr: &str, args: &[A]) -> Result<Frame> {
    RespConn::connect(addr).await?.call(args).await
}

/// Like [`call`], but an error reply is an `Err`.
pub async fn call_ok<A: AsRef<[u8]>>(addr: &str, args: &[A]) -> Result<Frame> {
    match call(addr, args).await? {
        Frame::Error(e) => bail!("{addr} answered {}", String::from_utf8_lossy(&e)),
        f => Ok(f),
    }
}
