//! `baton serve --config`: defaults < file < environment < flags, a bad file as one line,
//! `--print-config`; and the README's configuration and metrics tables checked against the
//! code, so neither can drift.

use baton::app::Settings;
use baton::telemetry::METRICS;
use clap::{Args, Command as Clap};
use std::collections::BTreeMap;
use std::process::Command;

fn baton() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_baton"));
    // The test's own environment must not leak into the layers under test.
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("BATON_") {
            c.env_remove(k);
        }
    }
    c
}

/// `--print-config`'s lines as key → (value, origin).
fn printed(out: &std::process::Output) -> BTreeMap<String, (String, String)> {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (kv, origin) = l.split_once("  # ")?;
            let (k, v) = kv.split_once(" = ")?;
            Some((k.to_string(), (v.trim_matches('"').to_string(), origin.to_string())))
        })
        .collect()
}

#[test]
fn config_layers_are_defaults_then_file_then_env_then_flags() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("baton.toml");
    std::fs::write(
        &file,
        r#"
drain = "7s"
heartbeat = "20s"
pool_size = 3
log_level = "debug"
database_url = "postgres://baton:s3cret@db.internal/baton"
"#,
    )
    .unwrap();
    let out = baton()
        .args(["serve", "--config"])
        .arg(&file)
        .args(["--pool-size", "5", "--print-config"])
        .env("BATON_HEARTBEAT", "25s")
        .env("BATON_POOL_SIZE", "4")
        .output()
        .unwrap();
    let got = printed(&out);
    let at = |k: &str| got.get(k).cloned().unwrap_or_else(|| panic!("{k} printed: {got:?}"));
    assert_eq!(at("drain"), ("7s".into(), "file".into()), "the file over the default");
    assert_eq!(
        at("heartbeat"),
        ("25s".into(), "env BATON_HEARTBEAT".into()),
        "env over the file"
    );
    assert_eq!(at("pool_size"), ("5".into(), "flag".into()), "a flag over env and file");
    assert_eq!(at("log_level"), ("debug".into(), "file".into()));
    assert_eq!(at("listen"), ("127.0.0.1:50051".into(), "default".into()));
    assert_eq!(
        at("database_url").0,
        "postgres://baton:***@db.internal/baton",
        "redacted"
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains("s3cret"), "{text}");

    // What it prints is a file `--config` takes, and reads back the same.
    let again = dir.path().join("printed.toml");
    std::fs::write(&again, text.as_bytes()).unwrap();
    let reread = printed(
        &baton()
            .args(["serve", "--print-config", "--config"])
            .arg(&again)
            .output()
            .unwrap(),
    );
    for (key, (value, _)) in &got {
        assert_eq!(&reread[key].0, value, "{key} reads back");
    }

    // BATON_CONFIG names the file too.
    let by_env = printed(
        &baton()
            .args(["serve", "--print-config"])
            .env("BATON_CONFIG", &file)
            .output()
            .unwrap(),
    );
    assert_eq!(by_env["drain"], ("7s".into(), "file".into()));
}

/// A bad file is one clear line on stderr and a non-zero exit, never a panic.
#[test]
fn a_bad_config_file_is_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("drian = \"5s\"\n", "unknown setting \"drian\""),
        ("drain = \"soon\"\n", "drain:"),
        ("pool_size = 0\n", "pool_size:"),
        ("listen = [1, 2]\n", "expected a string or a number"),
        ("drain = \"5s\"\nheartbeat = \n", "line 2"),
    ];
    for (text, says) in cases {
        let file = dir.path().join("bad.toml");
        std::fs::write(&file, text).unwrap();
        let out = baton().args(["serve", "--config"]).arg(&file).output().unwrap();
        assert!(!out.status.success(), "{text:?} is refused");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr.lines().count(), 1, "one line for {text:?}: {stderr}");
        assert!(stderr.starts_with("error: "), "{stderr}");
        assert!(stderr.contains(says), "{text:?}: {stderr:?} says {says:?}");
        assert!(stderr.contains("bad.toml"), "names the file: {stderr}");
    }
    let missing = baton()
        .args(["serve", "--config", "/nonexistent/baton.toml"])
        .output()
        .unwrap();
    assert!(!missing.status.success());
    assert_eq!(String::from_utf8_lossy(&missing.stderr).lines().count(), 1);
}

