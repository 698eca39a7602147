//! ONC RPC v2 (RFC 5531) call headers and replies.
//!
//! The call header, including the AUTH_SYS body, is parsed by hand with the bounded
//! [`XdrCursor`]: `nfs3_types`' `opaque_auth`/`auth_unix` decoders allocate whatever length
//! the client claims. Replies are encoded with `nfs3_types`' `rpc_msg`, which is safe for
//! output.

use bytes::Bytes;
use nfs3_types::rpc::{
    accept_stat_data, accepted_reply, auth_stat, msg_body, opaque_auth, rejected_reply, reply_body, rpc_msg,
};

use super::xdr::{MAX_AUTH_BYTES, XdrCursor, XdrError, encode_into};
use super::{AuthSys, ProcReply};

pub const RPC_VERSION: u32 = 2;
pub const AUTH_NONE: u32 = 0;
pub const AUTH_SYS: u32 = 1;
/// RFC 5531 appendix A: `string machinename<255>`.
pub const MAX_MACHINE_NAME: usize = 255;
/// RFC 5531 appendix A: `unsigned int gids<16>`.
pub const MAX_AUTH_GIDS: usize = 16;

const MSG_CALL: u32 = 0;

/// A parsed CALL header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallHeader {
    pub xid: u32,
    pub prog: u32,
    pub vers: u32,
    pub proc: u32,
    /// `None` for AUTH_NONE.
    pub auth: Option<AuthSys>,
}

/// Why a record is not a call we can run, and what (if anything) to answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CallError {
    /// No xid, or not a CALL (a REPLY sent to a server): nothing sensible to answer.
    Unanswerable(&'static str),
    /// The header is cut short after the xid: answer GARBAGE_ARGS.
    Garbage { xid: u32 },
    /// rpcvers != 2: answer MSG_DENIED RPC_MISMATCH(2, 2).
    RpcMismatch { xid: u32, vers: u32 },
    /// Credential or verifier unusable: answer MSG_DENIED AUTH_ERROR(stat).
    Auth { xid: u32, stat: auth_stat },
}

impl CallError {
    /// The reply message (without record mark) this error deserves, if any.
    pub fn reply(&self) -> Option<Vec<u8>> {
        match *self {
            CallError::Unanswerable(_) => None,
            CallError::Garbage { xid } => Some(garbage_args(xid)),
            CallError::RpcMismatch { xid, .. } => Some(rpc_mismatch(xid)),
            CallError::Auth { xid, stat } => Some(auth_error(xid, stat)),
        }
    }
}

/// Parses the CALL header at the start of `record` and returns it with the argument
/// bytes, a zero-copy slice of `record`.
///
/// Checks in RFC 5531 order: msg_type, rpcvers, then credentials; program, version and
/// procedure are the dispatcher's business.
pub fn parse_call(record: Bytes) -> Result<(CallHeader, Bytes), CallError> {
    let mut c = XdrCursor::new(record);
    let xid = c
        .u32()
        .map_err(|_| CallError::Unanswerable("record shorter than an xid"))?;
    let garbage = |_: XdrError| CallError::Garbage { xid };
    let mtype = c.u32().map_err(garbage)?;
    if mtype != MSG_CALL {
        return Err(CallError::Unanswerable("not a CALL"));
    }
    let rpcvers = c.u32().map_err(garbage)?;
    if rpcvers != RPC_VERSION {
        return Err(CallError::RpcMismatch { xid, vers: rpcvers });
    }
    let prog = c.u32().map_err(garbage)?;
    let vers = c.u32().map_err(garbage)?;
    let proc = c.u32().map_err(garbage)?;

    let bad = |stat| move |_: XdrError| CallError::Auth { xid, stat };
    let cred_flavor = c.u32().map_err(bad(auth_stat::AUTH_BADCRED))?;
    let cred_body = c.opaque(MAX_AUTH_BYTES).map_err(bad(auth_stat::AUTH_BADCRED))?;
    let _verf_flavor = c.u32().map_err(bad(auth_stat::AUTH_BADVERF))?;
    let _verf_body = c.opaque(MAX_AUTH_BYTES).map_err(bad(auth_stat::AUTH_BADVERF))?;

    let auth = match cred_flavor {
        AUTH_NONE => None,
        AUTH_SYS => Some(parse_auth_sys(cred_body).map_err(bad(auth_stat::AUTH_BADCRED))?),
        // Linux knfsd answers BADCRED for flavors it has no handler for (e.g. RPCSEC_GSS
        // when no GSS is configured); clients then fall back or report the error clearly.
        _ => {
            return Err(CallError::Auth {
                xid,
                stat: auth_stat::AUTH_BADCRED,
            });
        }
    };
    Ok((
        CallHeader {
            xid,
            prog,
            vers,
            proc,
            auth,
        },
        c.rest(),
    ))
}

