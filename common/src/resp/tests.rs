//! Codec tests: partial frames, pipelines, RESP3 types and malformed input.

use super::*;
use bytes::{Bytes, BytesMut};
use tokio_util::codec::Decoder;

fn decode_all(codec: &mut CommandCodec, input: &[u8]) -> Vec<Command> {
    let mut buf = BytesMut::from(input);
    let mut out = Vec::new();
    while let Some(cmd) = codec.decode(&mut buf).expect("valid input") {
        out.push(cmd);
    }
    out
}

#[test]
fn a_command_split_at_every_byte_decodes_once() {
    let input = b"*3\r\n$3\r\nSET\r\n$3\r\nkey\r\n$5\r\nvalue\r\n";
    for cut in 0..input.len() {
        let mut codec = CommandCodec::default();
        let mut buf = BytesMut::from(&input[..cut]);
        assert!(codec.decode(&mut buf).unwrap().is_none(), "cut at {cut}");
        buf.extend_from_slice(&input[cut..]);
        let cmd = codec.decode(&mut buf).unwrap().expect("complete");
        assert_eq!(cmd.args(), &[Bytes::from("SET"), Bytes::from("key"), Bytes::from("value")]);
        assert_eq!(&cmd.raw()[..], &input[..]);
        assert!(buf.is_empty());
    }
}

#[test]
fn a_pipeline_of_thousands_decodes_in_order() {
    let mut input = Vec::new();
    for i in 0..5000 {
        let key = format!("key:{i}");
        input.extend_from_slice(format!("*2\r\n$3\r\nGET\r\n${}\r\n{}\r\n", key.len(), key).as_bytes());
    }
    let cmds = decode_all(&mut CommandCodec::default(), &input);
    assert_eq!(cmds.len(), 5000);
    for (i, c) in cmds.iter().enumerate() {
        assert_eq!(&c.args()[1][..], format!("key:{i}").as_bytes());
    }
}

#[test]
fn inline_commands_are_split_with_quotes() {
    let cmds = decode_all(&mut CommandCodec::default(), b"PING\r\nset k \"a b\\x41\"\n\r\n");
    assert_eq!(cmds.len(), 2);
    assert_eq!(cmds[0].args(), &[Bytes::from("PING")]);
    assert_eq!(cmds[1].args(), &[Bytes::from("set"), Bytes::from("k"), Bytes::from("a bA")]);
    // Inline commands are re-encoded as multibulk for the backend.
    assert_eq!(&cmds[1].raw()[..], b"*3\r\n$3\r\nset\r\n$1\r\nk\r\n$4\r\na bA\r\n");
    let mut codec = CommandCodec::default();
    let mut buf = BytesMut::from(&b"get 'it''s'\r\n"[..]);
    assert!(codec.decode(&mut buf).is_err(), "a quote followed by a non-space is unbalanced");
}

#[test]
fn malformed_input_is_refused_with_redis_wording() {
    let cases: &[(&[u8], &str)] = &[
        (b"*2\r\n+GET\r\n", "Protocol error: expected '+', got"),
        (b"*x\r\n", "Protocol error: invalid multibulk length"),
        (b"*1\r\n$-5\r\n", "Protocol error: invalid bulk length"),
        (b"*1\r\n$4294967296\r\n", "Protocol error: invalid bulk length"),
        (b"*1\r\n$3\r\nGETX\r\n", "Protocol error: bulk string not terminated"),
    ];
    for (input, want) in cases {
        let mut buf = BytesMut::from(*input);
        let err = CommandCodec::default().decode(&mut buf).expect_err("must be refused").to_string();
        let want = want.replace("expected '+', got", "expected '$', got '+'");
        assert!(err.starts_with(&want), "{err:?} should start with {want:?}");
    }
}

#[test]
fn a_huge_declared_bulk_allocates_nothing_and_waits_within_bounds() {
    let mut codec = CommandCodec::default();
    let mut buf = BytesMut::from(&b"*1\r\n$536870912\r\n"[..]);
    let cap_before = buf.capacity();
    assert!(codec.decode(&mut buf).unwrap().is_none());
    assert_eq!(buf.capacity(), cap_before);
    // Just over the 512 MB limit is refused before any data arrives.
    let mut buf = BytesMut::from(&b"*1\r\n$536870913\r\n"[..]);
    assert!(CommandCodec::default().decode(&mut buf).is_err());
}

