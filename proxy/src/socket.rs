//! A connection's socket, plain TCP or TLS, behind one type each for its read and write
//! halves, so the session and the backend code stay the same for both.
//!
//! Plain TCP keeps tokio's lock-free owned halves (the common path costs nothing more);
//! a TLS stream is one state machine for both directions, so its halves share it through
//! `tokio::io::split`.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

/// A client's socket (accepted), or one this proxy dialled (its node, a peer proxy).
pub enum Socket {
    Plain(TcpStream),
    /// A client that connected to our TLS port.
    TlsServer(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    /// A peer proxy this proxy dialled with TLS.
    TlsClient(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

/// The reading half of a [`Socket`].
pub enum ReadHalf {
    Plain(OwnedReadHalf),
    TlsServer(tokio::io::ReadHalf<Box<tokio_rustls::server::TlsStream<TcpStream>>>),
    TlsClient(tokio::io::ReadHalf<Box<tokio_rustls::client::TlsStream<TcpStream>>>),
}

/// The writing half of a [`Socket`]. Callers flush after writing: TLS may keep records
/// buffered until then (a no-op for plain TCP).
pub enum WriteHalf {
    Plain(OwnedWriteHalf),
    TlsServer(tokio::io::WriteHalf<Box<tokio_rustls::server::TlsStream<TcpStream>>>),
    TlsClient(tokio::io::WriteHalf<Box<tokio_rustls::client::TlsStream<TcpStream>>>),
}

impl Socket {
    pub fn into_split(self) -> (ReadHalf, WriteHalf) {
        match self {
            Socket::Plain(s) => {
                let (r, w) = s.into_split();
                (ReadHalf::Plain(r), WriteHalf::Plain(w))
            }
            Socket::TlsServer(s) => {
                let (r, w) = tokio::io::split(s);
                (ReadHalf::TlsServer(r), WriteHalf::TlsServer(w))
            }
            Socket::TlsClient(s) => {
                let (r, w) = tokio::io::split(s);
                (ReadHalf::TlsClient(r), WriteHalf::TlsClient(w))
            }
        }
    }
}

impl AsyncRead for ReadHalf {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ReadHalf::Plain(r) => Pin::new(r).poll_read(cx, buf),
            ReadHalf::TlsServer(r) => Pin::new(r).poll_read(cx, buf),
            ReadHalf::TlsClient(r) => Pin::new(r).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for WriteHalf {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            WriteHalf::Plain(w) => Pin::new(w).poll_write(cx, buf),
            WriteHalf::TlsServer(w) => Pin::new(w).poll_write(cx, buf),
            WriteHalf::TlsClient(w) => Pin::new(w).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            WriteHalf::Plain(w) => Pin::new(w).poll_flush(cx),
            WriteHalf::TlsServer(w) => Pin::new(w).poll_flush(cx),
            WriteHalf::TlsClient(w) => Pin::new(w).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            WriteHalf::Plain(w) => Pin::new(w).poll_shutdown(cx),
            WriteHalf::TlsServer(w) => Pin::new(w).poll_shutdown(cx),
            WriteHalf::TlsClient(w) => Pin::new(w).poll_shutdown(cx),
        }
    }
}
