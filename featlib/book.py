"""Order book rebuilt from Bybit v5 snapshot + delta messages: one numba kernel serves batch
replay (a day of messages in one call) and the live service (one message at a time).

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
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from numba import njit

from featlib.schema import BOOK

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
# and goes back to `meta` whenever the kernel returns; helpers take the side as a constant and
# are inlined, so the bid and ask loops compile to straight code.


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
    its page in the table and a free slot. -> (old size, best, count, nfree)."""
    idx = (tick >> PAGE_BITS) - base
    off = tick & _MASK
    if size > 0.0:
        slot = pages[side, idx]
        if slot < 0:
            nfree -= 1
            slot = free[nfree]
            pages[side, idx] = slot
        old = pool[slot, off]
        pool[slot, off] = size
        if old == 0.0:
            cnt[slot] += 1
            count += 1
            if best < 0 or (tick > best if side == 0 else tick < best):
                best = tick
        return old, best, count, nfree
    if idx < 0 or idx >= pages.shape[1] or pages[side, idx] < 0:
        return 0.0, best, count, nfree
    slot = pages[side, idx]
    old = pool[slot, off]
    if old > 0.0:
        pool[slot, off] = 0.0
        cnt[slot] -= 1
        count -= 1
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


@njit(cache=True, inline="always")
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


@njit(cache=True, inline="always")
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
def _run(book, cursor, scale, msgs, out, ch_ts, ch_desync, undo):
    """Apply messages from cursor[0] on, sampling the book at out[0] (the state after every
    message with ts <= s) and recording best-price changes. Stops before a message the book
    must grow for (returns why; cursor[0] says which) and resumes there when called again."""
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
        stop = ts[i] if i < ts.shape[0] else np.iinfo(np.int64).max
        while j < sample_ts.shape[0] and sample_ts[j] < stop:
            _top(pages, pool, base, 0, scale, bb, nb, s_bpx[j], s_bsz[j])
            _top(pages, pool, base, 1, scale, ba, na, s_apx[j], s_asz[j])
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
    """One stream's messages as flat numpy arrays (levels of message i: off[i]:off[i+1])."""

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
    off = np.zeros(1, np.int64)
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
        self._one = (np.zeros(1, np.bool_), *(np.zeros(n, np.int64) for n in (1, 1, 2, 2)))

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
        _drive(self, message, _NO_SAMPLES, (np.empty(len(bpx)), np.empty(len(apx))))

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
    grids = [np.empty((n, levels), np.float64) for _ in range(4)]
    return _Samples(
        sample_ts, *grids, np.zeros(n, np.bool_), np.empty(n, np.int64), np.empty(n, np.int64)
    )


_NO_SAMPLES = _new_samples(np.empty(0, np.int64), 0)
_POW10_ARRAY = np.array(_POW10)


