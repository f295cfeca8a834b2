//! Declared lengths never size an allocation (issue 22): hostile headers (`*2147483647`,
//! `$536870912`, maps and sets of a billion entries, nested) and generated ones go through
//! every parser while a counting allocator records the largest single allocation, which must
//! stay within a small bound over the input's own size.

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use sluice_common::resp::{measure, parse_frame, split_inline, CommandCodec, Limits, ReplyCodec};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use tokio_util::codec::Decoder;

/// The system allocator, noting the largest allocation made by the current thread.
struct Counting;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    // `try_with`: the thread-local may already be gone while a thread shuts down.
    let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Runs every parser over `input`; answers the largest allocation they made.
fn largest_allocation(input: &[u8]) -> usize {
    let bytes = Bytes::copy_from_slice(input);
    let mut commands = BytesMut::from(input);
    let mut replies = BytesMut::from(input);
    LARGEST.with(|l| l.set(0));
    let mut codec = CommandCodec::default();
    while let Ok(Some(_)) = codec.decode(&mut commands) {}
    let mut codec = ReplyCodec::default();
    while let Ok(Some(_)) = codec.decode(&mut replies) {}
    for limits in [Limits::CLIENT, Limits::SERVER] {
        let _ = measure(input, &limits);
        let _ = parse_frame(&bytes, &limits);
    }
    let _ = split_inline(input);
    LARGEST.with(|l| l.get())
}

/// What a parser may allocate at most: in proportion to the input, never to a declared length
/// (a value takes 3 bytes at least and a `Frame` 72, a map entry 6 and 144).
fn bound(input: &[u8]) -> usize {
    32 * input.len() + 4096
}

const HOSTILE: &[&[u8]] = &[
    b"*2147483647\r\n",
    b"*2147483647\r\n$536870912\r\n",
    b"*1\r\n$536870912\r\nabc",
    b"$1073741824\r\n",
    b"%4611686018427387903\r\n",
    b"%9223372036854775807\r\n+a\r\n",
    b"~9223372036854775807\r\n:1\r\n",
    b">9223372036854775807\r\n",
    b"|9223372036854775807\r\n",
    b"*9223372036854775807\r\n*9223372036854775807\r\n*9223372036854775807\r\n",
    b"=999999999\r\n",
    b"!999999999\r\n",
];

#[test]
fn hostile_lengths_allocate_nothing_of_their_size() {
    for input in HOSTILE {
        let largest = largest_allocation(input);
        assert!(
            largest <= bound(input),
            "{:?}: an allocation of {largest} bytes (bound {})",
            String::from_utf8_lossy(input),
            bound(input)
        );
    }
}

fn header() -> impl Strategy<Value = Vec<u8>> {
    let tag = prop::sample::select(&b"*$%~>|=!"[..]);
    let len = prop_oneof![any::<i64>().prop_map(|n| n.unsigned_abs()), 0u64..4096, Just(i64::MAX as u64)];
    (tag, len).prop_map(|(t, n)| format!("{}{n}\r\n", char::from(t)).into_bytes())
}

proptest! {
    /// Chains of headers declaring anything, with a little data after each.
    #[test]
    fn declared_lengths_never_size_an_allocation(
        parts in prop::collection::vec((header(), prop::collection::vec(any::<u8>(), 0..8)), 1..8)
    ) {
        let input: Vec<u8> = parts.into_iter().flat_map(|(h, d)| h.into_iter().chain(d)).collect();
        let largest = largest_allocation(&input);
        prop_assert!(largest <= bound(&input), "an allocation of {} bytes for {:?}", largest, String::from_utf8_lossy(&input));
    }
}
