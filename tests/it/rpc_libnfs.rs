//! Interop with an independent C client: libnfs-utils (`nfs-ls`, `nfs-cat`) mounts
//! through our one port (MOUNT + NFS) with AUTH_SYS and reads a tiny read-only tree
//! served by a minimal `Nfs3Program` built on the `xdr` helpers. Skipped (with a
//! message) where libnfs-utils is not installed; `.ci/run` installs it.

use std::net::IpAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use bucketgate::nfs::{CallContext, ExportEntry, Exports, Nfs3Program, ProcReply};
use bucketgate::nfs::{Limits, serve};
use bucketgate::nfs::{NAME_MAX, XdrCursor, encode};
use bytes::Bytes;
use nfs3_types::mount::mountstat3;
use nfs3_types::nfs3::{
    ACCESS3resok, FSINFO3resok, FSSTAT3resok, GETATTR3resok, LOOKUP3resok, Nfs3Option, Nfs3Result,
    PATHCONF3resok, READ3resok, READDIRPLUS3resok, cookieverf3, dirlistplus3, entryplus3, fattr3, filename3,
    ftype3, nfs_fh3, nfsstat3, nfstime3, specdata3,
};
use nfs3_types::xdr_codec::{List, Opaque, Void};
use tokio::net::TcpListener;
use tokio::process::Command;

const ROOT: &[u8] = b"ROOTFH01";
const FILE: &[u8] = b"FILEFH01";
const CONTENT: &[u8] = b"hello from bucketgate\n";

struct MiniFs;

fn attr(fh: &[u8]) -> fattr3 {
    let dir = fh == ROOT;
    let t = nfstime3 {
        seconds: 1_700_000_000,
        nseconds: 0,
    };
    fattr3 {
        type_: if dir { ftype3::NF3DIR } else { ftype3::NF3REG },
        mode: if dir { 0o755 } else { 0o644 },
        nlink: if dir { 2 } else { 1 },
        uid: 0,
        gid: 0,
        size: if dir { 4096 } else { CONTENT.len() as u64 },
        used: 4096,
        rdev: specdata3::default(),
        fsid: 1,
        fileid: if dir { 1 } else { 2 },
        atime: t,
        mtime: t,
        ctime: t,
    }
}

fn fh(b: &[u8]) -> nfs_fh3 {
    nfs_fh3 {
        data: Opaque::owned(b.to_vec()),
    }
}

fn known(h: &nfs_fh3) -> Option<&'static [u8]> {
    [ROOT, FILE].into_iter().find(|k| *k == h.data.as_ref())
}

fn stale() -> ProcReply {
    ProcReply::Success(encode(&nfsstat3::NFS3ERR_STALE))
}

