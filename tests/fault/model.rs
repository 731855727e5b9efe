//! Model of baton's semantics for one partition: one lease key K guarding one entity E
//! (its state machine and its event tape), for `crate::lincheck`.
//!
//! Written from the specification, independently of baton's code.
//!
//! Time: every op carries its window `[call, ret]` on the test host's clock; the server
//! decides at one instant inside it, by a clock within ~1 ms of the host's. Lease rules are
//! evaluated against the window with a tolerance `tolerance_us` (default 2 ms):
//! * "may be live"    = lease exists && expires_at > call - tol
//! * "may be expired" = no lease || expires_at <= ret + tol
//!
//! Approximations (all lenient: they can hide a violation, never invent one, except as noted):
//! * Each op's time rules are checked against its own window only. The decision instants
//!   are not forced to be monotone along the linearization order (tracking time in the state
//!   would defeat memoization).
//! * A lease whose expiry is unknown (granted / extended / renewed by an op with unknown
//!   outcome) is kept as a range: `expires_at` is the earliest possible expiry
//!   (`call + ttl - tol`) and `expires_at_max` the latest (`u64::MAX`: an unacknowledged
//!   request may be applied arbitrarily late). "may be expired" uses the earliest, "may be
//!   live" the latest. (With a single concrete guess, either choice could flag legal
//!   histories: e.g. a Busy answer naming a late-applied grant.) For a lease from a known
//!   answer both fields are the returned `expires_at`.
//! * `Renewed { expires_at }` must lie in `[call + ttl, ret + ttl]` (± tol), like
//!   `Acquired`; set `check_renew_expiry = false` if baton's renew computes expiry otherwise.
//! * `Released(false)` on a lease that may have expired leaves it in the state (an expired
//!   lease behaves like no lease for every rule, up to the window approximations).
#![allow(dead_code)]

use crate::lincheck::Model;

