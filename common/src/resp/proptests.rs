//! Property tests of the RESP parser and codecs (issue 22): any bytes never panic, frames
//! survive encode → parse in both protocols, a stream split anywhere decodes as it does whole.
//! The case count is proptest's (256; `PROPTEST_CASES` runs longer). Agreement with a real
//! Redis is `tests/resp_redis.rs`; allocation bounds `tests/resp_alloc.rs`.

use super::*;
use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use tokio_util::codec::Decoder;

/// What a decoder made of a whole input: the items, then how it stopped.
#[derive(Debug, PartialEq)]
struct Decoded<T> {
    items: Vec<T>,
    error: bool,
}

/// Feeds `chunks` one after the other to `codec`, decoding after each, as a socket would.
fn decode_chunks<D: Decoder>(mut codec: D, chunks: &[&[u8]]) -> Decoded<D::Item> {
    let mut buf = BytesMut::new();
    let mut items = Vec::new();
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(item)) => items.push(item),
                Ok(None) => break,
                Err(_) => return Decoded { items, error: true },
            }
        }
    }
    Decoded { items, error: false }
}

/// `input` cut at the (sorted, deduplicated) positions `cuts`.
fn split_at<'a>(input: &'a [u8], cuts: &[prop::sample::Index]) -> Vec<&'a [u8]> {
    let mut at: Vec<usize> = cuts.iter().map(|c| c.index(input.len() + 1)).collect();
    at.sort_unstable();
    at.dedup();
    let mut out = Vec::new();
    let mut from = 0;
    for cut in at {
        out.push(&input[from..cut]);
        from = cut;
    }
    out.push(&input[from..]);
    out
}

/// Bytes biased towards RESP: type bytes, numbers (valid, huge, negative, leading zeros),
/// line ends and quotes, mixed with anything.
fn resp_ish() -> impl Strategy<Value = Vec<u8>> {
    let token = prop_oneof![
        4 => any::<u8>().prop_map(|b| vec![b]),
        3 => prop::sample::select(&b"*$+-:,#(_!=~>%|\r\n\"' \\x0"[..]).prop_map(|b| vec![b]),
        2 => prop::sample::select(vec![
            "\r\n", "0", "1", "2", "3", "-1", "-0", "02", "+1", "16", "1024", "2147483647", "2147483648",
            "536870912", "536870913", "999999999", "9223372036854775807", "-9223372036854775808",
            "99999999999999999999", "*1\r\n", "$3\r\nGET\r\n", "|1\r\n+a\r\n:1\r\n", "%1\r\n", "\\x4", "\\x41",
        ])
        .prop_map(|s| s.as_bytes().to_vec()),
    ];
    prop::collection::vec(token, 0..80).prop_map(|parts| parts.concat())
}

fn arbitrary_input() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![prop::collection::vec(any::<u8>(), 0..300), resp_ish()]
}

/// Text a line frame may carry (no CR or LF: constructors and Redis keep them out).
fn line_text() -> impl Strategy<Value = Bytes> {
    prop::collection::vec(any::<u8>().prop_filter("no line end", |b| *b != b'\r' && *b != b'\n'), 0..12)
        .prop_map(Bytes::from)
}

fn blob() -> impl Strategy<Value = Bytes> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..24).prop_map(Bytes::from),
        prop::sample::select(vec!["", "\r\n", "$3\r\nabc\r\n", "txt:", "abc:"])
            .prop_map(|s: &'static str| Bytes::from_static(s.as_bytes())),
    ]
}

