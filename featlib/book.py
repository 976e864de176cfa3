"""Order book rebuilt from Bybit v5 snapshot + delta messages: one numba kernel serves batch
replay (a day of messages, a chunk of Arrow record batch at a time, read from the raw store
while the book replays the chunks before) and the live service (one message at a time).

Data structure: each side is a price-indexed array of sizes over integer ticks (price × 10**d),
cut into pages of PAGE ticks taken on demand from one pool shared by both sides; a page table
maps page number → pool slot, and a page whose last level is deleted returns to the pool.
Setting or deleting a level is O(1); when the best level goes, the next one is found by scanning
outwards (skipping unallocated pages); a far, sparse level costs one page, not the whole range.

Ticks: d is the smallest number of decimals (≤ MAX_DECIMALS) at which every price seen so far is
exact — round(price × 10**d) / 10**d == price — so a price read back is the very float that
arrived. Growth: the book starts empty at d = 0 with no pages. A delta is applied in one pass,
logging each level's old size; if a level needs a finer grid, a page beyond the table or a pool
slot, the levels already set are put back, the kernel returns, the book re-scales (ticks ×
10**k) or grows (page table at least doubles around the new range; pool doubles) and the message
runs again. A snapshot is checked before it resets the book. So every message is applied
completely or not at all, in replay and live alike.

Sequencing per stream (Bybit `u`): a snapshot, or any message with u == 1 (exchange restart),
resets the book and clears desync. A delta with u <= the last applied u is stale: ignored and
counted. A delta with u > last + 1 is a gap: applied, counted, and the book is desynced until the
next snapshot; a book that has not seen a snapshot is desynced too. After each applied message a
crossed book (best bid >= best ask) is counted, never fatal.

Counters (`OrderBook.counters`, and the third value `replay` returns): messages (applied +
stale), snapshots (including u == 1 restarts), gaps, stale, crossed (applied messages after
which the book was crossed), best_changes (applied messages after which the best bid or best
ask price changed, a side appearing or emptying included).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from numba import njit

from featlib import raw
from featlib.schema import BOOK, RAW_SCHEMAS

PAGE_BITS = 8
PAGE = 1 << PAGE_BITS  # ticks per page (25.6 USD of BTCUSDT at tick 0.1); 2 KiB of sizes
_MASK = PAGE - 1
MAX_DECIMALS = 12
MAX_PAGES = 1 << 22  # page table: 1.07e9 ticks (1e8 USD at tick 0.1); wider raises ValueError
_MAX_TICK = float(1 << 52)  # ticks stay exact integers in float64
_MISSING = -(1 << 63)  # int64 sentinel for "no value" in kernel outputs
_POW10 = [float(10**k) for k in range(MAX_DECIMALS + 1)]  # exact powers of ten

# meta: the book's scalar state, one int64 array shared by Python and the kernel
_DEC, _BASE, _FREE = 0, 1, 2  # decimals d, page number of page-table column 0, free slots
_BEST = 3  # best tick per side: 3 bid, 4 ask (-1 = empty side)
_COUNT = 5  # levels per side: 5 bid, 6 ask
_U, _HAS_U, _TS, _DESYNC = 7, 8, 9, 10
_MESSAGES, _SNAPSHOTS, _GAPS, _STALE, _CROSSED, _CHANGES = 11, 12, 13, 14, 15, 16
_META = 17
COUNTERS = ("messages", "snapshots", "gaps", "stale", "crossed", "best_changes")

# kernel status: why it stopped before a message (0 = done; a higher code is fixed first)
_DONE, _NEED_SLOTS, _NEED_RANGE, _NEED_SCALE = 0, 1, 2, 3


# --- numba kernel -----------------------------------------------------------------------------
# Hot state (best ticks, level counts, free slots) lives in locals while messages are applied
# and goes back to `meta` whenever the kernel returns; helpers take the side as a constant (a
# literal: the bid and ask loops compile to straight code). The per-message helpers are plain
# calls, not inlined into _run: numba's inlining re-binds their arrays, and the atomic reference
# counts that costs per message took more time than the levels themselves.


@njit(cache=True)
def _scan(pages, pool, base, side, tick):
    """Nearest level at or beyond `tick` going away from the spread (-1 when none)."""
    width = pages.shape[1]
    idx = (tick >> PAGE_BITS) - base
    off = tick & _MASK
    if side == 0:
        if idx >= width:
            idx, off = width - 1, _MASK
        while idx >= 0:
            slot = pages[0, idx]
            if slot >= 0:
                for k in range(off, -1, -1):
                    if pool[slot, k] > 0.0:
                        return ((idx + base) << PAGE_BITS) + k
            idx, off = idx - 1, _MASK
    else:
        if idx < 0:
            idx, off = 0, 0
        while idx < width:
            slot = pages[1, idx]
            if slot >= 0:
                for k in range(off, PAGE):
                    if pool[slot, k] > 0.0:
                        return ((idx + base) << PAGE_BITS) + k
            idx, off = idx + 1, 0
    return -1


@njit(cache=True, inline="always")
def _tick(price, scale):
    """price × scale rounded, as a float (exactness is checked where it is used)."""
    return math.floor(price * scale + 0.5)


@njit(cache=True, inline="always")
def _on_grid(price, x, scale):
    """x (= _tick(price, scale)) is an exact tick: x / scale gives back the very price."""
    return x / scale == price and 0.0 < x < _MAX_TICK


@njit(cache=True, inline="always")
def _check(pages, free, nfree, base, scale, side, px, sz, lo, hi):
    """Before a snapshot resets the book: every price on the grid, every page of a level inside
    the table and allocated (so the pool is big enough). -> (status, nfree)."""
    status = _DONE
    width = pages.shape[1]
    for k in range(lo, hi):
        x = _tick(px[k], scale)
        if not _on_grid(px[k], x, scale):
            return _NEED_SCALE, nfree
        if sz[k] > 0.0:
            idx = (np.int64(x) >> PAGE_BITS) - base
            if idx < 0 or idx >= width:
                status = _NEED_RANGE
            elif pages[side, idx] < 0 and status == _DONE:
                if nfree == 0:
                    status = _NEED_SLOTS
                else:  # an empty allocated page is harmless; the reset frees it
                    nfree -= 1
                    pages[side, idx] = free[nfree]
    return status, nfree


@njit(cache=True)
def _set_level(pages, pool, cnt, free, nfree, base, side, tick, size, best, count):
    """Set one level (absolute size, not > 0 deletes); the caller made sure a level to add has
    its page in the table and a free slot. -> (old size, best, count, nfree). Branch-light: the
    sizes of a stream's levels are as good as random."""
    idx = (tick >> PAGE_BITS) - base
    off = tick & _MASK
    add = size > 0.0
    slot = pages[side, idx] if 0 <= idx < pages.shape[1] else -1
    if slot < 0:
        if not add:  # nothing to delete
            return 0.0, best, count, nfree
        nfree -= 1
        slot = free[nfree]
        pages[side, idx] = slot
    old = pool[slot, off]
    pool[slot, off] = size if add else 0.0
    delta = np.int32(add) - np.int32(old > 0.0)  # +1 level added, -1 deleted
    cnt[slot] += delta
    count += delta
    better = (best < 0) | ((tick > best) if side == 0 else (tick < best))
    best = tick if add & better else best
    if delta < 0:
        if cnt[slot] == 0:
            pages[side, idx] = -1
            free[nfree] = slot
            nfree += 1
        if tick == best:
            if count == 0:
                best = -1
            else:
                best = _scan(pages, pool, base, side, tick - 1 if side == 0 else tick + 1)
    return old, best, count, nfree


