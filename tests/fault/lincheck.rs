//! Linearizability checker: Wing–Gong–Lowe (WGL) depth-first search with memoization,
//! in the style of Knossos / porcupine. Std only.
//!
//! How it works:
//! * Every op contributes a *call* event and, when its outcome is known, a *return* event.
//!   Events are sorted by time; at equal times calls sort before returns, so ops that touch
//!   at one instant are treated as concurrent (the lenient reading).
//! * The events form a doubly-linked list. The search walks it from the head: every call met
//!   before the first return is an op that may be linearized next (all ops that returned
//!   before its call are already linearized). Linearizing an op applies `Model::step`, removes
//!   ("lifts") the op's events from the list and restarts from the head. Reaching a return
//!   event means that op can no longer be placed: backtrack.
//! * Each step result is tried in turn, so nondeterministic models (several successor states)
//!   are explored exhaustively.
//! * Configurations (set of linearized ops as a bitset, model state) are memoized: a
//!   configuration already seen is never explored again.
//! * Ops with unknown outcome (`output == None`) have no return event: they may be linearized
//!   at any point after their call, or never. The search succeeds as soon as every op with a
//!   known outcome is linearized. Step results equal to the current state are dropped for
//!   unknown ops (linearizing an op with no effect and no return event is equivalent to not
//!   linearizing it), which keeps the search small.
//!
//! Requirement on models: `step` must be deterministic (same arguments, same result in the
//! same order); the failure report replays the search's choices.
#![allow(dead_code)]

use std::collections::HashSet;
use std::fmt;
use std::time::{Duration, Instant};

/// One operation of a history. Times are microseconds on one clock (wall clock of the test host).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Op<I, O> {
    pub client: usize,
    pub input: I,
    /// None: the outcome is unknown (timeout, crash): it may or may not have taken effect,
    /// at any point after `call`.
    pub output: Option<O>,
    pub call: u64,
    /// Ignored (treated as +infinity) when output is None.
    pub ret: u64,
}

impl<I, O> Op<I, O> {
    /// An op with a known outcome, observed in the window `[call, ret]`.
    pub fn new(client: usize, input: I, output: O, call: u64, ret: u64) -> Self {
        Op {
            client,
            input,
            output: Some(output),
            call,
            ret,
        }
    }
    /// An op whose outcome is unknown (invoked at `call`, never acknowledged).
    pub fn unknown(client: usize, input: I, call: u64) -> Self {
        Op {
            client,
            input,
            output: None,
            call,
            ret: u64::MAX,
        }
    }
}

pub trait Model {
    type State: Clone + Eq + std::hash::Hash + std::fmt::Debug;
    type Input: std::fmt::Debug;
    type Output: std::fmt::Debug;
    fn init(&self) -> Self::State;
    /// Every state the op may lead to when it takes effect in `state` (empty: illegal here).
    /// `output` is None for an op whose outcome is unknown. `call`/`ret` are the op's window
    /// (ret = u64::MAX when unknown), for models whose rules depend on time (lease expiry).
    fn step(
        &self,
        state: &Self::State,
        input: &Self::Input,
        output: Option<&Self::Output>,
        call: u64,
        ret: u64,
    ) -> Vec<Self::State>;
    /// Optional hint (an addition to the minimal interface; the default is always correct):
    /// true only if this op, with this known output, never changes the state, i.e. for
    /// EVERY state `s`, `step(s, ..)` is either empty or exactly `[s]` (a read; a refused
    /// request). The checker then linearizes such an op as soon as it is eligible and legal,
    /// without exploring alternatives (a partial-order reduction that makes refuting
    /// read-heavy histories much faster). A wrong `true` makes the checker unsound.
    fn is_read_only(&self, input: &Self::Input, output: &Self::Output) -> bool {
        let _ = (input, output);
        false
    }
}

/// One op, rendered for a failure report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpReport {
    /// Index in the history slice given to `check`.
    pub index: usize,
    pub client: usize,
    pub call: u64,
    /// None when the outcome is unknown.
    pub ret: Option<u64>,
    /// `Debug` of the input and output, e.g. `Write(3) -> Ok`.
    pub text: String,
    /// For prefix ops: `Debug` of the model state after the op.
    /// For stuck ops: why it could not be placed.
    pub note: String,
}

impl fmt::Display for OpReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.ret {
            Some(r) => write!(
                f,
                "#{} client {} [{}, {}] {}",
                self.index, self.client, self.call, r, self.text
            )?,
            None => write!(
                f,
                "#{} client {} [{}, ?) {}",
                self.index, self.client, self.call, self.text
            )?,
        }
        if !self.note.is_empty() {
            write!(f, "  -- {}", self.note)?;
        }
        Ok(())
    }
}

#[derive(Clone, Debug)]
pub enum Verdict {
    Linearizable,
    NotLinearizable {
        /// The longest linearizable prefix found, in linearization order (each with the state
        /// after it in `note`).
        prefix: Vec<OpReport>,
        /// `Debug` of the model state after the prefix.
        state: String,
        /// Every op that was eligible to be linearized right after the prefix; none of them
        /// leads to a complete linearization. `note` says why (illegal in this state, or legal
        /// but a dead end). The op whose return bounded this point is listed first.
        stuck: Vec<OpReport>,
        /// Human-readable multi-line report of the above (tail of the prefix only).
        explanation: String,
    },
    /// The budget ran out before the search finished.
    Timeout,
}

