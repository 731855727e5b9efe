//! How client commands print: one JSON document with `--json`, short human lines otherwise.

use baton::proto;
use serde_json::{Value, json};

fn time(t: &Option<prost_types::Timestamp>) -> Value {
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

/// One human line for an entity.
pub fn entity_line(e: &proto::Entity) -> String {
    let fields: Vec<String> = e.fields.iter().map(|(k, v)| format!("{k}={v}")).collect();
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
            format!(" {}", fields.join(" "))
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
