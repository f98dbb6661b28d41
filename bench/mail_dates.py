"""Mail in date order, for the chronological splits of `spam.py` and the online run of `spam_online.py`.

A message's date is its `Date:` header, read with `email.utils.parsedate_tz` (RFC 5322 and the
obsolete forms mailers still write; two-digit years as that function maps them). Two repairs and
two refusals make it robust on real mail:

* a three-digit year is a mailer's year-1900 bug ("Thu, 22 Aug 0102 ..." is 2002): 1900 is added;
* no time zone, or a nonsensical one (-1900 occurs in spam): read as UTC;
* a date that does not parse, or lies before 1990, is **unusable**;
* so is a date more than `MAX_AHEAD` (2 days) after the message was received, by the timestamp of
  its newest `Received:` header (the top one): a message cannot be written after it arrived, so
  its sender's clock was wrong or the date forged ("2028", "2020" in the SpamAssassin corpus).
  Two days leave room for the wrong time zones spam also carries.

A message without a usable date stays where the order of its files puts it: it takes the date of
the message before it in its tarball (or directory), or of the one after it if it comes first, and
the sort is stable, so it lands right after its predecessor. (In the SpamAssassin 20030228
tarballs 6 of 3,250 messages have no usable date; `date_order` reports how many.)

Dates are the sender's claim, not the arrival: 44 messages of `easy_ham` are dated February 2002
but arrived in September 2002 (an archive fed to the collector), and two spams are dated a year
before they arrived. They sort by their `Date:`, as the issue asks.
"""

from __future__ import annotations

import email.utils
from dataclasses import dataclass
from datetime import datetime, timezone
from email.parser import BytesHeaderParser

MAX_AHEAD = 2 * 86400.0  # seconds a Date may lie after the message's arrival (clock and zone errors)
EARLIEST = datetime(1990, 1, 1, tzinfo=timezone.utc).timestamp()

_HEADERS = BytesHeaderParser()


def _timestamp(value) -> float | None:
    """POSIX seconds of an RFC 5322 date, or None; year-1900 and time-zone slips repaired."""
    if value is None:
        return None
    try:
        parts = email.utils.parsedate_tz(str(value))
    except (TypeError, ValueError, IndexError):
        return None
    if parts is None:
        return None
    year = parts[0]
    if 100 <= year < 1000:  # "0102": a year-1900 counter printed as is
        parts = (year + 1900, *parts[1:])
    offset = parts[9]
    if offset is None or abs(offset) > 14 * 3600:  # no zone, or one no place on Earth has
        parts = (*parts[:9], 0)
    try:
        return float(email.utils.mktime_tz(parts))
    except (OverflowError, ValueError):
        return None


def received_timestamp(headers) -> float | None:
    """When the message arrived: the date after the `;` of its top (newest) Received header."""
    received = headers.get_all("Received") or []
    if not received or ";" not in str(received[0]):
        return None
    return _timestamp(str(received[0]).rsplit(";", 1)[1].strip())


def message_date(raw: bytes) -> float | None:
    """The usable `Date:` of a message as POSIX seconds, or None (see the module docstring)."""
    try:
        headers = _HEADERS.parsebytes(raw, headersonly=True)
        date = _timestamp(headers.get("Date"))
        arrived = received_timestamp(headers)
    except Exception:  # noqa: BLE001 (a header the email package cannot take: no usable date)
        return None
    if date is None or date < EARLIEST:
        return None
    if arrived is not None and date > arrived + MAX_AHEAD:
        return None
    return date


@dataclass
class DateOrder:
    """`order`: indices of the messages, oldest first; `dates`: each message's sort date (POSIX
    seconds; an undated message's is its file-order neighbour's); `undated`: how many had none."""

    order: list[int]
    dates: list[float]
    undated: int


def date_order(raws: list[bytes], groups: list[str]) -> DateOrder:
    """Sort messages by `message_date`; `groups` names each message's tarball or folder, in whose
    file order an undated message keeps its place."""
    dates = [message_date(r) for r in raws]
    undated = sum(d is None for d in dates)
    filled: list[float | None] = list(dates)
    last: dict[str, float] = {}
    for i, g in enumerate(groups):  # forward: the date of the message before, in the same group
        if filled[i] is None:
            filled[i] = last.get(g)
        else:
            last[g] = filled[i]
    nxt: dict[str, float] = {}
    for i in range(len(groups) - 1, -1, -1):  # a group that starts undated: the message after
        g = groups[i]
        if filled[i] is None:
            filled[i] = nxt.get(g, 0.0)
        else:
            nxt[g] = filled[i]
    order = sorted(range(len(raws)), key=lambda i: filled[i])  # stable: file order breaks ties
    return DateOrder(order, [float(d) for d in filled], undated)


def chronological_split(dates: list[float], labels, fraction: float,
                        per_class: bool = True) -> tuple[list[int], list[int]]:
    """(older, newer) index lists: the newest `fraction` of the messages go to `newer`.

    With `per_class`, the newest `fraction` of the spam and the newest `fraction` of the ham, so
    that both parts keep the corpus's share of spam. (In the SpamAssassin tarballs spam stops
    almost entirely at the end of September 2002 while ham runs into December, so the newest 20%
    of all messages hold 3% spam; per class, the test part still holds 100 spam.)
    """
    idx = sorted(range(len(dates)), key=lambda i: dates[i])
    groups = [[i for i in idx if labels[i] == c] for c in sorted(set(labels))] if per_class else [idx]
    older, newer = [], []
    for g in groups:
        k = int(round(len(g) * fraction))
        older += g[:len(g) - k]
        newer += g[len(g) - k:]
    return sorted(older, key=lambda i: dates[i]), sorted(newer, key=lambda i: dates[i])