@njit(cache=True)
def _apply_side(
    pages, pool, cnt, free, nfree, base, scale, side, px, sz, lo, hi, best, count, undo
):
    """Set levels px[lo:hi] to sz, logging each old size in undo; stops at the first level that
    needs the book to grow. -> (best, count, nfree, status, levels done)."""
    width = pages.shape[1]
    for k in range(lo, hi):
        x = _tick(px[k], scale)
        if not _on_grid(px[k], x, scale):
            return best, count, nfree, _NEED_SCALE, k
        tick = np.int64(x)
        if sz[k] > 0.0:
            idx = (tick >> PAGE_BITS) - base
            if idx < 0 or idx >= width:
                return best, count, nfree, _NEED_RANGE, k
            if pages[side, idx] < 0 and nfree == 0:
                return best, count, nfree, _NEED_SLOTS, k
        old, best, count, nfree = _set_level(
            pages, pool, cnt, free, nfree, base, side, tick, sz[k], best, count
        )
        undo[k - lo] = old
    return best, count, nfree, _DONE, hi


@njit(cache=True)
def _undo_side(pages, pool, cnt, free, nfree, base, scale, side, px, lo, stop, best, count, undo):
    """Put back the old sizes of levels px[lo:stop], last first. -> (best, count, nfree)."""
    for k in range(stop - 1, lo - 1, -1):
        tick = np.int64(_tick(px[k], scale))
        _, best, count, nfree = _set_level(
            pages, pool, cnt, free, nfree, base, side, tick, undo[k - lo], best, count
        )
    return best, count, nfree


@njit(cache=True)
def _reset(pages, pool, cnt, free, nfree):
    """Empty both sides, returning every page to the pool. -> nfree."""
    for side in range(2):
        for idx in range(pages.shape[1]):
            slot = pages[side, idx]
            if slot >= 0:
                if cnt[slot] > 0:
                    pool[slot, :] = 0.0
                    cnt[slot] = 0
                free[nfree] = slot
                nfree += 1
                pages[side, idx] = -1
    return nfree


@njit(cache=True)
def _top(pages, pool, base, side, scale, best, count, out_px, out_sz):
    """Best len(out_px) levels of a side into out_px/out_sz, NaN-padded."""
    n = out_px.shape[0]
    out_px[:] = np.nan
    out_sz[:] = np.nan
    tick = best
    found = 0
    while tick >= 0 and found < n:
        out_px[found] = tick / scale
        out_sz[found] = pool[pages[side, (tick >> PAGE_BITS) - base], tick & _MASK]
        found += 1
        if found == count:
            break
        tick = _scan(pages, pool, base, side, tick - 1 if side == 0 else tick + 1)


