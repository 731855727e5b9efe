//! What makes two calls "the same call" for I10: a SHA-256 hash of one canonical encoding of
//! a write command — protobuf wire format, written here field by field in a fixed order
//! (maps by key, lists as sent), so equal commands always give equal bytes and different
//! commands different ones. The encoding is part of baton's stored data, like a migration:
//! never renumber or reorder its fields; a new field takes a new number and is written only
//! when set, so the fingerprint of every call that does not use it stays the same.

use super::batch::Command;
use super::entity::Fields;
use super::lease::{Fence, Ttl};
use super::tape::{EventInput, IfSealed};
use sha2::{Digest, Sha256};

/// Protobuf wire types.
const VARINT: u8 = 0;
const LEN: u8 = 2;

/// A message being written in protobuf wire format; fields with default values (0, "",
/// absent) are left out, as proto3 does.
#[derive(Default)]
struct Canonical(Vec<u8>);

impl Canonical {
    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }

    fn key(&mut self, tag: u32, wire: u8) {
        self.varint(u64::from(tag) << 3 | u64::from(wire));
    }

    fn u64(&mut self, tag: u32, v: u64) -> &mut Self {
        if v != 0 {
            self.key(tag, VARINT);
            self.varint(v);
        }
        self
    }

    fn bytes(&mut self, tag: u32, b: &[u8]) -> &mut Self {
        if !b.is_empty() {
            self.key(tag, LEN);
            self.varint(b.len() as u64);
            self.0.extend_from_slice(b);
        }
        self
    }

    fn str(&mut self, tag: u32, s: &str) -> &mut Self {
        self.bytes(tag, s.as_bytes())
    }

    /// A nested message, written even when empty (presence is information).
    fn msg(&mut self, tag: u32, write: impl FnOnce(&mut Canonical)) -> &mut Self {
        let mut inner = Canonical::default();
        write(&mut inner);
        self.key(tag, LEN);
        self.varint(inner.0.len() as u64);
        self.0.extend_from_slice(&inner.0);
        self
    }

    /// `google.protobuf.Duration`.
    fn ttl(&mut self, tag: u32, ttl: Ttl) -> &mut Self {
        let d = ttl.get();
        self.msg(tag, |m| {
            m.u64(1, d.as_secs()).u64(2, u64::from(d.subsec_nanos()));
        })
    }

    fn fence(&mut self, tag: u32, fence: &Option<Fence>) -> &mut Self {
        if let Some(f) = fence {
            self.msg(tag, |m| {
                m.str(1, f.key.as_str()).u64(2, f.token.get());
            });
        }
        self
    }

    /// A map, as repeated entries `{1: key, 2: value}` in key order.
    fn fields(&mut self, tag: u32, fields: &Fields) -> &mut Self {
        for (k, v) in fields {
            self.msg(tag, |m| {
                m.str(1, k).str(2, v);
            });
        }
        self
    }

    fn events(&mut self, tag: u32, events: &[EventInput]) -> &mut Self {
        for e in events {
            self.msg(tag, |m| {
                m.str(1, &e.event_type).bytes(2, &e.payload).str(3, &e.content_type);
            });
        }
        self
    }
}

