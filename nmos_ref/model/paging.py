"""Paging on TAI stamps (IS-04 v1.1+ `paged` trait): the cursors asked for, the timelines a collection is read from
(its time index, or a few resources sorted), and the one page a request gets.
"""

from __future__ import annotations
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol, TypeVar
from attrs import frozen
from bisect import bisect_right
from nmos_ref.model.store import Registry, Resource


@frozen
class Paging:
    """The paging parameters of a request (IS-04 v1.1+ `paged` trait), in TAI nanoseconds."""

    since: int | None
    until: int | None
    limit: int
    order: str  # "update" or "create"


T = TypeVar("T")


class Timeline(Protocol[T]):
    """The matching items of one collection in stamp order (stamps unique)."""

    def newest_first(self, since: int | None, until: int | None) -> Iterator[tuple[int, T]]:
        """Items with since < stamp <= until, newest first."""

    def oldest_first(self, since: int | None, until: int | None) -> Iterator[tuple[int, T]]:
        """The same, oldest first."""


@frozen
class Page:
    items: list[Any]  # newest first
    since: int  # X-Paging-Since
    until: int  # X-Paging-Until
    limit: int  # X-Paging-Limit


def page(timeline: Timeline[T], newest: int, paging: Paging) -> Page:
    """One page of `timeline`, following IS-04 "APIs - Query Parameters" (its examples are tests):

    - no cursors: the newest `limit` items; Since is the stamp of the newest item left out (0:0 when none is), and
      Until the newest stamp of the whole collection (`newest`, "the most recently created or updated" resource);
    - `since` given (alone or with `until`): "the since value takes precedence" - the `limit` items just after it,
      and Until moves back to the last one returned when the limit cut the page short;
    - `until` alone: the newest `limit` items up to it;
    - a limit of 0 returns a window of zero width at the cursor given.
    """
    since, until, limit = paging.since, paging.until, paging.limit
    if since is not None:
        taken = _take(timeline.oldest_first(since, until), limit + 1)
        if len(taken) > limit:
            taken = taken[:limit]
            top = taken[-1][0] if taken else since
        else:
            top = until if until is not None else max(since, newest)
        taken.reverse()
        return Page([item for _, item in taken], since, top, limit)
    top = until if until is not None else newest
    taken = _take(timeline.newest_first(None, until), limit + 1)
    bottom = 0
    if len(taken) > limit:
        bottom = taken[limit][0] if limit else top
        taken = taken[:limit]
    return Page([item for _, item in taken], bottom, top, limit)


def _take(items: Iterator[T], count: int) -> list[T]:
    taken = []
    for item in items:
        taken.append(item)
        if len(taken) >= count:
            break
    return taken


STAMPS = {"update": "updated", "create": "created"}  # paging.order -> the Resource attribute it pages on


class IndexTimeline:
    """A collection's time index, filtered (when no index narrowed the query)."""

    def __init__(self, registry: Registry, kind: str, order: str, accept: Callable[[Resource], bool],
                 among: set[str] | None = None) -> None:
        self.index = registry.index(kind, order)
        self.attribute = STAMPS[order]
        self.accept = accept
        self.among = among

    def _filter(self, records: Iterator[Resource]) -> Iterator[tuple[int, Resource]]:
        attribute, accept, among = self.attribute, self.accept, self.among
        for record in records:
            if (among is None or record.id in among) and accept(record):
                yield getattr(record, attribute), record

    def newest_first(self, since: int | None, until: int | None) -> Iterator[tuple[int, Resource]]:
        return self._filter(self.index.newest_first(since, until))

    def oldest_first(self, since: int | None, until: int | None) -> Iterator[tuple[int, Resource]]:
        return self._filter(self.index.oldest_first(since, until))


class ListTimeline:
    """A few resources (from indexes or an ancestry search), sorted by stamp."""

    def __init__(self, records: Sequence[Any], order: str) -> None:
        attribute = STAMPS[order]
        self.items = sorted(((getattr(record, attribute), record) for record in records), key=lambda item: item[0])
        self.stamps = [stamp for stamp, _ in self.items]

    def _bounds(self, since: int | None, until: int | None) -> tuple[int, int]:
        low = bisect_right(self.stamps, since) if since is not None else 0
        high = bisect_right(self.stamps, until) if until is not None else len(self.stamps)
        return low, high

    def newest_first(self, since: int | None, until: int | None) -> Iterator[tuple[int, Resource]]:
        low, high = self._bounds(since, until)
        return (self.items[i] for i in range(high - 1, low - 1, -1))

    def oldest_first(self, since: int | None, until: int | None) -> Iterator[tuple[int, Resource]]:
        low, high = self._bounds(since, until)
        return (self.items[i] for i in range(low, high))
