//! The run's results as a human table or one JSON document.

use super::metrics::PHASES;
use super::stats::rate;
use super::{Cell, Plan, Results, System};
use serde_json::{Value, json};
use std::fmt::Write;

/// A latency in microseconds, readably.
fn dur(micros: u64) -> String {
    match micros {
        0 => "—".into(),
        m if m < 1_000 => format!("{m}µs"),
        m if m < 1_000_000 => format!("{:.2}ms", m as f64 / 1e3),
        m => format!("{:.2}s", m as f64 / 1e6),
    }
}

fn checks(cell: &Cell) -> String {
    if cell.failures.is_empty() {
        "ok".into()
    } else {
        format!("FAILED: {}", cell.failures.join(" / "))
    }
}

fn errors(cell: &Cell) -> String {
    if cell.stats.errors.is_empty() {
        return "0".into();
    }
    cell.stats
        .errors
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Database round trips per call the bench made (server-counted), when known.
fn round_trips_per_call(cell: &Cell) -> Option<f64> {
    cell.server?.round_trips_per_call(cell.calls?)
}

/// Server CPU µs per call the bench made, when known.
fn cpu_per_call(cell: &Cell) -> Option<f64> {
    cell.server?.cpu_per_call_us(cell.calls?)
}

/// Commands per write batch (server-counted), when known.
fn mean_batch_size(cell: &Cell) -> Option<f64> {
    cell.server?.mean_batch_size()
}

/// The server's mean time per write-path phase over the cell, `(phase, µs)`, for the phases
/// it timed.
fn phase_means(cell: &Cell) -> Vec<(&'static str, u64)> {
    let Some(server) = cell.server else { return vec![] };
    PHASES
        .iter()
        .zip(server.phase_means)
        .filter_map(|(p, m)| Some((*p, m?.as_micros() as u64)))
        .collect()
}

/// Where one op's time goes, for a one-client baton cell: its p50 at the client beside
/// the server's phase means, times the op's write calls (the rest is gRPC, HTTP/2, the
/// handler and the client).
fn profile(cell: &Cell) -> Option<String> {
    let phases = phase_means(cell);
    if cell.system != System::Baton || cell.clients != 1 || cell.skipped.is_some() || phases.is_empty() {
        return None;
    }
    let writes = cell.scenario.writes_per_op();
    let server: u64 = phases.iter().map(|(_, us)| us).sum::<u64>() * writes;
    let p50 = cell.stats.latency.summary().p50;
    let parts: Vec<String> = phases.iter().map(|(p, us)| format!("{p} {}", dur(*us))).collect();
    let times = if writes > 1 {
        format!("{writes} x ")
    } else {
        String::new()
    };
    Some(format!(
        "profile {} x1: client p50 {} = write path {} ({times}{}) + the rest {}",
        cell.scenario.name(),
        dur(p50),
        dur(server),
        parts.join(", "),
        dur(p50.saturating_sub(server))
    ))
}

/// A server-counted figure, or "—" when there is none.
fn figure(x: Option<f64>) -> String {
    x.map_or("—".into(), |x| format!("{x:.2}"))
}

fn successes_per_s(cell: &Cell) -> f64 {
    rate(cell.stats.successes, cell.window)
}

/// baton's successes/s over this baseline cell's, when both ran in the same cell.
fn ratio(results: &Results, cell: &Cell) -> Option<f64> {
    if cell.system == System::Baton || cell.skipped.is_some() {
        return None;
    }
    let baton = results.cells.iter().find(|c| {
        c.system == System::Baton && c.scenario == cell.scenario && c.clients == cell.clients && c.skipped.is_none()
    })?;
    let base = successes_per_s(cell);
    (base > 0.0).then(|| successes_per_s(baton) / base)
}

/// The human table: one row per scenario × clients × system, ratios on baseline rows.
pub fn table(results: &Results, plan: &Plan) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "baton bench: {:?} per cell after {:?} warm-up, {} keys",
        plan.timing.duration, plan.timing.warmup, plan.keys
    );
    let _ = writeln!(
        out,
        "{:<17} {:>7} {:<9} {:>10} {:>10} {:>9} {:>9} {:>9} {:>9} {:>7} {:>6} {:>8} {:<12} checks",
        "scenario",
        "clients",
        "system",
        "ops/s",
        "ok/s",
        "p50",
        "p99",
        "p99.9",
        "baton/x",
        "rt/call",
        "batch",
        "cpu/call",
        "errors"
    );
    for c in &results.cells {
        if let Some(why) = &c.skipped {
            let _ = writeln!(
                out,
                "{:<17} {:>7} {:<9} {:>10} {:>10} {:>9} {:>9} {:>9} {:>9} {:>7} {:>6} {:>8} {:<12} — ({why})",
                c.scenario.name(),
                c.clients,
                c.system.name(),
                "—",
                "—",
                "—",
                "—",
                "—",
                "—",
                "—",
                "—",
                "—",
                "—"
            );
            continue;
        }
        let q = c.stats.latency.summary();
        let _ = writeln!(
            out,
            "{:<17} {:>7} {:<9} {:>10.0} {:>10.0} {:>9} {:>9} {:>9} {:>9} {:>7} {:>6} {:>8} {:<12} {}",
            c.scenario.name(),
            c.clients,
            c.system.name(),
            rate(c.stats.ops(), c.window),
            successes_per_s(c),
            dur(q.p50),
            dur(q.p99),
            dur(q.p999),
            ratio(results, c).map_or("".into(), |r| format!("{r:.2}x")),
            figure(round_trips_per_call(c)),
            figure(mean_batch_size(c)),
            cpu_per_call(c).map_or("—".into(), |us| dur(us.round() as u64)),
            errors(c),
            checks(c)
        );
        if let Some(f) = &c.fanout {
            let q = f.latency.summary();
            let _ = writeln!(
                out,
                "{:<17} {:>7} {:<9} fan-out: {} subscribers, {:.0} deliveries/s, append-to-delivery p50 {} p99 {}, {}/{} got every event",
                "",
                "",
                "",
                f.subscribers,
                rate(f.deliveries, c.window),
                dur(q.p50),
                dur(q.p99),
                f.complete,
                f.subscribers
            );
        }
    }
    match &results.idle {
        Ok(i) => {
            let _ = writeln!(
                out,
                "idle streams: {} on one entity over {} connections: server RSS {} KiB -> {} KiB, {:.2} KiB per stream",
                i.streams, i.connections, i.rss_before_kib, i.rss_after_kib, i.kib_per_stream
            );
        }
        Err(e) => {
            let _ = writeln!(out, "idle streams: {e}");
        }
    }
    match &results.metrics {
        Ok(url) => {
            let _ = writeln!(
                out,
                "rt/call: the server's database round trips over every call the bench sent in the cell \
                 (warm-up included); batch: commands per write batch; cpu/call: the server \
                 process's CPU time (all threads) over those calls; read at {url}"
            );
        }
        Err(_) => {
            let _ = writeln!(out, "rt/call, batch: — (no server metrics, see the notes)");
        }
    }
    let profiles: Vec<String> = results.cells.iter().filter_map(profile).collect();
    if !profiles.is_empty() {
        let _ = writeln!(
            out,
            "profiles: the server's mean per write-path phase (queue: waiting for a batch; read: \
             begin, lock and read; decide: the rules in memory; commit: write and commit); the \
             rest is gRPC, HTTP/2, the handler and the client"
        );
        for p in profiles {
            let _ = writeln!(out, "{p}");
        }
    }
    for n in &results.notes {
        let _ = writeln!(out, "note: {n}");
    }
    let failed = results.cells.iter().filter(|c| !c.failures.is_empty()).count();
    let _ = if failed == 0 {
        writeln!(out, "checks: all ok")
    } else {
        writeln!(out, "checks: {failed} cell(s) FAILED")
    };
    out
}