/// The AUTH_SYS (`authsys_parms`) body: strict, every field bounded, no trailing bytes.
pub fn parse_auth_sys(body: Bytes) -> Result<AuthSys, XdrError> {
    let mut c = XdrCursor::new(body);
    let _stamp = c.u32()?;
    let name = c.string(MAX_MACHINE_NAME)?;
    let uid = c.u32()?;
    let gid = c.u32()?;
    let gids = c.u32_array(MAX_AUTH_GIDS)?;
    c.expect_end()?;
    Ok(AuthSys {
        uid,
        gid,
        gids,
        machine_name: String::from_utf8_lossy(&name).into_owned(),
    })
}

fn reply(xid: u32, body: reply_body<'_>) -> Vec<u8> {
    let msg = rpc_msg {
        xid,
        body: msg_body::REPLY(body),
    };
    let mut out = Vec::with_capacity(32);
    encode_into(&mut out, &msg);
    out
}

/// An accepted reply with the given status (no results).
pub fn accepted(xid: u32, data: accept_stat_data) -> Vec<u8> {
    reply(
        xid,
        reply_body::MSG_ACCEPTED(accepted_reply {
            verf: opaque_auth::default(),
            reply_data: data,
        }),
    )
}

/// The header of an accepted SUCCESS reply; the procedure's results follow it.
pub fn success_header(xid: u32) -> Vec<u8> {
    accepted(xid, accept_stat_data::SUCCESS)
}

pub fn prog_unavail(xid: u32) -> Vec<u8> {
    accepted(xid, accept_stat_data::PROG_UNAVAIL)
}

pub fn prog_mismatch(xid: u32, low: u32, high: u32) -> Vec<u8> {
    accepted(xid, accept_stat_data::PROG_MISMATCH { low, high })
}

pub fn proc_unavail(xid: u32) -> Vec<u8> {
    accepted(xid, accept_stat_data::PROC_UNAVAIL)
}

pub fn garbage_args(xid: u32) -> Vec<u8> {
    accepted(xid, accept_stat_data::GARBAGE_ARGS)
}

pub fn system_err(xid: u32) -> Vec<u8> {
    accepted(xid, accept_stat_data::SYSTEM_ERR)
}

/// MSG_DENIED RPC_MISMATCH: we speak RPC version 2 only.
pub fn rpc_mismatch(xid: u32) -> Vec<u8> {
    reply(
        xid,
        reply_body::MSG_DENIED(rejected_reply::rpc_mismatch(RPC_VERSION, RPC_VERSION)),
    )
}

/// MSG_DENIED AUTH_ERROR.
pub fn auth_error(xid: u32, stat: auth_stat) -> Vec<u8> {
    reply(xid, reply_body::MSG_DENIED(rejected_reply::auth_error(stat)))
}

/// Splits a handler's answer into (reply header, results, data) so results and data
/// are never copied.
pub fn proc_reply(xid: u32, r: ProcReply) -> (Vec<u8>, Vec<u8>, bytes::Bytes) {
    let none = bytes::Bytes::new();
    match r {
        ProcReply::Success(results) => (success_header(xid), results, none),
        ProcReply::SuccessWithData(results, data) => (success_header(xid), results, data),
        ProcReply::ProcUnavail => (proc_unavail(xid), Vec::new(), none),
        ProcReply::GarbageArgs => (garbage_args(xid), Vec::new(), none),
        ProcReply::SystemErr => (system_err(xid), Vec::new(), none),
    }
}