@njit(cache=True, nogil=True)
def _run(book, cursor, scale, msgs, final, out, ch_ts, ch_desync, undo):
    """Apply messages from cursor[0] on, sampling the book at out[0] (the state after every
    message with ts <= s) and recording best-price changes; the times left after the last
    message are sampled only if `final` (else the next chunk of the stream samples them before
    its first message). Stops before a message the book must grow for (returns why; cursor[0]
    says which) and resumes there when called again."""
    meta, pages, pool, cnt, free = book
    snap, uid, ts, boff, bpx, bsz, aoff, apx, asz = msgs
    sample_ts, s_bpx, s_bsz, s_apx, s_asz, s_desync, s_uid, s_ts = out
    undo_b, undo_a = undo
    base = meta[_BASE]
    # the state every message touches, in registers; rare counters stay in meta
    bb, ba, nb, na, nfree = (
        meta[_BEST],
        meta[_BEST + 1],
        meta[_COUNT],
        meta[_COUNT + 1],
        meta[_FREE],
    )
    last_u, has_u, last_ts, desync = meta[_U], meta[_HAS_U] != 0, meta[_TS], meta[_DESYNC] != 0
    messages, changes = meta[_MESSAGES], meta[_CHANGES]
    i, j, nch = cursor[0], cursor[1], cursor[2]
    status = _DONE
    while True:
        if i < ts.shape[0]:
            stop = ts[i]
        else:
            stop = np.iinfo(np.int64).max if final else np.iinfo(np.int64).min
        while j < sample_ts.shape[0] and sample_ts[j] < stop:
            _top(pages, pool, base, 0, scale, bb, nb, s_bpx[:, j], s_bsz[:, j])
            _top(pages, pool, base, 1, scale, ba, na, s_apx[:, j], s_asz[:, j])
            s_desync[j] = desync
            s_uid[j] = last_u if has_u else _MISSING
            s_ts[j] = last_ts if has_u else _MISSING
            j += 1
        if i == ts.shape[0]:
            break
        u = uid[i]
        reset = snap[i] or u == 1
        if not reset and has_u and u <= last_u:
            meta[_STALE] += 1
            messages += 1
            i += 1
            continue
        blo, bhi, alo, ahi = boff[i], boff[i + 1], aoff[i], aoff[i + 1]
        bid0, ask0, was_desynced = bb, ba, desync
        if reset:  # check first: a reset cannot be undone
            s_bid, nfree = _check(pages, free, nfree, base, scale, 0, bpx, bsz, blo, bhi)
            s_ask, nfree = _check(pages, free, nfree, base, scale, 1, apx, asz, alo, ahi)
            status = max(s_bid, s_ask)
            if status != _DONE:
                break
            nfree = _reset(pages, pool, cnt, free, nfree)
            bb, ba, nb, na = -1, -1, 0, 0
        bb, nb, nfree, status, kb = _apply_side(
            pages, pool, cnt, free, nfree, base, scale, 0, bpx, bsz, blo, bhi, bb, nb, undo_b
        )
        if status == _DONE:
            ba, na, nfree, status, ka = _apply_side(
                pages, pool, cnt, free, nfree, base, scale, 1, apx, asz, alo, ahi, ba, na, undo_a
            )
            if status != _DONE:
                ba, na, nfree = _undo_side(
                    pages, pool, cnt, free, nfree, base, scale, 1, apx, alo, ka, ba, na, undo_a
                )
                kb = bhi
        if status != _DONE:  # a delta stopped half way: put the book back as it was
            bb, nb, nfree = _undo_side(
                pages, pool, cnt, free, nfree, base, scale, 0, bpx, blo, kb, bb, nb, undo_b
            )
            break
        if reset:
            desync = False
            meta[_SNAPSHOTS] += 1
        elif has_u and u != last_u + 1:
            desync = True
            meta[_GAPS] += 1
        last_u, has_u, last_ts = u, True, ts[i]
        messages += 1
        if bb >= 0 and ba >= 0 and bb >= ba:
            meta[_CROSSED] += 1
        if bb != bid0 or ba != ask0:
            changes += 1
            ch_ts[nch] = ts[i]
            ch_desync[nch] = was_desynced or desync
            nch += 1
        i += 1
    meta[_BEST], meta[_BEST + 1], meta[_COUNT], meta[_COUNT + 1] = bb, ba, nb, na
    meta[_FREE], meta[_U], meta[_HAS_U], meta[_TS], meta[_DESYNC] = (
        nfree,
        last_u,
        has_u,
        last_ts,
        desync,
    )
    meta[_MESSAGES], meta[_CHANGES] = messages, changes
    cursor[0], cursor[1], cursor[2] = i, j, nch
    return status


@njit(cache=True)
def _decimals(px, d, pow10):
    """Smallest decimals >= d at which every price is exact (-1: none <= MAX_DECIMALS)."""
    for price in px:
        if not (price > 0.0 and price < np.inf):
            return -1
        while True:
            x = _tick(price, pow10[d])
            if x / pow10[d] == price and x < _MAX_TICK:
                break
            d += 1
            if d > MAX_DECIMALS:
                return -1
    return d


@njit(cache=True)
def _levels(pages, pool, base, side, count):
    """All levels of a side as (ticks, sizes), in page order."""
    ticks = np.empty(count, np.int64)
    sizes = np.empty(count, np.float64)
    n = 0
    for idx in range(pages.shape[1]):
        slot = pages[side, idx]
        if slot >= 0:
            for k in range(PAGE):
                if pool[slot, k] > 0.0:
                    ticks[n] = ((idx + base) << PAGE_BITS) + k
                    sizes[n] = pool[slot, k]
                    n += 1
    return ticks, sizes


@njit(cache=True)
def _load(meta, pages, pool, cnt, free, side, prices, sizes, scale):
    """Add levels to an empty side (their pages in the table, enough free slots)."""
    base, best, count, nfree = meta[_BASE], meta[_BEST + side], meta[_COUNT + side], meta[_FREE]
    for k in range(prices.shape[0]):
        tick = np.int64(_tick(prices[k], scale))
        _, best, count, nfree = _set_level(
            pages, pool, cnt, free, nfree, base, side, tick, sizes[k], best, count
        )
    meta[_BEST + side], meta[_COUNT + side], meta[_FREE] = best, count, nfree


# --- Python side --------------------------------------------------------------------------


