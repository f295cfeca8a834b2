//! Connection-level commands the proxy answers itself: `PING`, `ECHO`, `QUIT`, `AUTH`,
//! `HELLO`, `SELECT`, `RESET`, `READONLY`/`READWRITE`/`ASKING`, `CLIENT` basics and
//! `ACL WHOAMI`. `AUTH` as the default user checks `--requirepass`; as any other user it is
//! checked by the node and the client then runs as that user there (`users.rs`).
//! They describe the client's connection to the proxy, not the proxy's to Redis.

use crate::command::CommandSpec;
use crate::keyed;
use crate::session::{Flow, Pending, Session, TxState};
use bytes::Bytes;
use sluice_common::resp::{parse_int, Command, Frame, Protocol};

/// The Redis version the proxy presents (the command set it routes is Redis 7.0's).
pub const REDIS_VERSION: &str = "7.0.0";

pub async fn handle(s: &mut Session, cmd: Command, spec: &'static CommandSpec) -> Flow {
    let args = cmd.args();
    match spec.name {
        "ping" => {
            let reply = match args.get(1) {
                Some(msg) => Frame::Bulk(msg.clone()),
                None => Frame::simple("PONG"),
            };
            s.reply(reply).await
        }
        "echo" => s.reply(Frame::Bulk(args[1].clone())).await,
        "quit" => {
            s.reply(Frame::ok()).await;
            s.push(Pending::Close).await;
            Flow::Close
        }
        "readonly" | "readwrite" => {
            s.set_readonly(spec.name == "readonly");
            s.reply(Frame::ok()).await
        }
        "asking" => s.reply(Frame::ok()).await,
        "select" => select(s, &args[1]).await,
        "auth" => auth(s, args).await,
        "hello" => hello(s, &cmd).await,
        "reset" => {
            s.reset();
            s.reply(Frame::simple("RESET")).await
        }
        "acl|whoami" => {
            let reply = Frame::Bulk(Bytes::copy_from_slice(s.user_name().as_bytes()));
            s.reply(reply).await
        }
        name if name.starts_with("client|") => client(s, &cmd, spec).await,
        _ => refuse(s, &cmd, spec).await,
    }
}

/// The `CLIENT` subcommands about the client's own connection.
async fn client(s: &mut Session, cmd: &Command, spec: &'static CommandSpec) -> Flow {
    let args = cmd.args();
    let reply = match spec.name {
        "client|setname" => ok_or_error(set_name(s, &args[2])),
        "client|getname" => s.name().cloned().map_or(Frame::Null, Frame::Bulk),
        "client|id" => Frame::Integer(s.id() as i64),
        "client|info" => Frame::Verbatim(Bytes::from_static(b"txt"), Bytes::from(client_info_line(s))),
        "client|setinfo" => ok_or_error(set_info(s, &args[2], &args[3])),
        // Eviction hints: about the node's view of its clients, which are sluice's connections.
        "client|no-evict" | "client|no-touch" => Frame::ok(),
        _ => return refuse(s, cmd, spec).await,
    };
    s.reply(reply).await
}

/// A command routed here that the proxy does not answer: why (or that it is unsupported).
async fn refuse(s: &mut Session, cmd: &Command, spec: &'static CommandSpec) -> Flow {
    let err = keyed::refusal(cmd, spec, s.shared()).unwrap_or_else(|| Frame::error("ERR sluice: unsupported command"));
    s.reply(err).await
}

/// `SELECT db`: only database 0 exists in cluster mode.
async fn select(s: &mut Session, db: &Bytes) -> Flow {
    let reply = match parse_int(db) {
        Some(0) => Frame::ok(),
        Some(_) => Frame::error("ERR SELECT is not allowed in cluster mode"),
        None => Frame::error("ERR value is not an integer or out of range"),
    };
    s.reply(reply).await
}

/// `AUTH [user] pass`
async fn auth(s: &mut Session, args: &[Bytes]) -> Flow {
    let (user, pass) = match args.len() {
        2 => (None, &args[1]),
        3 => (Some(&args[1]), &args[2]),
        _ => return s.reply(Frame::error("ERR syntax error")).await,
    };
    let reply = ok_or_error(authenticate(s, user, pass).await);
    s.reply(reply).await
}

/// `OK`, or the error a command was refused with.
fn ok_or_error(done: Result<(), Frame>) -> Frame {
    done.map_or_else(|e| e, |()| Frame::ok())
}

/// `CLIENT SETNAME name`: an empty name clears it; spaces and special characters are refused
/// with Redis's words.
fn set_name(s: &mut Session, name: &Bytes) -> Result<(), Frame> {
    if name.iter().any(|&b| b <= b' ' || b > b'~') {
        return Err(Frame::error("ERR Client names cannot contain spaces, newlines or special characters."));
    }
    s.set_name((!name.is_empty()).then(|| name.clone()));
    Ok(())
}

/// `AUTH [user] pass`: the default user against `--requirepass`, any other user against the
/// node. `Ok` once the client runs as that user; the error Redis would give otherwise.
async fn authenticate(s: &mut Session, user: Option<&Bytes>, pass: &Bytes) -> Result<(), Frame> {
    let user = user.filter(|u| &u[..] != b"default");
    let Some(user) = user else {
        check_password(s, pass)?;
        s.authenticate(None);
        return Ok(());
    };
    let wrongpass = || Frame::error("WRONGPASS invalid username-password pair or user is disabled.");
    let (Ok(name), Ok(pass)) = (std::str::from_utf8(user), std::str::from_utf8(pass)) else {
        return Err(wrongpass());
    };
    let shared = s.shared().clone();
    match shared.users.authenticate(&shared.opts, name, pass).await {
        Ok(u) => {
            s.authenticate(Some(u));
            Ok(())
        }
        Err(e) => Err(Frame::error(e.to_string())),
    }
}

