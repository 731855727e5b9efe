//! What a fault run's record must satisfy, each check returning the violations it found.

use crate::lincheck::{self, Op, Verdict};
use crate::model::{BatonModel, Input, Output};
use crate::workload::{Record, Subscription, tag};
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

/// A stored tape as read back after the run: (seq, type, payload).
pub type Tape = Vec<(u64, String, Vec<u8>)>;

type History = [Record];

fn partition(history: &History, p: usize) -> Vec<Op<Input, Output>> {
    history
        .iter()
        .filter(|r| r.partition == p)
        .map(|r| r.op.clone())
        .collect()
}

/// Each partition's lease and entity history is linearizable against the model.
pub fn linearizable(history: &History, partitions: usize, budget: Duration) -> Vec<String> {
    (0..partitions)
        .filter_map(
            |p| match lincheck::check(&BatonModel::default(), &partition(history, p), budget) {
                Verdict::Linearizable => None,
                Verdict::Timeout => Some(format!("partition {p}: the checker ran out of its {budget:?} budget")),
                v => Some(format!("partition {p} is not linearizable:\n{v}")),
            },
        )
        .collect()
}

/// A fencing token is granted to one holder only (I2), and grants go up.
pub fn tokens(history: &History, partitions: usize) -> Vec<String> {
    let mut found = vec![];
    for p in 0..partitions {
        let mut holders: BTreeMap<u64, u32> = BTreeMap::new();
        for op in partition(history, p) {
            if let (Input::Acquire { holder, .. }, Some(Output::Acquired { token, .. })) = (&op.input, &op.output)
                && *holders.entry(*token).or_insert(*holder) != *holder
            {
                found.push(format!("partition {p}: token {token} granted to two holders"));
            }
        }
        let tokens: Vec<u64> = holders.keys().copied().collect();
        if tokens.iter().zip(1..).any(|(t, n)| *t != n) {
            found.push(format!("partition {p}: granted tokens are not 1..n: {tokens:?}"));
        }
    }
    found
}

/// Every tape is 1..n with no gap and one `final`, last (I6, I7); every acknowledged append
/// is stored at the seqs it was given, with its own payload, and no append is stored twice
/// (I10 for retried request ids, I11 for acknowledged writes).
pub fn tapes(history: &History, tapes: &[Tape]) -> Vec<String> {
    let mut found = vec![];
    for (p, tape) in tapes.iter().enumerate() {
        if tape.iter().zip(1..).any(|(e, n)| e.0 != n) {
            found.push(format!("tape {p} has a gap or a duplicate"));
        }
        let finals = tape.iter().filter(|e| e.1 == "final").count();
        if finals != 1 || tape.last().map(|e| e.1.as_str()) != Some("final") {
            found.push(format!(
                "tape {p} has {finals} final(s), the last event is {:?}",
                tape.last().map(|e| &e.1)
            ));
        }
        let mut seen: HashMap<&[u8], u64> = HashMap::new();
        for (seq, kind, payload) in tape {
            if kind == "progress" && seen.insert(payload, *seq).is_some() {
                found.push(format!(
                    "tape {p}: the append {:?} is stored twice",
                    String::from_utf8_lossy(payload)
                ));
            }
        }
        let at = |seq: u64| tape.get(seq.wrapping_sub(1) as usize);
        for r in history.iter().filter(|r| r.partition == p) {
            match (&r.op.input, &r.op.output) {
                (Input::Append { .. }, Some(Output::Appended { seqs })) => {
                    for (i, seq) in seqs.iter().enumerate() {
                        let want = tag(r.id, i as u64);
                        if at(*seq).map(|e| e.2.as_slice()) != Some(want.as_bytes()) {
                            found.push(format!("tape {p}: acknowledged append {want} is not at seq {seq}"));
                        }
                    }
                }
                (Input::Transition { .. }, Some(Output::Applied { seqs, .. }))
                    if at(seqs[0]).map(|e| e.1.as_str()) != Some("baton.transition") =>
                {
                    found.push(format!("tape {p}: acknowledged transition is not at seq {}", seqs[0]));
                }
                _ => {}
            }
        }
    }
    found
}

/// Every subscriber saw exactly the tape after the cursor it asked for, each seq once, in
/// order, and its stream ended OK right after `final` (I8).
pub fn subscriptions(subs: &[Subscription], tapes: &[Tape]) -> Vec<String> {
    let mut found = vec![];
    for (i, s) in subs.iter().enumerate() {
        let tape = &tapes[s.partition];
        let want = &tape[(s.after as usize).min(tape.len())..];
        if s.events.as_slice() != want {
            let seqs: Vec<u64> = s.events.iter().map(|e| e.0).collect();
            found.push(format!(
                "subscriber {i} of tape {} (after {}) saw seqs {seqs:?}, the tape holds 1..={}",
                s.partition,
                s.after,
                tape.len()
            ));
        } else if !s.complete {
            found.push(format!(
                "subscriber {i} of tape {}: the stream did not end OK after final",
                s.partition
            ));
        }
    }
    found
}