class _Messages(NamedTuple):
    """A chunk of one stream's messages as numpy arrays: levels of message i are
    px[off[i]:off[i+1]] (int32 offsets, as Arrow's lists hold them: off[0] need not be 0)."""

    snap: np.ndarray
    uid: np.ndarray
    ts: np.ndarray
    boff: np.ndarray
    bpx: np.ndarray
    bsz: np.ndarray
    aoff: np.ndarray
    apx: np.ndarray
    asz: np.ndarray


def _empty_messages() -> _Messages:
    f, i = np.empty(0, np.float64), np.empty(0, np.int64)
    off = np.zeros(1, np.int32)
    return _Messages(np.empty(0, np.bool_), i, i, off, f, f, off, f, f)


_NO_MESSAGES = _empty_messages()


class OrderBook:
    """One stream's live order book (symbol + topic depth), fed message by message."""

    def __init__(self) -> None:
        self._meta = np.zeros(_META, np.int64)
        self._meta[_BEST : _BEST + 2] = -1
        self._meta[_DESYNC] = 1
        self._pages = np.full((2, 0), -1, np.int32)
        self._pool = np.zeros((0, PAGE), np.float64)
        self._cnt = np.zeros(0, np.int32)
        self._free = np.zeros(0, np.int32)
        self._grow_pool(8)
        self._one = (
            np.zeros(1, np.bool_),
            np.zeros(1, np.int64),
            np.zeros(1, np.int64),
            np.zeros(2, np.int32),
            np.zeros(2, np.int32),
        )

    def apply(
        self,
        is_snapshot: bool,
        update_id: int,
        ts: int,
        bid_price: Sequence[float] | np.ndarray,
        bid_size: Sequence[float] | np.ndarray,
        ask_price: Sequence[float] | np.ndarray,
        ask_size: Sequence[float] | np.ndarray,
    ) -> None:
        """Apply one snapshot or delta (sizes absolute, 0 deletes); atomic: all or nothing."""
        bpx, bsz = _floats(bid_price), _floats(bid_size)
        apx, asz = _floats(ask_price), _floats(ask_size)
        if len(bpx) != len(bsz) or len(apx) != len(asz):
            raise ValueError("price and size lists differ in length")
        snap, uid, stamp, boff, aoff = self._one
        snap[0], uid[0], stamp[0], boff[1], aoff[1] = is_snapshot, update_id, ts, len(bpx), len(apx)
        message = _Messages(snap, uid, stamp, boff, bpx, bsz, aoff, apx, asz)
        _drive(self, [message], _NO_SAMPLES, (np.empty(len(bpx)), np.empty(len(apx))))

    @property
    def desynced(self) -> bool:
        return bool(self._meta[_DESYNC])

    @property
    def update_id(self) -> int | None:
        return int(self._meta[_U]) if self._meta[_HAS_U] else None

    @property
    def ts(self) -> int | None:
        """Exchange ts of the last applied message."""
        return int(self._meta[_TS]) if self._meta[_HAS_U] else None

    @property
    def best_bid(self) -> float | None:
        return self._price(self._meta[_BEST])

    @property
    def best_ask(self) -> float | None:
        return self._price(self._meta[_BEST + 1])

    @property
    def gaps(self) -> int:
        return int(self._meta[_GAPS])

    @property
    def stale(self) -> int:
        return int(self._meta[_STALE])

    @property
    def crossed(self) -> int:
        return int(self._meta[_CROSSED])

    @property
    def best_changes(self) -> int:
        return int(self._meta[_CHANGES])

    @property
    def counters(self) -> dict[str, int]:
        """Quality counters (see the module docstring)."""
        slots = (_MESSAGES, _SNAPSHOTS, _GAPS, _STALE, _CROSSED, _CHANGES)
        return {name: int(self._meta[slot]) for name, slot in zip(COUNTERS, slots, strict=True)}

    def top(self, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(bid prices desc, bid sizes, ask prices asc, ask sizes), each length n, NaN-padded."""
        out = [np.empty(n, np.float64) for _ in range(4)]
        meta, scale = self._meta, _POW10[int(self._meta[_DEC])]
        for side in (0, 1):
            _top(
                self._pages,
                self._pool,
                meta[_BASE],
                side,
                scale,
                meta[_BEST + side],
                meta[_COUNT + side],
                out[2 * side],
                out[2 * side + 1],
            )
        return out[0], out[1], out[2], out[3]

    def _price(self, tick: int) -> float | None:
        return None if tick < 0 else int(tick) / _POW10[int(self._meta[_DEC])]

    # growth: called between messages when the kernel stops (never mid-message)

    def _grow_pool(self, at_least: int) -> None:
        old = len(self._cnt)
        new = max(2 * old, at_least, 8)
        pool = np.zeros((new, PAGE), np.float64)
        pool[:old] = self._pool
        cnt = np.zeros(new, np.int32)
        cnt[:old] = self._cnt
        free = np.zeros(new, np.int32)
        nfree = int(self._meta[_FREE])
        free[:nfree] = self._free[:nfree]
        free[nfree : nfree + new - old] = np.arange(new - 1, old - 1, -1, dtype=np.int32)
        self._pool, self._cnt, self._free = pool, cnt, free
        self._meta[_FREE] = nfree + new - old

    def _grow_range(self, lo_page: int, hi_page: int) -> None:
        base, width = int(self._meta[_BASE]), self._pages.shape[1]
        if width == 0:
            new_lo, new_hi = lo_page, hi_page
        else:
            new_lo, new_hi = min(base, lo_page), max(base + width - 1, hi_page)
        slack = max(4, new_hi - new_lo + 1)  # at least double: growth is amortised
        if new_lo < base or width == 0:
            new_lo = max(0, new_lo - slack)
        if new_hi > base + width - 1 or width == 0:
            new_hi += slack
        if new_hi - new_lo + 1 > MAX_PAGES:
            scale = _POW10[int(self._meta[_DEC])]
            raise ValueError(
                f"order-book prices span {new_lo * PAGE / scale:g} .. {new_hi * PAGE / scale:g}: "
                f"more than {MAX_PAGES} pages of {PAGE} ticks at {int(self._meta[_DEC])} decimals"
            )
        pages = np.full((2, new_hi - new_lo + 1), -1, np.int32)
        if width:
            pages[:, base - new_lo : base - new_lo + width] = self._pages
        self._pages = pages
        self._meta[_BASE] = new_lo

    def _rescale(self, decimals: int) -> None:
        meta, old_scale, scale = self._meta, _POW10[int(self._meta[_DEC])], _POW10[decimals]
        prices, sizes = [], []
        for side in (0, 1):
            ticks, size = _levels(self._pages, self._pool, meta[_BASE], side, meta[_COUNT + side])
            prices.append(ticks / old_scale)  # the very floats that arrived
            sizes.append(size)
        every = np.concatenate(prices)
        if len(every) and every.max() * scale >= _MAX_TICK:
            raise ValueError(f"order-book prices too large for {decimals} decimals")
        meta[_FREE] = _reset(self._pages, self._pool, self._cnt, self._free, meta[_FREE])
        meta[_BEST : _BEST + 2], meta[_COUNT : _COUNT + 2] = -1, 0
        meta[_DEC], meta[_BASE] = decimals, 0
        self._pages = np.full((2, 0), -1, np.int32)
        if len(every):
            pages = [
                np.unique(np.floor(p * scale + 0.5).astype(np.int64) >> PAGE_BITS) for p in prices
            ]
            self._grow_range(
                int(min(p.min() for p in pages if len(p))),
                int(max(p.max() for p in pages if len(p))),
            )
            need = sum(len(p) for p in pages)
            if need > meta[_FREE]:
                self._grow_pool(len(self._cnt) + need)
            for side in (0, 1):
                _load(
                    meta,
                    self._pages,
                    self._pool,
                    self._cnt,
                    self._free,
                    side,
                    prices[side],
                    sizes[side],
                    scale,
                )


def _floats(values: Sequence[float] | np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(values, dtype=np.float64).reshape(-1)


class _Samples(NamedTuple):
    ts: np.ndarray
    bpx: np.ndarray
    bsz: np.ndarray
    apx: np.ndarray
    asz: np.ndarray
    desynced: np.ndarray
    uid: np.ndarray
    book_ts: np.ndarray


def _new_samples(sample_ts: np.ndarray, levels: int) -> _Samples:
    n = len(sample_ts)
    grids = [np.empty((levels, n), np.float64) for _ in range(4)]  # a column per level
    return _Samples(
        sample_ts, *grids, np.zeros(n, np.bool_), np.empty(n, np.int64), np.empty(n, np.int64)
    )


_NO_SAMPLES = _new_samples(np.empty(0, np.int64), 0)
_NO_UNDO = (np.empty(0), np.empty(0))
_POW10_ARRAY = np.array(_POW10)


def _drive(
    book: OrderBook,
    chunks: Iterable[_Messages],
    samples: _Samples,
    undo: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Run the kernel over a stream's chunks of messages in order, growing the book whenever it
    stops before a message; fills samples, returns the best-price changes (ts, desynced).
    undo: scratch for the most bid and ask levels in one message (sized here when None)."""
    cursor = np.zeros(3, np.int64)  # message in the chunk, next sample, changes in the chunk
    changes, done, sized = [], 0, undo is not None
    for m in chunks:
        if not sized:
            undo = _scratch(undo, m)
        ch = (np.empty(len(m.ts), np.int64), np.empty(len(m.ts), np.bool_))
        _drive_chunk(book, m, done, False, cursor, samples, ch, undo)
        changes.append((ch[0][: cursor[2]], ch[1][: cursor[2]]))
        done += len(m.ts)
    if cursor[1] < len(samples.ts) or not changes:  # the times after the last message
        ch = (np.empty(0, np.int64), np.empty(0, np.bool_))
        _drive_chunk(book, _NO_MESSAGES, done, True, cursor, samples, ch, _NO_UNDO)
        changes.append(ch)
    if len(changes) == 1:
        return changes[0]
    return np.concatenate([c[0] for c in changes]), np.concatenate([c[1] for c in changes])


def _scratch(
    undo: tuple[np.ndarray, np.ndarray] | None, m: _Messages
) -> tuple[np.ndarray, np.ndarray]:
    """undo, or new arrays when it is short for a message of m."""
    bids, asks = _longest(m.boff), _longest(m.aoff)
    if undo is not None and len(undo[0]) >= bids and len(undo[1]) >= asks:
        return undo
    return np.empty(bids), np.empty(asks)


def _drive_chunk(
    book: OrderBook,
    m: _Messages,
    done: int,
    final: bool,
    cursor: np.ndarray,
    samples: _Samples,
    changes: tuple[np.ndarray, np.ndarray],
    undo: tuple[np.ndarray, np.ndarray],
) -> None:
    """_drive on one chunk, which follows `done` messages of the stream (final: the last)."""
    cursor[0] = cursor[2] = 0
    msgs = tuple(map(_readonly, m))  # Arrow buffers are read-only: one compiled signature
    while True:
        state = (book._meta, book._pages, book._pool, book._cnt, book._free)
        scale = _POW10[int(book._meta[_DEC])]
        status = _run(state, cursor, scale, msgs, final, tuple(samples), *changes, undo)
        if status == _DONE:
            return
        i = int(cursor[0])
        prices = np.concatenate(
            [m.bpx[m.boff[i] : m.boff[i + 1]], m.apx[m.aoff[i] : m.aoff[i + 1]]]
        )
        if status == _NEED_SCALE:
            decimals = _decimals(prices, int(book._meta[_DEC]), _POW10_ARRAY)
            if decimals < 0:
                raise ValueError(
                    f"message {done + i} (u={int(m.uid[i])}): its prices "
                    f"({prices[:4].tolist()}...) are not positive decimals on one grid of at "
                    f"most {MAX_DECIMALS} places"
                )
            book._rescale(decimals)
        elif status == _NEED_RANGE:
            sizes = np.concatenate(
                [m.bsz[m.boff[i] : m.boff[i + 1]], m.asz[m.aoff[i] : m.aoff[i + 1]]]
            )
            pages = np.floor(prices[sizes > 0] * scale + 0.5).astype(np.int64) >> PAGE_BITS
            book._grow_range(int(pages.min()), int(pages.max()))
        else:
            book._grow_pool(2 * len(book._cnt))


def _readonly(values: np.ndarray) -> np.ndarray:
    view = values.view()
    view.flags.writeable = False
    return view


def _longest(offsets: np.ndarray) -> int:
    """Most levels in one message."""
    return int(np.max(offsets[1:] - offsets[:-1])) if len(offsets) > 1 else 0


# --- tables -------------------------------------------------------------------------------

_SIDES = ("bid_px", "bid_sz", "ask_px", "ask_sz")


def level_columns(levels: int = 10) -> list[str]:
    """bid_px_1..n, bid_sz_1..n, ask_px_1..n, ask_sz_1..n."""
    return [f"{side}_{i}" for side in _SIDES for i in range(1, levels + 1)]


REPLAY_COLUMNS = (
    "symbol",
    "ts",
    "update_id",
    "depth",
    "bid_price",
    "bid_size",
    "ask_price",
    "ask_size",
)
"""What a replay reads of the raw book rows (the rest of schema.BOOK may be left out)."""


def stream_messages(
    snapshots: pa.Table, deltas: pa.Table, symbol: str, depth: int | None = None
) -> pa.Table:
    """One stream's snapshot and delta rows (+ `is_snapshot`) in processing order: by ts, then
    update_id, snapshots first on ties. depth None: the deepest stream present for symbol."""
    snaps, rows = _rows(snapshots, symbol, True), _rows(deltas, symbol, False)
    if depth is None:
        depth = _deepest(snaps, rows)
    snaps, rows = _of_depth(snaps, depth), _of_depth(rows, depth)
    if _sorted(snaps) and _sorted(rows):  # as the writers store them: merged, no list moves
        return pa.concat_tables([snaps.slice(0, 0), *_merge(snaps, [rows])])
    both = pa.concat_tables([snaps, rows])
    order = pc.sort_indices(
        both.select(["ts", "update_id", "is_snapshot"]),
        [("ts", "ascending"), ("update_id", "ascending"), ("is_snapshot", "descending")],
    )
    return both.take(order)


def _rows(table: pa.Table, symbol: str, is_snapshot: bool) -> pa.Table:
    """symbol's rows of a snapshot or delta table, cast to schema.BOOK, + `is_snapshot`."""
    missing = [n for n in REPLAY_COLUMNS if n not in table.column_names]
    if missing:
        raise ValueError(f"book messages lack the column(s) {missing}")
    schema = pa.schema([f for f in BOOK if f.name in table.column_names])
    rows = table.select(schema.names).cast(schema)
    rows = _only(rows, pc.equal(rows["symbol"], symbol))
    return rows.append_column("is_snapshot", pa.repeat(is_snapshot, len(rows)))


def _deepest(*tables: pa.Table) -> int | None:
    """The largest depth in the tables (None when they are empty)."""
    depths = pa.chunked_array(
        [c for t in tables for c in t["depth"].chunks], BOOK.field("depth").type
    )
    return pc.max(depths).as_py() if len(depths) else None


def _of_depth(table: pa.Table, depth: int | None) -> pa.Table:
    return table if depth is None else _only(table, pc.equal(table["depth"], depth))


def _only(table: pa.Table, keep: pa.ChunkedArray) -> pa.Table:
    """table.filter(keep), without copying the level lists when every row is kept."""
    return table if pc.all(keep).as_py() is not False else table.filter(keep)


def _keys(table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """(ts, update_id) as int64 arrays."""
    ts, uid = (table[n].cast(pa.int64()).to_numpy() for n in ("ts", "update_id"))
    return ts, uid


def _sorted(table: pa.Table) -> bool:
    """Rows in (ts, update_id) order, without nulls."""
    if table["ts"].null_count or table["update_id"].null_count:
        return False
    ts, uid = _keys(table)
    later = ts[1:] > ts[:-1]
    return bool(np.all(later | (ts[1:] == ts[:-1])) and np.all(later | (uid[1:] >= uid[:-1])))


def _merge(snapshots: pa.Table, deltas: Iterable[pa.Table]) -> Iterator[pa.Table]:
    """Snapshot rows merged into consecutive delta tables (all in (ts, update_id) order) as the
    sort in stream_messages would, snapshots first on ties: slices, in processing order."""
    s_ts, s_uid = _keys(snapshots)
    j = 0
    for part in deltas:
        if j < len(s_ts) and len(part):
            ts, uid = _keys(part)
            start = 0
            while j < len(s_ts) and (s_ts[j], s_uid[j]) <= (ts[-1], uid[-1]):
                lo, hi = np.searchsorted(ts, [s_ts[j], s_ts[j] + 1])
                at = int(lo + np.searchsorted(uid[lo:hi], s_uid[j]))
                yield from _nonempty(part.slice(start, at - start), snapshots.slice(j, 1))
                start, j = at, j + 1
            part = part.slice(start)
        yield from _nonempty(part)
    yield from _nonempty(snapshots.slice(j))


def _nonempty(*tables: pa.Table) -> Iterator[pa.Table]:
    return (t for t in tables if len(t))


def read_stream(root: Path, symbol: str, start_ms: int, end_ms: int) -> Iterator[pa.Table]:
    """stream_messages of the raw store's book rows of symbol in [start_ms, end_ms) (its
    deepest stream), as consecutive tables for replay_parts: the deltas are decoded batch by
    batch on a worker thread while the caller replays what came before. Delta files that cannot
    be read so (other column types, rows not in time order, ...) are read whole, as raw.read
    does: then the stream comes as one table."""

    def read(kind: str) -> pa.Table:
        return raw.read(root, kind, [symbol], start_ms, end_ms, False, REPLAY_COLUMNS)

    snapshots = read("orderbook_snapshots")
    paths = raw.files(root, "orderbook_deltas", [symbol], start_ms, end_ms)
    with _ReadAhead(_delta_parts(paths, start_ms, end_ms)) as parts:  # decoding from now on
        keys = _delta_keys(paths, start_ms, end_ms)
        if keys is not None:
            snaps = _rows(snapshots, symbol, True)
            depth = _deepest(snaps, keys)
            snaps = _of_depth(snaps, depth)
            if _sorted(snaps) and _sorted(_of_depth(keys, depth)):
                yield from _merge(snaps, (_of_depth(part, depth) for part in parts))
                return
    yield stream_messages(snapshots, read("orderbook_deltas"), symbol)


_DELTA_COLUMNS = [n for n in REPLAY_COLUMNS if n != "symbol"]  # symbol: the partition's
_BATCH = 1 << 16  # rows decoded at a time by read_stream


def _delta_keys(paths: list[Path], start_ms: int, end_ms: int) -> pa.Table | None:
    """ts, update_id and depth of the delta rows raw.read would give from these files; None
    unless _delta_parts gives those very rows: every file readable, with the canonical column
    types, in time order (raw.read takes a slice of each then)."""
    if not paths or raw.unreadable(paths):
        return None
    want = RAW_SCHEMAS["orderbook_deltas"]
    keys = []
    for path in paths:
        stored = pq.read_schema(path)
        for name in _DELTA_COLUMNS:
            at = stored.get_field_index(name)
            if at < 0 or stored.field(at).type != want.field(name).type:
                return None
        table = pq.read_table(path, columns=["ts", "update_id", "depth"])
        ts = table["ts"].cast(pa.int64()).to_numpy()
        if np.any(ts[1:] < ts[:-1]):
            return None
        first, last = np.searchsorted(ts, [start_ms, end_ms])
        keys.append(table.slice(first, last - first))
    return pa.concat_tables(keys)


def _delta_parts(paths: list[Path], start_ms: int, end_ms: int) -> Iterator[pa.Table]:
    """The rows in [start_ms, end_ms) of delta files in time order, batch by batch, as stream
    rows."""
    for path in paths:
        with pq.ParquetFile(path) as parquet:
            for batch in parquet.iter_batches(_BATCH, columns=_DELTA_COLUMNS):
                ts = batch["ts"].cast(pa.int64()).to_numpy()
                lo, hi = np.searchsorted(ts, [start_ms, end_ms])
                if lo < hi:
                    part = pa.Table.from_batches([batch.slice(lo, hi - lo)])
                    yield part.append_column("is_snapshot", pa.repeat(False, len(part)))
                if hi < len(ts):  # the rest is later still
                    break


class _ReadAhead:
    """An iterator's items, made on a worker thread from now on, up to `ahead` before they are
    taken (pyarrow decodes Parquet without the GIL, and the kernel runs without it)."""

    _END = object()

    def __init__(self, items: Iterator[Any], ahead: int = 4) -> None:
        self._items = items
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="book-read")
        self._pending = deque(self._pool.submit(next, items, self._END) for _ in range(ahead))

    def __iter__(self) -> Iterator[Any]:
        while (item := self._pending.popleft().result()) is not self._END:
            self._pending.append(self._pool.submit(next, self._items, self._END))
            yield item

    def __enter__(self) -> _ReadAhead:
        return self

    def __exit__(self, *exc: object) -> None:
        self._pool.shutdown(cancel_futures=True)


def _flatten(
    messages: pa.Table, seen: dict[str, Any] | None = None, row: int = 0
) -> list[_Messages]:
    """Arrow columns -> one _Messages per record batch: the level lists are Arrow's own offsets
    and values, not copied (no per-message Python). seen: symbol and depth of the stream's
    parts before (row: how many rows they held)."""
    seen = {} if seen is None else seen
    for column in ("symbol", "depth"):  # (pc.unique on strings costs 10x this)
        values = messages[column] if column in messages.column_names else []
        if len(values):
            first = seen.setdefault(column, values[0])
            if not pc.all(pc.equal(values, first)).as_py():
                raise ValueError(f"replay takes one stream; messages hold several {column} values")
    lists = [f"{side}_{what}" for side in ("bid", "ask") for what in ("price", "size")]
    batches = [
        b
        for b in messages.select(["is_snapshot", "update_id", "ts", *lists]).to_batches()
        if len(b)
    ]
    stamps = [_numbers(b["ts"].cast(pa.int64()), np.int64) for b in batches]
    last = seen.get("ts")
    for ts in stamps:
        if (last is not None and ts[0] < last) or np.any(ts[1:] < ts[:-1]):
            raise ValueError("messages are not in processing order (ts decreases): stream_messages")
        last = seen["ts"] = ts[-1]
    chunks = []
    for batch, ts in zip(batches, stamps, strict=True):
        sides = [
            _side(batch[f"{side}_price"], batch[f"{side}_size"], side, row)
            for side in ("bid", "ask")
        ]
        snap, uid = (
            _numbers(batch[n], t) for n, t in (("is_snapshot", np.bool_), ("update_id", np.int64))
        )
        chunks.append(_Messages(snap, uid, ts, *sides[0], *sides[1]))
        row += len(batch)
    return chunks


def _chunks(parts: Iterable[pa.Table]) -> Iterator[_Messages]:
    """_flatten of each of a stream's consecutive tables, checked as their concatenation."""
    seen: dict[str, Any] = {}
    row = 0
    for part in parts:
        yield from _flatten(part, seen, row)
        row += len(part)


def _numbers(values: pa.Array, dtype: type) -> np.ndarray:
    """A numpy view of values (a copy for booleans or nulls)."""
    return np.ascontiguousarray(values.to_numpy(zero_copy_only=False), dtype)


def _side(
    prices: pa.Array, sizes: pa.Array, side: str, row: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One side's price and size lists of a batch (first row: `row` of the stream) -> kernel
    (offsets, prices, sizes): offsets of one list, the other's values shifted to match."""
    (px_off, px), (sz_off, sz) = _list_parts(prices), _list_parts(sizes)
    if not np.array_equal(px_off, sz_off):
        px_len, sz_len = np.diff(px_off), np.diff(sz_off)
        if not np.array_equal(px_len, sz_len):
            bad = row + int(np.flatnonzero(px_len != sz_len)[0])
            raise ValueError(f"row {bad}: {side}_price and {side}_size differ in length")
        shift = int(sz_off[0]) - int(px_off[0])
        if shift >= 0:
            sz = sz[shift:]
        else:
            px_off, px = sz_off, px[-shift:]
    return px_off, px, sz


def _list_parts(values: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """A list array -> (int32 offsets, float64 values), views of its buffers when it is a
    list<double> without null lists (a null list counts as empty)."""
    if not (pa.types.is_list(values.type) and values.type.value_type == pa.float64()):
        values = values.cast(pa.list_(pa.float64()))
    if values.null_count:  # a null list may span values of the child array
        values = values.fill_null(pa.scalar([], values.type))
    return values.offsets.to_numpy(), _numbers(values.values, np.float64)


def _int_column(values: np.ndarray) -> pa.Array:
    return pa.array(values, pa.int64(), mask=values == _MISSING)


def replay(
    messages: pa.Table, sample_ts: np.ndarray, levels: int = 10
) -> tuple[pa.Table, pa.Table, dict[str, int]]:
    """Replay one stream (processing order, see stream_messages) -> (samples, changes, counters).

    samples: one row per sample time (ascending ms): ts, bid/ask px/sz 1..levels (null past the
    book's depth), desynced (true before any snapshot), update_id and book_ts of the last applied
    message (null before any) — the book after every message with ts <= the sample time.
    changes: ts and desynced (before or after the message) of each message that moved the best
    bid or ask price. counters: see the module docstring.
    """
    return replay_parts([messages], sample_ts, levels)


def replay_parts(
    parts: Iterable[pa.Table], sample_ts: np.ndarray, levels: int = 10
) -> tuple[pa.Table, pa.Table, dict[str, int]]:
    """replay of one stream given as consecutive tables (read_stream's, say: each is replayed
    as it comes); the same result as replay of their concatenation."""
    if levels < 1:
        raise ValueError(f"levels must be >= 1, got {levels}")
    sample_ts = np.array(sample_ts, np.int64).reshape(-1)  # a writable copy: one signature
    if len(sample_ts) > 1 and np.any(sample_ts[1:] < sample_ts[:-1]):
        raise ValueError("sample_ts must be sorted ascending")
    book = OrderBook()
    samples = _new_samples(sample_ts, levels)
    ch_ts, ch_desync = _drive(book, _chunks(parts), samples)
    columns: dict[str, Any] = {"ts": pa.array(sample_ts, pa.int64())}
    for name, grid in zip(_SIDES, samples[1:5], strict=True):
        for k in range(levels):
            values = grid[k]
            columns[f"{name}_{k + 1}"] = pa.array(values, pa.float64(), mask=np.isnan(values))
    columns["desynced"] = pa.array(samples.desynced, pa.bool_())
    columns["update_id"] = _int_column(samples.uid)
    columns["book_ts"] = _int_column(samples.book_ts)
    changes = pa.table({"ts": pa.array(ch_ts, pa.int64()), "desynced": pa.array(ch_desync)})
    return pa.table(columns), changes, book.counters


def sample(book: OrderBook, ts: int, levels: int = 10) -> dict[str, Any]:
    """The live book as one `replay` samples row at time ts (same columns, same values)."""
    samples = _new_samples(np.array([ts], np.int64), levels)
    _drive(book, [], samples)
    row: dict[str, Any] = {"ts": int(ts)}
    for name, grid in zip(_SIDES, samples[1:5], strict=True):
        for k in range(levels):
            value = float(grid[k, 0])
            row[f"{name}_{k + 1}"] = None if math.isnan(value) else value
    row["desynced"] = bool(samples.desynced[0])
    for name, values in (("update_id", samples.uid), ("book_ts", samples.book_ts)):
        row[name] = None if values[0] == _MISSING else int(values[0])
    return row