/// Any frame, nested up to a few levels.
fn frame() -> impl Strategy<Value = Frame> {
    let leaf = prop_oneof![
        line_text().prop_map(Frame::Simple),
        line_text().prop_map(Frame::Error),
        any::<i64>().prop_map(Frame::Integer),
        blob().prop_map(Frame::Bulk),
        Just(Frame::Null),
        Just(Frame::NullArray),
        line_text().prop_map(Frame::Double),
        any::<bool>().prop_map(Frame::Boolean),
        line_text().prop_map(Frame::BigNumber),
        (prop::sample::select(vec!["txt", "mkd", "a:b"]), blob())
            .prop_map(|(f, t)| Frame::Verbatim(Bytes::from_static(f.as_bytes()), t)),
        blob().prop_map(Frame::BlobError),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Frame::Array),
            prop::collection::vec(inner.clone(), 0..6).prop_map(Frame::Set),
            prop::collection::vec(inner.clone(), 0..6).prop_map(Frame::Push),
            prop::collection::vec((inner.clone(), inner), 0..4).prop_map(Frame::Map),
        ]
    })
}

/// What a RESP3 client reads back: both nulls are `_`.
fn as_resp3(f: &Frame) -> Frame {
    match f {
        Frame::NullArray => Frame::Null,
        Frame::Array(v) => Frame::Array(v.iter().map(as_resp3).collect()),
        Frame::Set(v) => Frame::Set(v.iter().map(as_resp3).collect()),
        Frame::Push(v) => Frame::Push(v.iter().map(as_resp3).collect()),
        Frame::Map(v) => Frame::Map(v.iter().map(|(k, v)| (as_resp3(k), as_resp3(v))).collect()),
        other => other.clone(),
    }
}

/// What a RESP2 client reads back: Redis's downgrades (maps flattened, booleans integers,
/// doubles and big numbers bulk strings, a blob error a line error without line ends).
fn as_resp2(f: &Frame) -> Frame {
    let all = |v: &[Frame]| Frame::Array(v.iter().map(as_resp2).collect());
    match f {
        Frame::Array(v) | Frame::Set(v) | Frame::Push(v) => all(v),
        Frame::Map(v) => Frame::Array(v.iter().flat_map(|(k, v)| [as_resp2(k), as_resp2(v)]).collect()),
        Frame::Double(d) | Frame::BigNumber(d) => Frame::Bulk(d.clone()),
        Frame::Boolean(b) => Frame::Integer(i64::from(*b)),
        Frame::Verbatim(_, text) => Frame::Bulk(text.clone()),
        Frame::BlobError(e) => {
            Frame::Error(e.iter().map(|&c| if c == b'\r' || c == b'\n' { b' ' } else { c }).collect::<Vec<u8>>().into())
        }
        other => other.clone(),
    }
}

/// A client command in the multibulk or the inline form, and the arguments it must give.
fn command_bytes() -> impl Strategy<Value = (Vec<u8>, Vec<Bytes>)> {
    let multibulk = prop::collection::vec(blob(), 1..5).prop_map(|args| {
        let mut out = BytesMut::new();
        encode_command(&args, &mut out);
        (out.to_vec(), args)
    });
    let word = prop::collection::vec(prop::sample::select(&b"abcxyz019*$:"[..]), 1..6);
    let inline = (prop::collection::vec(word, 1..4), any::<bool>()).prop_map(|(words, crlf)| {
        let mut line = words.join(&b' ');
        line.extend_from_slice(if crlf { b"\r\n" } else { b"\n" });
        (line, words.into_iter().map(Bytes::from).collect())
    });
    // An inline line may not start with `*` (that is a multibulk header).
    prop_oneof![3 => multibulk, 1 => inline.prop_filter("not multibulk", |(l, _)| l[0] != b'*')]
}

