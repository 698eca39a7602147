//! Shared test helpers, compiled into the integration-test binary (`tests/it`) and
//! the two suites that need a process of their own (`share_store`, `failpoints`).

pub mod child;
pub mod faulty;
pub mod gateway;
pub mod moto;
pub mod nfs;
pub mod s3server;

/// Says on the terminal that part of a test did not run. libtest keeps what a passing
/// test prints with `eprintln!` to itself, so this writes to stderr directly.
pub fn skipped(what: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIPPED: {what}");
}

/// Whether the program `tool` (from the Debian package `package`) is installed. A
/// fresh machine may lack one: then `part` is skipped, and says so. `.ci/run`
/// installs every tool and sets BUCKETGATE_REQUIRE_TOOLS, under which a missing one
/// fails the test instead.
pub fn have_tool(tool: &str, package: &str, part: &str) -> bool {
    have_tool_from(tool, &format!("apt-get install {package}"), part)
}

/// Whether moto's server is here (`common::moto`); says SKIPPED when not.
pub fn moto_here(part: &str) -> bool {
    have_tool_from("moto_server", "pip install 'moto[server]'", part)
}

/// [`have_tool`] for a tool that `install` (a command) installs.
pub fn have_tool_from(tool: &str, install: &str, part: &str) -> bool {
    let found = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var_os("BUCKETGATE_REQUIRE_TOOLS").is_none(),
            "BUCKETGATE_REQUIRE_TOOLS is set but {tool} is missing ({install})"
        );
        skipped(&format!("{part}: {tool} is not installed ({install})"));
    }
    found
}
