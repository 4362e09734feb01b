"""Conversions between Python values and the protobuf types the API uses."""

from __future__ import annotations

import datetime
from typing import Any

from google.protobuf import duration_pb2, json_format, struct_pb2, timestamp_pb2

Seconds = float | int | datetime.timedelta


def to_value(obj: Any) -> struct_pb2.Value:
    """Any JSON-able Python value as google.protobuf.Value."""
    return json_format.ParseDict(obj, struct_pb2.Value())


def from_value(value: struct_pb2.Value | None) -> Any:
    """google.protobuf.Value back to Python; integral numbers come back as int."""
    if value is None or value.WhichOneof("kind") is None:
        return None
    return _ints(json_format.MessageToDict(value))


def _ints(v: Any) -> Any:
    if isinstance(v, float) and v.is_integer() and abs(v) < 2**53:
        return int(v)
    if isinstance(v, list):
        return [_ints(x) for x in v]
    if isinstance(v, dict):
        return {k: _ints(x) for k, x in v.items()}
    return v


def to_duration(s: Seconds) -> duration_pb2.Duration:
    """Seconds (or a timedelta) as google.protobuf.Duration."""
    if isinstance(s, datetime.timedelta):
        s = s.total_seconds()
    d = duration_pb2.Duration()
    d.FromNanoseconds(round(s * 1e9))
    return d


def to_timestamp(t: datetime.datetime) -> timestamp_pb2.Timestamp:
    """An aware datetime as google.protobuf.Timestamp."""
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(t)
    return ts
