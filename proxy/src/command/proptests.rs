//! Property tests of the command table's lookup, arity and key finding (issue 22): any
//! argument vector gets an answer or a clear error, never a panic, and the keys found are
//! arguments of the command.

use super::*;
use bytes::Bytes;
use proptest::prelude::*;
use sluice_common::slot::{key_slot, SLOT_COUNT};

/// A command name: one of the table's (a subcommand as two arguments), in any case, or junk.
fn name() -> impl Strategy<Value = Vec<Bytes>> {
    let known = (0..all().len(), any::<bool>()).prop_map(|(i, upper)| {
        let spec = &all()[i];
        spec.name
            .split('|')
            .map(|part| Bytes::from(if upper { part.to_ascii_uppercase() } else { part.to_string() }))
            .collect::<Vec<_>>()
    });
    let junk = prop::collection::vec(any::<u8>(), 0..80).prop_map(|b| vec![Bytes::from(b)]);
    prop_oneof![4 => known, 1 => junk]
}

/// Arguments that steer key finding: counts (valid, negative, huge, malformed), the keywords
/// key specs search for, and anything.
fn argument() -> impl Strategy<Value = Bytes> {
    prop_oneof![
        3 => prop::sample::select(vec![
            "0", "1", "2", "3", "-1", "-0", "01", "9223372036854775807", "-9223372036854775808", "4611686018427387904",
            "99999999999999999999", "STREAMS", "streams", "KEYS", "STORE", "STOREDIST", "BY", "GET", "LIMIT", "WEIGHTS",
            "nosort", "#", "OBJECT", "DIGEST-VALUE", "{tag}a", "{tag}b", "{", "}", "",
        ])
        .prop_map(|s: &str| Bytes::copy_from_slice(s.as_bytes())),
        2 => prop::collection::vec(any::<u8>(), 0..16).prop_map(Bytes::from),
    ]
}

fn command() -> impl Strategy<Value = Command> {
    (name(), prop::collection::vec(argument(), 0..12)).prop_map(|(mut args, rest)| {
        args.extend(rest);
        Command::new(args)
    })
}

proptest! {
    #[test]
    fn any_command_is_looked_up_and_its_keys_found_or_refused(cmd in command()) {
        let Some(spec) = lookup(&cmd) else {
            return Ok(());
        };
        // The entry found is the command's (or its container's, for an unknown subcommand).
        let container = spec.name.split('|').next().unwrap_or_default();
        prop_assert!(cmd.name().eq_ignore_ascii_case(container.as_bytes()), "{} for {:?}", spec.name, cmd.name());
        let _ = spec.arity_ok(cmd.len());
        let _ = spec.may_write();
        match key_positions(&cmd, spec) {
            Ok(keys) => {
                for &k in &keys {
                    prop_assert!(k >= 1 && k < cmd.len(), "key {} of {} arguments ({})", k, cmd.len(), spec.name);
                    prop_assert!(key_slot(&cmd.args()[k]) < SLOT_COUNT);
                }
            }
            Err(e) => prop_assert!(e.to_string().starts_with("ERR "), "{}", e),
        }
    }
}

/// Regression: a `numkeys` near `i64::MAX` overflowed the last key's index.
#[test]
fn a_huge_numkeys_is_too_many_keys() {
    for n in ["9223372036854775807", "4611686018427387904", "9223372036854775806"] {
        for name in ["EVAL", "ZUNIONSTORE", "LMPOP", "FCALL"] {
            let args: &[&str] = match name {
                "ZUNIONSTORE" => &["ZUNIONSTORE", "d", n, "a"],
                "LMPOP" => &["LMPOP", n, "a", "LEFT"],
                _ => &[name, "x", n, "a"],
            };
            let cmd = Command::from_strs(args);
            let spec = lookup(&cmd).expect("known");
            assert_eq!(key_positions(&cmd, spec), Err(KeysError::TooManyKeys), "{args:?}");
        }
    }
}