impl Nfs3Program for MiniFs {
    async fn call(&self, ctx: CallContext, proc: u32, args: Bytes) -> ProcReply {
        // libnfs sends AUTH_SYS with the caller's uid.
        if proc != 0 && ctx.auth.is_none() {
            return ProcReply::Success(encode(&nfsstat3::NFS3ERR_ACCES));
        }
        let mut c = XdrCursor::new(args);
        let Ok(h) = (if proc == 0 { Ok(fh(ROOT)) } else { c.nfs_fh3() }) else {
            return ProcReply::GarbageArgs;
        };
        let Some(this) = known(&h) else {
            return stale();
        };
        let post = || Nfs3Option::Some(attr(this));
        match proc {
            0 => ProcReply::Success(Vec::new()),
            1 => ProcReply::Success(encode(&Nfs3Result::<_, Void>::Ok(GETATTR3resok {
                obj_attributes: attr(this),
            }))),
            3 => {
                let Ok(name) = c.filename3() else {
                    return ProcReply::GarbageArgs;
                };
                if name.len() > NAME_MAX {
                    return ProcReply::Success(encode(&nfsstat3::NFS3ERR_NAMETOOLONG));
                }
                if this != ROOT || &name[..] != b"hello.txt" {
                    return ProcReply::Success(encode(&Nfs3Result::<LOOKUP3resok, _>::Err((
                        nfsstat3::NFS3ERR_NOENT,
                        nfs3_types::nfs3::LOOKUP3resfail {
                            dir_attributes: post(),
                        },
                    ))));
                }
                ProcReply::Success(encode(&Nfs3Result::<_, Void>::Ok(LOOKUP3resok {
                    object: fh(FILE),
                    obj_attributes: Nfs3Option::Some(attr(FILE)),
                    dir_attributes: post(),
                })))
            }
            4 => {
                let Ok(access) = c.u32() else {
                    return ProcReply::GarbageArgs;
                };
                ProcReply::Success(encode(&Nfs3Result::<_, Void>::Ok(ACCESS3resok {
                    obj_attributes: post(),
                    access,
                })))
            }
            6 => {
                let (Ok(offset), Ok(count)) = (c.u64(), c.u32()) else {
                    return ProcReply::GarbageArgs;
                };
                let start = (offset as usize).min(CONTENT.len());
                let end = (start + count as usize).min(CONTENT.len());
                ProcReply::Success(encode(&Nfs3Result::<_, Void>::Ok(READ3resok {
                    file_attributes: post(),
                    count: (end - start) as u32,
                    eof: end == CONTENT.len(),
                    data: Opaque::borrowed(&CONTENT[start..end]),
                })))
            }
            17 => {
                let (Ok(cookie), Ok(_), Ok(_), Ok(_)) = (c.u64(), c.cookieverf3(), c.u32(), c.u32()) else {
                    return ProcReply::GarbageArgs;
                };
                let entries = if cookie == 0 {
                    vec![entryplus3 {
                        fileid: 2,
                        name: filename3(Opaque::borrowed(b"hello.txt")),
                        cookie: 1,
                        name_attributes: Nfs3Option::Some(attr(FILE)),
                        name_handle: Nfs3Option::Some(fh(FILE)),
                    }]
                } else {
                    vec![]
                };
                ProcReply::Success(encode(&Nfs3Result::<_, Void>::Ok(READDIRPLUS3resok {
                    dir_attributes: post(),
                    cookieverf: cookieverf3::default(),
                    reply: dirlistplus3 {
                        entries: List(entries),
                        eof: true,
                    },
                })))
            }
            18 => ProcReply::Success(encode(&Nfs3Result::<_, Void>::Ok(FSSTAT3resok {
                obj_attributes: post(),
                tbytes: 1 << 30,
                fbytes: 1 << 29,
                abytes: 1 << 29,
                tfiles: 1000,
                ffiles: 998,
                afiles: 998,
                invarsec: 0,
            }))),
            19 => ProcReply::Success(encode(&Nfs3Result::<_, Void>::Ok(FSINFO3resok {
                obj_attributes: post(),
                rtmax: 1 << 20,
                rtpref: 1 << 20,
                rtmult: 4096,
                wtmax: 1 << 20,
                wtpref: 1 << 20,
                wtmult: 4096,
                dtpref: 64 << 10,
                maxfilesize: u64::MAX,
                time_delta: nfstime3 {
                    seconds: 0,
                    nseconds: 1,
                },
                properties: 0x1b,
            }))),
            20 => ProcReply::Success(encode(&Nfs3Result::<_, Void>::Ok(PATHCONF3resok {
                obj_attributes: post(),
                linkmax: 1,
                name_max: NAME_MAX as u32,
                no_trunc: true,
                chown_restricted: true,
                case_insensitive: false,
                case_preserving: true,
            }))),
            _ => ProcReply::ProcUnavail,
        }
    }
}

struct OneExport;

impl Exports for OneExport {
    fn allows(&self, _client: IpAddr) -> bool {
        true
    }

    fn exports(&self, _client: IpAddr) -> Vec<ExportEntry> {
        vec![ExportEntry {
            path: "/data".into(),
            allowed_clients: vec![],
        }]
    }

    fn mount(&self, path: &[u8], _client: IpAddr) -> Result<Vec<u8>, mountstat3> {
        if path == b"/data" {
            Ok(ROOT.to_vec())
        } else {
            Err(mountstat3::MNT3ERR_NOENT)
        }
    }
}

async fn run(tool: &str, url: &str) -> Option<(bool, String, String)> {
    let child = Command::new(tool)
        .arg(url)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn();
    let Ok(child) = child else {
        assert!(
            std::env::var_os("BUCKETGATE_REQUIRE_TOOLS").is_none(),
            "BUCKETGATE_REQUIRE_TOOLS is set but {tool} is missing (apt-get install libnfs-utils)"
        );
        crate::common::skipped(&format!("{tool} is not installed (apt-get install libnfs-utils)"));
        return None;
    };
    let out = tokio::time::timeout(Duration::from_secs(20), child.wait_with_output())
        .await
        .expect("libnfs tool finished in time")
        .unwrap();
    Some((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

#[tokio::test]
async fn libnfs_lists_and_reads_through_our_port() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(
        listener,
        Arc::new(MiniFs),
        Arc::new(OneExport),
        Limits::default(),
        async {
            let _ = rx.await;
        },
    ));
    let q = format!("nfsport={port}&mountport={port}");

    if let Some((ok, out, err)) = run("nfs-ls", &format!("nfs://127.0.0.1/data?{q}")).await {
        assert!(ok, "nfs-ls failed: {err}");
        assert!(out.contains("hello.txt"), "nfs-ls output: {out}");
        let (ok, out, err) = run("nfs-cat", &format!("nfs://127.0.0.1/data/hello.txt?{q}"))
            .await
            .unwrap();
        assert!(ok, "nfs-cat failed: {err}");
        assert_eq!(out.as_bytes(), CONTENT);
        // An unknown export is refused at MOUNT.
        let (ok, _, _) = run("nfs-ls", &format!("nfs://127.0.0.1/nope?{q}")).await.unwrap();
        assert!(!ok, "mounting an unknown export must fail");
    }
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(15), server)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}