/// `CLIENT SETINFO lib-name|lib-ver value` as Redis 7.2 answers it: an unknown attribute or a
/// value with spaces or special characters is refused with Redis's words (naming the attribute
/// as the client spelt it) and nothing is set; an empty value clears the attribute.
fn set_info(s: &mut Session, attr: &Bytes, value: &Bytes) -> Result<(), Frame> {
    let shown = String::from_utf8_lossy(attr);
    let slot = if attr.eq_ignore_ascii_case(b"lib-name") {
        &mut s.lib_mut().name
    } else if attr.eq_ignore_ascii_case(b"lib-ver") {
        &mut s.lib_mut().version
    } else {
        return Err(Frame::error(format!("ERR Unrecognized option '{shown}'")));
    };
    if value.iter().any(|&b| !(b'!'..=b'~').contains(&b)) {
        return Err(Frame::error(format!("ERR {shown} cannot contain spaces, newlines or special characters.")));
    }
    *slot = (!value.is_empty()).then(|| value.clone());
    Ok(())
}

/// `Ok` if the default user's password is right; the error Redis would give otherwise.
fn check_password(s: &Session, pass: &Bytes) -> Result<(), Frame> {
    let Some(required) = &s.shared().opts.requirepass else {
        return Err(Frame::error(
            "ERR AUTH <password> called without any password configured for the default user. \
             Are you sure your configuration is correct?",
        ));
    };
    if constant_time_eq(pass, required.as_bytes()) {
        Ok(())
    } else {
        Err(Frame::error("WRONGPASS invalid username-password pair or user is disabled."))
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `HELLO [protover [AUTH user pass] [SETNAME name]]`
async fn hello(s: &mut Session, cmd: &Command) -> Flow {
    let args = cmd.args();
    let mut protocol = s.protocol();
    if let Some(v) = args.get(1) {
        protocol = match parse_int(v) {
            Some(2) => Protocol::Resp2,
            Some(3) => Protocol::Resp3,
            Some(_) => return s.reply(Frame::error("NOPROTO unsupported protocol version")).await,
            None => return s.reply(Frame::error("ERR Protocol version is not an integer or out of range")).await,
        };
    }
    let mut i = 2;
    let mut name = None;
    while i < args.len() {
        let opt = &args[i];
        if opt.eq_ignore_ascii_case(b"auth") && i + 2 < args.len() {
            if let Err(e) = authenticate(s, Some(&args[i + 1]), &args[i + 2]).await {
                return s.reply(e).await;
            }
            i += 3;
        } else if opt.eq_ignore_ascii_case(b"setname") && i + 1 < args.len() {
            name = Some(args[i + 1].clone());
            i += 2;
        } else {
            return s
                .reply(Frame::error(format!("ERR Syntax error in HELLO option '{}'", String::from_utf8_lossy(opt))))
                .await;
        }
    }
    if !s.is_authenticated() {
        return s
            .reply(Frame::error(
                "NOAUTH HELLO must be called with the client already authenticated, otherwise the \
                 HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and \
                 select the RESP protocol version at the same time",
            ))
            .await;
    }
    if let Some(n) = name {
        s.set_name(Some(n));
    }
    s.set_protocol(protocol);
    let reply = Frame::Map(vec![
        (Frame::bulk("server"), Frame::bulk("redis")),
        (Frame::bulk("version"), Frame::bulk(REDIS_VERSION)),
        (Frame::bulk("proto"), Frame::Integer(if protocol == Protocol::Resp3 { 3 } else { 2 })),
        (Frame::bulk("id"), Frame::Integer(s.id() as i64)),
        (Frame::bulk("mode"), Frame::bulk("cluster")),
        (Frame::bulk("role"), Frame::bulk("master")),
        (Frame::bulk("modules"), Frame::Array(Vec::new())),
    ]);
    s.reply(reply).await
}

/// A `CLIENT INFO` line in Redis's format (7.2's, with the library fields), describing the client's connection to the proxy.
fn client_info_line(s: &Session) -> String {
    let show_addr = |a: Option<std::net::SocketAddr>| a.map(|a| a.to_string()).unwrap_or_default();
    let (addr, laddr) = (show_addr(s.addr()), show_addr(s.local_addr()));
    let show = |v: Option<&Bytes>| v.map(|v| String::from_utf8_lossy(v).into_owned()).unwrap_or_default();
    let name = show(s.name());
    let multi = match s.tx() {
        TxState::Queued { commands, .. } => commands.len() as i64,
        _ => -1,
    };
    let resp = if s.protocol() == Protocol::Resp3 { 3 } else { 2 };
    let user = s.user_name();
    let (lib_name, lib_ver) = (show(s.lib().name.as_ref()), show(s.lib().version.as_ref()));
    format!(
        "id={} addr={addr} laddr={laddr} fd=0 name={name} age={} idle=0 flags=N db=0 sub=0 psub=0 ssub=0 \
         multi={multi} qbuf=0 qbuf-free=0 argv-mem=0 multi-mem=0 rbs=0 rbp=0 obl=0 oll=0 omem=0 tot-mem=0 \
         events=r cmd=client|info user={user} redir=-1 resp={resp} lib-name={lib_name} lib-ver={lib_ver}\n",
        s.id(),
        s.age().as_secs(),
    )
}
