//! The RPC CALL header parser and the AUTH_SYS credential parser on arbitrary bytes:
//! never a panic, never an allocation beyond the input, arguments are a suffix.
#![no_main]

use bucketgate::nfs::{parse_auth_sys, parse_call};
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let record = Bytes::copy_from_slice(data);
    match parse_call(record.clone()) {
        Ok((header, args)) => {
            assert!(data.ends_with(&args), "arguments are the record's tail");
            if let Some(a) = header.auth {
                assert!(a.gids.len() <= 16, "AUTH_SYS has at most 16 groups");
            }
        }
        Err(e) => {
            if let Some(reply) = e.reply() {
                assert!(reply.len() < 64, "error replies are small");
            }
        }
    }
    let _ = parse_auth_sys(record);
});
