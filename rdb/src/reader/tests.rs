//! The reader on handcrafted RDBs: every opcode and value type, every truncation point,
//! garbage, limits, and random splits.

use super::*;
use crate::format::value_type as vt;
use proptest::prelude::*;

/// Builds RDB bytes by hand.
#[derive(Default, Clone)]
struct Rdb(Vec<u8>);

fn len(n: u64) -> Vec<u8> {
    if n < 64 {
        vec![n as u8]
    } else if n < 16384 {
        vec![0x40 | (n >> 8) as u8, n as u8]
    } else if n <= u64::from(u32::MAX) {
        let mut v = vec![0x80];
        v.extend_from_slice(&(n as u32).to_be_bytes());
        v
    } else {
        let mut v = vec![0x81];
        v.extend_from_slice(&n.to_be_bytes());
        v
    }
}

fn s(b: &[u8]) -> Vec<u8> {
    let mut v = len(b.len() as u64);
    v.extend_from_slice(b);
    v
}

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

impl Rdb {
    fn header(version: u16) -> Rdb {
        Rdb(format!("REDIS{version:04}").into_bytes())
    }
    fn raw(mut self, b: &[u8]) -> Rdb {
        self.0.extend_from_slice(b);
        self
    }
    fn op(self, opcode: u8, body: &[u8]) -> Rdb {
        self.raw(&[opcode]).raw(body)
    }
    /// A key entry: type byte, key string, value bytes.
    fn entry(self, t: u8, key: &[u8], value: &[u8]) -> Rdb {
        self.raw(&[t]).raw(&s(key)).raw(value)
    }
    fn eof(self) -> Vec<u8> {
        let mut v = self.raw(&[op::EOF]).0;
        let crc = crc64(0, &v);
        v.extend_from_slice(&crc.to_le_bytes());
        v
    }
    fn eof_without_checksum(self) -> Vec<u8> {
        let mut v = self.raw(&[op::EOF]).0;
        v.extend_from_slice(&[0; 8]);
        v
    }
}

fn entry(db: u64, key: &[u8], t: u8, value: &[u8]) -> Event {
    Event::Entry(Entry {
        db,
        key: Bytes::copy_from_slice(key),
        expire_at_ms: None,
        value_type: t,
        value: Bytes::copy_from_slice(value),
        lru_idle: None,
        lfu_freq: None,
    })
}

/// Feeds `data` in pieces cut at `splits` (positions), collecting every event.
fn read_split(reader: &mut RdbReader, data: &[u8], splits: &[usize]) -> Result<Vec<Event>, RdbError> {
    let mut buf = BytesMut::new();
    let mut events = Vec::new();
    let mut cuts: Vec<usize> = splits.iter().copied().filter(|&c| c <= data.len()).collect();
    cuts.push(data.len());
    cuts.sort_unstable();
    let mut at = 0;
    for cut in cuts {
        buf.extend_from_slice(&data[at..cut]);
        at = cut;
        while let Some(e) = reader.next(&mut buf)? {
            events.push(e);
        }
    }
    Ok(events)
}

fn read_all(data: &[u8]) -> Result<Vec<Event>, RdbError> {
    read_split(&mut RdbReader::new(), data, &[])
}