/// The call a request id's outcome is stored under: `Method target sha256hex`, the hash over
/// the method, the target and every field that makes one call differ from another (the
/// namespace keys the stored outcome already; the request id is what is being matched).
/// An AcquireLease's `wait` is left out: it is cut to each try's deadline, so honest retries
/// differ in it.
///
/// Releases before this one stored a 64-bit hash of the command's `Debug` text instead: a
/// retry of a call whose first answer such a release stored is refused `REQUEST_ID_REUSED`
/// until that answer expires (`--request-retention`).
pub fn call_id(command: &Command) -> String {
    let mut c = Canonical::default();
    let (method, target) = match command {
        Command::Acquire(a) => {
            c.str(3, a.holder.as_str()).ttl(4, a.ttl);
            ("AcquireLease", a.key.as_str())
        }
        Command::Renew(r) => {
            c.u64(3, r.token.get()).ttl(4, r.ttl);
            ("RenewLease", r.key.as_str())
        }
        Command::Release(r) => {
            c.u64(3, r.token.get());
            ("ReleaseLease", r.key.as_str())
        }
        Command::Create(cr, _) => {
            // An id or dedup key, when given, is never empty: "" means absent.
            c.str(3, cr.id.as_ref().map_or("", |id| id.as_str()))
                .str(4, cr.dedup_key.as_ref().map_or("", |d| d.as_str()))
                .fields(5, &cr.fields)
                .fence(6, &cr.fence);
            ("CreateEntity", cr.kind.as_str())
        }
        Command::Transition(t) => {
            let ask = &t.ask;
            c.str(3, ask.name.as_str())
                // Versions start at 1: 0 means absent.
                .u64(4, ask.expect_version.map_or(0, |v| v.get()))
                .fields(5, &ask.set_fields);
            for name in &ask.clear_fields {
                c.str(6, name.as_str());
            }
            c.events(7, &ask.events)
                .bytes(8, &ask.final_event.payload)
                .str(9, &ask.final_event.content_type)
                .fence(10, &t.fence);
            ("Transition", t.entity_id.as_str())
        }
        Command::Append(a) => {
            let if_sealed = match a.if_sealed {
                IfSealed::Reject => 1,
                IfSealed::Drop => 2,
            };
            c.events(3, &a.events).fence(4, &a.fence).u64(5, if_sealed);
            ("AppendEvents", a.entity_id.as_str())
        }
        Command::Delete(d) => {
            c.u64(3, u64::from(d.force));
            ("DeleteEntity", d.id.as_str())
        }
        Command::ForceRelease(f) => {
            c.str(3, f.by.as_str());
            ("ForceReleaseLease", f.key.as_str())
        }
        // The housekeeper's own command never carries a request id.
        Command::Due(_, id) => return format!("Due {id}"),
    };
    let mut head = Canonical::default();
    head.str(1, method).str(2, target);
    let hash = Sha256::new().chain_update(&head.0).chain_update(&c.0).finalize();
    format!("{method} {target} {hash:x}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::DomainError;
    use crate::domain::batch::{Batch, Rows};
    use crate::domain::command::{
        AcquireLease, AppendEvents, CreateEntity, DeleteEntity, ForceReleaseLease, ReleaseLease, RenewLease, Transition,
    };
    use crate::domain::entity::Version;
    use crate::domain::lease::FencingToken;
    use crate::domain::machine::{FinalEvent, TransitionAsk};
    use crate::domain::names::{DedupKey, EntityId, Holder, LeaseKey, Name, Namespace, RequestId};
    use crate::domain::time::Timestamp;
    use proptest::prelude::*;
    use std::time::Duration;

    fn ns() -> Namespace {
        Namespace::parse("n", "t".into()).unwrap()
    }
    fn rid() -> Option<RequestId> {
        Some(RequestId::parse("r", "r-1".into()).unwrap())
    }
    fn key(s: &str) -> LeaseKey {
        LeaseKey::parse("k", s.into()).unwrap()
    }
    fn name(s: &str) -> Name {
        Name::parse("n", s.into()).unwrap()
    }
    fn eid(s: &str) -> EntityId {
        EntityId::parse("id", s.into()).unwrap()
    }

    /// Pinned: a stored fingerprint must mean the same call in every later release. The
    /// expected hash was computed independently (Python's hashlib over hand-written
    /// protobuf bytes), not by this code.
    #[test]
    fn fingerprints_are_pinned() {
        let append = Command::Append(AppendEvents {
            ns: ns(),
            entity_id: eid("run-1"),
            events: vec![
                EventInput::parse("events[0]", "progress".into(), b"50%".to_vec(), "text/plain".into()).unwrap(),
            ],
            fence: Some(Fence {
                key: key("run/1"),
                token: FencingToken::parse("t", 7).unwrap(),
            }),
            if_sealed: IfSealed::Reject,
            request_id: rid(),
        });
        assert_eq!(append.call_id(), format!("AppendEvents run-1 {APPEND}"));
        let acquire = Command::Acquire(AcquireLease {
            ns: ns(),
            key: key("run/1"),
            holder: Holder::parse("h", "worker-1".into()).unwrap(),
            ttl: Ttl::parse("ttl", Some(Duration::from_millis(1500))).unwrap(),
            wait: Duration::from_secs(3),
            request_id: rid(),
        });
        assert_eq!(acquire.call_id(), format!("AcquireLease run/1 {ACQUIRE}"));
    }

    const APPEND: &str = "e30ed3a52a74b26f3ce94001ffe4921cbdde4f4ac60e5a6c70081eb86eb4819d";
    const ACQUIRE: &str = "2c56e169801d4971e6ff34fbb0e5f99c3aaa29b34b3d6164cf568f0be8370437";

    /// Small alphabets, so that equal commands come up often.
    fn events() -> impl Strategy<Value = Vec<EventInput>> {
        prop::collection::vec(
            (
                prop::sample::select(vec!["a", "b"]),
                prop::sample::select(vec![vec![], vec![0u8], vec![1u8]]),
                prop::sample::select(vec!["", "x"]),
            )
                .prop_map(|(t, p, c)| EventInput::parse("e", t.into(), p, c.into()).unwrap()),
            0..3,
        )
    }

    fn fence() -> impl Strategy<Value = Option<Fence>> {
        prop::option::of((prop::sample::select(vec!["k1", "k2"]), 1u64..3)).prop_map(|f| {
            f.map(|(k, t)| Fence {
                key: key(k),
                token: FencingToken::parse("t", t).unwrap(),
            })
        })
    }

    fn fields() -> impl Strategy<Value = Fields> {
        prop::collection::btree_map(
            prop::sample::select(vec!["f".to_string(), "g".to_string()]),
            prop::sample::select(vec![String::new(), "x".to_string()]),
            0..3,
        )
    }

    fn ttl() -> impl Strategy<Value = Ttl> {
        prop::sample::select(vec![1000u64, 1500, 2000])
            .prop_map(|ms| Ttl::parse("ttl", Some(Duration::from_millis(ms))).unwrap())
    }

    /// Every write command a client can send with a request id.
    fn command() -> impl Strategy<Value = Command> {
        let token = || (1u64..3).prop_map(|t| FencingToken::parse("t", t).unwrap());
        let lease_key = || prop::sample::select(vec!["k1", "k2"]).prop_map(key);
        let holder = || prop::sample::select(vec!["h1", "h2"]).prop_map(|h| Holder::parse("h", h.into()).unwrap());
        let entity = || prop::sample::select(vec!["e1", "e2"]).prop_map(eid);
        prop_oneof![
            (lease_key(), holder(), ttl(), 0u64..2).prop_map(|(key, holder, ttl, wait)| Command::Acquire(
                AcquireLease {
                    ns: ns(),
                    key,
                    holder,
                    ttl,
                    wait: Duration::from_secs(wait),
                    request_id: rid(),
                }
            )),
            (lease_key(), token(), ttl()).prop_map(|(key, token, ttl)| Command::Renew(RenewLease {
                ns: ns(),
                key,
                token,
                ttl,
                request_id: rid(),
            })),
            (lease_key(), token()).prop_map(|(key, token)| Command::Release(ReleaseLease {
                ns: ns(),
                key,
                token,
                request_id: rid(),
            })),
            (
                prop::sample::select(vec!["task", "run"]),
                prop::option::of(entity()),
                prop::option::of(prop::sample::select(vec!["d1", "d2"])),
                fields(),
                fence(),
            )
                .prop_map(|(kind, id, dedup, fields, fence)| {
                    let create = CreateEntity {
                        ns: ns(),
                        kind: name(kind),
                        id: id.clone(),
                        dedup_key: dedup.map(|d| DedupKey::parse("d", d.into()).unwrap()),
                        fields,
                        fence,
                        request_id: rid(),
                    };
                    Command::Create(create, id.unwrap_or_else(|| eid("generated")))
                }),
            (
                entity(),
                prop::sample::select(vec!["start", "finish"]),
                prop::option::of(1u64..3),
                fields(),
                prop::collection::vec(prop::sample::select(vec!["f", "g"]), 0..3),
                events(),
                (
                    prop::sample::select(vec![vec![], vec![1u8]]),
                    prop::sample::select(vec!["", "x"])
                ),
                fence(),
            )
                .prop_map(|(entity_id, t, v, set, clear, events, (fp, fct), fence)| {
                    Command::Transition(Transition {
                        ns: ns(),
                        entity_id,
                        ask: TransitionAsk {
                            name: name(t),
                            expect_version: v.map(|v| Version::parse("v", v).unwrap()),
                            set_fields: set,
                            clear_fields: clear.into_iter().map(name).collect(),
                            events,
                            final_event: FinalEvent::parse(fp, fct.into()).unwrap(),
                        },
                        fence,
                        request_id: rid(),
                    })
                }),
            (entity(), events(), fence(), prop::bool::ANY).prop_map(|(entity_id, events, fence, drop)| {
                Command::Append(AppendEvents {
                    ns: ns(),
                    entity_id,
                    events,
                    fence,
                    if_sealed: if drop { IfSealed::Drop } else { IfSealed::Reject },
                    request_id: rid(),
                })
            }),
            (entity(), prop::bool::ANY).prop_map(|(id, force)| Command::Delete(DeleteEntity {
                ns: ns(),
                id,
                force,
                request_id: rid(),
            })),
            (lease_key(), holder()).prop_map(|(key, by)| Command::ForceRelease(ForceReleaseLease {
                ns: ns(),
                key,
                by,
                request_id: rid(),
            })),
        ]
    }

    /// The command with what does not make it another call set aside: an acquire's wait
    /// (cut to each try's deadline) and a create's server-generated id.
    fn the_call(c: &Command) -> Command {
        match c.clone() {
            Command::Acquire(a) => Command::Acquire(AcquireLease {
                wait: Duration::ZERO,
                ..a
            }),
            Command::Create(cr, _) => Command::Create(cr, eid("generated")),
            other => other,
        }
    }

    /// A command and a second body: as often the same call again (its irrelevant parts
    /// changed) as any other command.
    fn pairs() -> impl Strategy<Value = (Command, Command)> {
        command().prop_flat_map(|first| {
            let retry = match first.clone() {
                Command::Acquire(a) => Command::Acquire(AcquireLease {
                    wait: a.wait + Duration::from_secs(9),
                    ..a
                }),
                Command::Create(cr, _) => Command::Create(cr, eid("another")),
                other => other,
            };
            (Just(first), prop_oneof![Just(retry), command()])
        })
    }

    proptest! {
        /// I10: under one request id, a second body that asks for a different call is always
        /// refused REQUEST_ID_REUSED, and the same call always replays the first answer —
        /// decided by the one batch path both backends run.
        #[test]
        fn i10_a_request_id_names_one_call((first, second) in pairs()) {
            let mut batch = Batch::new(Rows { now: Timestamp(1_000_000), ..Rows::default() });
            let answer = batch.apply(&first);
            let again = batch.apply(&second);
            if the_call(&first) == the_call(&second) {
                prop_assert_eq!(again, answer);
            } else {
                prop_assert!(matches!(again, Err(DomainError::RequestIdReused { .. })), "{:?}", again);
                prop_assert_ne!(first.call_id(), second.call_id());
            }
        }
    }
}