fn cell_json(results: &Results, c: &Cell) -> Value {
    let q = c.stats.latency.summary();
    let fanout = c.fanout.as_ref().map(|f| {
        let fq = f.latency.summary();
        json!({
            "subscribers": f.subscribers,
            "deliveries": f.deliveries,
            "deliveries_per_s": rate(f.deliveries, c.window),
            "delivery_latency_us": { "p50": fq.p50, "p99": fq.p99, "p999": fq.p999, "max": fq.max },
            "complete_subscribers": f.complete,
        })
    });
    json!({
        "scenario": c.scenario,
        "clients": c.clients,
        "system": c.system,
        "skipped": c.skipped,
        "window_s": c.window.as_secs_f64(),
        "ops": c.stats.ops(),
        "successes": c.stats.successes,
        "misses": c.stats.misses,
        "ops_per_s": rate(c.stats.ops(), c.window),
        "successes_per_s": successes_per_s(c),
        "latency_us": q,
        "errors": c.stats.errors,
        "checks": if c.failures.is_empty() { json!("ok") } else { json!(c.failures) },
        "baton_over_this": ratio(results, c),
        "calls": c.calls,
        "server": c.server,
        "round_trips_per_call": round_trips_per_call(c),
        "mean_batch_size": mean_batch_size(c),
        "server_cpu_per_call_us": cpu_per_call(c),
        "phase_means_us": phase_means(c).into_iter().collect::<std::collections::BTreeMap<_, _>>(),
        "fanout": fanout,
    })
}

