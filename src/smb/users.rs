//! `bucketgate smb-user`: the SMB users of the gateway's shares, kept in Samba's own
//! user database (tdbsam) under `[smb] state_dir`, through Samba's `pdbedit`. Samba
//! switches to a user's Unix account before each file call, so every SMB user is a
//! Unix account too: `add` makes one (a system account without home or shell) when
//! there is none, with the uid asked for, so the uid is the same on every gateway
//! that shares the bucket.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context, bail};

use crate::config::Config;

/// Adds `name` (or sets its password) with `password`; makes its Unix account, with
/// `uid` when given, if there is none.
pub fn add(cfg: &Config, name: &str, uid: Option<u32>, password: &str) -> anyhow::Result<()> {
    check_name(name)?;
    if password.is_empty() {
        bail!("an empty password");
    }
    match (unix_uid(name)?, uid) {
        (Some(have), Some(want)) if have != want => {
            bail!("the Unix account {name} exists with uid {have}, not {want}")
        }
        (Some(_), _) => {}
        (None, uid) => {
            let mut c = Command::new("useradd");
            c.args([
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                "--user-group",
            ]);
            if let Some(u) = uid {
                c.args(["--uid", &u.to_string()]);
            }
            run(c.arg(name), None).context("making the Unix account (useradd)")?;
        }
    }
    let conf = super::write_conf(cfg)?;
    // Twice: pdbedit asks for the new password and its confirmation.
    run(
        pdbedit(&conf).args(["-a", "-t", "-u", name]),
        Some(&format!("{password}\n{password}\n")),
    )
    .context("adding the SMB user (pdbedit)")?;
    Ok(())
}

/// Removes `name` from the SMB users; its Unix account stays (it owns files).
pub fn del(cfg: &Config, name: &str) -> anyhow::Result<()> {
    check_name(name)?;
    let conf = super::write_conf(cfg)?;
    run(pdbedit(&conf).args(["-x", "-u", name]), None).context("removing the SMB user (pdbedit)")?;
    Ok(())
}

/// The SMB users and their uids.
pub fn list(cfg: &Config) -> anyhow::Result<Vec<(String, u32)>> {
    let conf = super::write_conf(cfg)?;
    let out = run(pdbedit(&conf).arg("-L"), None).context("listing the SMB users (pdbedit)")?;
    Ok(out
        .lines()
        .filter_map(|l| {
            let mut f = l.split(':');
            let (name, uid) = (f.next()?, f.next()?.parse().ok()?);
            Some((name.to_string(), uid))
        })
        .collect())
}

fn pdbedit(conf: &Path) -> Command {
    let mut c = Command::new("pdbedit");
    c.arg("-s").arg(conf);
    c
}

fn check_name(name: &str) -> anyhow::Result<()> {
    if !super::valid_name(name) || name == "root" {
        bail!("`{name}` cannot be an SMB user: 1-32 characters of a-z A-Z 0-9 . _ -, not root");
    }
    Ok(())
}

fn unix_uid(name: &str) -> anyhow::Result<Option<u32>> {
    let out = Command::new("getent")
        .args(["passwd", name])
        .output()
        .context("running getent")?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .split(':')
        .nth(2)
        .and_then(|u| u.trim().parse().ok()))
}

/// Runs `c` with `input` on its stdin; its stdout, or an error with its stderr.
fn run(c: &mut Command, input: Option<&str>) -> anyhow::Result<String> {
    let mut child = c
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {:?}", c.get_program()))?;
    if let Some(text) = input {
        child.stdin.take().expect("piped").write_all(text.as_bytes())?;
    }
    drop(child.stdin.take());
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "{:?} failed ({}): {}",
            c.get_program(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