/// A stream value of the given type with one group, two PEL entries, two consumers.
fn stream_value(t: u8) -> Vec<u8> {
    let id = |ms: u8, seq: u8| -> Vec<u8> { cat(&[&[0, 0, 0, 0, 0, 0, 0, ms], &[0, 0, 0, 0, 0, 0, 0, seq]]) };
    let mut v = len(2); // two listpacks
    for ms in [1u8, 9] {
        v.extend(s(&id(ms, 0)));
        v.extend(s(&[0x11; 30])); // the listpack, opaque here
    }
    v.extend(len(5)); // length
    v.extend(cat(&[&len(9), &len(3)])); // last id
    if t >= vt::STREAM_LISTPACKS_2 {
        v.extend(cat(&[&len(1), &len(0)])); // first id
        v.extend(cat(&[&len(2), &len(0)])); // max deleted id
        v.extend(len(7)); // entries added
    }
    v.extend(len(1)); // one group
    v.extend(s(b"grp"));
    v.extend(cat(&[&len(9), &len(3)])); // last delivered
    if t >= vt::STREAM_LISTPACKS_2 {
        v.extend(len(4)); // entries read
    }
    v.extend(len(2)); // group PEL
    for ms in [1u8, 9] {
        v.extend(id(ms, 0));
        v.extend([0x22; 8]); // delivery time
        v.extend(len(1)); // delivery count
    }
    v.extend(len(2)); // consumers
    for (name, pel) in [(b"alice".as_slice(), vec![1u8, 9]), (b"bob".as_slice(), vec![])] {
        v.extend(s(name));
        v.extend([0x33; 8]); // seen time
        if t >= vt::STREAM_LISTPACKS_3 {
            v.extend([0x44; 8]); // active time
        }
        v.extend(len(pel.len() as u64));
        for ms in pel {
            v.extend(id(ms, 0));
        }
    }
    v
}