/// One JSON document with every cell, the idle-stream figure and the notes.
pub fn json(results: &Results, target: &str, plan: &Plan) -> Value {
    json!({
        "target": target,
        "duration_s": plan.timing.duration.as_secs_f64(),
        "warmup_s": plan.timing.warmup.as_secs_f64(),
        "keys": plan.keys,
        "cells": results.cells.iter().map(|c| cell_json(results, c)).collect::<Vec<_>>(),
        "idle_streams": match &results.idle {
            Ok(i) => json!(i),
            Err(e) => json!({ "error": e }),
        },
        "server_metrics": match &results.metrics {
            Ok(url) => json!({ "url": url }),
            Err(e) => json!({ "error": e }),
        },
        "notes": results.notes,
        "checks_ok": results.cells.iter().all(|c| c.failures.is_empty()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_figures_are_a_dash_when_unknown() {
        assert_eq!(figure(None), "—");
        assert_eq!(figure(Some(2.0)), "2.00");
        assert_eq!(figure(Some(1.0 / 3.0)), "0.33");
    }

    #[test]
    fn a_one_client_profile_adds_the_phases_of_every_write_of_an_op() {
        use crate::{Scenario, metrics::ServerCounts};
        use std::time::Duration;
        let cell = |scenario, clients, system| {
            let mut c = Cell::new(scenario, clients, system, Duration::from_secs(1));
            c.stats.latency.record(Duration::from_micros(1_000));
            c.server = Some(ServerCounts {
                phase_means: [Some(10), Some(200), None, Some(300)].map(|m| m.map(Duration::from_micros)),
                ..ServerCounts::default()
            });
            c
        };
        let p50 = cell(Scenario::Transition, 1, System::Baton).stats.latency.summary().p50;
        assert_eq!(
            profile(&cell(Scenario::Transition, 1, System::Baton)).unwrap(),
            format!(
                "profile transition x1: client p50 {} = write path 510µs (queue 10µs, read 200µs, \
                 commit 300µs) + the rest {}",
                dur(p50),
                dur(p50 - 510)
            )
        );
        let cycle = profile(&cell(Scenario::LeaseCycle, 1, System::Baton)).unwrap();
        assert!(cycle.contains("write path 1.02ms (2 x queue 10µs"), "{cycle}");
        assert_eq!(profile(&cell(Scenario::Transition, 16, System::Baton)), None);
        assert_eq!(profile(&cell(Scenario::Transition, 1, System::Postgres)), None);
    }

    #[test]
    fn latencies_read_in_their_unit() {
        assert_eq!(dur(0), "—");
        assert_eq!(dur(812), "812µs");
        assert_eq!(dur(1_234), "1.23ms");
        assert_eq!(dur(2_500_000), "2.50s");
    }
}
