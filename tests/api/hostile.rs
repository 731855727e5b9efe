//! Hostile input (issue 13): each finding of the probe, as a regression test.

use std::process::Command;

/// `baton serve --help` shows no environment value of a secret setting: a password in
/// `BATON_DATABASE_URL` is not printed.
#[test]
fn serve_help_hides_the_database_password() {
    let out = Command::new(env!("CARGO_BIN_EXE_baton"))
        .args(["serve", "--help"])
        .env("BATON_DATABASE_URL", "postgres://u:s3cret@127.0.0.1:1/x")
        .output()
        .expect("run baton");
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("BATON_DATABASE_URL"), "{help}");
    assert!(!help.contains("s3cret"), "{help}");
}

/// A start-up error names the URL with every password hidden: in the user information (an
/// unencoded `@` included) and in a `password` query parameter.
#[test]
fn start_up_errors_hide_every_password() {
    for url in [
        "postgres://postgres:p@ss@s3cret@127.0.0.1:1/x",
        "postgres://postgres@127.0.0.1:1/x?password=s3cret",
        "mysql://u:s3cret@localhost/x",
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_baton"))
            .args(["serve", "--listen", "127.0.0.1:0", "--database-url", url])
            .output()
            .expect("run baton");
        assert!(!out.status.success(), "{url}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("error:"), "{stderr}");
        assert!(!stderr.contains("s3cret"), "{url}: {stderr}");
    }
}