/// An RDB with every opcode and every value type, and the events it must produce.
fn everything() -> (Vec<u8>, Vec<Event>) {
    let mut ev = vec![Event::Header { version: 11 }];
    let mut r = Rdb::header(11);

    r = r.op(op::AUX, &cat(&[&s(b"redis-ver"), &s(b"7.2.4")]));
    ev.push(Event::Aux { key: "redis-ver".into(), value: "7.2.4".into() });
    r = r.op(op::AUX, &cat(&[&s(b"redis-bits"), &[0xc0, 64]]));
    ev.push(Event::Aux { key: "redis-bits".into(), value: "64".into() });

    // Module aux: id, when opcode 2, when 2, then uint, sint, float, double, string, EOF.
    let module_id = 0x1234_5678_9abc_de03u64;
    let module_ops = cat(&[&[2], &len(77), &[1], &len(3), &[3], &[0; 4], &[4], &[0; 8], &[5], &s(b"blob"), &[0]]);
    r = r.op(op::MODULE_AUX, &cat(&[&len(module_id), &[2], &[2], &module_ops]));
    ev.push(Event::ModuleAux { module_id, when: 2 });

    // FUNCTION2 with LZF-compressed code: "abc" then a back reference -> "abcabcabc".
    let code_lzf = [0xc3, 0x06, 0x09, 2, b'a', b'b', b'c', (4 << 5), 2];
    r = r.op(op::FUNCTION2, &code_lzf);
    ev.push(Event::Function(Function {
        opcode: op::FUNCTION2,
        raw: Bytes::copy_from_slice(&code_lzf),
        code: Some("abcabcabc".into()),
    }));
    let pre_ga = cat(&[&s(b"lib"), &s(b"LUA"), &[1], &s(b"desc"), &s(b"return 1")]);
    r = r.op(op::FUNCTION_PRE_GA, &pre_ga);
    ev.push(Event::Function(Function { opcode: op::FUNCTION_PRE_GA, raw: pre_ga.into(), code: None }));
    let pre_ga_nodesc = cat(&[&s(b"lib2"), &s(b"LUA"), &[0], &s(b"return 2")]);
    r = r.op(op::FUNCTION_PRE_GA, &pre_ga_nodesc);
    ev.push(Event::Function(Function { opcode: op::FUNCTION_PRE_GA, raw: pre_ga_nodesc.into(), code: None }));

    r = r.op(op::SELECTDB, &len(0));
    ev.push(Event::SelectDb { db: 0 });
    r = r.op(op::RESIZEDB, &cat(&[&len(300), &len(2)]));
    ev.push(Event::ResizeDb { db_size: 300, expires_size: 2 });

    // Key attributes: ms expire + idle, then seconds expire + freq.
    r = r.op(op::EXPIRETIME_MS, &1_700_000_000_123i64.to_le_bytes()).op(op::IDLE, &len(500));
    r = r.entry(vt::STRING, b"ttl-ms", &s(b"v"));
    ev.push(Event::Entry(Entry {
        expire_at_ms: Some(1_700_000_000_123),
        lru_idle: Some(500),
        ..entry_of(0, b"ttl-ms", vt::STRING, &s(b"v"))
    }));
    r = r.op(op::EXPIRETIME, &1_700_000_000i32.to_le_bytes()).op(op::FREQ, &[9]);
    r = r.entry(vt::STRING, b"ttl-s", &s(b"w"));
    ev.push(Event::Entry(Entry {
        expire_at_ms: Some(1_700_000_000_000),
        lfu_freq: Some(9),
        ..entry_of(0, b"ttl-s", vt::STRING, &s(b"w"))
    }));

    // Strings in every encoding, keys too (an int-encoded key and an LZF key).
    let mut values: Vec<(u8, Vec<u8>, Vec<u8>)> = vec![
        (vt::STRING, b"int8".to_vec(), vec![0xc0, 0x85]),
        (vt::STRING, b"int16".to_vec(), vec![0xc1, 0x39, 0x30]),
        (vt::STRING, b"int32".to_vec(), vec![0xc2, 0x15, 0xcd, 0x5b, 0x07]),
        (vt::STRING, b"lzf".to_vec(), code_lzf.to_vec()),
        (vt::STRING, b"len32".to_vec(), cat(&[&[0x80, 0, 0, 0, 3], b"abc"])), // 32-bit length
        (vt::STRING, b"len64".to_vec(), cat(&[&[0x81, 0, 0, 0, 0, 0, 0, 0, 2], b"hi"])),
        (vt::STRING, b"mid".to_vec(), s(&[b'y'; 100])), // 14-bit length
        (vt::LIST, b"linked".to_vec(), cat(&[&len(2), &s(b"a"), &[0xc0, 1]])),
        (vt::SET, b"set".to_vec(), cat(&[&len(3), &s(b"a"), &s(b"b"), &s(b"c")])),
        (
            vt::ZSET,
            b"zset1".to_vec(),
            cat(&[&len(4), &s(b"a"), &[3], b"1.5", &s(b"b"), &[253], &s(b"c"), &[254], &s(b"d"), &[255]]),
        ),
        (vt::HASH, b"hash".to_vec(), cat(&[&len(2), &s(b"f1"), &s(b"v1"), &s(b"f2"), &[0xc0, 2]])),
        (
            vt::ZSET_2,
            b"zset2".to_vec(),
            cat(&[&len(2), &s(b"a"), &1.5f64.to_le_bytes(), &s(b"b"), &2.5f64.to_le_bytes()]),
        ),
        (vt::MODULE_2, b"module".to_vec(), cat(&[&len(module_id), &module_ops])),
        (vt::LIST_QUICKLIST, b"ql1".to_vec(), cat(&[&len(2), &s(&[0xaa; 12]), &s(&[0xbb; 12])])),
        (vt::LIST_QUICKLIST_2, b"ql2".to_vec(), cat(&[&len(2), &len(2), &s(&[0xaa; 12]), &len(1), &s(&[b'p'; 70])])),
        (vt::STREAM_LISTPACKS, b"stream1".to_vec(), stream_value(vt::STREAM_LISTPACKS)),
        (vt::STREAM_LISTPACKS_2, b"stream2".to_vec(), stream_value(vt::STREAM_LISTPACKS_2)),
        (vt::STREAM_LISTPACKS_3, b"stream3".to_vec(), stream_value(vt::STREAM_LISTPACKS_3)),
    ];
    for t in [
        vt::HASH_ZIPMAP,
        vt::LIST_ZIPLIST,
        vt::SET_INTSET,
        vt::ZSET_ZIPLIST,
        vt::HASH_ZIPLIST,
        vt::HASH_LISTPACK,
        vt::ZSET_LISTPACK,
        vt::SET_LISTPACK,
    ] {
        values.push((t, format!("blob{t}").into_bytes(), s(&[t; 17])));
    }
    for (t, key, value) in &values {
        r = r.entry(*t, key, value);
        ev.push(entry(0, key, *t, value));
    }
    // An int-encoded key ("-5") and an LZF-compressed key, in another database.
    r = r.op(op::SELECTDB, &len(15));
    ev.push(Event::SelectDb { db: 15 });
    r = r.raw(&[vt::STRING, 0xc0, 0xfb]).raw(&s(b"k1"));
    ev.push(entry(15, b"-5", vt::STRING, &s(b"k1")));
    r = r.raw(&[vt::STRING]).raw(&code_lzf).raw(&s(b"k2"));
    ev.push(entry(15, b"abcabcabc", vt::STRING, &s(b"k2")));

    let data = r.eof();
    let checksum = u64::from_le_bytes(data[data.len() - 8..].try_into().unwrap());
    ev.push(Event::Eof { checksum });
    (data, ev)
}

