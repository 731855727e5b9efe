//! Domain → proto: responses built from what the service returned. (Requests go the other
//! way in `parse`.)

use crate::domain::entity::Entity;
use crate::domain::lease::Lease;
use crate::domain::machine::{DedupPolicy, MachineSpec, StoredMachine};
use crate::domain::tape::StoredEvent;
use crate::domain::time::Timestamp;
use crate::proto;
use crate::service::{
    AcquireOutcome, AppendOutcome, CreateOutcome, DefineOutcome, LeaseView, StreamItem, TransitionOutcome,
};
use std::time::Duration;

/// Domain time to proto.
pub fn ts(t: Timestamp) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.0.div_euclid(1_000_000),
        nanos: (t.0.rem_euclid(1_000_000) * 1000) as i32,
    }
}

/// Std duration to proto.
pub fn pduration(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

/// Lease to proto.
pub fn lease(l: Lease) -> proto::Lease {
    proto::Lease {
        key: l.key.to_string(),
        holder: l.holder.to_string(),
        token: l.token.get(),
        acquired_at: Some(ts(l.acquired_at)),
        expires_at: Some(ts(l.expires_at)),
    }
}

/// Entity to proto.
pub fn entity(e: Entity) -> proto::Entity {
    proto::Entity {
        id: e.id.to_string(),
        kind: e.kind.to_string(),
        state: e.state,
        version: e.version.get(),
        fields: e.fields.into_iter().collect(),
        dedup_key: e.dedup_key.map(|d| d.to_string()).unwrap_or_default(),
        created_at: Some(ts(e.created_at)),
        updated_at: Some(ts(e.updated_at)),
        last_activity_at: Some(ts(e.last_activity_at)),
        last_seq: e.last_seq.get(),
        sealed: e.final_seq.is_some(),
    }
}

/// Event to proto.
pub fn event(e: &StoredEvent) -> proto::Event {
    proto::Event {
        seq: e.seq.get(),
        r#type: e.event_type.clone(),
        payload: e.payload.clone(),
        content_type: e.content_type.clone(),
        state: e.state.clone().unwrap_or_default(),
        created_at: Some(ts(e.created_at)),
    }
}

/// Domain machine spec to proto.
pub fn spec_to_proto(s: &MachineSpec) -> proto::MachineSpec {
    proto::MachineSpec {
        kind: s.kind.clone(),
        states: s.states.clone(),
        initial_state: s.initial_state.clone(),
        terminal_states: s.terminal_states.clone(),
        transitions: s
            .transitions
            .iter()
            .map(|t| proto::TransitionSpec {
                name: t.name.clone(),
                from: t.from.clone(),
                to: t.to.clone(),
                stale_from: t.stale_from.clone(),
                stale_after: t.stale_after.map(pduration),
                noop_from: t.noop_from.clone(),
            })
            .collect(),
        field_rules: s
            .field_rules
            .iter()
            .map(|r| proto::FieldRule {
                field: r.field.clone(),
                allowed_in: r.allowed_in.clone(),
            })
            .collect(),
        timeouts: s
            .timeouts
            .iter()
            .map(|t| proto::StateTimeout {
                state: t.state.clone(),
                after: Some(pduration(t.after)),
                idle: t.idle,
                transition: t.transition.clone(),
            })
            .collect(),
        retain_after_final: s.retain_after_final.map(pduration),
        dedup: match s.dedup {
            DedupPolicy::Forever => proto::DedupPolicy::Forever,
            DedupPolicy::WhileActive => proto::DedupPolicy::WhileActive,
        } as i32,
    }
}

/// Stored machine to proto.
pub fn machine(m: &StoredMachine) -> proto::Machine {
    proto::Machine {
        spec: Some(spec_to_proto(m.machine.spec())),
        version: m.version,
        defined_at: Some(ts(m.defined_at)),
    }
}

fn seqs(s: Vec<crate::domain::tape::Seq>) -> Vec<u64> {
    s.into_iter().map(|s| s.get()).collect()
}

impl From<AcquireOutcome> for proto::AcquireLeaseResponse {
    fn from(out: AcquireOutcome) -> Self {
        Self {
            acquired: out.acquired,
            lease: Some(lease(out.lease)),
        }
    }
}

impl From<LeaseView> for proto::GetLeaseResponse {
    fn from(view: LeaseView) -> Self {
        Self {
            lease: view.lease.map(lease),
            last_token: view.last_token,
        }
    }
}

impl From<DefineOutcome> for proto::DefineMachineResponse {
    fn from(out: DefineOutcome) -> Self {
        Self {
            machine: Some(machine(&out.machine)),
            changed: out.changed,
        }
    }
}

impl From<CreateOutcome> for proto::CreateEntityResponse {
    fn from(out: CreateOutcome) -> Self {
        Self {
            created: out.created,
            entity: Some(entity(out.entity)),
        }
    }
}

impl From<TransitionOutcome> for proto::TransitionResponse {
    fn from(out: TransitionOutcome) -> Self {
        Self {
            applied: out.applied,
            entity: Some(entity(out.entity)),
            seqs: seqs(out.seqs),
        }
    }
}

impl From<AppendOutcome> for proto::AppendEventsResponse {
    fn from(out: AppendOutcome) -> Self {
        Self {
            seqs: seqs(out.seqs),
            dropped: out.dropped,
            final_seq: out.final_seq.map_or(0, |s| s.get()),
        }
    }
}

/// Largest encoded list page, in bytes: below the 4 MiB a default gRPC client accepts,
/// with room for the page token and the framing.
pub const MAX_PAGE_BYTES: usize = 4 * 1024 * 1024 - 64 * 1024;

/// Converts a page's items until the next would take the encoded page past
/// [`MAX_PAGE_BYTES`] (always at least one), and the token of the page after it: it
/// continues after the last item returned, whether the page ended by count or by bytes.
fn bounded_page<T, P: prost::Message>(
    (items, more): (Vec<T>, bool),
    key: impl Fn(&T) -> &str,
    to_proto: impl Fn(T) -> P,
) -> (Vec<P>, String) {
    let mut page = Vec::with_capacity(items.len());
    let (mut bytes, mut last, mut cut) = (0, None, false);
    for item in items {
        let k = key(&item).to_string();
        let p = to_proto(item);
        // A repeated field's element: its tag, its length, then the message.
        let len = p.encoded_len();
        let size = 1 + prost::encoding::encoded_len_varint(len as u64) + len;
        if !page.is_empty() && bytes + size > MAX_PAGE_BYTES {
            cut = true;
            break;
        }
        bytes += size;
        page.push(p);
        last = Some(k);
    }
    let token = match last {
        Some(last) if more || cut => crate::domain::command::PageToken::after(&last).encode(),
        _ => String::new(),
    };
    (page, token)
}

/// A ListEntities page and whether more follow.
pub fn page(page: (Vec<Entity>, bool)) -> proto::ListEntitiesResponse {
    let (entities, next_page_token) = bounded_page(page, |e| e.id.as_str(), entity);
    proto::ListEntitiesResponse {
        entities,
        next_page_token,
    }
}

/// A ListLeases page and whether more follow.
pub fn lease_page(page: (Vec<Lease>, bool)) -> proto::ListLeasesResponse {
    let (leases, next_page_token) = bounded_page(page, |l| l.key.as_str(), lease);
    proto::ListLeasesResponse {
        leases,
        next_page_token,
    }
}

/// A ListMachines page and whether more follow.
pub fn machine_page(page: (Vec<StoredMachine>, bool)) -> proto::ListMachinesResponse {
    let (machines, next_page_token) = bounded_page(page, |m| m.machine.kind().as_str(), |m| machine(&m));
    proto::ListMachinesResponse {
        machines,
        next_page_token,
    }
}

impl From<StreamItem> for proto::StreamEventsResponse {
    fn from(item: StreamItem) -> Self {
        use proto::stream_events_response::Item;
        Self {
            item: Some(match item {
                StreamItem::Event(e) => Item::Event(event(&e)),
                StreamItem::Heartbeat(seq) => Item::Heartbeat(proto::Heartbeat { latest_seq: seq.get() }),
            }),
        }
    }
}
