"""Durations and machines TOML files -> ``MachineSpec`` messages."""

from __future__ import annotations

import os
import re
import sys
from datetime import timedelta
from typing import Any, Dict, List, Mapping, Set, Union

from google.protobuf import duration_pb2

from baton_client._gen import coordinator_pb2 as pb

DurationLike = Union[str, int, float, timedelta]

_UNIT_SECONDS: Dict[str, float] = {}
for _names, _secs in [
    (("nsec", "ns"), 1e-9),
    (("usec", "us", "\u00b5s"), 1e-6),
    (("msec", "ms"), 1e-3),
    (("seconds", "second", "secs", "sec", "s"), 1.0),
    (("minutes", "minute", "mins", "min", "m"), 60.0),
    (("hours", "hour", "hrs", "hr", "h"), 3600.0),
    (("days", "day", "d"), 86400.0),
    (("weeks", "week", "w"), 604800.0),
    (("months", "month", "M"), 2_630_016.0),  # 30.44 days, as humantime
    (("years", "year", "y"), 31_557_600.0),  # 365.25 days, as humantime
]:
    for _n in _names:
        _UNIT_SECONDS[_n] = _secs

_DURATION_PART = re.compile(r"\s*(\d+)\s*([A-Za-z\u00b5]+)")


def parse_duration(value: DurationLike) -> timedelta:
    """A humantime-style duration ("72h", "1h 30m", "2days", "500ms"); numbers are
    seconds; timedeltas pass through."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if value < 0:
            raise ValueError(f"invalid duration {value!r}: negative")
        return timedelta(seconds=value)
    if not isinstance(value, str):
        raise ValueError(f"invalid duration {value!r}")
    text = value.strip()
    if not text:
        raise ValueError("invalid duration: empty")
    total_ns = 0
    pos = 0
    while pos < len(text):
        match = _DURATION_PART.match(text, pos)
        if not match or match.group(2) not in _UNIT_SECONDS:
            raise ValueError(f"invalid duration {value!r}")
        total_ns += int(match.group(1)) * round(_UNIT_SECONDS[match.group(2)] * 1e9)
        pos = match.end()
        while pos < len(text) and text[pos].isspace():
            pos += 1
    return timedelta(microseconds=total_ns / 1000)


def duration(value: DurationLike) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromTimedelta(parse_duration(value))
    return d


_TRANSITION_KEYS = {"name", "from", "to", "stale_from", "stale_after", "noop_from"}
_FIELD_RULE_KEYS = {"field", "allowed_in"}
_TIMEOUT_KEYS = {"state", "after", "idle", "transition"}
_MACHINE_KEYS = {"kind", "states", "initial_state", "terminal_states", "retain_after_final", "dedup"}
_DEDUP = {
    "forever": pb.DEDUP_POLICY_FOREVER,
    "while_active": pb.DEDUP_POLICY_WHILE_ACTIVE,
}
_DOC_KEYS = {"description", "doc", "comment"}


def _check_keys(what: str, table: Mapping[str, Any], allowed: Set[str]) -> None:
    unknown = set(table) - allowed - _DOC_KEYS
    if unknown:
        raise ValueError(f"{what}: unknown keys {sorted(unknown)} (allowed: {sorted(allowed)})")


def machine_spec_from_dict(table: Mapping[str, Any]) -> pb.MachineSpec:
    """One ``[[machine]]`` table (TOML shape or proto field names) as a ``MachineSpec``.

    Unknown keys are an error, so a typo cannot silently drop a guard.
    """
    kind = table.get("kind", "?")
    _check_keys(
        f"machine {kind!r}",
        table,
        _MACHINE_KEYS | {"transition", "transitions", "field_rule", "field_rules", "timeout", "timeouts"},
    )
    if "kind" not in table:
        raise ValueError("machine: missing key 'kind'")
    spec = pb.MachineSpec(
        kind=table["kind"],
        states=list(table.get("states", [])),
        initial_state=table.get("initial_state", ""),
        terminal_states=list(table.get("terminal_states", [])),
    )
    for tr in list(table.get("transition", [])) + list(table.get("transitions", [])):
        _check_keys(f"machine {kind!r} transition {tr.get('name')!r}", tr, _TRANSITION_KEYS)
        t = spec.transitions.add(
            name=tr["name"],
            to=tr["to"],
            stale_from=list(tr.get("stale_from", [])),
            noop_from=list(tr.get("noop_from", [])),
        )
        getattr(t, "from").extend(list(tr.get("from", [])))  # `from` is a Python keyword
        if tr.get("stale_after") is not None:
            t.stale_after.CopyFrom(duration(tr["stale_after"]))
    for rule in list(table.get("field_rule", [])) + list(table.get("field_rules", [])):
        _check_keys(f"machine {kind!r} field_rule {rule.get('field')!r}", rule, _FIELD_RULE_KEYS)
        spec.field_rules.add(field=rule["field"], allowed_in=list(rule.get("allowed_in", [])))
    for to in list(table.get("timeout", [])) + list(table.get("timeouts", [])):
        _check_keys(f"machine {kind!r} timeout {to.get('state')!r}", to, _TIMEOUT_KEYS)
        spec.timeouts.add(
            state=to["state"],
            after=duration(to["after"]),
            idle=bool(to.get("idle", False)),
            transition=to["transition"],
        )
    if table.get("retain_after_final") is not None:
        spec.retain_after_final.CopyFrom(duration(table["retain_after_final"]))
    if "dedup" in table:
        if table["dedup"] not in _DEDUP:
            raise ValueError(f"machine {kind!r}: dedup must be one of {sorted(_DEDUP)}, got {table['dedup']!r}")
        spec.dedup = _DEDUP[table["dedup"]]
    return spec


def _toml_loads(text: str) -> Dict[str, Any]:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib
    return tomllib.loads(text)


def load_machines(source: Union[str, "os.PathLike[str]"]) -> List[pb.MachineSpec]:
    """The ``[[machine]]`` tables of a TOML file (a path, or TOML text with a newline)."""
    if isinstance(source, str) and "\n" in source:
        text = source
    else:
        with open(source, "rb") as fh:
            text = fh.read().decode("utf-8")
    doc = _toml_loads(text)
    unknown = set(doc) - {"machine"} - _DOC_KEYS
    if unknown:
        raise ValueError(f"machines file: unknown top-level keys {sorted(unknown)}")
    return [machine_spec_from_dict(m) for m in doc.get("machine", [])]