#[test]
fn an_endless_inline_line_is_refused() {
    let mut buf = BytesMut::from(&vec![b'a'; 70 * 1024][..]);
    assert!(CommandCodec::default().decode(&mut buf).is_err());
}

#[test]
fn replies_of_every_type_are_measured_and_parsed() {
    let input: &[u8] = b"+OK\r\n-ERR x\r\n:42\r\n$3\r\nabc\r\n$-1\r\n*-1\r\n*2\r\n:1\r\n$1\r\na\r\n\
%1\r\n+k\r\n,3.5\r\n~2\r\n#t\r\n#f\r\n_\r\n(12345678901234567890\r\n=7\r\ntxt:abc\r\n!5\r\nERR x\r\n\
>2\r\n+message\r\n:1\r\n|1\r\n+ttl\r\n:3\r\n+annotated\r\n";
    let mut codec = ReplyCodec::default();
    let mut buf = BytesMut::from(input);
    let mut frames = Vec::new();
    while let Some(raw) = codec.decode(&mut buf).unwrap() {
        let (frame, len) = parse_frame(&raw, &Limits::SERVER).unwrap();
        assert_eq!(len, raw.len());
        frames.push(frame);
    }
    assert!(buf.is_empty());
    assert_eq!(
        frames,
        vec![
            Frame::simple("OK"),
            Frame::Error(Bytes::from("ERR x")),
            Frame::Integer(42),
            Frame::bulk("abc"),
            Frame::Null,
            Frame::NullArray,
            Frame::Array(vec![Frame::Integer(1), Frame::bulk("a")]),
            Frame::Map(vec![(Frame::simple("k"), Frame::Double(Bytes::from("3.5")))]),
            Frame::Set(vec![Frame::Boolean(true), Frame::Boolean(false)]),
            Frame::Null,
            Frame::BigNumber(Bytes::from("12345678901234567890")),
            Frame::Verbatim(Bytes::from("txt"), Bytes::from("abc")),
            Frame::BlobError(Bytes::from("ERR x")),
            Frame::Push(vec![Frame::simple("message"), Frame::Integer(1)]),
            Frame::simple("annotated"),
        ]
    );
    // Encoding what was parsed gives the same bytes back (RESP3 client).
    for f in &frames[..5] {
        let bytes = f.to_bytes(Protocol::Resp3);
        let (again, _) = parse_frame(&bytes, &Limits::SERVER).unwrap();
        assert_eq!(&again, f);
    }
}

#[test]
fn a_reply_split_anywhere_waits_for_the_rest() {
    let input: &[u8] = b"*3\r\n$5\r\nhello\r\n%1\r\n:1\r\n:2\r\n*0\r\n";
    for cut in 0..input.len() {
        let mut codec = ReplyCodec::default();
        let mut buf = BytesMut::from(&input[..cut]);
        assert!(codec.decode(&mut buf).unwrap().is_none(), "cut at {cut}");
        buf.extend_from_slice(&input[cut..]);
        assert_eq!(&codec.decode(&mut buf).unwrap().unwrap()[..], input);
    }
}

#[test]
fn deep_nesting_is_refused() {
    let mut input = Vec::new();
    for _ in 0..1000 {
        input.extend_from_slice(b"*1\r\n");
    }
    input.extend_from_slice(b":1\r\n");
    let mut buf = BytesMut::from(&input[..]);
    assert!(ReplyCodec::default().decode(&mut buf).is_err());
}

#[test]
fn measuring_rejects_garbage_type_bytes() {
    assert!(measure(b"?what\r\n", &Limits::SERVER).is_err());
    assert_eq!(measure(b"$5\r\nab", &Limits::SERVER), Ok(Scan::Incomplete(11)));
}

#[test]
fn integers_parse_strictly() {
    assert_eq!(parse_int(b"-12"), Some(-12));
    assert_eq!(parse_int(b"+1"), None);
    assert_eq!(parse_int(b""), None);
    assert_eq!(parse_int(b"99999999999999999999"), None);
    assert_eq!(parse_int(b"1 "), None);
}