fn entry_of(db: u64, key: &[u8], t: u8, value: &[u8]) -> Entry {
    match entry(db, key, t, value) {
        Event::Entry(e) => e,
        _ => unreachable!(),
    }
}

#[test]
fn every_opcode_and_type() {
    let (data, expected) = everything();
    let got = read_all(&data).unwrap();
    assert_eq!(got.len(), expected.len());
    for (g, e) in got.iter().zip(&expected) {
        assert_eq!(g, e);
    }
}

#[test]
fn reader_reports_progress_and_stops_at_eof() {
    let (data, _) = everything();
    let mut reader = RdbReader::new();
    let mut buf = BytesMut::from(&data[..]);
    buf.extend_from_slice(b"*1\r\n$4\r\nPING\r\n"); // the command stream that follows
    assert_eq!(reader.version(), None);
    while reader.next(&mut buf).unwrap().is_some() {}
    assert!(reader.is_done());
    assert_eq!(reader.version(), Some(11));
    assert_eq!(reader.bytes_consumed(), data.len() as u64);
    assert_eq!(&buf[..], b"*1\r\n$4\r\nPING\r\n");
    assert_eq!(reader.next(&mut buf).unwrap(), None);
    assert_eq!(buf.len(), 14);
}

#[test]
fn truncated_anywhere_then_completed() {
    // Cut at every position: the prefix yields a prefix of the events and no error, and
    // appending the rest yields exactly the remaining ones (the resumed walk is right).
    let (data, expected) = everything();
    for cut in 0..data.len() {
        let mut reader = RdbReader::new();
        let mut buf = BytesMut::from(&data[..cut]);
        let mut got = Vec::new();
        while let Some(e) = reader.next(&mut buf).unwrap_or_else(|e| panic!("cut {cut}: {e}")) {
            got.push(e);
        }
        assert!(got.len() < expected.len(), "cut {cut}: EOF before the end");
        assert_eq!(got[..], expected[..got.len()], "cut {cut}");
        // Whatever was not consumed starts an item: nothing of it was taken.
        let consumed = reader.bytes_consumed() as usize;
        assert_eq!(consumed + buf.len(), cut);
        buf.extend_from_slice(&data[cut..]);
        while let Some(e) = reader.next(&mut buf).unwrap() {
            got.push(e);
        }
        assert_eq!(got, expected, "cut {cut}");
    }
}

#[test]
fn byte_at_a_time() {
    let (data, expected) = everything();
    let splits: Vec<usize> = (0..data.len()).collect();
    assert_eq!(read_split(&mut RdbReader::new(), &data, &splits).unwrap(), expected);
}

