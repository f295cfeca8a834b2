//! Which commands of a Redis node's replication stream concern the slots a filtered
//! migration moves, and what of them the destination's node must run.
//!
//! Redis 7 replicates effects: scripts and functions arrive as the commands they ran, inside
//! `MULTI … EXEC`, expirations as `DEL`/`UNLINK`, `EXPIRE` as `PEXPIREAT`. So every write is a
//! keyed command whose keys the proxy's command table finds, and a unit is kept a unit: the
//! moving slots' commands of a `MULTI … EXEC` go to the destination as one `MULTI … EXEC`.
//! Commands of other slots, of other databases (a cluster uses database 0) and keyless
//! ones (`PING`, `PUBLISH`, `FUNCTION LOAD`…) are not the destination's. What cannot be
//! filtered safely ends the copy with a reason: `FLUSHALL`/`FLUSHDB`/`SWAPDB` (which keys of
//! the moving slots do they leave?), and a command whose keys are partly in the moving
//! slots, unless it splits by key (`DEL`, `UNLINK`, `MSET`).

use crate::command;
use crate::migration::error::{refused, MigrationError};
use bytes::{Bytes, BytesMut};
use sluice_common::resp::{encode_command, Command};
use sluice_common::slot::key_slot;

/// What to send to the destination's node for one or more stream commands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unit {
    /// RESP commands written back to back.
    pub data: Bytes,
    /// How many commands `data` holds (as many replies come back).
    pub commands: usize,
}

/// Follows one replication stream: the database selected and an open `MULTI`.
pub struct StreamFilter {
    moving: Box<[bool]>,
    db: u64,
    /// The moving slots' commands of the open `MULTI`, if one is open.
    multi: Option<Vec<Bytes>>,
}

impl StreamFilter {
    /// `moving[slot]`: whether the slot moves.
    pub fn new(moving: Box<[bool]>) -> StreamFilter {
        StreamFilter { moving, db: 0, multi: None }
    }

    /// One command of the stream (`args`, name first; `raw` its RESP bytes): what the
    /// destination must run now, if anything (a `MULTI` unit comes whole with its `EXEC`).
    pub fn feed(&mut self, args: &[Bytes], raw: &Bytes) -> Result<Option<Unit>, MigrationError> {
        let Some(name) = args.first() else { return Ok(None) };
        let name = String::from_utf8_lossy(name).to_ascii_uppercase();
        match name.as_str() {
            "SELECT" => {
                let db = args.get(1).and_then(|a| std::str::from_utf8(a).ok()).and_then(|a| a.parse().ok());
                self.db = db.ok_or_else(|| refused!("the stream selected database {:?}", args.get(1)))?;
                return Ok(None);
            }
            "MULTI" => {
                self.multi = Some(Vec::new());
                return Ok(None);
            }
            "EXEC" => {
                let Some(cmds) = self.multi.take() else { return Ok(None) };
                if cmds.is_empty() {
                    return Ok(None);
                }
                let mut data = BytesMut::new();
                encode_command(&["MULTI"], &mut data);
                for c in &cmds {
                    data.extend_from_slice(c);
                }
                encode_command(&["EXEC"], &mut data);
                return Ok(Some(Unit { data: data.freeze(), commands: cmds.len() + 2 }));
            }
            "FLUSHALL" | "FLUSHDB" | "SWAPDB" => {
                return Err(refused!(
                    "the source node ran {name} during the copy: which keys of the moving slots it left cannot be \
                     told from the stream; start the migration again"
                ))
            }
            // Keyless, or not about keys: nothing of the destination's.
            "PING" | "REPLCONF" | "PUBLISH" | "SPUBLISH" | "FUNCTION" | "SCRIPT" => return Ok(None),
            _ => {}
        }
        if self.db != 0 {
            return Ok(None);
        }
        let Some(one) = self.filter_keyed(&name, args, raw)? else { return Ok(None) };
        match &mut self.multi {
            Some(cmds) => {
                cmds.push(one);
                Ok(None)
            }
            None => Ok(Some(Unit { data: one, commands: 1 })),
        }
    }