def _drive(
    book: OrderBook,
    m: _Messages,
    samples: _Samples,
    undo: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Run the kernel over messages, growing the book whenever it stops before a message; fills
    samples, returns the best-price changes (ts, desynced). undo: scratch for the most bid and
    ask levels in one message."""
    ch_ts = np.empty(len(m.ts), np.int64)
    ch_desync = np.empty(len(m.ts), np.bool_)
    if undo is None:
        undo = (np.empty(_longest(m.boff)), np.empty(_longest(m.aoff)))
    cursor = np.zeros(3, np.int64)
    msgs = tuple(map(_readonly, m))  # Arrow buffers are read-only: one compiled signature
    while True:
        state = (book._meta, book._pages, book._pool, book._cnt, book._free)
        scale = _POW10[int(book._meta[_DEC])]
        status = _run(state, cursor, scale, msgs, tuple(samples), ch_ts, ch_desync, undo)
        if status == _DONE:
            break
        i = int(cursor[0])
        prices = np.concatenate(
            [m.bpx[m.boff[i] : m.boff[i + 1]], m.apx[m.aoff[i] : m.aoff[i + 1]]]
        )
        if status == _NEED_SCALE:
            decimals = _decimals(prices, int(book._meta[_DEC]), _POW10_ARRAY)
            if decimals < 0:
                raise ValueError(
                    f"message {i} (u={int(m.uid[i])}): its prices ({prices[:4].tolist()}...) are "
                    f"not positive decimals on one grid of at most {MAX_DECIMALS} places"
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
    n = int(cursor[2])
    return ch_ts[:n], ch_desync[:n]


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
    parts = []
    for table, is_snapshot in ((snapshots, True), (deltas, False)):
        missing = [n for n in REPLAY_COLUMNS if n not in table.column_names]
        if missing:
            raise ValueError(f"book messages lack the column(s) {missing}")
        schema = pa.schema([f for f in BOOK if f.name in table.column_names])
        rows = table.select(schema.names).cast(schema)
        rows = _only(rows, pc.equal(rows["symbol"], symbol))
        parts.append(rows.append_column("is_snapshot", pa.repeat(is_snapshot, len(rows))))
    both = pa.concat_tables(parts)
    if depth is None and len(both):
        depth = pc.max(both["depth"]).as_py()
    if depth is not None:
        both = _only(both, pc.equal(both["depth"], depth))
    order = pc.sort_indices(
        both.select(["ts", "update_id", "is_snapshot"]),
        [("ts", "ascending"), ("update_id", "ascending"), ("is_snapshot", "descending")],
    ).to_numpy()
    if np.array_equal(order, np.arange(len(order))):  # stored in order: skip moving the lists
        return both
    return both.take(order)


def _only(table: pa.Table, keep: pa.ChunkedArray) -> pa.Table:
    """table.filter(keep), without copying the level lists when every row is kept."""
    return table if pc.all(keep).as_py() is not False else table.filter(keep)


def _flatten(messages: pa.Table) -> _Messages:
    """Arrow list columns -> flat values + offsets (no per-message Python)."""
    for column in ("symbol", "depth"):  # (pc.unique on strings costs 10x this)
        values = messages[column] if column in messages.column_names else []
        if len(values) and not pc.all(pc.equal(values, values[0])).as_py():
            raise ValueError(f"replay takes one stream; messages hold several {column} values")
    ts = np.ascontiguousarray(messages["ts"].cast(pa.int64()).to_numpy(), np.int64)
    if len(ts) > 1 and np.any(ts[1:] < ts[:-1]):
        raise ValueError("messages are not in processing order (ts decreases): stream_messages")
    sides = []
    for side in ("bid", "ask"):
        lengths = [
            pc.list_value_length(messages[f"{side}_{what}"]).fill_null(0).to_numpy()
            for what in ("price", "size")
        ]
        if not np.array_equal(lengths[0], lengths[1]):
            row = int(np.flatnonzero(lengths[0] != lengths[1])[0])
            raise ValueError(f"row {row}: {side}_price and {side}_size differ in length")
        offsets = np.zeros(len(ts) + 1, np.int64)
        np.cumsum(lengths[0], out=offsets[1:])
        values = [
            np.ascontiguousarray(pc.list_flatten(messages[f"{side}_{what}"]).to_numpy(), np.float64)
            for what in ("price", "size")
        ]
        sides.append((offsets, *values))
    return _Messages(
        np.ascontiguousarray(messages["is_snapshot"].to_numpy(), np.bool_),
        np.ascontiguousarray(messages["update_id"].to_numpy(), np.int64),
        ts,
        *sides[0],
        *sides[1],
    )


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
    if levels < 1:
        raise ValueError(f"levels must be >= 1, got {levels}")
    sample_ts = np.array(sample_ts, np.int64).reshape(-1)  # a writable copy: one signature
    if len(sample_ts) > 1 and np.any(sample_ts[1:] < sample_ts[:-1]):
        raise ValueError("sample_ts must be sorted ascending")
    book = OrderBook()
    samples = _new_samples(sample_ts, levels)
    ch_ts, ch_desync = _drive(book, _flatten(messages), samples)
    columns: dict[str, Any] = {"ts": pa.array(sample_ts, pa.int64())}
    for name, grid in zip(_SIDES, samples[1:5], strict=True):
        for k in range(levels):
            values = np.ascontiguousarray(grid[:, k])
            columns[f"{name}_{k + 1}"] = pa.array(values, pa.float64(), mask=np.isnan(values))
    columns["desynced"] = pa.array(samples.desynced, pa.bool_())
    columns["update_id"] = _int_column(samples.uid)
    columns["book_ts"] = _int_column(samples.book_ts)
    changes = pa.table({"ts": pa.array(ch_ts, pa.int64()), "desynced": pa.array(ch_desync)})
    return pa.table(columns), changes, book.counters


def sample(book: OrderBook, ts: int, levels: int = 10) -> dict[str, Any]:
    """The live book as one `replay` samples row at time ts (same columns, same values)."""
    samples = _new_samples(np.array([ts], np.int64), levels)
    _drive(book, _NO_MESSAGES, samples)
    row: dict[str, Any] = {"ts": int(ts)}
    for name, grid in zip(_SIDES, samples[1:5], strict=True):
        for k in range(levels):
            value = float(grid[0, k])
            row[f"{name}_{k + 1}"] = None if math.isnan(value) else value
    row["desynced"] = bool(samples.desynced[0])
    for name, values in (("update_id", samples.uid), ("book_ts", samples.book_ts)):
        row[name] = None if values[0] == _MISSING else int(values[0])
    return row