#[test]
fn needed_hint_covers_a_whole_value() {
    let data = Rdb::header(10).entry(vt::STRING, b"k", &s(&vec![b'v'; 100_000])).eof();
    let mut reader = RdbReader::new();
    let mut buf = BytesMut::from(&data[..20]);
    assert_eq!(reader.next(&mut buf).unwrap(), Some(Event::Header { version: 10 }));
    assert_eq!(reader.next(&mut buf).unwrap(), None);
    // type + key (2) + 5-byte length + the value.
    assert_eq!(reader.needed_hint(), 1 + 2 + 5 + 100_000);
    buf.extend_from_slice(&data[20..100]);
    assert_eq!(reader.next(&mut buf).unwrap(), None);
    assert_eq!(buf.len(), 91);
}

#[test]
fn many_small_elements_in_small_pieces() {
    // A hashtable set of 20000 members fed 7 bytes at a time: the walk resumes where it
    // stopped, so this stays linear (a rescan per read would take minutes).
    let mut value = len(20_000);
    for i in 0..20_000u32 {
        value.extend(s(i.to_string().as_bytes()));
    }
    let data = Rdb::header(10).entry(vt::SET, b"s", &value).eof();
    let splits: Vec<usize> = (0..data.len()).step_by(7).collect();
    let events = read_split(&mut RdbReader::new(), &data, &splits).unwrap();
    assert_eq!(events[1], entry(0, b"s", vt::SET, &value));
}

#[test]
fn checksum_is_verified_when_present() {
    let good = Rdb::header(10).entry(vt::STRING, b"k", &s(b"value")).eof();
    assert!(read_all(&good).is_ok());
    let mut bad = good.clone();
    let at = bad.iter().position(|&b| b == b'v').unwrap();
    bad[at] = b'V';
    assert!(matches!(read_all(&bad), Err(RdbError::Checksum { .. })));
    // `rdbchecksum no`: zero, not checked.
    let unchecked = Rdb::header(10).entry(vt::STRING, b"k", &s(b"value")).eof_without_checksum();
    assert_eq!(read_all(&unchecked).unwrap().last(), Some(&Event::Eof { checksum: 0 }));
    // Before version 5 there is no checksum at all.
    let mut old = Rdb::header(4).entry(vt::STRING, b"k", &s(b"value")).0;
    old.push(op::EOF);
    let mut reader = RdbReader::new();
    let events = read_split(&mut reader, &old, &[]).unwrap();
    assert_eq!(events.last(), Some(&Event::Eof { checksum: 0 }));
    assert_eq!(reader.bytes_consumed(), old.len() as u64);
}

#[test]
fn garbage_is_an_error() {
    assert!(matches!(read_all(b"RUBBISH!!"), Err(RdbError::BadSignature(_))));
    // Refused as soon as the first byte is wrong.
    assert!(matches!(read_all(b"X"), Err(RdbError::BadSignature(_))));
    assert!(matches!(read_all(b"REDIS0012"), Err(RdbError::UnsupportedVersion(12))));
    assert!(matches!(read_all(b"REDIS0000"), Err(RdbError::UnsupportedVersion(0))));
    assert!(matches!(read_all(b"REDIS00a1"), Err(RdbError::Corrupt { .. })));
    // Unknown types are named, and refused before their bytes arrive.
    for t in [8u8, 6, 24, 30, 200, 244] {
        let data = Rdb::header(10).raw(&[t]).0;
        match read_all(&data) {
            Err(RdbError::UnsupportedType { type_byte, offset: 9, .. }) => assert_eq!(type_byte, t),
            other => panic!("type {t}: {other:?}"),
        }
    }
    let cases: Vec<Vec<u8>> = vec![
        Rdb::header(10).entry(vt::SET, b"k", &[0x82]).eof(), // bad length encoding
        Rdb::header(10).entry(vt::SET, b"k", &[0xc0]).eof(), // encoded marker as a count
        Rdb::header(10).entry(vt::STRING, b"k", &[0xc5]).eof(), // bad string encoding
        Rdb::header(10).entry(vt::MODULE_2, b"k", &cat(&[&len(1), &[9]])).eof(), // bad module opcode
        Rdb::header(10).op(op::MODULE_AUX, &cat(&[&len(1), &[1], &[2], &[0]])).eof(), // bad when opcode
        Rdb::header(10).raw(&[vt::STRING, 0xc3, 0x01, 0x05, 0x00]).raw(&s(b"v")).eof(), // bad LZF key
    ];
    for (i, data) in cases.iter().enumerate() {
        assert!(matches!(read_all(data), Err(RdbError::Corrupt { .. })), "case {i}: {:?}", read_all(data));
    }
}