impl Verdict {
    pub fn is_linearizable(&self) -> bool {
        matches!(self, Verdict::Linearizable)
    }
    pub fn is_not_linearizable(&self) -> bool {
        matches!(self, Verdict::NotLinearizable { .. })
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Linearizable => write!(f, "linearizable"),
            Verdict::Timeout => write!(f, "timeout: linearizability undecided within the budget"),
            Verdict::NotLinearizable { explanation, .. } => f.write_str(explanation),
        }
    }
}

const NIL: usize = usize::MAX;

#[derive(Clone, Copy)]
struct Node {
    op: usize,
    is_call: bool,
    prev: usize,
    next: usize,
}

struct Frame<S> {
    op: usize,
    /// Candidate successor states of this op (filtered).
    nexts: Vec<S>,
    /// Index into `nexts` currently taken.
    choice: usize,
    /// State before the op.
    prev: S,
    /// Linearized by the partial-order reduction (no alternatives to try).
    forced: bool,
}

/// Deepest dead end seen: the prefix (op, choice), the eligible ops, the op whose return
/// was hit.
struct Best {
    prefix: Vec<(usize, usize)>,
    candidates: Vec<usize>,
    blocking: usize,
}

struct List {
    nodes: Vec<Node>,
    call_node: Vec<usize>,
    ret_node: Vec<usize>,
}

impl List {
    fn unlink(&mut self, x: usize) {
        let Node { prev, next, .. } = self.nodes[x];
        self.nodes[prev].next = next;
        if next != NIL {
            self.nodes[next].prev = prev;
        }
    }
    fn relink(&mut self, x: usize) {
        let Node { prev, next, .. } = self.nodes[x];
        self.nodes[prev].next = x;
        if next != NIL {
            self.nodes[next].prev = x;
        }
    }
    fn lift(&mut self, op: usize) {
        self.unlink(self.call_node[op]);
        if self.ret_node[op] != NIL {
            self.unlink(self.ret_node[op]);
        }
    }
    /// Exact inverse of `lift`; lifts/unlifts happen in LIFO order (dancing links).
    fn unlift(&mut self, op: usize) {
        if self.ret_node[op] != NIL {
            self.relink(self.ret_node[op]);
        }
        self.relink(self.call_node[op]);
    }
}

fn eff_ret<I, O>(op: &Op<I, O>) -> u64 {
    if op.output.is_some() {
        op.ret.max(op.call)
    } else {
        u64::MAX
    }
}

fn successors<M: Model>(model: &M, state: &M::State, op: &Op<M::Input, M::Output>) -> Vec<M::State> {
    let mut nexts = model.step(state, &op.input, op.output.as_ref(), op.call, eff_ret(op));
    if op.output.is_none() {
        // No effect + no return event == never linearized: drop it (pure redundancy).
        nexts.retain(|s| s != state);
    }
    nexts
}

/// Sets `op`'s bit and finds the first successor from `from` whose configuration is new
/// (recording it). Clears the bit again when there is none.
fn first_new<S: Clone + Eq + std::hash::Hash>(
    cache: &mut HashSet<(Box<[u64]>, S)>,
    bits: &mut [u64],
    op: usize,
    nexts: &[S],
    from: usize,
) -> Option<usize> {
    bits[op / 64] |= 1u64 << (op % 64);
    for (c, s) in nexts.iter().enumerate().skip(from) {
        if cache.insert((Box::from(&*bits), s.clone())) {
            return Some(c);
        }
    }
    bits[op / 64] &= !(1u64 << (op % 64));
    None
}

