//! Portmap v2 (RFC 1833 §3) on the NFS port itself: enough for clients that ask where
//! MOUNT and NFS live (`rpcinfo -p`, libnfs, nfs3_client) without a system rpcbind.
//! SET/UNSET are refused: nobody else registers with us.

use bytes::Bytes;
use nfs3_types::portmap::{IPPROTO_TCP, mapping, pmaplist};
use nfs3_types::xdr_codec::List;

use super::ProcReply;
use super::xdr::{XdrCursor, encode};

pub const PROGRAM: u32 = nfs3_types::portmap::PROGRAM;
pub const VERSION: u32 = nfs3_types::portmap::VERSION;

const PMAPPROC_NULL: u32 = 0;
const PMAPPROC_SET: u32 = 1;
const PMAPPROC_UNSET: u32 = 2;
const PMAPPROC_GETPORT: u32 = 3;
const PMAPPROC_DUMP: u32 = 4;

/// The (program, version) pairs served over TCP on our one port. Portmap lists itself
/// too, as rpcbind does, since it answers on the same port.
pub const SERVED: [(u32, u32); 3] = [
    (nfs3_types::nfs3::PROGRAM, nfs3_types::nfs3::VERSION),
    (nfs3_types::mount::PROGRAM, nfs3_types::mount::VERSION),
    (PROGRAM, VERSION),
];

/// Runs one portmap v2 procedure. `port` is the port this server listens on.
pub fn call(proc: u32, args: Bytes, port: u16) -> ProcReply {
    match proc {
        PMAPPROC_NULL => ProcReply::Success(Vec::new()),
        PMAPPROC_SET | PMAPPROC_UNSET => {
            let mut c = XdrCursor::new(args);
            if (0..4).any(|_| c.u32().is_err()) {
                return ProcReply::GarbageArgs;
            }
            ProcReply::Success(encode(&false))
        }
        PMAPPROC_GETPORT => {
            let mut c = XdrCursor::new(args);
            let (Ok(prog), Ok(vers), Ok(prot), Ok(_port)) = (c.u32(), c.u32(), c.u32(), c.u32()) else {
                return ProcReply::GarbageArgs;
            };
            let answer = if prot == IPPROTO_TCP && SERVED.contains(&(prog, vers)) {
                u32::from(port)
            } else {
                0
            };
            ProcReply::Success(encode(&answer))
        }
        PMAPPROC_DUMP => {
            let list: pmaplist = List(
                SERVED
                    .iter()
                    .map(|&(prog, vers)| mapping {
                        prog,
                        vers,
                        prot: IPPROTO_TCP,
                        port: u32::from(port),
                    })
                    .collect(),
            );
            ProcReply::Success(encode(&list))
        }
        // CALLIT (5) would let anyone bounce calls off us; it is not offered.
        _ => ProcReply::ProcUnavail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(ws: &[u32]) -> Bytes {
        Bytes::from(ws.iter().flat_map(|w| w.to_be_bytes()).collect::<Vec<_>>())
    }

    fn ok(r: ProcReply) -> Vec<u8> {
        match r {
            ProcReply::Success(b) => b,
            other => panic!("expected success, got {other:?}"),
        }
    }

    #[test]
    fn getport() {
        assert_eq!(
            ok(call(3, words(&[100003, 3, 6, 0]), 2049)),
            2049u32.to_be_bytes()
        );
        assert_eq!(
            ok(call(3, words(&[100005, 3, 6, 0]), 2049)),
            2049u32.to_be_bytes()
        );
        assert_eq!(ok(call(3, words(&[100003, 3, 17, 0]), 2049)), [0; 4]);
        assert_eq!(ok(call(3, words(&[100005, 1, 6, 0]), 2049)), [0; 4]);
        assert!(matches!(
            call(3, words(&[100003, 3]), 2049),
            ProcReply::GarbageArgs
        ));
        assert_eq!(ok(call(1, words(&[100003, 3, 6, 2049]), 2049)), [0; 4]);
        assert!(matches!(call(5, words(&[]), 2049), ProcReply::ProcUnavail));
        assert!(ok(call(0, words(&[]), 2049)).is_empty());
    }
}