proptest! {
    /// Any bytes through every entry point: an answer or an error, never a panic; what is
    /// measured complete parses to exactly that length.
    #[test]
    fn any_bytes_never_panic(input in arbitrary_input()) {
        let _ = decode_chunks(CommandCodec::default(), &[&input]);
        let _ = decode_chunks(ReplyCodec::default(), &[&input]);
        let _ = split_inline(&input);
        let _ = parse_int(&input);
        let bytes = Bytes::from(input.clone());
        for limits in [Limits::SERVER, Limits::CLIENT] {
            let _ = parse_frame(&bytes, &limits);
            match measure(&input, &limits) {
                Ok(Scan::Complete(n)) => {
                    prop_assert!(n <= input.len());
                    let (_, len) = parse_frame(&bytes.slice(..n), &limits).expect("measured complete: parses");
                    prop_assert_eq!(len, n);
                }
                Ok(Scan::Incomplete(n)) => prop_assert!(n > input.len(), "needs {} of {}", n, input.len()),
                Err(_) => {}
            }
        }
    }

    /// Frames encoded for a RESP3 client parse back to themselves; for a RESP2 client to
    /// their downgraded form.
    #[test]
    fn encoded_frames_parse_back(f in frame()) {
        for (proto, want) in [(Protocol::Resp3, as_resp3(&f)), (Protocol::Resp2, as_resp2(&f))] {
            let bytes = f.to_bytes(proto);
            prop_assert_eq!(measure(&bytes, &Limits::SERVER), Ok(Scan::Complete(bytes.len())), "{:?}", proto);
            let (parsed, len) = parse_frame(&bytes, &Limits::SERVER).expect("encoded: parses");
            prop_assert_eq!(len, bytes.len());
            prop_assert_eq!(parsed, want, "{:?}", proto);
        }
    }

    /// A stream of replies split anywhere decodes to the same frames as when whole.
    #[test]
    fn replies_split_anywhere_decode_the_same(
        frames in prop::collection::vec(frame(), 1..6),
        tail in arbitrary_input(),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
    ) {
        let mut input = Vec::new();
        for f in &frames {
            input.extend_from_slice(&f.to_bytes(Protocol::Resp3));
        }
        let whole = decode_chunks(ReplyCodec::default(), &[&input]);
        prop_assert_eq!(whole.items.len(), frames.len());
        prop_assert!(!whole.error);
        // With anything after them too: the same items, the same error or wait.
        input.extend_from_slice(&tail);
        let whole = decode_chunks(ReplyCodec::default(), &[&input]);
        let split = decode_chunks(ReplyCodec::default(), &split_at(&input, &cuts));
        prop_assert_eq!(split, whole);
    }

    /// Commands (multibulk and inline) split anywhere decode as when whole, with the arguments
    /// they were made of and, for multibulk, the client's own bytes.
    #[test]
    fn commands_split_anywhere_decode_the_same(
        commands in prop::collection::vec(command_bytes(), 1..6),
        tail in arbitrary_input(),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
    ) {
        let input: Vec<u8> = commands.iter().flat_map(|(b, _)| b.clone()).collect();
        let whole = decode_chunks(CommandCodec::default(), &[&input]);
        prop_assert!(!whole.error);
        let args: Vec<Vec<Bytes>> = whole.items.iter().map(|c| c.args().to_vec()).collect();
        let want: Vec<Vec<Bytes>> = commands.iter().map(|(_, a)| a.clone()).collect();
        prop_assert_eq!(args, want);
        for (cmd, (bytes, _)) in whole.items.iter().zip(&commands) {
            if bytes[0] == b'*' {
                prop_assert_eq!(&cmd.raw()[..], &bytes[..]);
            }
        }
        let mut input = input;
        input.extend_from_slice(&tail);
        let whole = decode_chunks(CommandCodec::default(), &[&input]);
        let split = decode_chunks(CommandCodec::default(), &split_at(&input, &cuts));
        prop_assert_eq!(split, whole);
    }

    /// A command's raw bytes are a multibulk encoding of its arguments, whatever form it came in.
    #[test]
    fn raw_bytes_encode_the_arguments(input in arbitrary_input()) {
        for cmd in decode_chunks(CommandCodec::default(), &[&input]).items {
            let mut again = BytesMut::new();
            encode_command(cmd.args(), &mut again);
            prop_assert_eq!(&cmd.raw()[..], &again[..]);
        }
    }

    /// `parse_int` takes exactly Rust's canonical rendering of an `i64` (what Redis's
    /// `string2ll` takes) and nothing else.
    #[test]
    fn integers_parse_exactly_their_canonical_form(n in any::<i64>(), junk in "[-+0-9 ]{0,21}") {
        prop_assert_eq!(parse_int(n.to_string().as_bytes()), Some(n));
        let canonical = junk.parse::<i64>().ok().filter(|v| v.to_string() == junk);
        prop_assert_eq!(parse_int(junk.as_bytes()), canonical);
    }
}

