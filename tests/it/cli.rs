//! The `bucketgate` binary: init → check-config, config errors, and the client
//! commands against a live admin listener on loopback.

use std::process::{Command, Output};
use std::sync::Arc;

use async_trait::async_trait;
use bucketgate::admin::{
    AdminApi, ApiAccess, ApiError, CacheStatus, FileStatus, FlushReport, FlushRequest, Readiness,
    RefreshReport, RefreshRequest, ShareStatus, StatusReport, serve_admin,
};
use bucketgate::metrics::Metrics;

fn bucketgate(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_bucketgate"))
        .args(args)
        .output()
        .expect("run bucketgate")
}

fn out(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn init_output_passes_check_config() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bucketgate.toml");
    let f = file.to_str().unwrap();
    let o = bucketgate(&["init", "--output", f]);
    assert!(o.status.success(), "{:?}", out(&o));
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(
        text.lines().filter(|l| l.starts_with('#')).count() > 40,
        "the example is commented"
    );

    let o = bucketgate(&["check-config", "--config", f]);
    let (stdout, stderr) = out(&o);
    assert!(o.status.success(), "{stdout}{stderr}");
    assert!(stdout.starts_with("OK "), "{stdout}");
    assert!(
        stdout.contains("share  /data -> s3://example-bucket/gateway/"),
        "{stdout}"
    );

    // init never overwrites by accident.
    let o = bucketgate(&["init", "--output", f]);
    assert!(!o.status.success());
    assert!(out(&o).1.contains("--force"), "{:?}", out(&o));
    assert!(bucketgate(&["init", "--output", f, "--force"]).status.success());

    // Without --output the example goes to stdout.
    let o = bucketgate(&["init"]);
    assert_eq!(out(&o).0, text);
}

#[test]
fn check_config_reports_every_error_with_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(
        &file,
        "[upload]\npart_size = \"1MiB\"\n[[share]]\nname = \"a b\"\nurl = \"s3://bucket\"\nallowed_clients = [\"10.0.0.0/40\"]\n",
    )
    .unwrap();
    let o = bucketgate(&["check-config", "--config", file.to_str().unwrap()]);
    let (stdout, stderr) = out(&o);
    assert_eq!(o.status.code(), Some(1), "{stdout}{stderr}");
    assert!(stdout.is_empty(), "{stdout}");
    for key in ["upload.part_size", "share[0].name", "share[0].allowed_clients[0]"] {
        assert!(stderr.contains(key), "{key} missing from {stderr}");
    }
    assert!(stderr.contains("bad.toml"), "the file is named: {stderr}");

    std::fs::write(
        &file,
        "[[share]]\nname = \"a\"\nurl = \"s3://bucket\"\ncolour = \"blue\"\n",
    )
    .unwrap();
    let o = bucketgate(&["check-config", "--config", file.to_str().unwrap()]);
    let stderr = out(&o).1;
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr.contains("unknown field `colour`") && stderr.contains("line 4"),
        "{stderr}"
    );

    let o = bucketgate(&[
        "check-config",
        "--config",
        dir.path().join("missing.toml").to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(out(&o).1.contains("missing.toml"));
}

/// What the AMI's units ask of a configuration: the FUSE mounts its generator lets
/// the gateway make, and the smb.conf smbd's own unit runs on.
#[test]
fn check_config_lists_fuse_mounts_and_smb_conf_writes_what_smbd_runs_on() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let file = dir.path().join("g.toml");
    let f = file.to_str().unwrap();
    let shares = format!(
        "[cache]\ndir = \"{d}/cache\"\n[smb]\nstate_dir = \"{d}/smb\"\n\
         [[share]]\nname = \"plain\"\nurl = \"file://{d}/b1\"\n\
         [[share]]\nname = \"mounted\"\nurl = \"file://{d}/b2\"\nfuse_mount = \"{d}/m\"\n"
    );
    std::fs::write(&file, &shares).unwrap();
    let o = bucketgate(&["check-config", "--fuse-mounts", "--config", f]);
    assert!(o.status.success(), "{:?}", out(&o));
    assert_eq!(out(&o).0, format!("{d}/m\n"));
    // No SMB share: smbd's unit is skipped (ExecCondition), quietly.
    let o = bucketgate(&["smb-conf", "--check", "--config", f]);
    assert_eq!((o.status.code(), out(&o).0.as_str()), (Some(1), ""));

    std::fs::write(
        &file,
        format!("{shares}[[share]]\nname = \"win\"\nurl = \"file://{d}/b3\"\nsmb = true\nsmb_guest = true\n"),
    )
    .unwrap();
    let o = bucketgate(&["check-config", "--fuse-mounts", "--config", f]);
    assert_eq!(
        out(&o).0,
        format!("{d}/m\n/run/bucketgate/smb/win\n"),
        "{:?}",
        out(&o)
    );
    let o = bucketgate(&["smb-conf", "--check", "--config", f]);
    assert_eq!((o.status.code(), out(&o).0.as_str()), (Some(0), ""));
    let printed = out(&bucketgate(&["smb-conf", "--config", f])).0;
    assert!(printed.contains("[win]"), "{printed}");
    let target = dir.path().join("run-smb.conf");
    let o = bucketgate(&["smb-conf", "--config", f, "--output", target.to_str().unwrap()]);
    assert!(o.status.success(), "{:?}", out(&o));
    assert_eq!(std::fs::read_to_string(&target).unwrap(), printed);
    assert_eq!(
        std::fs::read_to_string(dir.path().join("smb/smb.conf")).unwrap(),
        printed
    );
    assert!(dir.path().join("smb/private").is_dir() && dir.path().join("smb/lock").is_dir());
}