/// Checks `history` against `model`. Returns `Timeout` if the search exceeds `budget`
/// (checked every few hundred search steps, so it overshoots by at most a few model steps).
pub fn check<M: Model>(model: &M, history: &[Op<M::Input, M::Output>], budget: Duration) -> Verdict {
    let start = Instant::now();
    let n = history.len();
    let n_known = history.iter().filter(|o| o.output.is_some()).count();
    if n_known == 0 {
        return Verdict::Linearizable;
    }

    // Events: (time, 0 = call / 1 = return, op).
    let mut events: Vec<(u64, u8, usize)> = Vec::with_capacity(n + n_known);
    for (i, op) in history.iter().enumerate() {
        events.push((op.call, 0, i));
        if op.output.is_some() {
            events.push((eff_ret(op), 1, i));
        }
    }
    events.sort_unstable();
    let mut list = List {
        nodes: Vec::with_capacity(events.len() + 1),
        call_node: vec![NIL; n],
        ret_node: vec![NIL; n],
    };
    list.nodes.push(Node {
        op: NIL,
        is_call: false,
        prev: NIL,
        next: 1,
    });
    for (k, &(_, kind, op)) in events.iter().enumerate() {
        let idx = k + 1;
        let next = if k + 1 < events.len() { idx + 1 } else { NIL };
        list.nodes.push(Node {
            op,
            is_call: kind == 0,
            prev: idx - 1,
            next,
        });
        if kind == 0 {
            list.call_node[op] = idx;
        } else {
            list.ret_node[op] = idx;
        }
    }

    let mut state = model.init();
    let mut bits = vec![0u64; n.div_ceil(64)];
    let mut cache: HashSet<(Box<[u64]>, M::State)> = HashSet::new();
    let mut stack: Vec<Frame<M::State>> = Vec::new();
    let mut known_done = 0usize;
    let mut best: Option<Best> = None;
    let mut cur = list.nodes[0].next;
    let mut steps: u64 = 0;
    // True when the search has just arrived at a configuration not scanned yet.
    let mut fresh = true;

    loop {
        steps += 1;
        if steps & 255 == 0 && start.elapsed() > budget {
            return Verdict::Timeout;
        }

        // Partial-order reduction: let X be an eligible op that is read-only
        // (`Model::is_read_only`: in every state it is illegal or leaves the state unchanged)
        // and legal here. If any linearization from this configuration succeeds, one that
        // places X next does too: X is a no-op wherever it was, so removing it from there
        // changes no state; here it is legal; and moving an eligible op earlier only
        // relaxes real-time constraints. So X is linearized now with no alternatives, and if
        // that fails the whole configuration fails.
        let mut dead_end_here = false;
        if fresh {
            fresh = false;
            let mut x = list.nodes[0].next;
            let mut forced = None;
            while x != NIL && list.nodes[x].is_call {
                let op = list.nodes[x].op;
                let h = &history[op];
                if h.output.as_ref().is_some_and(|o| model.is_read_only(&h.input, o)) {
                    let nexts = successors(model, &state, h);
                    if nexts.len() == 1 && nexts[0] == state {
                        forced = Some((op, nexts));
                        break;
                    }
                }
                x = list.nodes[x].next;
            }
            if let Some((op, nexts)) = forced {
                if first_new(&mut cache, &mut bits, op, &nexts, 0).is_some() {
                    stack.push(Frame {
                        op,
                        nexts,
                        choice: 0,
                        prev: state.clone(),
                        forced: true,
                    });
                    list.lift(op);
                    known_done += 1;
                    if known_done == n_known {
                        return Verdict::Linearizable;
                    }
                    cur = list.nodes[0].next;
                    fresh = true;
                    continue;
                }
                // Seen before, i.e. already refuted (the search stops at the first success).
                dead_end_here = true;
            }
        }

        if !dead_end_here {
            // `cur == NIL` cannot happen while a known op is unlinearized (its return event
            // follows its call); treat it as a dead end defensively.
            let node = if cur == NIL { None } else { Some(list.nodes[cur]) };
            if let Some(node) = node.filter(|nd| nd.is_call) {
                let op = node.op;
                let nexts = successors(model, &state, &history[op]);
                if let Some(c) = first_new(&mut cache, &mut bits, op, &nexts, 0) {
                    let prev = std::mem::replace(&mut state, nexts[c].clone());
                    stack.push(Frame {
                        op,
                        nexts,
                        choice: c,
                        prev,
                        forced: false,
                    });
                    list.lift(op);
                    if history[op].output.is_some() {
                        known_done += 1;
                        if known_done == n_known {
                            return Verdict::Linearizable;
                        }
                    }
                    cur = list.nodes[0].next;
                    fresh = true;
                } else {
                    cur = node.next;
                }
                continue;
            }

            // Dead end: the op whose return event is at `cur` cannot be placed.
            if best.as_ref().is_none_or(|b| stack.len() > b.prefix.len()) {
                let mut candidates = Vec::new();
                let mut x = list.nodes[0].next;
                while x != cur && x != NIL && list.nodes[x].is_call {
                    candidates.push(list.nodes[x].op);
                    x = list.nodes[x].next;
                }
                let blocking = if cur == NIL { NIL } else { list.nodes[cur].op };
                best = Some(Best {
                    prefix: stack.iter().map(|f| (f.op, f.choice)).collect(),
                    candidates,
                    blocking,
                });
            }
        }

        // Backtrack.
        loop {
            let Some(Frame {
                op,
                nexts,
                choice,
                prev,
                forced,
            }) = stack.pop()
            else {
                return not_linearizable(
                    model,
                    history,
                    best.unwrap_or(Best {
                        prefix: vec![],
                        candidates: vec![],
                        blocking: NIL,
                    }),
                );
            };
            state = prev;
            if !forced {
                if let Some(c) = first_new(&mut cache, &mut bits, op, &nexts, choice + 1) {
                    // Same op, another successor state.
                    let prev = std::mem::replace(&mut state, nexts[c].clone());
                    stack.push(Frame {
                        op,
                        nexts,
                        choice: c,
                        prev,
                        forced: false,
                    });
                    cur = list.nodes[0].next;
                    fresh = true;
                    break;
                }
                // first_new cleared the op's bit.
            } else {
                bits[op / 64] &= !(1u64 << (op % 64));
            }
            list.unlift(op);
            if history[op].output.is_some() {
                known_done -= 1;
            }
            if forced {
                // The parent configuration is refuted too.
                continue;
            }
            cur = list.nodes[list.call_node[op]].next;
            break;
        }
    }
}

fn render<I: fmt::Debug, O: fmt::Debug>(index: usize, op: &Op<I, O>, note: String) -> OpReport {
    let text = match &op.output {
        Some(o) => format!("{:?} -> {:?}", op.input, o),
        None => format!("{:?} -> (unknown)", op.input),
    };
    let ret = op.output.as_ref().map(|_| op.ret.max(op.call));
    OpReport {
        index,
        client: op.client,
        call: op.call,
        ret,
        text,
        note,
    }
}