/// Regression: a stream of attributes recursed once per attribute and overflowed the stack.
#[test]
fn a_long_run_of_attributes_is_measured_without_recursion() {
    let mut input = b"|0\r\n".repeat(1_000_000);
    input.extend_from_slice(b"+OK\r\n");
    assert_eq!(measure(&input, &Limits::SERVER), Ok(Scan::Complete(input.len())));
    let (frame, len) = parse_frame(&Bytes::from(input.clone()), &Limits::SERVER).unwrap();
    assert_eq!((frame, len), (Frame::simple("OK"), input.len()));
}

/// Regression: Redis refuses lengths with leading zeros or `-0`, and takes `i64::MIN`.
#[test]
fn lengths_are_read_like_redis_reads_them() {
    for bad in [&b"*02\r\n"[..], b"*-0\r\n", b"*1\r\n$03\r\nabc\r\n", b"*1\r\n$-0\r\n"] {
        let mut buf = BytesMut::from(bad);
        assert!(CommandCodec::default().decode(&mut buf).is_err(), "{:?}", String::from_utf8_lossy(bad));
    }
    let mut buf = BytesMut::from(&b"*-9223372036854775808\r\n*1\r\n$4\r\nPING\r\n"[..]);
    let cmd = CommandCodec::default().decode(&mut buf).unwrap().unwrap();
    assert_eq!(cmd.args(), &[Bytes::from("PING")]);
    // Redis's multibulk bound is INT_MAX: a count just below waits for its arguments.
    let mut buf = BytesMut::from(&b"*2147483647\r\n"[..]);
    assert!(CommandCodec::default().decode(&mut buf).unwrap().is_none());
    let mut buf = BytesMut::from(&b"*2147483648\r\n"[..]);
    assert!(CommandCodec::default().decode(&mut buf).is_err());
}

/// Regression: inline arguments are split as Redis's `sdssplitargs` splits them.
#[test]
fn inline_arguments_split_like_redis() {
    let split = |l: &[u8]| split_inline(l).map(|v| v.iter().map(|a| a.to_vec()).collect::<Vec<_>>());
    let words = |w: &[&[u8]]| Some(w.iter().map(|a| a.to_vec()).collect::<Vec<_>>());
    assert_eq!(split(b"ECHO a\"b c\"\r\n"), words(&[b"ECHO", b"ab c"]));
    assert_eq!(split(b"ECHO a\x0cb"), words(&[b"ECHO", b"a\x0cb"]));
    assert_eq!(split(b"ECHO \"a\"\x0bb"), words(&[b"ECHO", b"a", b"b"]));
    assert_eq!(split(b"ECHO 'a\\'b'"), words(&[b"ECHO", b"a'b"]));
    assert_eq!(split(b"ECHO \"a\\x4g\""), words(&[b"ECHO", b"ax4g"]));
    assert_eq!(split(b"ECHO \"a\" \"b\"c"), None);
    assert_eq!(split(b"ECHO a\0b"), words(&[b"ECHO", b"a"]));
    // A NUL in an inline command stalls Redis (it never finds the line's end): refused here.
    let mut buf = BytesMut::from(&b"ECHO a\0b\r\n"[..]);
    assert!(CommandCodec::default().decode(&mut buf).is_err());
}

/// Regression: a RESP3 blob error sent to a RESP2 client became a line error with its line
/// ends inside, which broke the client's stream.
#[test]
fn a_blob_error_with_line_ends_stays_one_frame_for_resp2() {
    let bytes = Frame::BlobError(Bytes::from("ERR a\r\nb")).to_bytes(Protocol::Resp2);
    assert_eq!(&bytes[..], b"-ERR a  b\r\n");
}