    /// A keyed command: itself when all its keys move, its moving keys' part when it splits,
    /// nothing when none moves.
    fn filter_keyed(&self, name: &str, args: &[Bytes], raw: &Bytes) -> Result<Option<Bytes>, MigrationError> {
        let cmd = Command::from_parts(raw.clone(), args.to_vec());
        let spec = command::lookup(&cmd).ok_or_else(|| refused!("the stream carries {name}, unknown to sluice"))?;
        let keys = command::key_positions(&cmd, spec).map_err(|e| refused!("{name} in the stream: {e}"))?;
        let moves: Vec<bool> = keys.iter().map(|&i| self.moving[usize::from(key_slot(&args[i]))]).collect();
        if moves.iter().all(|m| !m) {
            return Ok(None);
        }
        if moves.iter().all(|m| *m) {
            return Ok(Some(raw.clone()));
        }
        // Keys on both sides: only commands that act on each key alone can be split.
        let mut out: Vec<Bytes> = vec![args[0].clone()];
        match name {
            "DEL" | "UNLINK" => {
                out.extend(keys.iter().zip(&moves).filter(|(_, m)| **m).map(|(&i, _)| args[i].clone()));
            }
            "MSET" => {
                for (&i, _) in keys.iter().zip(&moves).filter(|(_, m)| **m) {
                    out.push(args[i].clone());
                    out.push(args.get(i + 1).cloned().ok_or_else(|| refused!("MSET without a value"))?);
                }
            }
            _ => {
                return Err(refused!(
                    "the stream carries {name} on keys of moving and staying slots at once; it cannot be split"
                ))
            }
        }
        let mut data = BytesMut::new();
        encode_command(&out, &mut data);
        Ok(Some(data.freeze()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_common::slot::SLOT_COUNT;

    /// Keys in slot 0 (`{06S}`…: hash tag of slot 0) move; `b` (slot 3300) stays.
    fn filter() -> StreamFilter {
        let mut moving = vec![false; usize::from(SLOT_COUNT)];
        moving[usize::from(key_slot(b"a"))] = true;
        StreamFilter::new(moving.into_boxed_slice())
    }

    fn cmd(parts: &[&str]) -> (Vec<Bytes>, Bytes) {
        let args: Vec<Bytes> = parts.iter().map(|p| Bytes::copy_from_slice(p.as_bytes())).collect();
        let mut raw = BytesMut::new();
        encode_command(parts, &mut raw);
        (args, raw.freeze())
    }

    fn feed(f: &mut StreamFilter, parts: &[&str]) -> Result<Option<Unit>, MigrationError> {
        let (args, raw) = cmd(parts);
        f.feed(&args, &raw)
    }

    fn raw(parts: &[&str]) -> Bytes {
        cmd(parts).1
    }

    #[test]
    fn commands_of_moving_slots_pass_others_do_not() {
        let mut f = filter();
        assert_eq!(
            feed(&mut f, &["SET", "a", "1"]).unwrap(),
            Some(Unit { data: raw(&["SET", "a", "1"]), commands: 1 })
        );
        assert_eq!(feed(&mut f, &["SET", "b", "1"]).unwrap(), None);
        assert_eq!(feed(&mut f, &["PING"]).unwrap(), None);
        assert_eq!(feed(&mut f, &["PUBLISH", "a", "x"]).unwrap(), None);
        assert_eq!(feed(&mut f, &["PEXPIREAT", "a", "1"]).unwrap().map(|u| u.commands), Some(1));
        // Another database: not the cluster's.
        feed(&mut f, &["SELECT", "3"]).unwrap();
        assert_eq!(feed(&mut f, &["SET", "a", "1"]).unwrap(), None);
        feed(&mut f, &["SELECT", "0"]).unwrap();
        assert!(feed(&mut f, &["SET", "a", "1"]).unwrap().is_some());
    }

    #[test]
    fn a_multi_unit_keeps_only_its_moving_commands_and_stays_a_unit() {
        let mut f = filter();
        assert_eq!(feed(&mut f, &["MULTI"]).unwrap(), None);
        assert_eq!(feed(&mut f, &["SET", "a", "1"]).unwrap(), None);
        assert_eq!(feed(&mut f, &["SET", "b", "1"]).unwrap(), None);
        assert_eq!(feed(&mut f, &["INCR", "{a}n"]).unwrap(), None);
        let unit = feed(&mut f, &["EXEC"]).unwrap().expect("a unit");
        let mut want = BytesMut::new();
        encode_command(&["MULTI"], &mut want);
        want.extend_from_slice(&raw(&["SET", "a", "1"]));
        want.extend_from_slice(&raw(&["INCR", "{a}n"]));
        encode_command(&["EXEC"], &mut want);
        assert_eq!(unit, Unit { data: want.freeze(), commands: 4 });
        // A unit with nothing of the moving slots sends nothing.
        feed(&mut f, &["MULTI"]).unwrap();
        feed(&mut f, &["SET", "b", "2"]).unwrap();
        assert_eq!(feed(&mut f, &["EXEC"]).unwrap(), None);
    }

    #[test]
    fn split_commands_keep_their_moving_keys() {
        let mut f = filter();
        let unit = feed(&mut f, &["DEL", "b", "a", "{a}x"]).unwrap().expect("a part");
        assert_eq!(unit.data, raw(&["DEL", "a", "{a}x"]));
        let unit = feed(&mut f, &["MSET", "b", "1", "a", "2"]).unwrap().expect("a part");
        assert_eq!(unit.data, raw(&["MSET", "a", "2"]));
        let err = feed(&mut f, &["RENAME", "a", "b"]).unwrap_err();
        assert!(matches!(&err, MigrationError::Refused(why) if why.contains("cannot be split")), "{err}");
    }

    #[test]
    fn what_cannot_be_filtered_ends_the_copy() {
        for c in [&["FLUSHALL"][..], &["FLUSHDB", "ASYNC"], &["SWAPDB", "0", "1"]] {
            let err = feed(&mut filter(), c).unwrap_err();
            assert!(matches!(&err, MigrationError::Refused(why) if why.contains("start the migration again")), "{err}");
        }
        let err = feed(&mut filter(), &["NOSUCHCOMMAND", "a"]).unwrap_err();
        assert!(matches!(&err, MigrationError::Refused(why) if why.contains("unknown")), "{err}");
    }
}