const SHOW_PREFIX_TAIL: usize = 12;

fn not_linearizable<M: Model>(model: &M, history: &[Op<M::Input, M::Output>], best: Best) -> Verdict {
    // Replay the recorded choices to get the states along the prefix.
    let mut state = model.init();
    let mut prefix = Vec::with_capacity(best.prefix.len());
    let mut replay_ok = true;
    for &(op, choice) in &best.prefix {
        let nexts = successors(model, &state, &history[op]);
        match nexts.get(choice) {
            Some(s) if replay_ok => state = s.clone(),
            _ => replay_ok = false,
        }
        let note = if replay_ok {
            format!("state {:?}", state)
        } else {
            "state ? (step is not deterministic)".into()
        };
        prefix.push(render(op, &history[op], note));
    }
    let state_text = if replay_ok {
        format!("{:?}", state)
    } else {
        "?".to_string()
    };

    let mut order = best.candidates.clone();
    if let Some(pos) = order.iter().position(|&o| o == best.blocking) {
        let b = order.remove(pos);
        order.insert(0, b);
    }
    let mut stuck = Vec::with_capacity(order.len());
    for op in order {
        let h = &history[op];
        let mut note = if !replay_ok {
            String::new()
        } else {
            let k = successors(model, &state, h).len();
            match (k, h.output.is_some()) {
                (0, true) => "illegal in this state".to_string(),
                (0, false) => "could only be a no-op here (unknown outcome: may never have happened)".to_string(),
                (k, _) => format!("legal here ({k} successor state(s)), but every continuation is a dead end"),
            }
        };
        if op == best.blocking {
            note.push_str(&format!(
                "; it returned at {} so it must precede every op called after that",
                h.ret.max(h.call)
            ));
        }
        stuck.push(render(op, h, note));
    }

    let mut ex = String::new();
    use std::fmt::Write as _;
    let known = history.iter().filter(|o| o.output.is_some()).count();
    let _ = writeln!(
        ex,
        "not linearizable: the longest linearizable prefix found has {} ops ({} ops in history, {} with known outcome)",
        prefix.len(),
        history.len(),
        known
    );
    if prefix.len() > SHOW_PREFIX_TAIL {
        let _ = writeln!(ex, "  ... {} earlier ops", prefix.len() - SHOW_PREFIX_TAIL);
    }
    for r in prefix.iter().skip(prefix.len().saturating_sub(SHOW_PREFIX_TAIL)) {
        let _ = writeln!(ex, "  {r}");
    }
    let _ = writeln!(ex, "state after the prefix: {state_text}");
    let _ = writeln!(ex, "ops that could not be placed next:");
    for r in &stuck {
        let _ = writeln!(ex, "  {r}");
    }
    Verdict::NotLinearizable {
        prefix,
        state: state_text,
        stuck,
        explanation: ex,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    // ---------------------------------------------------------------- register model
    #[derive(Clone, Debug, PartialEq, Eq)]
    enum RIn {
        Write(u64),
        Read,
    }
    #[derive(Clone, Debug, PartialEq, Eq)]
    enum ROut {
        Ok,
        Val(u64),
    }
    struct Register;
    impl Model for Register {
        type State = u64;
        type Input = RIn;
        type Output = ROut;
        fn init(&self) -> u64 {
            0
        }
        fn step(&self, s: &u64, i: &RIn, o: Option<&ROut>, _c: u64, _r: u64) -> Vec<u64> {
            match (i, o) {
                (RIn::Write(v), Some(ROut::Ok)) | (RIn::Write(v), None) => vec![*v],
                (RIn::Read, Some(ROut::Val(v))) if v == s => vec![*s],
                (RIn::Read, None) => vec![*s],
                _ => vec![],
            }
        }
        fn is_read_only(&self, i: &RIn, _o: &ROut) -> bool {
            *i == RIn::Read
        }
    }
    type ROp = Op<RIn, ROut>;
    fn w(c: usize, v: u64, call: u64, ret: u64) -> ROp {
        Op::new(c, RIn::Write(v), ROut::Ok, call, ret)
    }
    fn r(c: usize, v: u64, call: u64, ret: u64) -> ROp {
        Op::new(c, RIn::Read, ROut::Val(v), call, ret)
    }
    fn wu(c: usize, v: u64, call: u64) -> ROp {
        Op::unknown(c, RIn::Write(v), call)
    }
    const B: Duration = Duration::from_secs(10);
    fn lin(h: &[ROp]) -> bool {
        match check(&Register, h, B) {
            Verdict::Linearizable => true,
            Verdict::NotLinearizable { .. } => false,
            Verdict::Timeout => panic!("timeout"),
        }
    }

    #[test]
    fn empty_and_unknown_only_histories_are_linearizable() {
        assert!(lin(&[]));
        assert!(lin(&[wu(0, 1, 0), Op::unknown(1, RIn::Read, 5)]));
    }

    #[test]
    fn register_concurrent_linearizable() {
        // W1 overlaps R->1 and R->0: both orders are possible.
        let h = vec![
            w(0, 1, 0, 100),
            r(1, 0, 10, 20),
            r(2, 1, 30, 40),
            w(1, 2, 110, 120),
            r(0, 2, 130, 140),
        ];
        assert!(lin(&h));
        // Ops touching at one instant count as concurrent.
        assert!(lin(&[w(0, 1, 0, 10), r(1, 0, 10, 20)]));
    }

    #[test]
    fn register_value_cannot_flip_back() {
        // Classic: during one long write, reads see new then old value.
        let h = vec![w(0, 1, 0, 100), r(1, 0, 10, 20), r(2, 1, 30, 40), r(3, 0, 50, 60)];
        assert!(!lin(&h));
    }

    #[test]
    fn stale_read_is_caught_and_explained() {
        let h = vec![w(0, 1, 0, 10), w(0, 2, 20, 30), r(1, 1, 40, 50)];
        let v = check(&Register, &h, B);
        match &v {
            Verdict::NotLinearizable {
                prefix,
                stuck,
                state,
                explanation,
            } => {
                assert_eq!(prefix.iter().map(|p| p.index).collect::<Vec<_>>(), vec![0, 1]);
                assert_eq!(state, "2");
                assert_eq!(stuck.len(), 1);
                assert_eq!(stuck[0].index, 2);
                assert!(stuck[0].note.contains("illegal"));
                assert!(
                    explanation.contains("#2 client 1 [40, 50] Read -> Val(1)"),
                    "{explanation}"
                );
            }
            other => panic!("expected NotLinearizable, got {other:?}"),
        }
        // A read concurrent with the second write may still see the first value.
        assert!(lin(&[w(0, 1, 0, 10), w(0, 2, 20, 30), r(1, 1, 25, 50)]));
    }

    #[test]
    fn lost_write_is_caught() {
        // Acknowledged write of 2 is lost: later reads still see 1.
        let h = vec![w(0, 1, 0, 10), w(1, 2, 20, 30), r(2, 2, 40, 50), r(2, 1, 60, 70)];
        assert!(!lin(&h));
        let h = vec![w(0, 1, 0, 10), w(1, 2, 20, 30), r(2, 0, 40, 50)];
        assert!(!lin(&h));
    }

    #[test]
    fn read_of_future_write_is_caught() {
        assert!(!lin(&[r(0, 5, 0, 10), w(1, 5, 20, 30)]));
        assert!(lin(&[r(0, 5, 0, 25), w(1, 5, 20, 30)]));
    }

    #[test]
    fn unknown_ops_must_have_taken_effect() {
        // The only way to read 7 is the crashed write.
        assert!(lin(&[wu(0, 7, 0), r(1, 7, 10, 20)]));
        // ... even long after, and after other writes.
        assert!(lin(&[
            wu(0, 7, 0),
            w(1, 1, 5, 6),
            r(1, 1, 10, 20),
            r(2, 7, 1_000, 1_010)
        ]));
        // Once it took effect it cannot be undone.
        assert!(!lin(&[wu(0, 7, 0), r(1, 7, 10, 20), r(1, 0, 30, 40)]));
    }

    #[test]
    fn unknown_ops_must_not_have_taken_effect() {
        // Never taking effect is allowed.
        assert!(lin(&[wu(0, 7, 0), r(1, 0, 10, 20), r(1, 0, 30, 40)]));
        // It cannot take effect before its call.
        assert!(!lin(&[r(1, 7, 10, 20), wu(0, 7, 50)]));
        // An unknown read constrains nothing.
        assert!(lin(&[w(0, 1, 0, 10), Op::unknown(1, RIn::Read, 11), r(0, 1, 20, 30)]));
    }

    // ---------------------------------------------------------------- nondeterministic model
    #[derive(Debug)]
    enum CIn {
        Flip,
        Look,
    }
    #[derive(Debug)]
    enum COut {
        Done,
        Saw(u8),
    }
    /// A coin: Flip lands on 1 or 2 (the model cannot tell which), Look observes it.
    struct Coin;
    impl Model for Coin {
        type State = u8;
        type Input = CIn;
        type Output = COut;
        fn init(&self) -> u8 {
            0
        }
        fn step(&self, s: &u8, i: &CIn, o: Option<&COut>, _c: u64, _r: u64) -> Vec<u8> {
            match (i, o) {
                (CIn::Flip, Some(COut::Done)) | (CIn::Flip, None) => vec![1, 2],
                (CIn::Look, Some(COut::Saw(v))) if v == s => vec![*s],
                (CIn::Look, None) => vec![*s],
                _ => vec![],
            }
        }
    }

    #[test]
    fn nondeterministic_model_is_explored() {
        let flip = |c, t0, t1| Op::new(c, CIn::Flip, COut::Done, t0, t1);
        let look = |c, v, t0, t1| Op::new(c, CIn::Look, COut::Saw(v), t0, t1);
        // Needs the second successor (2) of the flip.
        assert!(check(&Coin, &[flip(0, 0, 10), look(1, 2, 20, 30), look(1, 2, 40, 50)], B).is_linearizable());
        assert!(check(&Coin, &[flip(0, 0, 10), look(1, 1, 20, 30)], B).is_linearizable());
        // The coin cannot change without another flip.
        assert!(check(&Coin, &[flip(0, 0, 10), look(1, 1, 20, 30), look(1, 2, 40, 50)], B).is_not_linearizable());
        // Two flips: choices must be backtracked per flip (1 then 2).
        let h = [
            flip(0, 0, 10),
            look(1, 1, 20, 30),
            flip(0, 40, 50),
            look(1, 2, 60, 70),
            look(2, 2, 80, 90),
        ];
        assert!(check(&Coin, &h, B).is_linearizable());
        // Unknown flip: may or may not have happened.
        let h = [
            flip(0, 0, 10),
            look(1, 1, 20, 30),
            Op::unknown(2, CIn::Flip, 35),
            look(1, 2, 60, 70),
        ];
        assert!(check(&Coin, &h, B).is_linearizable());
        let h = [
            flip(0, 0, 10),
            look(1, 1, 20, 30),
            Op::unknown(2, CIn::Flip, 65),
            look(1, 2, 40, 50),
        ];
        assert!(check(&Coin, &h, B).is_not_linearizable());
    }

    // ---------------------------------------------------------------- budget
    #[test]
    fn budget_exceeded_returns_timeout() {
        // 40 fully concurrent writes then a read of a value never written: refuting it means
        // exploring ~2^40 configurations.
        let mut h: Vec<ROp> = (0..40).map(|i| w(i, i as u64 + 1, 0, 1_000)).collect();
        h.push(r(0, 999, 2_000, 2_100));
        let t = Instant::now();
        let v = check(&Register, &h, Duration::from_millis(100));
        let el = t.elapsed();
        eprintln!("budget 100ms: {v} after {el:?}");
        assert!(matches!(v, Verdict::Timeout), "{v:?}");
        assert!(el < Duration::from_secs(3), "took {el:?}");
    }

    // ---------------------------------------------------------------- generated histories
    /// xorshift64* — deterministic, no crates.
    pub(crate) struct Rng(u64);
    impl Rng {
        pub(crate) fn new(seed: u64) -> Self {
            Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03 | 1)
        }
        pub(crate) fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            self.0 = x;
            x.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        pub(crate) fn below(&mut self, n: u64) -> u64 {
            if n == 0 { 0 } else { self.next() % n }
        }
        pub(crate) fn chance(&mut self, num: u64, den: u64) -> bool {
            self.below(den) < num
        }
    }

    /// Simulates a sequential register: op i takes effect at a strictly increasing instant
    /// `lp`, its window is widened around it (`lp - U(width)`, `lp + U(width)`), each client
    /// runs one op at a time. Write values are unique (i + 1). With probability
    /// `unknown_per_mille`/1000 an op's outcome is unknown; an unknown write takes effect
    /// at `lp` with probability 1/2. Ops at `forced` indices are unknown writes; the first
    /// two of them take effect, and the op right after each of those is a read.
    fn gen_history(
        rng: &mut Rng,
        n: usize,
        clients: usize,
        gap: u64,
        width: u64,
        unknown_per_mille: u64,
        forced: &[usize],
    ) -> Vec<ROp> {
        gen_history_late(rng, n, clients, gap, width, unknown_per_mille, forced, 0)
    }

    /// As `gen_history`; forced unknown ops are called `late` us before they take effect.
    #[allow(clippy::too_many_arguments)]
    fn gen_history_late(
        rng: &mut Rng,
        n: usize,
        clients: usize,
        gap: u64,
        width: u64,
        unknown_per_mille: u64,
        forced: &[usize],
        late: u64,
    ) -> Vec<ROp> {
        let mut h = Vec::with_capacity(n);
        let mut free = vec![0u64; clients];
        let mut lp = 1_000_000u64;
        let mut reg = 0u64;
        let mut read_next = false;
        for i in 0..n {
            lp += 1 + rng.below(gap);
            let start = rng.below(clients as u64) as usize;
            let c = (0..clients)
                .map(|k| (start + k) % clients)
                .find(|&c| free[c] <= lp)
                .unwrap_or_else(|| {
                    let c = (0..clients).min_by_key(|&c| free[c]).unwrap();
                    lp = lp.max(free[c]);
                    c
                });
            let mut call = free[c].max(lp - rng.below(width));
            let ret = lp + rng.below(width);
            free[c] = ret + 1;
            let forced_k = forced.iter().position(|&f| f == i);
            if forced_k.is_some() && late > 0 {
                call = lp - late;
            }
            let input = if forced_k.is_some() || (!read_next && rng.chance(1, 2)) {
                RIn::Write(i as u64 + 1)
            } else {
                RIn::Read
            };
            read_next = false;
            if forced_k.is_some() || rng.below(1000) < unknown_per_mille {
                match input {
                    RIn::Write(v) if forced_k.map_or(rng.chance(1, 2), |k| k < 2) => {
                        reg = v;
                        read_next = forced_k.is_some();
                    }
                    _ => {}
                }
                h.push(Op::unknown(c, input, call));
            } else {
                let out = match input {
                    RIn::Write(v) => {
                        reg = v;
                        ROut::Ok
                    }
                    RIn::Read => ROut::Val(reg),
                };
                h.push(Op::new(c, input, out, call, ret));
            }
        }
        h
    }

    /// Corrupts one known read so that the history is surely not linearizable. Kinds:
    /// 0: a value never written; 1: the value of a write called after the read returned;
    /// 2: the value of a write overwritten (w1 < w2 in real time) before the read's call.
    fn corrupt(rng: &mut Rng, h: &mut [ROp]) -> Option<(usize, u8)> {
        let reads: Vec<usize> = (0..h.len())
            .filter(|&i| h[i].output.is_some() && h[i].input == RIn::Read)
            .collect();
        if reads.is_empty() {
            return None;
        }
        let kind = rng.below(3) as u8;
        for _ in 0..20 {
            let ri = reads[rng.below(reads.len() as u64) as usize];
            let (rc, rr) = (h[ri].call, h[ri].ret);
            let val = match kind {
                0 => Some(1_000_000_000 + rng.below(1000)),
                1 => h.iter().find_map(|o| match o.input {
                    RIn::Write(v) if o.call > rr => Some(v),
                    _ => None,
                }),
                _ => {
                    let known_w = |o: &ROp| o.output.is_some() && matches!(o.input, RIn::Write(_));
                    let w2 = h.iter().filter(|o| known_w(o) && o.ret < rc).max_by_key(|o| o.call);
                    w2.and_then(|w2| {
                        h.iter()
                            .rev()
                            .find(|o| known_w(o) && o.ret < w2.call)
                            .map(|o| match o.input {
                                RIn::Write(v) => v,
                                RIn::Read => unreachable!(),
                            })
                    })
                }
            };
            if let Some(v) = val.filter(|&v| h[ri].output != Some(ROut::Val(v))) {
                h[ri].output = Some(ROut::Val(v));
                return Some((ri, kind));
            }
        }
        None
    }

    #[test]
    fn property_generated_histories() {
        let mut caught = 0;
        let mut corrupted = 0;
        for seed in 0..300u64 {
            let mut rng = Rng::new(seed);
            let n = 20 + rng.below(200) as usize;
            let clients = 1 + rng.below(8) as usize;
            let width = 1 + rng.below(300);
            let mut h = gen_history(&mut rng, n, clients, 20, width, 20, &[]);
            let v = check(&Register, &h, B);
            assert!(v.is_linearizable(), "seed {seed}: {v}");
            if let Some((i, kind)) = corrupt(&mut rng, &mut h) {
                corrupted += 1;
                let v = check(&Register, &h, B);
                assert!(!matches!(v, Verdict::Timeout), "seed {seed}");
                if v.is_not_linearizable() {
                    caught += 1;
                } else {
                    eprintln!("seed {seed}: corruption kind {kind} of op {i} not caught");
                }
            }
        }
        eprintln!("corruptions caught: {caught}/{corrupted}");
        assert!(corrupted >= 250);
        // All three corruption kinds are always detectable with unique write values.
        assert_eq!(caught, corrupted);
    }

    #[test]
    fn perf_2000_ops_8_clients() {
        let mut rng = Rng::new(42);
        // 2,000 ops, 8 clients, windows up to 2x200us around points ~5us apart: every client
        // is almost always busy. Five unknown ops (writes: first two took effect).
        let h = gen_history(&mut rng, 2_000, 8, 10, 200, 0, &[150, 600, 1100, 1500, 1900]);
        let concurrency = (0..h.len())
            .map(|i| {
                h.iter()
                    .filter(|o| o.call <= h[i].call && h[i].call <= eff_ret(o))
                    .count()
            })
            .max()
            .unwrap();
        let t = Instant::now();
        let v = check(&Register, &h, Duration::from_secs(60));
        let el = t.elapsed();
        eprintln!("perf: 2000 ops, max overlap {concurrency}, 5 unknown: {v} in {el:?}");
        assert!(v.is_linearizable());
        assert!(el < Duration::from_secs(5), "{el:?}");
        // Same without the read-only hint (plain WGL).
        struct Plain;
        impl Model for Plain {
            type State = u64;
            type Input = RIn;
            type Output = ROut;
            fn init(&self) -> u64 {
                0
            }
            fn step(&self, s: &u64, i: &RIn, o: Option<&ROut>, c: u64, r: u64) -> Vec<u64> {
                Register.step(s, i, o, c, r)
            }
        }
        let t = Instant::now();
        let v = check(&Plain, &h, Duration::from_secs(60));
        let el = t.elapsed();
        eprintln!("perf: same, plain WGL (no read-only hint): {v} in {el:?}");
        assert!(v.is_linearizable());
        assert!(el < Duration::from_secs(5), "{el:?}");
        // The same history with one read corrupted is refuted quickly too.
        let mut h = h;
        let i = (1000..h.len())
            .find(|&i| h[i].output.is_some() && h[i].input == RIn::Read)
            .unwrap();
        h[i].output = Some(ROut::Val(7_777_777));
        let t = Instant::now();
        let v = check(&Register, &h, Duration::from_secs(60));
        let el = t.elapsed();
        eprintln!(
            "perf: same history, read #{i} corrupted: refuted={} in {el:?}",
            v.is_not_linearizable()
        );
        assert!(v.is_not_linearizable());
        assert!(el < Duration::from_secs(5), "{el:?}");
    }

    #[test]
    fn perf_unknown_writes_applied_late() {
        // Five unknown writes, called ~360 ops (2 ms) before they take effect; the first two
        // take effect (and are typically read), the others never do.
        let mut rng = Rng::new(7);
        let h = gen_history_late(&mut rng, 2_000, 8, 10, 200, 0, &[400, 800, 1200, 1600, 1900], 2_000);
        let t = Instant::now();
        let v = check(&Register, &h, Duration::from_secs(60));
        let el = t.elapsed();
        eprintln!("perf: 2000 ops, 5 unknown writes applied late: {v} in {el:?}");
        assert!(v.is_linearizable());
        // The applied unknown writes are observed, so the search had to place them.
        assert!(h.iter().any(|o| o.output == Some(ROut::Val(401))));
        assert!(h.iter().any(|o| o.output == Some(ROut::Val(801))));
        assert!(el < Duration::from_secs(5), "{el:?}");
    }

    // ---------------------------------------------------------------- brute-force cross-check
    #[derive(Debug, Clone)]
    enum NIn {
        Write(u8),
        /// Nondeterministic: writes one of the two.
        WriteAny(u8, u8),
        Read,
    }
    #[derive(Debug, Clone)]
    enum NOut {
        Ok,
        Val(u8),
    }
    struct NdRegister;
    impl Model for NdRegister {
        type State = u8;
        type Input = NIn;
        type Output = NOut;
        fn init(&self) -> u8 {
            0
        }
        fn step(&self, s: &u8, i: &NIn, o: Option<&NOut>, _c: u64, _r: u64) -> Vec<u8> {
            match (i, o) {
                (NIn::Write(v), Some(NOut::Ok) | None) => vec![*v],
                (NIn::WriteAny(a, b), Some(NOut::Ok) | None) => vec![*a, *b],
                (NIn::Read, Some(NOut::Val(v))) if v == s => vec![*s],
                (NIn::Read, None) => vec![*s],
                _ => vec![],
            }
        }
        fn is_read_only(&self, i: &NIn, _o: &NOut) -> bool {
            matches!(i, NIn::Read)
        }
    }

    /// The same model without the read-only hint: plain WGL.
    struct NdRegisterPlain;
    impl Model for NdRegisterPlain {
        type State = u8;
        type Input = NIn;
        type Output = NOut;
        fn init(&self) -> u8 {
            0
        }
        fn step(&self, s: &u8, i: &NIn, o: Option<&NOut>, c: u64, r: u64) -> Vec<u8> {
            NdRegister.step(s, i, o, c, r)
        }
    }

    /// Definition-level check: some order of a subset of ops containing every known op,
    /// respecting real-time order (a before b when a returned before b was called), in which
    /// every op is legal.
    fn brute<M: Model>(m: &M, h: &[Op<M::Input, M::Output>]) -> bool {
        fn go<M: Model>(
            m: &M,
            h: &[Op<M::Input, M::Output>],
            used: &mut Vec<bool>,
            skipped: &mut Vec<bool>,
            s: &M::State,
        ) -> bool {
            if (0..h.len()).all(|i| used[i] || h[i].output.is_none()) {
                return true;
            }
            for i in 0..h.len() {
                if used[i] || skipped[i] {
                    continue;
                }
                // Every known op that returned before i's call must already be placed
                // (skipped unknown ops have no return).
                let ready = (0..h.len()).all(|j| used[j] || h[j].output.is_none() || eff_ret(&h[j]) >= h[i].call);
                if !ready {
                    continue;
                }
                used[i] = true;
                for s2 in m.step(s, &h[i].input, h[i].output.as_ref(), h[i].call, eff_ret(&h[i])) {
                    if go(m, h, used, skipped, &s2) {
                        return true;
                    }
                }
                used[i] = false;
                if h[i].output.is_none() {
                    // Or it never takes effect.
                    skipped[i] = true;
                    let ok = go(m, h, used, skipped, s);
                    skipped[i] = false;
                    if ok {
                        return true;
                    }
                }
            }
            false
        }
        go(m, h, &mut vec![false; h.len()], &mut vec![false; h.len()], &m.init())
    }

    #[test]
    fn agrees_with_brute_force_on_small_random_histories() {
        let mut rng = Rng::new(99);
        let (mut yes, mut no) = (0, 0);
        let rounds: usize = std::env::var("LINCHECK_BRUTE_ROUNDS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(4_000);
        for _ in 0..rounds {
            let n = 1 + rng.below(7) as usize;
            let h: Vec<Op<NIn, NOut>> = (0..n)
                .map(|c| {
                    let call = rng.below(40);
                    let ret = call + rng.below(25);
                    let input = match rng.below(5) {
                        0 | 1 => NIn::Write(rng.below(3) as u8),
                        2 => NIn::WriteAny(rng.below(3) as u8, rng.below(3) as u8),
                        _ => NIn::Read,
                    };
                    let output = if rng.chance(1, 6) {
                        None
                    } else if matches!(input, NIn::Read) {
                        Some(NOut::Val(rng.below(3) as u8))
                    } else {
                        Some(NOut::Ok)
                    };
                    Op {
                        client: c,
                        input,
                        output,
                        call,
                        ret,
                    }
                })
                .collect();
            let expected = brute(&NdRegister, &h);
            let got = check(&NdRegister, &h, B);
            assert!(!matches!(got, Verdict::Timeout));
            assert_eq!(got.is_linearizable(), expected, "{h:#?}\n{got}");
            let plain = check(&NdRegisterPlain, &h, B);
            assert_eq!(plain.is_linearizable(), expected, "plain WGL: {h:#?}\n{plain}");
            if expected { yes += 1 } else { no += 1 }
        }
        eprintln!("brute-force cross-check: {yes} linearizable, {no} not");
        assert!(yes > 500 && no > 500);
    }
}