#[test]
fn errors_are_final() {
    let mut reader = RdbReader::new();
    let mut buf = BytesMut::from(&b"REDIS0010\x08"[..]);
    assert!(reader.next(&mut buf).unwrap().is_some());
    let first = reader.next(&mut buf).unwrap_err();
    buf.clear();
    buf.extend_from_slice(b"\xff");
    assert_eq!(reader.next(&mut buf).unwrap_err(), first);
}

#[test]
fn item_size_limit() {
    // One big string: refused from its declared length, before its bytes arrive.
    let data = Rdb::header(10).entry(vt::STRING, b"k", &s(&vec![b'v'; 1000])).eof();
    let mut reader = RdbReader::with_max_item_size(500);
    let mut buf = BytesMut::from(&data[..20]);
    reader.next(&mut buf).unwrap();
    assert!(matches!(reader.next(&mut buf), Err(RdbError::TooLarge { offset: 9, limit: 500, .. })));
    // Many small members adding up.
    let mut value = len(1000);
    for _ in 0..1000 {
        value.extend(s(b"m"));
    }
    let data = Rdb::header(10).entry(vt::SET, b"k", &value).eof();
    assert!(matches!(read_split(&mut RdbReader::with_max_item_size(500), &data, &[]), Err(RdbError::TooLarge { .. })));
    assert!(read_split(&mut RdbReader::with_max_item_size(5000), &data, &[]).is_ok());
    // LZF strings count their expanded size.
    let data = Rdb::header(10).entry(vt::STRING, b"k", &[0xc3, 0x02, 0x41, 0x00, 0, b'a']).eof();
    assert!(matches!(read_split(&mut RdbReader::with_max_item_size(200), &data, &[]), Err(RdbError::TooLarge { .. })));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// Random bytes after a valid header, cut anywhere: errors are fine, panics are not, and
    /// the reader never consumes more than it was given.
    #[test]
    fn random_bytes_never_panic(body in proptest::collection::vec(any::<u8>(), 0..400),
                                splits in proptest::collection::vec(0usize..420, 0..8),
                                version in 1u16..=11) {
        let mut data = format!("REDIS{version:04}").into_bytes();
        data.extend_from_slice(&body);
        let mut reader = RdbReader::with_max_item_size(1 << 16);
        let _ = read_split(&mut reader, &data, &splits);
        prop_assert!(reader.bytes_consumed() <= data.len() as u64);
    }

    /// A valid RDB with a few bytes flipped: no panic.
    #[test]
    fn mutated_rdb_never_panics(flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
                                splits in proptest::collection::vec(any::<prop::sample::Index>(), 0..6)) {
        let (mut data, _) = everything();
        let n = data.len();
        for (at, b) in flips {
            data[at.index(n)] = b;
        }
        let splits: Vec<usize> = splits.iter().map(|i| i.index(n)).collect();
        let _ = read_split(&mut RdbReader::new(), &data, &splits);
    }

    /// A valid RDB cut at random points gives the same events as in one piece.
    #[test]
    fn random_splits_same_events(splits in proptest::collection::vec(any::<prop::sample::Index>(), 0..12)) {
        let (data, expected) = everything();
        let splits: Vec<usize> = splits.iter().map(|i| i.index(data.len())).collect();
        prop_assert_eq!(read_split(&mut RdbReader::new(), &data, &splits).unwrap(), expected);
    }
}
