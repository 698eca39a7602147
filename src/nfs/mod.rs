//! NFSv3 over TCP: RPC record marking, AUTH_SYS, portmap, MOUNT v3 and the NFS
//! program. This layer only translates; file semantics live in `bucketgate-cache`.
//!
//! The RPC side (framing, call parsing, limits, the reply cache, portmap, MOUNT) calls
//! into the two traits below, so it can be tested without the file engine.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};

use bytes::Bytes;

mod handle;
mod mount;
mod nfs3;
mod portmap;
pub(crate) mod portmap_server;
mod replies;
mod rpc;
mod server;
mod status;
mod xdr;

pub use handle::{BadHandle, Handle};
pub use nfs3::NfsService;
pub use rpc::{parse_auth_sys, parse_call};
pub use server::{Limits, serve};
pub use xdr::{NAME_MAX, XdrCursor, encode};

/// AUTH_SYS credentials exactly as the client sent them (squash is applied later,
/// per share, once the file handle names the share). `None` is AUTH_NONE.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthSys {
    pub uid: u32,
    pub gid: u32,
    pub gids: Vec<u32>,
    pub machine_name: String,
}

#[derive(Clone, Debug)]
pub struct CallContext {
    pub xid: u32,
    pub client: SocketAddr,
    pub auth: Option<AuthSys>,
}

/// What a procedure handler produced.
#[derive(Debug)]
pub enum ProcReply {
    /// Accepted, SUCCESS: the XDR-encoded results follow the accept_stat.
    Success(Vec<u8>),
    /// Accepted, SUCCESS, with the results' last field (READ data) kept apart: the
    /// encoded results up to and including its length word, then the bytes, padded.
    /// The data is sent with writev, never copied into the reply.
    SuccessWithData(Vec<u8>, Bytes),
    ProcUnavail,
    GarbageArgs,
    SystemErr,
}

/// The NFS program (100003, version 3).
pub trait Nfs3Program: Send + Sync + 'static {
    /// `args` is the call's argument bytes, a slice of the received record (WRITE data
    /// is not copied again before it reaches the cache file).
    fn call(&self, ctx: CallContext, proc: u32, args: Bytes) -> impl Future<Output = ProcReply> + Send;
}

/// One exported share as MOUNT's EXPORT lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExportEntry {
    /// "/data"
    pub path: String,
    /// The allowed-client list as configured; empty means everyone.
    pub allowed_clients: Vec<String>,
}

/// What MOUNT v3 needs from the gateway.
pub trait Exports: Send + Sync + 'static {
    /// The exports a client at `client` may mount (each share allowing it).
    fn exports(&self, client: IpAddr) -> Vec<ExportEntry>;
    /// Whether any share allows `client`: a host none allows is refused at accept
    /// and told nothing (no exports, no mount list).
    fn allows(&self, client: IpAddr) -> bool;
    /// The root file handle of the export at `path` for a client at `client`, or the
    /// MOUNT status to answer (NOENT for an unknown path, ACCES for a client not allowed).
    fn mount(&self, path: &[u8], client: IpAddr) -> Result<Vec<u8>, nfs3_types::mount::mountstat3>;
}