/// The record-marking header of a single-fragment record of `len` bytes.
pub fn last_fragment_header(len: usize) -> [u8; 4] {
    debug_assert!(len <= 0x7FFF_FFFF);
    (0x8000_0000u32 | (len as u32)).to_be_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(ws: &[u32]) -> Vec<u8> {
        ws.iter().flat_map(|w| w.to_be_bytes()).collect()
    }

    fn auth_sys_body(name: &[u8], gids: &[u32]) -> Vec<u8> {
        let mut b = words(&[42, name.len() as u32]);
        b.extend_from_slice(name);
        b.resize(b.len().next_multiple_of(4), 0);
        b.extend(words(&[1000, 100, gids.len() as u32]));
        b.extend(words(gids));
        b
    }

    fn call(xid: u32, cred_flavor: u32, cred: &[u8], args: &[u8]) -> Bytes {
        let mut b = words(&[xid, 0, 2, 100003, 3, 1, cred_flavor, cred.len() as u32]);
        b.extend_from_slice(cred);
        b.extend(words(&[0, 0]));
        b.extend_from_slice(args);
        Bytes::from(b)
    }

    #[test]
    fn parses_auth_sys_call_and_slices_args() {
        let rec = call(7, AUTH_SYS, &auth_sys_body(b"host1", &[1, 2, 3]), b"ARGS");
        let (h, args) = parse_call(rec.clone()).unwrap();
        assert_eq!((h.xid, h.prog, h.vers, h.proc), (7, 100003, 3, 1));
        let a = h.auth.unwrap();
        assert_eq!(
            (a.uid, a.gid, a.gids, a.machine_name.as_str()),
            (1000, 100, vec![1, 2, 3], "host1")
        );
        assert_eq!(&args[..], b"ARGS");
        assert_eq!(args.as_ptr(), rec[rec.len() - 4..].as_ptr());
    }

    #[test]
    fn auth_none_gives_no_credentials() {
        let (h, args) = parse_call(call(1, AUTH_NONE, &[], &[])).unwrap();
        assert_eq!(h.auth, None);
        assert!(args.is_empty());
    }

    #[test]
    fn malformed_auth_sys_is_badcred() {
        let bad = CallError::Auth {
            xid: 9,
            stat: auth_stat::AUTH_BADCRED,
        };
        // 17 gids
        let gids: Vec<u32> = (0..17).collect();
        assert_eq!(
            parse_call(call(9, AUTH_SYS, &auth_sys_body(b"h", &gids), &[])),
            Err(bad.clone())
        );
        // machine name of 256 bytes
        assert_eq!(
            parse_call(call(9, AUTH_SYS, &auth_sys_body(&[b'a'; 256], &[]), &[])),
            Err(bad.clone())
        );
        // gid count claims more than the body holds
        let mut body = auth_sys_body(b"h", &[]);
        let n = body.len();
        body[n - 4..].copy_from_slice(&3u32.to_be_bytes());
        assert_eq!(parse_call(call(9, AUTH_SYS, &body, &[])), Err(bad.clone()));
        // trailing bytes in the body
        let mut body = auth_sys_body(b"h", &[]);
        body.extend(words(&[0]));
        assert_eq!(parse_call(call(9, AUTH_SYS, &body, &[])), Err(bad.clone()));
        // credential longer than 400 bytes
        assert_eq!(parse_call(call(9, AUTH_SYS, &[0; 404], &[])), Err(bad.clone()));
        // unknown flavor (RPCSEC_GSS)
        assert_eq!(parse_call(call(9, 6, &[], &[])), Err(bad));
    }

    #[test]
    fn header_errors() {
        assert!(matches!(
            parse_call(Bytes::from_static(&[0, 0])),
            Err(CallError::Unanswerable(_))
        ));
        assert_eq!(
            parse_call(Bytes::from(words(&[5, 0, 2, 1]))),
            Err(CallError::Garbage { xid: 5 })
        );
        assert!(matches!(
            parse_call(Bytes::from(words(&[5, 1, 0]))),
            Err(CallError::Unanswerable(_))
        ));
        assert_eq!(
            parse_call(Bytes::from(words(&[5, 0, 3, 100003, 3, 0, 0, 0, 0, 0]))),
            Err(CallError::RpcMismatch { xid: 5, vers: 3 })
        );
    }

    #[test]
    fn reply_encodings() {
        assert_eq!(success_header(3), words(&[3, 1, 0, 0, 0, 0]));
        assert_eq!(prog_mismatch(3, 2, 2), words(&[3, 1, 0, 0, 0, 2, 2, 2]));
        assert_eq!(proc_unavail(3), words(&[3, 1, 0, 0, 0, 3]));
        assert_eq!(garbage_args(3), words(&[3, 1, 0, 0, 0, 4]));
        assert_eq!(system_err(3), words(&[3, 1, 0, 0, 0, 5]));
        assert_eq!(prog_unavail(3), words(&[3, 1, 0, 0, 0, 1]));
        assert_eq!(rpc_mismatch(3), words(&[3, 1, 1, 0, 2, 2]));
        assert_eq!(auth_error(3, auth_stat::AUTH_TOOWEAK), words(&[3, 1, 1, 1, 5]));
        assert_eq!(last_fragment_header(8), [0x80, 0, 0, 8]);
    }
}