struct Fixed;

#[async_trait]
impl AdminApi for Fixed {
    async fn status(&self) -> StatusReport {
        StatusReport {
            version: "1.2.3".into(),
            uptime_seconds: 90,
            shares: vec![ShareStatus {
                name: "media".into(),
                export_path: "/media".into(),
                url: "s3://media-bucket/".into(),
                read_only: false,
            }],
            cache: CacheStatus::new(4 << 30, 1 << 30, 512 << 20),
            ..Default::default()
        }
    }
    async fn file_status(&self, path: &str) -> Result<FileStatus, ApiError> {
        Err(ApiError::NotFound(format!("{path}: not in this stand-in")))
    }
    async fn flush(&self, req: FlushRequest) -> Result<FlushReport, ApiError> {
        match req.path.as_deref() {
            Some("/nope") => Err(ApiError::NotFound("no share `nope`".into())),
            // Uploads that do not finish within the wait.
            Some("/slow") => Ok(FlushReport {
                files: 1,
                bytes: 1,
                complete: false,
            }),
            _ => Ok(FlushReport {
                files: 2,
                bytes: 2048,
                complete: req.wait,
            }),
        }
    }
    async fn refresh(&self, req: RefreshRequest) -> Result<RefreshReport, ApiError> {
        Ok(RefreshReport {
            directories: if req.recursive { 9 } else { 1 },
            objects_listed: 4,
            entries_changed: 1,
        })
    }
    fn readiness(&self) -> Readiness {
        Readiness::default().check("configured", true, None)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_commands_against_a_live_listener() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve_admin(
        listener,
        Arc::new(Fixed),
        Metrics::new(),
        ApiAccess::Open,
        async {
            let _ = stopped.await;
        },
    ));
    let run = |args: Vec<String>| {
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            bucketgate(&args)
        })
    };
    let a = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();

    let o = run(a(&["status", "--admin", &addr])).await.unwrap();
    let (stdout, stderr) = out(&o);
    assert!(o.status.success(), "{stdout}{stderr}");
    for want in [
        "bucketgate 1.2.3",
        "up 1m 30s",
        "/media",
        "s3://media-bucket/",
        "1.0 GiB of 4.0 GiB",
        "(12.5%)",
        "ready   yes",
    ] {
        assert!(stdout.contains(want), "{want:?} missing from\n{stdout}");
    }

    let o = run(a(&["status", "--admin", &addr, "--json"])).await.unwrap();
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["shares"][0]["export_path"], "/media");
    assert_eq!(v["cache"]["dirty_percent"], 12.5);

    let o = run(a(&[
        "flush",
        "--admin",
        &addr,
        "--wait",
        "--timeout",
        "5",
        "/media",
    ]))
    .await
    .unwrap();
    let (stdout, stderr) = out(&o);
    assert!(o.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("2 files, 2.0 KiB: all in the store"), "{stdout}");

    // A --wait that times out exits 1, so `flush --wait && systemctl stop` is safe.
    let o = run(a(&[
        "flush",
        "--admin",
        &addr,
        "--wait",
        "--timeout",
        "1",
        "/slow",
    ]))
    .await
    .unwrap();
    assert_eq!(o.status.code(), Some(1), "{:?}", out(&o));
    assert!(out(&o).0.contains("not complete"), "{:?}", out(&o));

    let o = run(a(&["flush", "--admin", &addr, "/nope"])).await.unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(
        out(&o).1.contains("404 not_found: no share `nope`"),
        "{:?}",
        out(&o)
    );

    let o = run(a(&["refresh", "--admin", &addr, "--recursive", "/media"]))
        .await
        .unwrap();
    assert!(out(&o).0.contains("9 directories"), "{:?}", out(&o));

    let _ = stop.send(());
    server.await.unwrap().unwrap();

    // Nothing listening: a clear error, exit 1.
    let o = run(a(&["status", "--admin", &addr])).await.unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(out(&o).1.contains("cannot reach the admin API"), "{:?}", out(&o));
}

/// The client commands send the admin API's bearer token from `--token-file` or
/// the config's admin.token_file; without it, the gateway's 401 is reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_commands_send_the_admin_token() {
    let token = "cli-token-0123456789abcdef";
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve_admin(
        listener,
        Arc::new(Fixed),
        Metrics::new(),
        ApiAccess::Token(token.into()),
        async {
            let _ = stopped.await;
        },
    ));
    let tmp = tempfile::tempdir().unwrap();
    let token_file = tmp.path().join("admin-token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    let config = tmp.path().join("bucketgate.toml");
    std::fs::write(
        &config,
        format!(
            "[admin]\nlisten = \"{addr}\"\ntoken_file = \"{}\"\n[[share]]\nname = \"data\"\nurl = \"s3://my-bucket/\"\n",
            token_file.display()
        ),
    )
    .unwrap();
    let run = |args: Vec<String>| {
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            bucketgate(&args)
        })
    };
    let a = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let addr = addr.to_string();
    let o = run(a(&["status", "--admin", &addr])).await.unwrap();
    assert!(!o.status.success());
    assert!(out(&o).1.contains("401"), "{:?}", out(&o));
    let tf = token_file.display().to_string();
    let o = run(a(&["status", "--admin", &addr, "--token-file", &tf]))
        .await
        .unwrap();
    assert!(o.status.success(), "{:?}", out(&o));
    let cf = config.display().to_string();
    let o = run(a(&["flush", "--config", &cf, "/media"])).await.unwrap();
    assert!(o.status.success(), "{:?}", out(&o));
    assert!(!out(&o).0.contains(token) && !out(&o).1.contains(token));
    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
}
