//! How client commands print: one JSON document with `--output json`, short human lines
//! otherwise (lists as aligned columns under a header).

use baton::proto;
use clap::ValueEnum;
use serde_json::{Value, json};

/// How results are printed (`--output`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Human lines; lists as aligned columns under a header.
    Table,
    /// One JSON object per result (per event for `tail`); errors as one JSON object on stderr.
    Json,
}

/// `rows` under `header`, each column as wide as its widest cell (the last one unpadded).
pub fn table<const N: usize>(header: [&str; N], rows: &[[String; N]]) -> String {
    let mut widths = header.map(|h| h.chars().count());
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: [&str; N]| {
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == N {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  "));
            }
        }
        out.truncate(out.trim_end().len());
        out
    };
    let mut lines = vec![line(header)];
    lines.extend(rows.iter().map(|r| line(r.each_ref().map(String::as_str))));
    lines.join("\n")
}

pub fn time(t: &Option<prost_types::Timestamp>) -> Value {
    match t {
        Some(t) => {
            let d = std::time::UNIX_EPOCH + std::time::Duration::new(t.seconds.max(0) as u64, t.nanos.max(0) as u32);
            json!(humantime::format_rfc3339_micros(d).to_string())
        }
        None => Value::Null,
    }
}

/// A lease as JSON.
pub fn lease(l: &proto::Lease) -> Value {
    json!({ "key": l.key, "holder": l.holder, "token": l.token, "acquired_at": time(&l.acquired_at), "expires_at": time(&l.expires_at) })
}

/// An entity as JSON.
pub fn entity(e: &proto::Entity) -> Value {
    json!({
        "id": e.id, "kind": e.kind, "state": e.state, "version": e.version, "fields": e.fields,
        "dedup_key": e.dedup_key, "created_at": time(&e.created_at), "updated_at": time(&e.updated_at),
        "last_activity_at": time(&e.last_activity_at), "last_seq": e.last_seq, "sealed": e.sealed,
    })
}

/// An event as JSON; the payload as text when it is UTF-8, else base64.
pub fn event(e: &proto::Event) -> Value {
    use base64::Engine;
    let payload = match std::str::from_utf8(&e.payload) {
        Ok(s) => json!(s),
        Err(_) => json!({ "base64": base64::engine::general_purpose::STANDARD.encode(&e.payload) }),
    };
    json!({ "seq": e.seq, "type": e.r#type, "state": e.state, "content_type": e.content_type, "payload": payload, "created_at": time(&e.created_at) })
}

/// A table, and the `--page-token` line that continues it when more follow.
pub fn paged(table: String, next_page_token: &str) -> String {
    if next_page_token.is_empty() {
        table
    } else {
        format!("{table}\n(more: --page-token {next_page_token})")
    }
}

/// A table cell for a flag.
pub fn yes_no(b: bool) -> String {
    if b { "yes" } else { "no" }.into()
}

/// An entity's fields as `NAME=VALUE …`, sorted by name.
fn fields(e: &proto::Entity) -> String {
    let mut fields: Vec<String> = e.fields.iter().map(|(k, v)| format!("{k}={v}")).collect();
    fields.sort();
    fields.join(" ")
}

/// The header of [`entity_row`].
pub const ENTITY_HEADER: [&str; 7] = ["ID", "KIND", "STATE", "VERSION", "LAST_SEQ", "SEALED", "FIELDS"];

/// An entity as a row of a table.
pub fn entity_row(e: &proto::Entity) -> [String; 7] {
    [
        e.id.clone(),
        e.kind.clone(),
        e.state.clone(),
        e.version.to_string(),
        e.last_seq.to_string(),
        yes_no(e.sealed),
        fields(e),
    ]
}

/// One human line for an entity.
pub fn entity_line(e: &proto::Entity) -> String {
    let fields = fields(e);
    format!(
        "{} {} state={} version={} last_seq={}{}{}",
        e.kind,
        e.id,
        e.state,
        e.version,
        e.last_seq,
        if e.sealed { " sealed" } else { "" },
        if fields.is_empty() {
            String::new()
        } else {
            format!(" {fields}")
        }
    )
}

/// One human line for an event.
pub fn event_line(e: &proto::Event) -> String {
    let payload = String::from_utf8_lossy(&e.payload);
    let state = if e.state.is_empty() {
        String::new()
    } else {
        format!(" state={}", e.state)
    };
    format!("{:>6} {}{} {}", e.seq, e.r#type, state, payload)
}

/// One human line for a lease.
pub fn lease_line(l: &proto::Lease) -> String {
    format!(
        "key={} holder={} token={} expires_at={}",
        l.key,
        l.holder,
        l.token,
        time(&l.expires_at).as_str().unwrap_or("-")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns_under_the_header() {
        let rows = [
            ["run-1".to_string(), "running".into(), "a=1".into()],
            ["r".into(), "completed".into(), "".into()],
        ];
        assert_eq!(
            table(["ID", "STATE", "FIELDS"], &rows),
            "ID     STATE      FIELDS\nrun-1  running    a=1\nr      completed"
        );
        assert_eq!(table(["ID", "STATE"], &[]), "ID  STATE");
    }
}
