//! MOUNT v3 (RFC 1813 appendix I). MNT asks [`Exports`] for the root handle with the
//! caller's IP (so the allowed-clients list is enforced there); the mount list that
//! DUMP reports is kept in memory only, as it is advisory (RFC 1813: "the server
//! may not keep it accurate").

use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::Mutex;

use bytes::Bytes;
use nfs3_types::mount::{
    MNTPATHLEN, dirpath, export_node, exports, fhandle3, mountbody, mountlist, mountres3, mountres3_ok,
    mountstat3, name,
};
use nfs3_types::xdr_codec::{List, Opaque};
use tracing::{debug, info};

use super::xdr::{XdrCursor, XdrError, encode};
use super::{Exports, ProcReply};

pub const PROGRAM: u32 = nfs3_types::mount::PROGRAM;
pub const VERSION: u32 = nfs3_types::mount::VERSION;

const MOUNTPROC3_NULL: u32 = 0;
const MOUNTPROC3_MNT: u32 = 1;
const MOUNTPROC3_DUMP: u32 = 2;
const MOUNTPROC3_UMNT: u32 = 3;
const MOUNTPROC3_UMNTALL: u32 = 4;
const MOUNTPROC3_EXPORT: u32 = 5;

/// Flavors offered in the MNT reply, preferred first.
pub const AUTH_FLAVORS: [u32; 2] = [super::rpc::AUTH_SYS, super::rpc::AUTH_NONE];

/// Entries kept for DUMP; the oldest is forgotten beyond this so a client looping on
/// MNT cannot grow memory without bound.
pub const MAX_MOUNT_ENTRIES: usize = 4096;

/// The in-memory mount list (client address, exported path) that DUMP reports.
#[derive(Debug, Default)]
pub struct MountTable {
    entries: Mutex<VecDeque<(IpAddr, Vec<u8>)>>,
}