/// The example file is valid, and the server runs with a file's settings: its admin
/// listener comes from the file.
#[test]
fn the_example_file_is_valid_and_a_file_configures_the_server() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/baton.toml");
    let out = baton()
        .args(["serve", "--print-config", "--config", example])
        .output()
        .unwrap();
    let got = printed(&out);
    assert!(got.values().any(|(_, origin)| origin == "file"), "{got:?}");

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("baton.toml");
    std::fs::write(
        &file,
        format!(
            "admin_listen = \"127.0.0.1:0\"\ndatabase_url = \"sqlite:{}\"\n",
            dir.path().join("b.db").display()
        ),
    )
    .unwrap();
    let config = file.to_string_lossy().into_owned();
    let serve = baton::process::ServeProcess::spawn(
        std::path::Path::new(env!("CARGO_BIN_EXE_baton")),
        &format!("sqlite:{}", dir.path().join("flag.db").display()),
        &["--config", &config],
    )
    .expect("baton serves");
    serve
        .wait_for_log(std::time::Duration::from_secs(10), |l| {
            baton::process::logged_addr(l, "admin serving").is_some()
        })
        .expect("the file's admin listener");
    assert!(
        dir.path().join("flag.db").exists(),
        "the flag's database, not the file's"
    );
    assert!(!dir.path().join("b.db").exists());
}

/// The rows of the first Markdown table after `heading`: each row's cells, trimmed.
fn table(readme: &str, heading: &str) -> Vec<Vec<String>> {
    let start = readme.find(heading).unwrap_or_else(|| panic!("README has {heading:?}"));
    readme[start..]
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .skip(2)
        .map(|l| l.trim_matches('|').split(" | ").map(|c| c.trim().to_string()).collect())
        .collect()
}

fn unquote(cell: &str) -> &str {
    cell.trim_matches('`')
}

/// Every setting is documented in the README's configuration table with its flag, variable
/// and default, and the table has no row the code does not know.
#[test]
fn readme_configuration_table_matches_the_settings() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let rows = table(&readme, "## Configuration");
    let documented: BTreeMap<&str, &Vec<String>> = rows.iter().map(|r| (unquote(&r[0]), r)).collect();
    let command = Settings::augment_args(Clap::new("baton"));
    let mut flags = vec![];
    for arg in command.get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        let flag = format!("--{long}");
        let row = documented
            .get(flag.as_str())
            .unwrap_or_else(|| panic!("{flag} is in the README's configuration table"));
        let env = arg.get_env().map(|e| e.to_string_lossy().into_owned()).unwrap();
        assert_eq!(unquote(&row[1]), env, "{flag}'s variable");
        let default = arg
            .get_default_values()
            .first()
            .map(|d| format!("`{}`", d.to_string_lossy()))
            .unwrap_or_else(|| "off".into());
        assert_eq!(row[2], default, "{flag}'s default");
        flags.push(flag);
    }
    // `serve`'s own arguments, besides the settings.
    flags.extend(["--config".into(), "--print-config".into()]);
    for flag in documented.keys() {
        assert!(flags.iter().any(|f| f == flag), "README row {flag} is a setting");
    }
}

/// Every metric is in the README's metrics table with its type and labels, and the table
/// has no row the code does not emit.
#[test]
fn readme_metrics_table_matches_the_code() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let rows = table(&readme, "## Metrics");
    let documented: BTreeMap<String, (String, String)> = rows
        .iter()
        .map(|r| {
            let cell = unquote(&r[0]);
            let (name, labels) = match cell.split_once('{') {
                Some((n, l)) => (n.to_string(), l.trim_end_matches('}').to_string()),
                None => (cell.to_string(), String::new()),
            };
            (name, (r[1].clone(), labels))
        })
        .collect();
    for m in METRICS {
        let (kind, labels) = documented
            .get(m.name)
            .unwrap_or_else(|| panic!("{} is in the README's metrics table", m.name));
        assert_eq!(kind, m.kind.name(), "{}'s type", m.name);
        assert_eq!(labels, &m.labels.join(","), "{}'s labels", m.name);
    }
    for name in documented.keys() {
        assert!(METRICS.iter().any(|m| m.name == name), "README row {name} is a metric");
    }
}