pub const DEFAULT_TOLERANCE_US: u64 = 2_000;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Input {
    Acquire {
        holder: u32,
        ttl_us: u64,
    },
    Renew {
        token: u64,
        ttl_us: u64,
    },
    Release {
        token: u64,
    },
    Transition {
        name: Tr,
        expect_version: Option<u64>,
        fence: Option<u64>,
    },
    /// n >= 1 events (n = 0 is modelled as appending nothing).
    Append {
        n: u64,
        fence: Option<u64>,
    },
    /// GetEntity.
    Read,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Tr {
    Start,
    Step,
    Finish,
    Cancel,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum St {
    Pending,
    Running,
    Done,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Output {
    Acquired {
        token: u64,
        expires_at: u64,
    },
    Busy {
        holder: u32,
        token: u64,
    },
    Renewed {
        expires_at: u64,
    },
    Released(bool),
    LeaseLost,
    /// `version` and `state` after the transition.
    Applied {
        version: u64,
        state: St,
        seqs: Vec<u64>,
    },
    Noop {
        version: u64,
        state: St,
    },
    InvalidTransition {
        version: u64,
        state: St,
    },
    VersionMismatch {
        version: u64,
        state: St,
    },
    Appended {
        seqs: Vec<u64>,
    },
    Sealed {
        final_seq: u64,
    },
    Entity {
        version: u64,
        state: St,
        last_seq: u64,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Lease {
    pub holder: u32,
    pub token: u64,
    /// Earliest possible expiry (server clock, us).
    pub expires_at: u64,
    /// Latest possible expiry: equal to `expires_at` when known, `u64::MAX` when the lease
    /// was granted/extended by an op with unknown outcome.
    pub expires_at_max: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct State {
    pub lease: Option<Lease>,
    pub last_token: u64,
    pub state: St,
    pub version: u64,
    pub last_seq: u64,
    pub final_seq: Option<u64>,
}

impl State {
    pub fn initial() -> State {
        State {
            lease: None,
            last_token: 0,
            state: St::Pending,
            version: 1,
            last_seq: 0,
            final_seq: None,
        }
    }
}

impl St {
    pub fn is_terminal(self) -> bool {
        self == St::Done
    }
}

impl Tr {
    /// States the transition applies from.
    pub fn from(self) -> &'static [St] {
        match self {
            Tr::Start => &[St::Pending],
            Tr::Step | Tr::Finish => &[St::Running],
            Tr::Cancel => &[St::Pending, St::Running],
        }
    }
    pub fn to(self) -> St {
        match self {
            Tr::Start | Tr::Step => St::Running,
            Tr::Finish | Tr::Cancel => St::Done,
        }
    }
    /// States in which the transition is an idempotent no-op.
    pub fn noop_in(self) -> &'static [St] {
        match self {
            Tr::Cancel => &[St::Done],
            _ => &[],
        }
    }
}

/// The outcome of a transition once the fence (if any) has passed: the answer, and the new
/// state when it applies. Deterministic.
pub fn transition_outcome(s: &State, name: Tr, expect_version: Option<u64>) -> (Output, Option<State>) {
    let (version, state) = (s.version, s.state);
    if name.noop_in().contains(&state) {
        return (Output::Noop { version, state }, None);
    }
    if expect_version.is_some_and(|v| v != version) {
        return (Output::VersionMismatch { version, state }, None);
    }
    if !name.from().contains(&state) {
        return (Output::InvalidTransition { version, state }, None);
    }
    let to = name.to();
    let mut seqs = vec![s.last_seq + 1];
    if to.is_terminal() {
        seqs.push(s.last_seq + 2); // the `final` event
    }
    let last = *seqs.last().unwrap();
    let mut n = s.clone();
    n.version += 1;
    n.state = to;
    n.last_seq = last;
    if to.is_terminal() {
        n.final_seq = Some(last);
    }
    (
        Output::Applied {
            version: n.version,
            state: to,
            seqs,
        },
        Some(n),
    )
}

/// The outcome of an append once the fence (if any) has passed.
pub fn append_outcome(s: &State, n: u64) -> (Output, Option<State>) {
    match s.final_seq {
        Some(f) => (Output::Sealed { final_seq: f }, None),
        None => {
            let seqs: Vec<u64> = (s.last_seq + 1..=s.last_seq + n).collect();
            let mut ns = s.clone();
            ns.last_seq += n;
            (Output::Appended { seqs }, Some(ns))
        }
    }
}

#[derive(Clone, Debug)]
pub struct BatonModel {
    /// Clock tolerance (us) applied to every comparison of an expiry with a window bound.
    pub tolerance_us: u64,
    /// Require `Renewed.expires_at` within `[call + ttl, ret + ttl]` (± tolerance).
    pub check_renew_expiry: bool,
}

impl Default for BatonModel {
    fn default() -> Self {
        BatonModel {
            tolerance_us: DEFAULT_TOLERANCE_US,
            check_renew_expiry: true,
        }
    }
}

impl BatonModel {
    fn may_be_live(&self, l: &Lease, call: u64) -> bool {
        l.expires_at_max.saturating_add(self.tolerance_us) > call
    }
    fn may_be_expired(&self, lease: &Option<Lease>, ret: u64) -> bool {
        lease.is_none_or(|l| l.expires_at <= ret.saturating_add(self.tolerance_us))
    }
    /// The lease with token `t` may be live: a fence/renew/release with `t` may pass.
    fn holds(&self, s: &State, t: u64, call: u64) -> bool {
        s.lease.is_some_and(|l| l.token == t && self.may_be_live(&l, call))
    }
    /// A fence/renew/release with `t` may be refused.
    fn may_lose(&self, s: &State, t: u64, ret: u64) -> bool {
        s.lease.is_none_or(|l| l.token != t) || self.may_be_expired(&s.lease, ret)
    }
    /// Window of a server-computed `now + ttl`.
    fn expiry_window(&self, ttl: u64, call: u64, ret: u64) -> (u64, u64) {
        let tol = self.tolerance_us;
        (
            call.saturating_add(ttl).saturating_sub(tol),
            ret.saturating_add(ttl).saturating_add(tol),
        )
    }
    fn with_lease(s: &State, lease: Option<Lease>) -> State {
        State { lease, ..s.clone() }
    }

    fn acquire(&self, s: &State, holder: u32, ttl: u64, out: Option<&Output>, call: u64, ret: u64) -> Vec<State> {
        let (lo, hi) = self.expiry_window(ttl, call, ret);
        let reacquire = s.lease.filter(|l| l.holder == holder && self.may_be_live(l, call));
        let grant = self.may_be_expired(&s.lease, ret);
        match out {
            Some(&Output::Acquired { token, expires_at }) => {
                let mut v = Vec::new();
                if !(lo..=hi).contains(&expires_at) {
                    return v;
                }
                if let Some(l) = reacquire.filter(|l| l.token == token) {
                    v.push(Self::with_lease(
                        s,
                        Some(Lease {
                            expires_at,
                            expires_at_max: expires_at,
                            ..l
                        }),
                    ));
                }
                if grant && token == s.last_token + 1 {
                    let mut n = Self::with_lease(
                        s,
                        Some(Lease {
                            holder,
                            token,
                            expires_at,
                            expires_at_max: expires_at,
                        }),
                    );
                    n.last_token = token;
                    v.push(n);
                }
                v
            }
            Some(&Output::Busy { holder: h, token }) => {
                let ok = h != holder
                    && s.lease
                        .is_some_and(|l| l.holder == h && l.token == token && self.may_be_live(&l, call));
                if ok { vec![s.clone()] } else { vec![] }
            }
            Some(_) => vec![],
            None => {
                let mut v = vec![s.clone()];
                if let Some(l) = reacquire {
                    v.push(Self::with_lease(
                        s,
                        Some(Lease {
                            expires_at: lo,
                            expires_at_max: u64::MAX,
                            ..l
                        }),
                    ));
                }
                if grant {
                    let token = s.last_token + 1;
                    let mut n = Self::with_lease(
                        s,
                        Some(Lease {
                            holder,
                            token,
                            expires_at: lo,
                            expires_at_max: u64::MAX,
                        }),
                    );
                    n.last_token = token;
                    v.push(n);
                }
                v
            }
        }
    }

    fn renew(&self, s: &State, token: u64, ttl: u64, out: Option<&Output>, call: u64, ret: u64) -> Vec<State> {
        let (lo, hi) = self.expiry_window(ttl, call, ret);
        let live = self.holds(s, token, call);
        match out {
            Some(&Output::Renewed { expires_at }) => {
                if !live || (self.check_renew_expiry && !(lo..=hi).contains(&expires_at)) {
                    return vec![];
                }
                let l = s.lease.unwrap();
                vec![Self::with_lease(
                    s,
                    Some(Lease {
                        expires_at,
                        expires_at_max: expires_at,
                        ..l
                    }),
                )]
            }
            Some(Output::LeaseLost) => {
                if self.may_lose(s, token, ret) {
                    vec![s.clone()]
                } else {
                    vec![]
                }
            }
            Some(_) => vec![],
            None => {
                let mut v = vec![s.clone()];
                if live {
                    let l = s.lease.unwrap();
                    let lo = if self.check_renew_expiry { lo } else { 0 };
                    v.push(Self::with_lease(
                        s,
                        Some(Lease {
                            expires_at: lo,
                            expires_at_max: u64::MAX,
                            ..l
                        }),
                    ));
                }
                v
            }
        }
    }

    fn release(&self, s: &State, token: u64, out: Option<&Output>, call: u64, ret: u64) -> Vec<State> {
        let live = self.holds(s, token, call);
        match out {
            Some(Output::Released(true)) => {
                if live {
                    vec![Self::with_lease(s, None)]
                } else {
                    vec![]
                }
            }
            Some(Output::Released(false)) => {
                if self.may_lose(s, token, ret) {
                    vec![s.clone()]
                } else {
                    vec![]
                }
            }
            Some(_) => vec![],
            None => {
                let mut v = vec![s.clone()];
                if live {
                    v.push(Self::with_lease(s, None));
                }
                v
            }
        }
    }

    /// Fenced write (transition or append): the fence is checked first; `outcome` gives the
    /// answer and new state once it passes.
    fn fenced(
        &self,
        s: &State,
        fence: Option<u64>,
        out: Option<&Output>,
        call: u64,
        ret: u64,
        outcome: impl Fn(&State) -> (Output, Option<State>),
    ) -> Vec<State> {
        let pass = fence.is_none_or(|f| self.holds(s, f, call));
        match out {
            Some(Output::LeaseLost) => match fence {
                Some(f) if self.may_lose(s, f, ret) => vec![s.clone()],
                _ => vec![],
            },
            Some(o) => {
                if !pass {
                    return vec![];
                }
                let (expected, next) = outcome(s);
                if expected == *o {
                    vec![next.unwrap_or_else(|| s.clone())]
                } else {
                    vec![]
                }
            }
            None => {
                let mut v = vec![s.clone()];
                if let Some(n) = pass.then(|| outcome(s).1).flatten() {
                    v.push(n);
                }
                v
            }
        }
    }
}

impl Model for BatonModel {
    type State = State;
    type Input = Input;
    type Output = Output;

    fn init(&self) -> State {
        State::initial()
    }

    fn step(&self, s: &State, input: &Input, out: Option<&Output>, call: u64, ret: u64) -> Vec<State> {
        match *input {
            Input::Acquire { holder, ttl_us } => self.acquire(s, holder, ttl_us, out, call, ret),
            Input::Renew { token, ttl_us } => self.renew(s, token, ttl_us, out, call, ret),
            Input::Release { token } => self.release(s, token, out, call, ret),
            Input::Transition {
                name,
                expect_version,
                fence,
            } => self.fenced(s, fence, out, call, ret, |s| {
                transition_outcome(s, name, expect_version)
            }),
            Input::Append { n, fence } => self.fenced(s, fence, out, call, ret, |s| append_outcome(s, n)),
            Input::Read => match out {
                Some(&Output::Entity {
                    version,
                    state,
                    last_seq,
                }) => {
                    if (version, state, last_seq) == (s.version, s.state, s.last_seq) {
                        vec![s.clone()]
                    } else {
                        vec![]
                    }
                }
                Some(_) => vec![],
                None => vec![s.clone()],
            },
        }
    }

    /// Answers that never change the state (whatever it is).
    fn is_read_only(&self, _input: &Input, output: &Output) -> bool {
        matches!(
            output,
            Output::Busy { .. }
                | Output::Released(false)
                | Output::LeaseLost
                | Output::Noop { .. }
                | Output::InvalidTransition { .. }
                | Output::VersionMismatch { .. }
                | Output::Sealed { .. }
                | Output::Entity { .. }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lincheck::{Op, Verdict, check};
    use std::time::Duration;

    const MS: u64 = 1_000;
    const SEC: u64 = 1_000_000;

    type BOp = Op<Input, Output>;
    fn op(client: usize, input: Input, output: Output, call: u64, ret: u64) -> BOp {
        Op::new(client, input, output, call, ret)
    }
    fn unk(client: usize, input: Input, call: u64) -> BOp {
        Op::unknown(client, input, call)
    }
    fn verdict(h: &[BOp]) -> Verdict {
        check(&BatonModel::default(), h, Duration::from_secs(20))
    }
    #[track_caller]
    fn legal(h: &[BOp]) {
        let v = verdict(h);
        assert!(v.is_linearizable(), "expected linearizable:\n{v}");
    }
    #[track_caller]
    fn illegal(h: &[BOp]) {
        let v = verdict(h);
        assert!(v.is_not_linearizable(), "expected NOT linearizable, got {v:?}");
    }
    fn acq(holder: u32, ttl_us: u64) -> Input {
        Input::Acquire { holder, ttl_us }
    }
    fn tr(name: Tr, expect_version: Option<u64>, fence: Option<u64>) -> Input {
        Input::Transition {
            name,
            expect_version,
            fence,
        }
    }
    fn applied(version: u64, state: St, seqs: &[u64]) -> Output {
        Output::Applied {
            version,
            state,
            seqs: seqs.to_vec(),
        }
    }
    fn entity(version: u64, state: St, last_seq: u64) -> Output {
        Output::Entity {
            version,
            state,
            last_seq,
        }
    }
    fn acquired(token: u64, expires_at: u64) -> Output {
        Output::Acquired { token, expires_at }
    }

    // ------------------------------------------------------------ transition table (step level)
    #[test]
    fn transition_table() {
        let m = BatonModel::default();
        let at = |st: St, version: u64| State {
            state: st,
            version,
            last_seq: 5,
            ..State::initial()
        };
        use St::*;
        use Tr::*;
        // (transition, from state, expect_version, expected answer)
        let cases: Vec<(Tr, St, Option<u64>, Output)> = vec![
            (Start, Pending, None, applied(4, Running, &[6])),
            (Start, Pending, Some(3), applied(4, Running, &[6])),
            (
                Start,
                Pending,
                Some(2),
                Output::VersionMismatch {
                    version: 3,
                    state: Pending,
                },
            ),
            (
                Start,
                Running,
                None,
                Output::InvalidTransition {
                    version: 3,
                    state: Running,
                },
            ),
            (
                Start,
                Running,
                Some(9),
                Output::VersionMismatch {
                    version: 3,
                    state: Running,
                },
            ),
            (Step, Running, None, applied(4, Running, &[6])),
            (
                Step,
                Pending,
                None,
                Output::InvalidTransition {
                    version: 3,
                    state: Pending,
                },
            ),
            (
                Step,
                Done,
                None,
                Output::InvalidTransition {
                    version: 3,
                    state: Done,
                },
            ),
            (Finish, Running, None, applied(4, Done, &[6, 7])),
            (
                Finish,
                Pending,
                None,
                Output::InvalidTransition {
                    version: 3,
                    state: Pending,
                },
            ),
            (Cancel, Pending, None, applied(4, Done, &[6, 7])),
            (Cancel, Running, Some(3), applied(4, Done, &[6, 7])),
            (
                Cancel,
                Done,
                None,
                Output::Noop {
                    version: 3,
                    state: Done,
                },
            ),
            // Noop is decided before the version check.
            (
                Cancel,
                Done,
                Some(1),
                Output::Noop {
                    version: 3,
                    state: Done,
                },
            ),
        ];
        for (name, st, ev, expected) in cases {
            let s = at(st, 3);
            let (got, next) = transition_outcome(&s, name, ev);
            assert_eq!(got, expected, "{name:?} from {st:?} expect {ev:?}");
            let after = m.step(&s, &tr(name, ev, None), Some(&expected), 0, 10);
            assert_eq!(after.len(), 1);
            assert_eq!(after[0], next.clone().unwrap_or(s.clone()));
            if let Some(n) = next {
                assert_eq!(n.version, 4);
                if n.state == Done {
                    assert_eq!(n.final_seq, Some(7));
                }
            }
            // Any other answer is illegal.
            for wrong in [
                Output::Noop { version: 3, state: st },
                applied(3, st, &[5]),
                Output::LeaseLost,
            ] {
                if wrong != expected {
                    assert!(
                        m.step(&s, &tr(name, ev, None), Some(&wrong), 0, 10).is_empty(),
                        "{wrong:?}"
                    );
                }
            }
        }
    }

    // ------------------------------------------------------------ fencing (S1)
    /// Holder 1 acquires (1 s ttl), pauses past expiry, holder 2 takes over.
    fn takeover_prefix() -> Vec<BOp> {
        vec![
            op(1, acq(1, SEC), acquired(1, SEC + 500), 0, MS),
            op(2, acq(2, SEC), acquired(2, 2 * SEC + 500 + SEC), 2 * SEC, 2 * SEC + MS),
        ]
    }

    #[test]
    fn s1_paused_holder_gets_lease_lost() {
        let mut h = takeover_prefix();
        h.push(op(
            1,
            tr(Tr::Start, Some(1), Some(1)),
            Output::LeaseLost,
            2 * SEC + 100 * MS,
            2 * SEC + 101 * MS,
        ));
        h.push(op(
            2,
            tr(Tr::Start, Some(1), Some(2)),
            applied(2, St::Running, &[1]),
            2 * SEC + 200 * MS,
            2 * SEC + 201 * MS,
        ));
        h.push(op(
            3,
            Input::Read,
            entity(2, St::Running, 1),
            2 * SEC + 300 * MS,
            2 * SEC + 301 * MS,
        ));
        legal(&h);
        // Holder 2's token is checked too: its append with a stale token is refused.
        h.push(op(
            2,
            Input::Append { n: 1, fence: Some(1) },
            Output::LeaseLost,
            2 * SEC + 400 * MS,
            2 * SEC + 401 * MS,
        ));
        legal(&h);
    }

    #[test]
    fn s1_paused_holder_write_applied_is_illegal() {
        let mut h = takeover_prefix();
        h.push(op(
            1,
            tr(Tr::Start, Some(1), Some(1)),
            applied(2, St::Running, &[1]),
            2 * SEC + 100 * MS,
            2 * SEC + 101 * MS,
        ));
        h.push(op(
            3,
            Input::Read,
            entity(2, St::Running, 1),
            2 * SEC + 300 * MS,
            2 * SEC + 301 * MS,
        ));
        let v = verdict(&h);
        match &v {
            Verdict::NotLinearizable { stuck, .. } => {
                assert!(stuck.iter().any(|s| s.index == 2 && s.note.contains("illegal")), "{v}");
            }
            other => panic!("{other:?}"),
        }
        // Even without takeover: a fenced write long after expiry cannot pass.
        illegal(&[
            op(1, acq(1, SEC), acquired(1, SEC + 500), 0, MS),
            op(
                1,
                Input::Append { n: 1, fence: Some(1) },
                Output::Appended { seqs: vec![1] },
                5 * SEC,
                5 * SEC + MS,
            ),
        ]);
        // A fenced write with a token that was never granted cannot pass.
        illegal(&[op(
            1,
            Input::Append { n: 1, fence: Some(7) },
            Output::Appended { seqs: vec![1] },
            0,
            MS,
        )]);
        // An unfenced write may not answer LeaseLost.
        illegal(&[op(1, Input::Append { n: 1, fence: None }, Output::LeaseLost, 0, MS)]);
    }

    #[test]
    fn fence_near_expiry_is_within_tolerance() {
        let base = vec![op(1, acq(1, SEC), acquired(1, SEC + 500), 0, MS)];
        // Window straddles the expiry (with the 2 ms tolerance): both answers legal.
        for out in [Output::LeaseLost, Output::Appended { seqs: vec![1] }] {
            let mut h = base.clone();
            h.push(op(
                1,
                Input::Append { n: 1, fence: Some(1) },
                out,
                SEC + 1_500,
                SEC + 1_600,
            ));
            legal(&h);
        }
        // Well before expiry: LeaseLost is illegal.
        let mut h = base.clone();
        h.push(op(
            1,
            Input::Append { n: 1, fence: Some(1) },
            Output::LeaseLost,
            500 * MS,
            501 * MS,
        ));
        illegal(&h);
        // Beyond the tolerance: success is illegal.
        let mut h = base;
        h.push(op(
            1,
            Input::Append { n: 1, fence: Some(1) },
            Output::Appended { seqs: vec![1] },
            SEC + 3 * MS,
            SEC + 4 * MS,
        ));
        illegal(&h);
    }

    // ------------------------------------------------------------ leases
    #[test]
    fn token_reuse_is_illegal() {
        let h = |token| {
            vec![
                op(1, acq(1, SEC), acquired(1, SEC + 500), 0, MS),
                op(1, Input::Release { token: 1 }, Output::Released(true), 2 * MS, 3 * MS),
                op(2, acq(2, SEC), acquired(token, 4 * MS + SEC + 500), 4 * MS, 5 * MS),
            ]
        };
        legal(&h(2));
        illegal(&h(1));
        illegal(&h(3));
        // After expiry too.
        let h = |token| {
            vec![
                op(1, acq(1, SEC), acquired(1, SEC + 500), 0, MS),
                op(2, acq(2, SEC), acquired(token, 3 * SEC + 500), 2 * SEC, 2 * SEC + MS),
            ]
        };
        legal(&h(2));
        illegal(&h(1));
        // The holder's own re-acquire after expiry is a new grant with a new token.
        let reacq = |token| {
            vec![
                op(1, acq(1, SEC), acquired(1, SEC + 500), 0, MS),
                op(1, acq(1, SEC), acquired(token, 3 * SEC + 500), 2 * SEC, 2 * SEC + MS),
            ]
        };
        legal(&reacq(2));
        illegal(&reacq(1));
    }

    #[test]
    fn two_live_holders_is_illegal() {
        let first = op(1, acq(1, 10 * SEC), acquired(1, 10 * SEC + 500), 0, MS);
        illegal(&[
            first.clone(),
            op(2, acq(2, SEC), acquired(2, 5 * MS + SEC), 5 * MS, 6 * MS),
        ]);
        legal(&[
            first.clone(),
            op(2, acq(2, SEC), Output::Busy { holder: 1, token: 1 }, 5 * MS, 6 * MS),
        ]);
        // Busy must name the actual holder and token, and never the caller itself.
        illegal(&[
            first.clone(),
            op(2, acq(2, SEC), Output::Busy { holder: 1, token: 2 }, 5 * MS, 6 * MS),
        ]);
        illegal(&[
            first.clone(),
            op(1, acq(1, SEC), Output::Busy { holder: 1, token: 1 }, 5 * MS, 6 * MS),
        ]);
        // Re-acquire by the same holder keeps the token and extends.
        legal(&[
            first.clone(),
            op(1, acq(1, 10 * SEC), acquired(1, 15 * SEC + 500), 5 * SEC, 5 * SEC + MS),
        ]);
        // Expiry outside [call + ttl, ret + ttl] (± 2 ms).
        illegal(&[op(1, acq(1, SEC), acquired(1, 2 * SEC), 0, MS)]);
        // Concurrent with the expiry: either answer.
        let first = op(1, acq(1, SEC), acquired(1, SEC + 500), 0, MS);
        legal(&[first.clone(), op(2, acq(2, SEC), acquired(2, 2 * SEC), SEC, SEC + MS)]);
        legal(&[
            first,
            op(2, acq(2, SEC), Output::Busy { holder: 1, token: 1 }, SEC, SEC + MS),
        ]);
    }

    #[test]
    fn renew_and_release() {
        let first = op(1, acq(1, SEC), acquired(1, SEC + 500), 0, MS);
        // Renew extends: a fenced write after the old expiry is then fine.
        legal(&[
            first.clone(),
            op(
                1,
                Input::Renew { token: 1, ttl_us: SEC },
                Output::Renewed { expires_at: 1_500 * MS },
                500 * MS,
                501 * MS,
            ),
            op(
                1,
                Input::Append { n: 1, fence: Some(1) },
                Output::Appended { seqs: vec![1] },
                1_200 * MS,
                1_201 * MS,
            ),
        ]);
        // Renew after takeover: LeaseLost legal, Renewed illegal.
        let mut h = takeover_prefix();
        h.push(op(
            1,
            Input::Renew { token: 1, ttl_us: SEC },
            Output::LeaseLost,
            3 * SEC,
            3 * SEC + MS,
        ));
        legal(&h);
        let mut h = takeover_prefix();
        h.push(op(
            1,
            Input::Renew { token: 1, ttl_us: SEC },
            Output::Renewed { expires_at: 4 * SEC },
            3 * SEC,
            3 * SEC + MS,
        ));
        illegal(&h);
        // Release, then the fenced write is refused; an Applied answer is illegal.
        let rel = op(1, Input::Release { token: 1 }, Output::Released(true), 2 * MS, 3 * MS);
        legal(&[
            first.clone(),
            rel.clone(),
            op(
                1,
                Input::Append { n: 1, fence: Some(1) },
                Output::LeaseLost,
                4 * MS,
                5 * MS,
            ),
        ]);
        illegal(&[
            first.clone(),
            rel.clone(),
            op(
                1,
                Input::Append { n: 1, fence: Some(1) },
                Output::Appended { seqs: vec![1] },
                4 * MS,
                5 * MS,
            ),
        ]);
        // Released(false) while surely live is illegal; a second release is refused.
        illegal(&[
            first.clone(),
            op(1, Input::Release { token: 1 }, Output::Released(false), 2 * MS, 3 * MS),
        ]);
        legal(&[
            first.clone(),
            rel.clone(),
            op(1, Input::Release { token: 1 }, Output::Released(false), 4 * MS, 5 * MS),
        ]);
        illegal(&[
            first,
            rel,
            op(1, Input::Release { token: 1 }, Output::Released(true), 4 * MS, 5 * MS),
        ]);
    }

    // ------------------------------------------------------------ entity
    #[test]
    fn double_application_with_same_version_is_illegal() {
        let start = op(1, tr(Tr::Start, Some(1), None), applied(2, St::Running, &[1]), 0, MS);
        // Two concurrent Step(expect 2): both Applied is impossible.
        illegal(&[
            start.clone(),
            op(
                1,
                tr(Tr::Step, Some(2), None),
                applied(3, St::Running, &[2]),
                2 * MS,
                10 * MS,
            ),
            op(
                2,
                tr(Tr::Step, Some(2), None),
                applied(3, St::Running, &[2]),
                3 * MS,
                11 * MS,
            ),
        ]);
        legal(&[
            start.clone(),
            op(
                1,
                tr(Tr::Step, Some(2), None),
                applied(3, St::Running, &[2]),
                2 * MS,
                10 * MS,
            ),
            op(
                2,
                tr(Tr::Step, Some(2), None),
                Output::VersionMismatch {
                    version: 3,
                    state: St::Running,
                },
                3 * MS,
                11 * MS,
            ),
        ]);
        // Without expect_version both apply, in either order.
        legal(&[
            start.clone(),
            op(
                1,
                tr(Tr::Step, None, None),
                applied(4, St::Running, &[3]),
                2 * MS,
                10 * MS,
            ),
            op(
                2,
                tr(Tr::Step, None, None),
                applied(3, St::Running, &[2]),
                3 * MS,
                11 * MS,
            ),
        ]);
        // Start applied twice.
        illegal(&[
            start.clone(),
            op(
                2,
                tr(Tr::Start, None, None),
                applied(3, St::Running, &[2]),
                2 * MS,
                3 * MS,
            ),
        ]);
        legal(&[
            start,
            op(
                2,
                tr(Tr::Start, None, None),
                Output::InvalidTransition {
                    version: 2,
                    state: St::Running,
                },
                2 * MS,
                3 * MS,
            ),
        ]);
    }

    #[test]
    fn lost_acknowledged_append_is_illegal() {
        let app = op(
            1,
            Input::Append { n: 3, fence: None },
            Output::Appended { seqs: vec![1, 2, 3] },
            0,
            MS,
        );
        illegal(&[
            app.clone(),
            op(2, Input::Read, entity(1, St::Pending, 0), 2 * MS, 3 * MS),
        ]);
        legal(&[
            app.clone(),
            op(2, Input::Read, entity(1, St::Pending, 3), 2 * MS, 3 * MS),
        ]);
        // Concurrent read may see before or after.
        legal(&[app.clone(), op(2, Input::Read, entity(1, St::Pending, 0), 500, 3 * MS)]);
        // Seqs must be contiguous after the current tape.
        illegal(&[
            app.clone(),
            op(
                1,
                Input::Append { n: 1, fence: None },
                Output::Appended { seqs: vec![5] },
                2 * MS,
                3 * MS,
            ),
        ]);
        // Two appends may not both get seq 4.
        illegal(&[
            app,
            op(
                1,
                Input::Append { n: 1, fence: None },
                Output::Appended { seqs: vec![4] },
                2 * MS,
                9 * MS,
            ),
            op(
                2,
                Input::Append { n: 1, fence: None },
                Output::Appended { seqs: vec![4] },
                2 * MS,
                9 * MS,
            ),
        ]);
    }

    #[test]
    fn cancel_on_done_is_noop_and_tape_is_sealed() {
        let base = vec![
            op(1, tr(Tr::Start, Some(1), None), applied(2, St::Running, &[1]), 0, MS),
            op(
                1,
                tr(Tr::Finish, Some(2), None),
                applied(3, St::Done, &[2, 3]),
                2 * MS,
                3 * MS,
            ),
        ];
        let with = |o: BOp| {
            let mut h = base.clone();
            h.push(o);
            h
        };
        legal(&with(op(
            2,
            tr(Tr::Cancel, Some(1), None),
            Output::Noop {
                version: 3,
                state: St::Done,
            },
            4 * MS,
            5 * MS,
        )));
        illegal(&with(op(
            2,
            tr(Tr::Cancel, Some(1), None),
            Output::VersionMismatch {
                version: 3,
                state: St::Done,
            },
            4 * MS,
            5 * MS,
        )));
        illegal(&with(op(
            2,
            tr(Tr::Cancel, None, None),
            applied(4, St::Done, &[4, 5]),
            4 * MS,
            5 * MS,
        )));
        legal(&with(op(
            2,
            Input::Append { n: 2, fence: None },
            Output::Sealed { final_seq: 3 },
            4 * MS,
            5 * MS,
        )));
        illegal(&with(op(
            2,
            Input::Append { n: 2, fence: None },
            Output::Appended { seqs: vec![4, 5] },
            4 * MS,
            5 * MS,
        )));
        legal(&with(op(2, Input::Read, entity(3, St::Done, 3), 4 * MS, 5 * MS)));
        illegal(&with(op(
            2,
            tr(Tr::Step, None, None),
            Output::Noop {
                version: 3,
                state: St::Done,
            },
            4 * MS,
            5 * MS,
        )));
        legal(&with(op(
            2,
            tr(Tr::Step, None, None),
            Output::InvalidTransition {
                version: 3,
                state: St::Done,
            },
            4 * MS,
            5 * MS,
        )));
    }

    // ------------------------------------------------------------ unknown outcomes
    #[test]
    fn unknown_transition_and_append() {
        let s = unk(1, tr(Tr::Start, Some(1), None), 0);
        legal(&[
            s.clone(),
            op(2, Input::Read, entity(2, St::Running, 1), 10 * MS, 11 * MS),
        ]);
        legal(&[
            s.clone(),
            op(2, Input::Read, entity(1, St::Pending, 0), 10 * MS, 11 * MS),
        ]);
        legal(&[
            s.clone(),
            op(2, Input::Read, entity(1, St::Pending, 0), 10 * MS, 11 * MS),
            op(2, Input::Read, entity(2, St::Running, 1), 20 * MS, 21 * MS),
        ]);
        illegal(&[
            s.clone(),
            op(2, Input::Read, entity(2, St::Running, 1), 10 * MS, 11 * MS),
            op(2, Input::Read, entity(1, St::Pending, 0), 20 * MS, 21 * MS),
        ]);
        // It cannot have happened before its call.
        illegal(&[
            op(2, Input::Read, entity(2, St::Running, 1), 0, MS),
            unk(1, tr(Tr::Start, None, None), 2 * MS),
        ]);
        // A known Start racing with the unknown one: only one can apply.
        legal(&[
            s.clone(),
            op(
                2,
                tr(Tr::Start, Some(1), None),
                Output::VersionMismatch {
                    version: 2,
                    state: St::Running,
                },
                5 * MS,
                6 * MS,
            ),
        ]);
        illegal(&[
            s,
            op(
                2,
                tr(Tr::Start, None, None),
                applied(2, St::Running, &[1]),
                5 * MS,
                6 * MS,
            ),
            op(2, Input::Read, entity(3, St::Running, 2), 10 * MS, 11 * MS),
        ]);
        // Unknown append of 2 events: all or nothing.
        let a = unk(1, Input::Append { n: 2, fence: None }, 0);
        legal(&[
            a.clone(),
            op(2, Input::Read, entity(1, St::Pending, 2), 10 * MS, 11 * MS),
        ]);
        legal(&[
            a.clone(),
            op(2, Input::Read, entity(1, St::Pending, 0), 10 * MS, 11 * MS),
        ]);
        illegal(&[a, op(2, Input::Read, entity(1, St::Pending, 1), 10 * MS, 11 * MS)]);
        // An unknown fenced write whose fence surely fails has no effect.
        illegal(&[
            op(1, acq(1, SEC), acquired(1, SEC + 500), 0, MS),
            op(1, Input::Release { token: 1 }, Output::Released(true), 2 * MS, 3 * MS),
            unk(1, Input::Append { n: 1, fence: Some(1) }, 4 * MS),
            op(2, Input::Read, entity(1, St::Pending, 1), 10 * MS, 11 * MS),
        ]);
    }

    #[test]
    fn unknown_acquire() {
        let a = unk(1, acq(1, SEC), 0);
        // Applied late (expiry unknown): another holder may still see it busy much later.
        legal(&[
            a.clone(),
            op(
                2,
                acq(2, SEC),
                Output::Busy { holder: 1, token: 1 },
                1_500 * MS,
                1_501 * MS,
            ),
        ]);
        // Or it never happened.
        legal(&[
            a.clone(),
            op(2, acq(2, SEC), acquired(1, 2_500 * MS), 1_500 * MS, 1_501 * MS),
        ]);
        // Or it happened and expired: token 2 is next.
        legal(&[
            a.clone(),
            op(2, acq(2, SEC), acquired(2, 2_500 * MS), 1_500 * MS, 1_501 * MS),
        ]);
        // But it cannot have expired before call + ttl (- tolerance).
        illegal(&[
            a.clone(),
            op(2, acq(2, SEC), acquired(2, 1_100 * MS), 100 * MS, 101 * MS),
        ]);
        // Its holder's retry re-acquires the same token (extension) or gets a new one.
        legal(&[a.clone(), op(1, acq(1, SEC), acquired(1, 2 * SEC), SEC, SEC + MS)]);
        illegal(&[a.clone(), op(1, acq(1, SEC), acquired(3, 2 * SEC), SEC, SEC + MS)]);
        // Unknown release: the lease may or may not be gone.
        let held = op(1, acq(1, 10 * SEC), acquired(1, 10 * SEC + 500), 0, MS);
        let r = unk(1, Input::Release { token: 1 }, 2 * MS);
        legal(&[
            held.clone(),
            r.clone(),
            op(2, acq(2, SEC), acquired(2, SEC + 10 * MS), 10 * MS, 11 * MS),
        ]);
        legal(&[
            held.clone(),
            r.clone(),
            op(2, acq(2, SEC), Output::Busy { holder: 1, token: 1 }, 10 * MS, 11 * MS),
        ]);
        // Unknown renew: the lease may have been extended.
        let rn = unk(
            1,
            Input::Renew {
                token: 1,
                ttl_us: 20 * SEC,
            },
            2 * MS,
        );
        legal(&[
            held.clone(),
            rn.clone(),
            op(
                1,
                Input::Append { n: 1, fence: Some(1) },
                Output::Appended { seqs: vec![1] },
                15 * SEC,
                15 * SEC + MS,
            ),
        ]);
        legal(&[
            held.clone(),
            rn,
            op(
                1,
                Input::Append { n: 1, fence: Some(1) },
                Output::LeaseLost,
                15 * SEC,
                15 * SEC + MS,
            ),
        ]);
        illegal(&[
            held,
            op(
                1,
                Input::Append { n: 1, fence: Some(1) },
                Output::Appended { seqs: vec![1] },
                15 * SEC,
                15 * SEC + MS,
            ),
        ]);
    }

    // ------------------------------------------------------------ simulated server
    use crate::lincheck::tests::Rng;

    /// A straightforward reference server (one clock, decisions at exact instants), written
    /// separately from the model.
    #[derive(Default)]
    struct Server {
        lease: Option<(u32, u64, u64)>,
        last_token: u64,
        version: u64,
        state: Option<St>,
        last_seq: u64,
        final_seq: Option<u64>,
    }
    impl Server {
        fn new() -> Server {
            Server {
                version: 1,
                state: Some(St::Pending),
                ..Default::default()
            }
        }
        fn live(&self, now: u64) -> Option<(u32, u64, u64)> {
            self.lease.filter(|l| now < l.2)
        }
        fn apply(&mut self, inp: &Input, now: u64) -> Output {
            let st = self.state.unwrap();
            match *inp {
                Input::Acquire { holder, ttl_us } => match self.live(now) {
                    Some((h, t, _)) if h == holder => {
                        self.lease = Some((h, t, now + ttl_us));
                        Output::Acquired {
                            token: t,
                            expires_at: now + ttl_us,
                        }
                    }
                    Some((h, t, _)) => Output::Busy { holder: h, token: t },
                    None => {
                        self.last_token += 1;
                        self.lease = Some((holder, self.last_token, now + ttl_us));
                        Output::Acquired {
                            token: self.last_token,
                            expires_at: now + ttl_us,
                        }
                    }
                },
                Input::Renew { token, ttl_us } => match self.live(now) {
                    Some((h, t, _)) if t == token => {
                        self.lease = Some((h, t, now + ttl_us));
                        Output::Renewed {
                            expires_at: now + ttl_us,
                        }
                    }
                    _ => Output::LeaseLost,
                },
                Input::Release { token } => match self.live(now) {
                    Some((_, t, _)) if t == token => {
                        self.lease = None;
                        Output::Released(true)
                    }
                    _ => Output::Released(false),
                },
                Input::Transition { fence: Some(f), .. } | Input::Append { fence: Some(f), .. }
                    if self.live(now).is_none_or(|l| l.1 != f) =>
                {
                    Output::LeaseLost
                }
                Input::Transition {
                    name, expect_version, ..
                } => {
                    let (version, state) = (self.version, st);
                    if name == Tr::Cancel && st == St::Done {
                        Output::Noop { version, state }
                    } else if expect_version.is_some_and(|v| v != version) {
                        Output::VersionMismatch { version, state }
                    } else {
                        let to = match (name, st) {
                            (Tr::Start, St::Pending) => St::Running,
                            (Tr::Step, St::Running) => St::Running,
                            (Tr::Finish, St::Running) | (Tr::Cancel, St::Pending | St::Running) => St::Done,
                            _ => return Output::InvalidTransition { version, state },
                        };
                        self.version += 1;
                        self.state = Some(to);
                        let mut seqs = vec![self.last_seq + 1];
                        if to == St::Done {
                            seqs.push(self.last_seq + 2);
                            self.final_seq = Some(self.last_seq + 2);
                        }
                        self.last_seq = *seqs.last().unwrap();
                        Output::Applied {
                            version: self.version,
                            state: to,
                            seqs,
                        }
                    }
                }
                Input::Append { n, .. } => match self.final_seq {
                    Some(f) => Output::Sealed { final_seq: f },
                    None => {
                        let seqs = (self.last_seq + 1..=self.last_seq + n).collect();
                        self.last_seq += n;
                        Output::Appended { seqs }
                    }
                },
                Input::Read => Output::Entity {
                    version: self.version,
                    state: st,
                    last_seq: self.last_seq,
                },
            }
        }
    }

    /// Random clients against the reference server; decision instants strictly increase,
    /// windows are widened around them; ~3% of outcomes are unknown (applied or not).
    /// Finish/Cancel are rare (never unless `terminal`) so that most of the history runs
    /// before the entity is Done.
    fn simulate(seed: u64, n: usize, clients: usize, terminal: bool) -> Vec<BOp> {
        let mut rng = Rng::new(seed);
        let mut srv = Server::new();
        let mut tokens = vec![0u64; clients];
        let mut free = vec![0u64; clients];
        let mut now = 10 * SEC;
        let mut h = Vec::new();
        for _ in 0..n {
            now += 1 + rng.below(3 * MS);
            // Half of the ops come from the current lease holder, if any.
            let c = match srv.live(now) {
                Some((h, _, _)) if rng.below(2) == 0 => h as usize - 1,
                _ => rng.below(clients as u64) as usize,
            };
            if free[c] > now {
                now = free[c];
            }
            let call = free[c].max(now - rng.below(2 * MS));
            let ret = now + rng.below(2 * MS);
            free[c] = ret + 1;
            let holder = c as u32 + 1;
            let fence = if rng.below(4) == 0 {
                None
            } else {
                Some(tokens[c].max(1))
            };
            let ttl_us = 5 * MS + rng.below(40 * MS);
            let input = match rng.below(100) {
                0..=14 => Input::Acquire { holder, ttl_us },
                15..=24 => Input::Renew {
                    token: tokens[c].max(1),
                    ttl_us,
                },
                25..=29 => Input::Release {
                    token: tokens[c].max(1),
                },
                30..=54 => {
                    let name = match rng.below(if terminal { 200 } else { 198 }) {
                        0..=59 => Tr::Start,
                        60..=197 => Tr::Step,
                        198 => Tr::Finish,
                        _ => Tr::Cancel,
                    };
                    let expect_version = match rng.below(3) {
                        0 => None,
                        1 => Some(srv.version),
                        _ => Some(srv.version.saturating_sub(rng.below(2))),
                    };
                    Input::Transition {
                        name,
                        expect_version,
                        fence,
                    }
                }
                55..=79 => Input::Append {
                    n: 1 + rng.below(3),
                    fence,
                },
                _ => Input::Read,
            };
            if rng.below(100) < 3 {
                if rng.below(2) == 0 {
                    srv.apply(&input, now); // took effect, answer lost
                }
                h.push(Op::unknown(c, input, call));
            } else {
                let out = srv.apply(&input, now);
                if let Output::Acquired { token, .. } = out {
                    tokens[c] = token;
                }
                h.push(Op::new(c, input, out, call, ret));
            }
        }
        h
    }

    #[test]
    fn simulated_server_histories_are_linearizable_and_corruptions_caught() {
        let m = BatonModel::default();
        let (mut corrupted, mut caught) = (0, 0);
        for seed in 0..60u64 {
            let mut h = simulate(seed, 300, 1 + (seed % 5) as usize, true);
            let v = check(&m, &h, Duration::from_secs(20));
            assert!(v.is_linearizable(), "seed {seed}: {v}");
            // Corrupt a Read's last_seq beyond anything ever reached: surely detectable.
            if let Some(i) = (0..h.len())
                .rev()
                .find(|&i| matches!(h[i].output, Some(Output::Entity { .. })))
            {
                if let Some(Output::Entity { last_seq, .. }) = &mut h[i].output {
                    *last_seq += 1_000_000;
                }
                corrupted += 1;
                let v = check(&m, &h, Duration::from_secs(20));
                assert!(!matches!(v, Verdict::Timeout), "seed {seed}");
                if v.is_not_linearizable() {
                    caught += 1;
                }
            }
        }
        assert_eq!(caught, corrupted);
        assert!(corrupted > 50);
    }

    #[test]
    fn perf_simulated_2000_ops_8_clients() {
        let h = simulate(1234, 2_000, 8, false);
        let unknown = h.iter().filter(|o| o.output.is_none()).count();
        let t = std::time::Instant::now();
        let v = check(&BatonModel::default(), &h, Duration::from_secs(60));
        let el = t.elapsed();
        eprintln!("perf: baton model, 2000 ops, 8 clients, {unknown} unknown: {v} in {el:?}");
        assert!(v.is_linearizable());
        assert!(el < Duration::from_secs(5));
    }

    /// The model without the `is_read_only` hint (plain WGL search).
    struct Plain(BatonModel);
    impl Model for Plain {
        type State = State;
        type Input = Input;
        type Output = Output;
        fn init(&self) -> State {
            self.0.init()
        }
        fn step(&self, s: &State, i: &Input, o: Option<&Output>, c: u64, r: u64) -> Vec<State> {
            self.0.step(s, i, o, c, r)
        }
    }

    /// Nudges one number in an output (or flips a bool / swaps LeaseLost in).
    fn mutate(rng: &mut Rng, o: &Output) -> Output {
        let d = |rng: &mut Rng, x: u64| if rng.below(2) == 0 { x + 1 } else { x.saturating_sub(1) };
        let mut o = o.clone();
        match &mut o {
            Output::Acquired { token, expires_at } => {
                if rng.below(2) == 0 {
                    *token = d(rng, *token)
                } else {
                    *expires_at += 10 * MS
                }
            }
            Output::Busy { token, .. } => *token = d(rng, *token),
            Output::Renewed { expires_at } => *expires_at += 10 * MS,
            Output::Released(b) => *b = !*b,
            Output::LeaseLost => return Output::Released(false),
            Output::Applied { version, seqs, .. } => {
                if rng.below(2) == 0 {
                    *version = d(rng, *version)
                } else {
                    seqs[0] = d(rng, seqs[0])
                }
            }
            Output::Noop { version, .. }
            | Output::InvalidTransition { version, .. }
            | Output::VersionMismatch { version, .. } => *version = d(rng, *version),
            Output::Appended { seqs } => seqs.iter_mut().for_each(|x| *x += 1),
            Output::Sealed { final_seq } => *final_seq = d(rng, *final_seq),
            Output::Entity { version, last_seq, .. } => {
                if rng.below(2) == 0 {
                    *version = d(rng, *version)
                } else {
                    *last_seq = d(rng, *last_seq)
                }
            }
        }
        o
    }

    #[test]
    fn read_only_hint_agrees_with_plain_wgl_on_mutated_histories() {
        let m = BatonModel::default();
        let plain = Plain(BatonModel::default());
        let (mut runs, mut refuted) = (0, 0);
        for seed in 0..150u64 {
            let mut h = simulate(1_000 + seed, 80, 2 + (seed % 3) as usize, true);
            let mut rng = Rng::new(seed);
            for _ in 0..rng.below(3) {
                let i = rng.below(h.len() as u64) as usize;
                if let Some(o) = &h[i].output {
                    h[i].output = Some(mutate(&mut rng, o));
                }
            }
            let a = check(&m, &h, Duration::from_secs(20));
            let b = check(&plain, &h, Duration::from_secs(20));
            assert!(
                !matches!(a, Verdict::Timeout) && !matches!(b, Verdict::Timeout),
                "seed {seed}"
            );
            assert_eq!(a.is_linearizable(), b.is_linearizable(), "seed {seed}: {a}\n{b}");
            runs += 1;
            refuted += a.is_not_linearizable() as usize;
        }
        eprintln!("mutated histories: {refuted}/{runs} refuted (hint and plain WGL agree on all)");
        assert!(refuted > runs / 3 && refuted < runs);
    }
}
