//! The smb.conf for the configured SMB shares (`bucketgate smb-conf`), following the
//! settings tried for Samba 4.17 over a FUSE mount (../shared/REFERENCE-smb-nfs4.md
//! in the project's research): no SMB1, no kernel share modes or oplocks (FUSE has
//! no leases, and `kernel share modes` broke writes), no POSIX locks, `strict sync`
//! so an SMB FLUSH is an fsync of the mount (a COMMIT), `fileid` limited to our own
//! mounts (it stats every mount otherwise, and one hung mount hangs smbd), POSIX
//! modes only (no DOS attributes, NT ACLs or streams: nowhere to keep them yet).

use std::fmt::Write;
use std::path::Path;

use super::SmbSecurity;
use crate::config::{Config, ShareConfig};

/// smb.conf for `cfg`'s SMB shares, Samba's own state under `state`.
pub fn render(cfg: &Config, state: &Path) -> String {
    let smb = &cfg.smb;
    let st = |sub: &str| state.join(sub).display().to_string();
    let mut out = String::new();
    let mut line = |k: &str, v: &str| {
        let _ = writeln!(out, "   {k} = {v}");
    };
    line("server role", "standalone server");
    line("server min protocol", "SMB2_10");
    let (signing, encrypt) = match smb.security {
        SmbSecurity::Default => ("default", "default"),
        SmbSecurity::Mandatory => ("mandatory", "default"),
        SmbSecurity::Required => ("mandatory", "required"),
    };
    line("server signing", signing);
    line("server smb encrypt", encrypt);
    line("smb ports", &smb.listen.port().to_string());
    if !smb.listen.ip().is_unspecified() {
        line("interfaces", &smb.listen.ip().to_string());
        line("bind interfaces only", "yes");
    }
    line("disable netbios", "yes");
    line("load printers", "no");
    line("printcap name", "/dev/null");
    line("disable spoolss", "yes");
    line("passdb backend", &format!("tdbsam:{}", st("private/passdb.tdb")));
    line("private dir", &st("private"));
    line("lock directory", &st("lock"));
    line("state directory", &st("state"));
    line("cache directory", &st("cache"));
    line("pid directory", &st("run"));
    line("ncalrpc dir", &st("run/ncalrpc"));
    line("binddns dir", &st("bind-dns"));
    line("log file", &st("log/smbd.log"));
    line("max log size", "10000");
    line("guest account", "nobody");
    if cfg.shares.iter().any(|s| s.smb && s.smb_guest) {
        line("map to guest", "Bad User");
    }
    let mut text = format!(
        "# Written by bucketgate smb-conf: edit bucketgate's configuration instead.\n[global]\n{out}"
    );
    for s in cfg.shares.iter().filter(|s| s.smb) {
        text.push_str(&share_section(s));
    }
    text
}