impl MountTable {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn list(&self) -> Vec<(IpAddr, Vec<u8>)> {
        self.lock().iter().cloned().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<(IpAddr, Vec<u8>)>> {
        // A panic while holding this lock cannot leave the list inconsistent.
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn add(&self, client: IpAddr, path: &[u8]) {
        let mut e = self.lock();
        if !e.iter().any(|(c, p)| *c == client && p == path) {
            if e.len() >= MAX_MOUNT_ENTRIES {
                e.pop_front();
            }
            e.push_back((client, path.to_vec()));
        }
    }

    fn remove(&self, client: IpAddr, path: &[u8]) {
        self.lock().retain(|(c, p)| !(*c == client && p == path));
    }

    fn remove_all(&self, client: IpAddr) {
        self.lock().retain(|(c, _)| *c != client);
    }
}

/// Runs one MOUNT v3 procedure for a caller at `client`.
pub fn call<E: Exports + ?Sized>(
    exports_: &E,
    table: &MountTable,
    client: IpAddr,
    proc: u32,
    args: Bytes,
) -> ProcReply {
    match proc {
        MOUNTPROC3_NULL => ProcReply::Success(Vec::new()),
        MOUNTPROC3_MNT => {
            let path = match XdrCursor::new(args).opaque(MNTPATHLEN) {
                Ok(p) => p,
                Err(XdrError::TooLong { len, .. }) => {
                    debug!(%client, len, "MNT path too long");
                    return ProcReply::Success(encode(&mountres3::Err(mountstat3::MNT3ERR_NAMETOOLONG)));
                }
                Err(_) => return ProcReply::GarbageArgs,
            };
            let res = match exports_.mount(&path, client) {
                Ok(fh) => {
                    info!(%client, path = %String::from_utf8_lossy(&path), "mounted");
                    table.add(client, &path);
                    mountres3::Ok(mountres3_ok {
                        fhandle: fhandle3(Opaque::owned(fh)),
                        auth_flavors: AUTH_FLAVORS.to_vec(),
                    })
                }
                Err(stat) => {
                    info!(%client, path = %String::from_utf8_lossy(&path), %stat, "mount refused");
                    mountres3::Err(stat)
                }
            };
            ProcReply::Success(encode(&res))
        }
        // A host that no share allows learns neither who mounts what nor what is
        // exported (it cannot connect at all unless it reaches another listener).
        MOUNTPROC3_DUMP | MOUNTPROC3_EXPORT if !exports_.allows(client) => {
            debug!(%client, proc, "mount list or exports asked by a host no share allows");
            ProcReply::Success(encode(&List::<export_node>(Vec::new())))
        }
        MOUNTPROC3_DUMP => {
            let hosts: Vec<(String, Vec<u8>)> = table
                .list()
                .into_iter()
                .map(|(c, p)| (c.to_string(), p))
                .collect();
            let list: mountlist = List(
                hosts
                    .iter()
                    .map(|(h, p)| mountbody {
                        ml_hostname: name(Opaque::borrowed(h.as_bytes())),
                        ml_directory: dirpath(Opaque::borrowed(p)),
                    })
                    .collect(),
            );
            ProcReply::Success(encode(&list))
        }
        MOUNTPROC3_UMNT => {
            // An over-long path cannot be in the table; UMNT has no error result.
            match XdrCursor::new(args).opaque(MNTPATHLEN) {
                Ok(p) => table.remove(client, &p),
                Err(XdrError::TooLong { .. }) => {}
                Err(_) => return ProcReply::GarbageArgs,
            }
            ProcReply::Success(Vec::new())
        }
        MOUNTPROC3_UMNTALL => {
            table.remove_all(client);
            ProcReply::Success(Vec::new())
        }
        MOUNTPROC3_EXPORT => {
            let shares = exports_.exports(client);
            let list: exports = List(
                shares
                    .iter()
                    .map(|e| export_node {
                        ex_dir: dirpath(Opaque::borrowed(e.path.as_bytes())),
                        ex_groups: List(
                            e.allowed_clients
                                .iter()
                                .map(|c| name(Opaque::borrowed(c.as_bytes())))
                                .collect(),
                        ),
                    })
                    .collect(),
            );
            ProcReply::Success(encode(&list))
        }
        _ => ProcReply::ProcUnavail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nfs::ExportEntry;

    struct OnlyTen;

    impl Exports for OnlyTen {
        fn exports(&self, client: IpAddr) -> Vec<ExportEntry> {
            if self.allows(client) {
                vec![ExportEntry {
                    path: "/data".into(),
                    allowed_clients: vec!["10.0.0.0/8".into()],
                }]
            } else {
                Vec::new()
            }
        }
        fn allows(&self, client: IpAddr) -> bool {
            matches!(client, IpAddr::V4(v4) if v4.octets()[0] == 10)
        }
        fn mount(&self, _: &[u8], _: IpAddr) -> Result<Vec<u8>, mountstat3> {
            Ok(vec![1])
        }
    }

    fn body(r: ProcReply) -> Vec<u8> {
        match r {
            ProcReply::Success(b) => b,
            _ => panic!("not a success"),
        }
    }

    /// DUMP and EXPORT tell a host that no share allows nothing: not who mounts what,
    /// nor what is exported to whom.
    #[test]
    fn dump_and_export_answer_only_allowed_hosts() {
        let table = MountTable::new();
        let inside: IpAddr = "10.1.2.3".parse().unwrap();
        let outside: IpAddr = "192.0.2.1".parse().unwrap();
        let mnt_args = Bytes::from(encode(&dirpath(Opaque::borrowed(b"/data"))));
        body(call(&OnlyTen, &table, inside, MOUNTPROC3_MNT, mnt_args));
        let empty = vec![0, 0, 0, 0];
        for proc in [MOUNTPROC3_DUMP, MOUNTPROC3_EXPORT] {
            assert_eq!(
                body(call(&OnlyTen, &table, outside, proc, Bytes::new())),
                empty,
                "proc {proc}"
            );
            assert_ne!(
                body(call(&OnlyTen, &table, inside, proc, Bytes::new())),
                empty,
                "proc {proc}"
            );
        }
    }
}
