//! `--ack-replicas N`: a client's write is acknowledged only once replicas have it.
//!
//! Every write a master proxy sends to its node travels with a `WAIT n timeout` right behind
//! it in the same request (a pipeline batch, a `MULTI … EXEC` unit, or a blocking write on a
//! private connection); the node answers `WAIT` once n replicas acknowledged everything
//! before it on that connection, or at the timeout with how many did. When fewer did, each
//! write of the request is answered `NOREPLICAS` instead of its success: it may or may not
//! persist, and the client knows it was not acknowledged. Reads in the same request keep
//! their answers.
//!
//! n is N, or the number of replicas the node has online when that is smaller (`shard::run`
//! reads it): after a failover whose old master is gone, the shard keeps taking writes,
//! acknowledged by the replicas it has. A write is lost on a failover only if it was
//! acknowledged while fewer than N replicas were online and the master then died before one
//! caught up.

use bytes::{Bytes, BytesMut};
use sluice_common::resp::{encode_command, parse_frame, Frame, Limits};

/// What to check of a request's replies.
#[derive(Debug, Clone)]
pub struct AckCheck {
    /// Replicas `WAIT` asked for.
    pub need: usize,
    pub timeout_ms: u64,
    /// The positions of the request's writes among its replies (the `WAIT` reply excluded).
    pub writes: Vec<u16>,
}

impl AckCheck {
    /// `WAIT need timeout`, to append to the request.
    pub fn wait_command(&self) -> Bytes {
        let mut out = BytesMut::new();
        encode_command(&["WAIT".to_string(), self.need.to_string(), self.timeout_ms.to_string()], &mut out);
        out.freeze()
    }

    /// Takes the `WAIT` reply off `replies` (the last one) and, if it counted fewer replicas
    /// than needed, replaces the reply of every write that succeeded with `NOREPLICAS`.
    pub fn apply(&self, replies: &mut Vec<Bytes>) {
        let got = match replies.pop().and_then(|raw| parse_frame(&raw, &Limits::SERVER).ok()) {
            Some((Frame::Integer(n), _)) => usize::try_from(n).unwrap_or(0),
            _ => 0,
        };
        if got >= self.need {
            return;
        }
        let error = Bytes::from(format!(
            "-NOREPLICAS sluice: the write was acknowledged by {got} of {} replicas within {} ms \
             (--ack-replicas); it may or may not persist\r\n",
            self.need, self.timeout_ms
        ));
        for &i in &self.writes {
            if let Some(reply) = replies.get_mut(usize::from(i)) {
                if reply.first() != Some(&b'-') {
                    *reply = error.clone();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replies(r: &[&str]) -> Vec<Bytes> {
        r.iter().map(|s| Bytes::from(s.to_string())).collect()
    }

    #[test]
    fn writes_are_acknowledged_only_with_enough_replicas() {
        let check = AckCheck { need: 1, timeout_ms: 100, writes: vec![0, 2] };
        let mut ok = replies(&["+OK\r\n", "$1\r\nv\r\n", ":3\r\n", ":1\r\n"]);
        check.apply(&mut ok);
        assert_eq!(ok, replies(&["+OK\r\n", "$1\r\nv\r\n", ":3\r\n"]));
        let mut short = replies(&["+OK\r\n", "$1\r\nv\r\n", "-WRONGTYPE x\r\n", ":0\r\n"]);
        check.apply(&mut short);
        assert!(short[0].starts_with(b"-NOREPLICAS"), "{:?}", short[0]);
        assert_eq!(short[1], Bytes::from("$1\r\nv\r\n"), "a read keeps its answer");
        assert_eq!(short[2], Bytes::from("-WRONGTYPE x\r\n"), "an error stays the error it was");
        assert_eq!(&check.wait_command()[..], b"*3\r\n$4\r\nWAIT\r\n$1\r\n1\r\n$3\r\n100\r\n");
    }
}