fn share_section(s: &ShareConfig) -> String {
    let mount = s
        .fuse_path()
        .expect("an SMB share has a FUSE mount")
        .display()
        .to_string();
    let yes = |b: bool| if b { "yes" } else { "no" };
    let mut out = format!("\n[{}]\n", s.name);
    let mut line = |k: &str, v: &str| {
        let _ = writeln!(out, "   {k} = {v}");
    };
    line("path", &mount);
    line("read only", yes(s.read_only));
    line("vfs objects", "fileid");
    line("fileid:algorithm", "fsname");
    line("fileid:mntdir allow", &mount);
    line("kernel share modes", "no");
    line("kernel oplocks", "no");
    line("posix locking", "no");
    // Leases are not broken by changes made through NFS or found in the store.
    line("oplocks", yes(s.smb_oplocks));
    line("level2 oplocks", yes(s.smb_oplocks));
    line("strict sync", "yes");
    line("ea support", "no");
    line("store dos attributes", "no");
    line("nt acl support", "no");
    line("map archive", "no");
    line("create mask", "0664");
    line("directory mask", "0775");
    line("case sensitive", "auto");
    line("invalid users", "root");
    if s.smb_guest {
        line("guest ok", "yes");
        line("guest only", "yes");
    } else {
        line("valid users", &s.smb_valid_users().join(" "));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(extra_share: &str, smb: &str) -> Config {
        Config::from_toml(&format!(
            "[cache]\ndir = \"/var/lib/bg/cache\"\n{smb}\n[[share]]\nname = \"data\"\nurl = \"s3://data-bucket/\"\nsmb = true\nfuse_mount = \"/run/bg/data\"\n{extra_share}\n[[share]]\nname = \"nfsonly\"\nurl = \"s3://other-bucket/\"\n"
        ))
        .unwrap()
    }

    fn has(text: &str, section: &str, line: &str) -> bool {
        let start = text.find(&format!("[{section}]\n")).expect("section");
        let body = &text[start..];
        let end = body[1..].find("\n[").map_or(body.len(), |e| e + 1);
        body[..end].lines().any(|l| l.trim() == line)
    }

    #[test]
    fn a_users_share_serves_its_mount_to_its_users_only() {
        let c = cfg("smb_users = [\"alice\"]\nsmb_groups = [\"staff\"]", "");
        let t = render(&c, Path::new("/var/lib/bg/smb"));
        for l in [
            "server min protocol = SMB2_10",
            "server signing = default",
            "server smb encrypt = default",
            "smb ports = 445",
            "interfaces = 127.0.0.1",
            "bind interfaces only = yes",
            "passdb backend = tdbsam:/var/lib/bg/smb/private/passdb.tdb",
        ] {
            assert!(has(&t, "global", l), "[global] lacks {l}:\n{t}");
        }
        assert!(!t.contains("map to guest"), "no guest share, no guest mapping");
        for l in [
            "path = /run/bg/data",
            "read only = no",
            "fileid:mntdir allow = /run/bg/data",
            "kernel share modes = no",
            "posix locking = no",
            "oplocks = no",
            "strict sync = yes",
            "create mask = 0664",
            "invalid users = root",
            "valid users = alice @staff",
        ] {
            assert!(has(&t, "data", l), "[data] lacks {l}:\n{t}");
        }
        assert!(!t.contains("[nfsonly]"), "a share without smb is not served");
    }

    #[test]
    fn guest_shares_and_security_levels() {
        let c = cfg(
            "smb_guest = true\nread_only = true\nsmb_oplocks = true",
            "[smb]\nlisten = \"0.0.0.0:4450\"\nsecurity = \"required\"",
        );
        let t = render(&c, Path::new("/s"));
        for l in [
            "server signing = mandatory",
            "server smb encrypt = required",
            "smb ports = 4450",
            "map to guest = Bad User",
        ] {
            assert!(has(&t, "global", l), "[global] lacks {l}:\n{t}");
        }
        assert!(!t.contains("interfaces ="), "every address: no interfaces line");
        for l in [
            "guest ok = yes",
            "guest only = yes",
            "read only = yes",
            "oplocks = yes",
        ] {
            assert!(has(&t, "data", l), "[data] lacks {l}:\n{t}");
        }
        let c = cfg("smb_users = [\"a\"]", "[smb]\nsecurity = \"mandatory\"");
        let t = render(&c, Path::new("/s"));
        assert!(has(&t, "global", "server signing = mandatory"));
        assert!(has(&t, "global", "server smb encrypt = default"));
    }

    #[test]
    fn the_mount_defaults_under_run() {
        let c = Config::from_toml(
            "[[share]]\nname = \"docs\"\nurl = \"s3://docs-bucket/\"\nsmb = true\nsmb_users = [\"a\"]\n",
        )
        .unwrap();
        let t = render(&c, Path::new("/s"));
        assert!(has(&t, "docs", "path = /run/bucketgate/smb/docs"), "{t}");
    }
}
