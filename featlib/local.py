"""The feature plan run in process, on small in-memory tables: what the live service uses.

featlib.compute compiles each source's Ibis expression to SQL for DuckDB, which is how datasets
are built. On the few hundred rows a live tick reads, DuckDB spends its time planning and setting
up operators (5-40 ms per source, whatever the size); this module evaluates the very same Ibis
expressions (the plan's `events` and `expr` nodes, not a second declaration) with numpy and a few
numba kernels, in a millisecond or two. It implements the operations the feature declarations
use and refuses any other with UnsupportedOperation, so a new construct cannot silently diverge.
tests/unit/test_local.py checks it against DuckDB on every source plan of every registry
version, on the real captures and on generated tables.

Semantics are DuckDB's where they differ from numpy's: SQL nulls (three-valued AND/OR, aggregates
ignore nulls, IF with a null condition takes the else branch), IEEE division (x/0 = ±inf, 0/0 =
NaN) with NaN equal to itself and greater than every number in comparisons, C remainder, RANGE
frames that include peer rows, FIRST_VALUE that keeps nulls, half-away-from-zero rounding into
decimals. DECIMAL(38, s) values are exact: integers scaled by 10**s, held as two int64 limbs
(value = hi * 2**31 + lo), so sums over any frame are exact and a window over a live buffer equals
the same window over a day of history bit for bit.

Tables are `Frame`s: columns of numpy values plus a validity mask (None: no nulls); timestamps
are int64 epoch milliseconds (epoch_ms is the identity), strings object arrays.
"""

from __future__ import annotations

import decimal
import functools
import math
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import ibis.expr.datatypes as dt
import ibis.expr.operations as ops
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from numba import njit

LIMB = 1 << 31
"""Decimals are hi * LIMB + lo in two int64 arrays (each limb's sums stay far inside int64)."""


class UnsupportedOperation(NotImplementedError):
    """An Ibis operation this executor does not implement (use DuckDB, or add it here)."""


@dataclass(frozen=True, slots=True)
class Col:
    values: np.ndarray
    """float64 / int64 / bool / object (strings); decimals: int64 of shape (n, 2)."""
    valid: np.ndarray | None = None
    """bool per row; None when every row is valid."""

    def mask(self, n: int) -> np.ndarray:
        if self.valid is None:
            return np.ones(n, np.bool_)
        if self.valid.ndim == 1:
            return self.valid
        return np.broadcast_to(self.valid, (n,))

    def take(self, index: np.ndarray | Index) -> Col:
        """Rows by index; -1 gives null."""
        at = index if isinstance(index, Index) else Index(index)
        n = len(at.index)
        if self.values.ndim == 0:  # a scalar: the same value at every row
            values = np.broadcast_to(self.values, (n,))
            valid = None if self.valid is None else np.broadcast_to(self.valid, (n,))
        elif len(self.values) == 0:
            values = np.zeros((n, *self.values.shape[1:]), self.values.dtype)
            return Col(values, np.zeros(n, np.bool_))
        else:
            values = self.values[at.safe]
            valid = None if self.valid is None else self.valid[at.safe]
        if at.found is not None:
            valid = at.found if valid is None else valid & at.found
        return Col(values, valid)


class Index:
    """Row numbers to gather (-1: none, a null row), checked once for every column."""

    __slots__ = ("found", "index", "safe")

    def __init__(self, index: np.ndarray):
        self.index = index
        missing = index < 0
        if missing.any():
            self.found, self.safe = ~missing, np.where(missing, 0, index)
        else:
            self.found, self.safe = None, index


@dataclass(frozen=True, slots=True)
class Frame:
    columns: dict[str, Col]
    n: int

    def take(self, index: np.ndarray) -> Frame:
        at = Index(index)
        return Frame({k: c.take(at) for k, c in self.columns.items()}, len(index))


# --- Arrow <-> Frame -------------------------------------------------------------------------


def from_arrow(table: pa.Table) -> Frame:
    """A Frame with the table's columns (timestamps -> epoch ms, decimals -> limbs)."""
    columns = {}
    for name, column in zip(table.column_names, table.columns, strict=True):
        columns[name] = _from_arrow_column(column)
    return Frame(columns, table.num_rows)


def _from_arrow_column(column: pa.ChunkedArray) -> Col:
    kind = column.type
    valid = None
    if column.null_count:
        valid = pc.is_valid(column).to_numpy(zero_copy_only=False)
    if pa.types.is_timestamp(kind):  # epoch ms, whatever the unit (DuckDB gives us)
        ticks = column.cast(pa.int64()).fill_null(0).to_numpy(zero_copy_only=False)
        if kind.unit == "s":
            values = ticks * 1000
        else:
            values = ticks // {"ms": 1, "us": 1000, "ns": 1_000_000}[kind.unit]
        return Col(np.asarray(values, np.int64), valid)
    if pa.types.is_decimal(kind):
        ints = [0 if v is None else int(v.scaleb(kind.scale)) for v in column.to_pylist()]
        return Col(_limbs(ints), valid)
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        # by the distinct values (few: symbols, sides): 4x faster than a Python list per row
        coded = column.combine_chunks().dictionary_encode()
        words = coded.dictionary.to_numpy(zero_copy_only=False)
        if not len(words):
            return Col(np.full(len(column), None, dtype=object), valid)
        at = coded.indices.fill_null(0).to_numpy(zero_copy_only=False)
        values = np.asarray(words, dtype=object)[at]
        if valid is not None:
            values[~valid] = None
        return Col(values, valid)
    if pa.types.is_floating(kind):
        values = column.cast(pa.float64()).to_numpy(zero_copy_only=False)
    elif pa.types.is_integer(kind):
        values = column.fill_null(0).cast(pa.int64()).to_numpy(zero_copy_only=False)
    elif pa.types.is_boolean(kind):
        values = column.fill_null(False).to_numpy(zero_copy_only=False).astype(np.bool_)
    elif pa.types.is_null(kind):
        return Col(np.zeros(len(column)), np.zeros(len(column), np.bool_))
    else:
        raise UnsupportedOperation(f"column type {kind}")
    return Col(np.asarray(values), valid)


def empty(schema: Mapping[str, dt.DataType]) -> Frame:
    """A table with no rows and these columns."""
    columns = {}
    for name, kind in schema.items():
        if kind.is_decimal():
            values = np.zeros((0, 2), np.int64)
        elif kind.is_floating():
            values = np.zeros(0, np.float64)
        elif kind.is_boolean():
            values = np.zeros(0, np.bool_)
        elif kind.is_string():
            values = np.zeros(0, object)
        else:  # integers, timestamps (epoch ms)
            values = np.zeros(0, np.int64)
        columns[name] = Col(values)
    return Frame(columns, 0)


def to_arrow(frame: Frame, schema: Mapping[str, dt.DataType]) -> pa.Table:
    """The frame as Arrow, columns typed as the expression's schema says."""
    arrays = {}
    for name, kind in schema.items():
        col = frame.columns[name]
        mask = None if col.valid is None else ~col.mask(frame.n)
        if kind.is_floating():
            values = np.broadcast_to(col.values, (frame.n,)).astype(np.float64)
            arrays[name] = pa.array(values, pa.float64(), mask=mask)
        elif kind.is_integer():
            arrays[name] = pa.array(np.broadcast_to(col.values, (frame.n,)), pa.int64(), mask=mask)
        elif kind.is_boolean():
            arrays[name] = pa.array(np.broadcast_to(col.values, (frame.n,)), pa.bool_(), mask=mask)
        elif kind.is_string():
            values = np.broadcast_to(col.values, (frame.n,)).tolist()
            arrays[name] = pa.array(values, pa.string(), mask=mask)
        elif kind.is_decimal():
            limbs = _full_values(col, frame.n)
            values = [
                decimal.Decimal(int(hi) * LIMB + int(lo)).scaleb(-kind.scale) for hi, lo in limbs
            ]
            arrays[name] = pa.array(values, pa.decimal128(kind.precision, kind.scale), mask=mask)
        else:
            raise UnsupportedOperation(f"output column {name} of type {kind}")
    return pa.table(arrays)


def _limbs(ints: list[int] | np.ndarray) -> np.ndarray:
    """Exact integers -> (n, 2) int64 limbs (a decimal scalar is one row: shape (1, 2))."""
    out = np.empty((len(ints), 2), np.int64)
    for i, v in enumerate(ints):
        hi, lo = divmod(int(v), LIMB)
        if not -(1 << 62) < hi < 1 << 62:
            raise OverflowError(f"decimal {v} beyond the executor's range")
        out[i] = hi, lo
    return out


def _decimal_to_float(values: np.ndarray, scale: int) -> np.ndarray:
    return (values[:, 0].astype(np.float64) * float(LIMB) + values[:, 1]) / 10.0**scale


# --- numba kernels: windows over sorted partitions -----------------------------------------


@njit(cache=True)
def _sliding_argmax(key, valid, lo, hi):
    """Per row: the index of the largest valid key in rows lo..hi (inclusive; -1: none). The
    frames' bounds never decrease (monotonic deque); ties keep the later row."""
    n = key.shape[0]
    out = np.full(n, -1, np.int64)
    dq = np.empty(n, np.int64)
    head, tail, nxt = 0, 0, 0
    for i in range(n):
        while nxt <= hi[i]:
            if valid[nxt]:
                while tail > head and key[dq[tail - 1]] <= key[nxt]:
                    tail -= 1
                dq[tail] = nxt
                tail += 1
            nxt += 1
        while tail > head and dq[head] < lo[i]:
            head += 1
        if tail > head and lo[i] <= hi[i]:
            out[i] = dq[head]
    return out


@njit(cache=True)
def _frame_std(values, valid, lo, hi, ddof):
    """Welford's standard deviation of the valid values in each frame (as DuckDB: identical
    values give exactly 0); NaN where fewer than ddof + 1 values."""
    n = values.shape[0]
    out = np.full(n, np.nan)
    ok = np.zeros(n, np.bool_)
    for i in range(n):
        count, mean, m2 = 0, 0.0, 0.0
        for j in range(lo[i], hi[i] + 1):
            if valid[j]:
                count += 1
                delta = values[j] - mean
                mean += delta / count
                m2 += delta * (values[j] - mean)
        if count > ddof:
            out[i] = math.sqrt(m2 / (count - ddof))
            ok[i] = True
    return out, ok


# --- the executor ---------------------------------------------------------------------------


class Executor:
    """Evaluates one Ibis expression's operation graph on Frames; build once per expression."""

    def __init__(self, expr: Any):
        self.node = expr.op() if hasattr(expr, "op") else expr

    def __call__(
        self, tables: Mapping[str, Frame], seed: Mapping[ops.Node, Any] | None = None
    ) -> Frame:
        """Evaluate with the UnboundTables named in `tables`; `seed` pre-sets the value of
        nodes (e.g. a subexpression computed earlier and kept)."""
        with np.errstate(all="ignore"):  # IEEE results (inf, NaN) are the values, as in DuckDB
            return _Run(tables, dict(seed or {})).rel(self.node)


class _Run:
    def __init__(self, tables: Mapping[str, Frame], memo: dict[ops.Node, Any]):
        self.tables = tables
        self.memo = memo

    # relations ------------------------------------------------------------------------------

    def rel(self, node: ops.Relation) -> Frame:
        hit = self.memo.get(node)
        if hit is None:
            method = _RELATIONS.get(type(node))
            if method is None:
                raise UnsupportedOperation(f"relation {type(node).__name__}")
            hit = self.memo[node] = method(self, node)
        return hit

    def _unbound(self, node: ops.UnboundTable) -> Frame:
        if node.name not in self.tables:
            raise KeyError(f"table {node.name!r} was not given")
        frame = self.tables[node.name]
        missing = [c for c in node.schema.names if c not in frame.columns]
        if missing:
            raise KeyError(f"table {node.name!r} lacks columns {missing}")
        return frame

    def _reference(self, node: ops.JoinReference) -> Frame:
        return self.rel(node.parent)

    def _project(self, node: ops.Project) -> Frame:
        parent = self.rel(node.parent)
        unnests = _unnests(node)
        if unnests:
            return self._project_unnest(node, parent, unnests)
        names, kept, computed = _projection(node)
        values = iter(self.values(computed, parent.n) if computed else ())
        columns = {}
        for name, column in zip(names, kept, strict=True):
            columns[name] = parent.columns[column] if column else _full(next(values), parent.n)
        return Frame(columns, parent.n)

    def _project_unnest(self, node: ops.Project, parent: Frame, unnests: list) -> Frame:
        (unnest,) = set(unnests)
        arrays = self.value(unnest.arg, parent.n)
        lengths = np.array([len(a) for a in arrays.values], np.int64)
        if arrays.valid is not None:
            lengths[~arrays.mask(parent.n)] = 0
        repeat = np.repeat(np.arange(parent.n), lengths)
        # the projection's values over the exploded rows: parent fields repeated, the unnested
        # elements in place of the UNNEST
        exploded = _Run(self.tables, {node.parent: parent.take(repeat)})
        parts = [a for a, k in zip(arrays.values, lengths, strict=True) if k]
        flat = np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)
        exploded.memo[unnest] = Col(flat)
        n = len(repeat)
        return Frame({k: exploded.full(v, n) for k, v in node.values.items()}, n)

    def _filter(self, node: ops.Filter) -> Frame:
        parent = self.rel(node.parent)
        keep = np.ones(parent.n, np.bool_)
        for predicate in node.predicates:
            col = self.value(predicate, parent.n)
            keep &= np.broadcast_to(col.values, (parent.n,)) & col.mask(parent.n)
        return parent if keep.all() else parent.take(np.flatnonzero(keep))

    def _drop(self, node: ops.DropColumns) -> Frame:
        parent = self.rel(node.parent)
        columns = {k: c for k, c in parent.columns.items() if k not in node.columns_to_drop}
        return Frame(columns, parent.n)

    def _sort(self, node: ops.Sort) -> Frame:
        parent = self.rel(node.parent)
        keys = [(self.value(k.arg, parent.n), k.ascending, k.nulls_first) for k in node.keys]
        order = _order(keys, parent.n)
        return parent if order is None else parent.take(order)

    def _distinct(self, node: ops.Distinct) -> Frame:
        parent = self.rel(node.parent)
        codes = _group_codes([parent.columns[k] for k in parent.columns], parent.n)
        _, first = np.unique(codes, return_index=True)
        return parent.take(np.sort(first))

    def _union(self, node: ops.Union) -> Frame:
        if node.distinct:
            raise UnsupportedOperation("UNION DISTINCT")
        left, right = self.rel(node.left), self.rel(node.right)
        names = list(node.schema.names)
        columns = {}
        for name in names:
            a, b = left.columns[name], right.columns[name]
            values = np.concatenate([_full_values(a, left.n), _full_values(b, right.n)])
            if a.valid is None and b.valid is None:
                valid = None
            else:
                valid = np.concatenate([a.mask(left.n), b.mask(right.n)])
            columns[name] = Col(values, valid)
        return Frame(columns, left.n + right.n)

    def _aggregate(self, node: ops.Aggregate) -> Frame:
        parent = self.rel(node.parent)
        keys = [self.value(v, parent.n) for v in node.groups.values()]
        order = _order([(k, True, False) for k in keys], parent.n)
        starts = _starts([_take_all(k, order, parent.n) for k in keys], parent.n)
        firsts = starts if order is None else order[starts]
        columns = {k: c.take(firsts) for k, c in zip(node.groups, keys, strict=True)}
        for name, metric in node.metrics.items():
            columns[name] = self._reduce(metric, parent, order, starts)
        return Frame(columns, len(starts))

    def _reduce(
        self, op: ops.Value, parent: Frame, order: np.ndarray | None, starts: np.ndarray
    ) -> Col:
        """One aggregate per group: groups are runs (from `starts`) of the rows taken in
        `order` (None: as they are)."""
        n, groups = parent.n, len(starts)
        if groups == 0:
            empty = np.zeros((0, 2), np.int64) if op.dtype.is_decimal() else np.zeros(0)
            return Col(empty)
        if getattr(op, "where", None) is not None:
            raise UnsupportedOperation(f"{type(op).__name__} with where=")
        if isinstance(op, ops.CountStar):
            return Col(np.diff(np.append(starts, n)).astype(np.int64))
        arg = self.value(op.arg, n)
        valid = arg.mask(n) if order is None else arg.mask(n)[order]
        every = arg.valid is None or bool(valid.all())
        sizes = np.diff(np.append(starts, n))
        present = sizes if every else np.add.reduceat(valid.astype(np.int64), starts)
        if isinstance(op, ops.Count):
            return Col(present)
        values = _full_values(arg, n) if order is None else _full_values(arg, n)[order]
        if isinstance(op, ops.Sum):
            zero = np.zeros_like(values[:1])
            kept = values if every else np.where(_rows(valid, values), values, zero)
            total = np.add.reduceat(kept, starts, axis=0)
            if not op.dtype.is_decimal() and values.dtype == np.bool_:
                total = total.astype(np.int64)
            return Col(total, present > 0)
        if isinstance(op, ops.Min | ops.Max):
            big = np.inf if values.dtype.kind == "f" else np.iinfo(np.int64).max
            fill = big if isinstance(op, ops.Min) else -big
            ufunc = np.minimum if isinstance(op, ops.Min) else np.maximum
            return Col(ufunc.reduceat(np.where(valid, values, fill), starts), present > 0)
        if isinstance(op, ops.First):
            return self._first_ordered(op, parent, order, starts, values, valid)
        raise UnsupportedOperation(f"aggregate {type(op).__name__}")

    def _first_ordered(self, op, parent, order, starts, values, valid) -> Col:
        """FIRST(arg ORDER BY keys) FILTER (WHERE arg IS NOT NULL) per group."""
        n = parent.n
        keys = [
            (_take_all(self.value(k.arg, n), order, n), k.ascending, k.nulls_first)
            for k in op.order_by
        ]
        # (a per-group maximum by the keys; groups are runs of rows in `order`)
        usable = valid if not op.include_null else np.ones(n, np.bool_)
        ordered = _run_order(keys, starts, n)
        if ordered:  # the rows already run in (or strictly against) the keys' order
            position = np.where(usable, np.arange(n), -1 if ordered < 0 else n)
            reduce = np.maximum if ordered < 0 else np.minimum
            first = reduce.reduceat(position, starts)
            found = (first >= 0) & (first < n)
            first = np.where(found, first, 0)
            return Col(values[first], found & usable[first])
        # rank rows: usable first, then by the sort keys, within each group
        group = np.repeat(np.arange(len(starts)), np.diff(np.append(starts, n)))
        rank = _lexsort(
            [(Col(group), n, True, False), (Col(~usable), n, True, False)]
            + [(c, n, asc, nf) for c, asc, nf in keys]
        )
        sorted_group = group[rank]
        first = rank[_starts([Col(sorted_group)], n)]
        return Col(values[first], usable[first])

    def _join(self, node: ops.JoinChain) -> Frame:
        # per joined table: the row of it each joined row reads (-1: none); None while that is
        # row i for row i (the left side of joins that matched at most one row each)
        n = self.rel(node.first).n
        index: dict[ops.Node, np.ndarray | None] = {node.first: None}
        for link in node.rest:
            right = self.rel(link.table)
            equal, asof = [], None
            for predicate in link.predicates:
                sides = self._sides(predicate, link.table)
                if isinstance(predicate, ops.Equals):
                    equal.append(sides)
                elif isinstance(predicate, ops.GreaterEqual) and link.how == "asof":
                    asof = sides
                else:
                    raise UnsupportedOperation(f"join predicate {type(predicate).__name__}")
            prepared = {ref: None if idx is None else Index(idx) for ref, idx in index.items()}
            left_keys = [self._joined_value(e, prepared, n) for e, _ in equal]
            right_keys = [self.value(e, right.n) for _, e in equal]
            if link.how == "asof":
                lhs = self._joined_value(asof[0], prepared, n)
                rhs = self.value(asof[1], right.n)
                li, ri = _asof_match(left_keys, right_keys, lhs, rhs, n, right.n)
            elif link.how in ("left", "inner", "outer"):
                li, ri = _equi_match(left_keys, right_keys, n, right.n, link.how)
            else:
                raise UnsupportedOperation(f"{link.how} join")
            if len(li) != n or (li != np.arange(n)).any():
                index = {
                    ref: li if idx is None else _gather_index(idx, li) for ref, idx in index.items()
                }
            index[link.table] = ri
            n = len(li)
        index = {ref: None if idx is None else Index(idx) for ref, idx in index.items()}
        return Frame({k: self._joined_value(v, index, n) for k, v in node.values.items()}, n)

    def _sides(self, predicate: ops.Value, right: ops.Node) -> tuple[ops.Value, ops.Value]:
        """(left side, right side) of a binary join predicate."""
        left, other = predicate.left, predicate.right
        if _references(left) == {right}:
            left, other = other, left
            if isinstance(predicate, ops.GreaterEqual):
                raise UnsupportedOperation("asof predicate with the right table on the left")
        if _references(other) != {right}:
            raise UnsupportedOperation("join predicate not between the tables")
        return left, other

    def _joined_value(self, node: ops.Value, index: Mapping, n: int) -> Col:
        """A value over the joined rows: each table's fields gathered by its index."""
        if isinstance(node, ops.Field):
            return _gather(self.rel(node.rel).columns[node.name], index[node.rel])
        joined = _Run(self.tables, {})
        needed: dict[ops.Node, set[str]] = defaultdict(set)
        for field in _fields(node):
            needed[field.rel].add(field.name)
        for rel, names in needed.items():  # each table as its gathered rows (the used columns)
            columns = self.rel(rel).columns
            joined.memo[rel] = Frame({k: _gather(columns[k], index[rel]) for k in names}, n)
        return joined.full(node, n)

    # values ---------------------------------------------------------------------------------

    def full(self, node: ops.Value, n: int) -> Col:
        """The value as n rows (scalars broadcast)."""
        return _full(self.value(node, n), n)

    def value(self, node: ops.Value, n: int) -> Col:
        hit = self.memo.get(node)
        if hit is None:
            (hit,) = _compiled((node,))(self, n)
            self.memo[node] = hit
        return hit

    def values(self, nodes: tuple[ops.Value, ...], n: int) -> tuple[Col, ...]:
        """Several values of one relation at once (shared subexpressions computed once)."""
        return _compiled(nodes)(self, n)

    def leaf(self, node: ops.Value) -> Col:
        """A field (or a value set in the memo, e.g. an UNNEST's elements)."""
        hit = self.memo.get(node)
        if hit is not None:
            return hit
        if isinstance(node, ops.Field):
            return self.rel(node.rel).columns[node.name]
        raise UnsupportedOperation(f"{type(node).__name__} outside a projection")

    def window(self, node: ops.WindowFunction, n: int) -> Col:
        hit = self.memo.get(node)
        if hit is None:
            hit = self.memo[node] = self._window(node, n)
        return hit

    def _window(self, node: ops.WindowFunction, n: int) -> Col:
        func = node.func
        rel = _relation_of(node)
        rows = self.rel(rel).n if rel is not None else n
        order, part_start, part_end = self._partitions(node, rows)
        if isinstance(func, ops.RowNumber):
            return _unsort(Col(np.arange(rows) - part_start), order)
        if isinstance(func, ops.Lag):
            offset = 1 if func.offset is None else int(func.offset.value)
            if func.default is not None:
                raise UnsupportedOperation("LAG with a default")
            source = np.arange(rows) - offset
            source[source < part_start] = -1
            arg = _take_all(self.value(func.arg, rows), order, rows)
            return _unsort(arg.take(source), order)
        lo, hi = self._frame(node, rows, order, part_start, part_end)
        return _unsort(self._frame_function(func, rows, order, lo, hi), order)

    def _partitions(self, node: ops.WindowFunction, rows: int):
        """Row order, and each sorted row's partition start and end, for the window's
        PARTITION BY / ORDER BY (shared by every window over the same ones)."""
        spec = ("partitions", node.group_by, node.order_by, rows)
        hit = self.memo.get(spec)
        if hit is None:
            groups = [self.value(g, rows) for g in node.group_by]
            keys = [(self.value(k.arg, rows), k.ascending, k.nulls_first) for k in node.order_by]
            order = _order([(g, True, False) for g in groups] + keys, rows)
            starts = _starts([_take_all(g, order, rows) for g in groups], rows)
            if not rows:
                empty = np.zeros(0, np.int64)
                hit = self.memo[spec] = (None, empty, empty)
                return hit
            sizes = np.diff(np.append(starts, rows))
            part_start = np.repeat(starts, sizes)
            part_end = np.repeat(np.append(starts[1:], rows) - 1, sizes)
            hit = self.memo[spec] = (order, part_start, part_end)
        return hit

    def _frame(self, node, rows, order, part_start, part_end):
        """Inclusive frame bounds (in sorted order) per row."""
        spec = ("frame", node.how, node.start, node.end, node.group_by, node.order_by, rows)
        hit = self.memo.get(spec)
        if hit is None:
            hit = self.memo[spec] = self._bounds(node, rows, order, part_start, part_end)
        return hit

    def _bounds(self, node, rows, order, part_start, part_end):
        position = np.arange(rows)
        if node.how == "rows":
            lo = part_start if node.start is None else position - _bound(node.start)
            hi = part_end if node.end is None else position - _bound(node.end)
            return np.maximum(lo, part_start), np.minimum(hi, part_end)
        if len(node.order_by) != 1:
            raise UnsupportedOperation("RANGE frame without exactly one order key")
        sort_key = node.order_by[0]
        key = self.value(sort_key.arg, rows)
        if not sort_key.ascending or not key.mask(rows).all() or key.values.dtype.kind not in "iu":
            raise UnsupportedOperation("RANGE frame over a descending, nullable or float key")
        k = np.asarray(_full_values(_take_all(key, order, rows), rows), np.int64)
        if not rows:
            return part_start, part_end
        # one ascending key over all partitions: partition number * far + key, far wider than
        # any key span plus frame, so a search never leaves the row's partition
        bounds = [abs(_bound(b)) for b in (node.start, node.end) if b is not None]
        far = int(k.max() - k.min()) + sum(bounds) + 1
        new = np.zeros(rows, np.int64)
        new[1:] = part_start[1:] != part_start[:-1]
        combined = np.cumsum(new) * far + (k - k.min())
        lo = part_start
        if node.start is not None:
            lo = np.searchsorted(combined, combined - _bound(node.start), side="left")
        hi = part_end
        if node.end is not None:  # peers of the end row are in (RANGE ... CURRENT ROW)
            hi = np.searchsorted(combined, combined - _bound(node.end), side="right") - 1
        return np.maximum(lo, part_start), np.minimum(hi, part_end)

    def _frame_function(self, func, rows, order, lo, hi) -> Col:
        size = hi - lo + 1
        empty = size <= 0
        if isinstance(func, ops.CountStar):
            return Col(np.maximum(size, 0))
        arg = _take_all(self.value(func.arg, rows), order, rows)
        valid = arg.mask(rows)
        if getattr(func, "where", None) is not None:
            raise UnsupportedOperation(f"window {type(func).__name__} with where=")
        if isinstance(func, ops.Count):
            if arg.valid is None:
                return Col(np.maximum(size, 0))
            _, counts = self._prefix(func.arg, arg, order, rows)
            return Col(_between(counts, lo, hi))
        values = _full_values(arg, rows)
        if isinstance(func, ops.First):  # FIRST_VALUE: the frame's first row, null kept
            return arg.take(np.where(empty, -1, lo))
        if isinstance(func, ops.Sum | ops.Mean):
            sums, counts = self._prefix(func.arg, arg, order, rows)
            total = _between(sums, lo, hi)
            count = np.maximum(size, 0) if counts is None else _between(counts, lo, hi)
            if isinstance(func, ops.Sum):
                if values.dtype == np.bool_:
                    total = total.astype(np.int64)
                return Col(total, count > 0)
            if values.ndim == 2:
                raise UnsupportedOperation("mean of decimals")
            return Col(total / np.maximum(count, 1), count > 0)
        if isinstance(func, ops.StandardDev):
            ddof = {"sample": 1, "pop": 0}[func.how]
            std, ok = _frame_std(values.astype(np.float64), valid, lo, hi, ddof)
            return Col(std, ok)
        if isinstance(func, ops.Max | ops.Min):
            key = values if isinstance(func, ops.Max) else -values
            at = _sliding_argmax(_sortable(key), valid, lo, np.where(empty, lo - 1, hi))
            return arg.take(at)
        if getattr(func, "__func_name__", None) == "arg_max":
            key = _take_all(self.value(func.key, rows), order, rows)
            usable = valid & key.mask(rows)
            k = _sortable(_full_values(key, rows))
            at = _sliding_argmax(k, usable, lo, np.where(empty, lo - 1, hi))
            return arg.take(at)
        raise UnsupportedOperation(f"window function {type(func).__name__}")

    def _prefix(self, node: ops.Value, arg: Col, order, rows: int):
        """Prefix sums of a column's values (nulls as 0) and of its non-null rows (None when
        it has no nulls), in window order: shared by every frame summing that column."""
        key = ("prefix", node, None if order is None else id(order), rows)
        hit = self.memo.get(key)
        if hit is None:
            values = _full_values(arg, rows)
            if arg.valid is not None:
                valid = arg.mask(rows)
                values = np.where(_rows(valid, values), values, np.zeros_like(values[:1]))
                counts = _prefix_sums(valid.astype(np.int64))
            else:
                counts = None
            if values.dtype == np.bool_:
                values = values.astype(np.int64)
            hit = self.memo[key] = (_prefix_sums(values), counts, order)
        return hit[0], hit[1]

    def _integer_range(self, node: ops.IntegerRange, n: int) -> Col:
        start, stop, step = (self.full(x, n) for x in (node.start, node.stop, node.step))
        values = np.empty(n, dtype=object)
        for i in range(n):
            values[i] = np.arange(start.values[i], stop.values[i], step.values[i], dtype=np.int64)
        valid = start.mask(n) & stop.mask(n) & step.mask(n)
        return Col(values, None if valid.all() else valid)


def _bound(boundary: ops.WindowBoundary) -> int:
    """Rows (or key units) before the current row: preceding positive, following negative."""
    value = boundary.value.value
    return int(value) if boundary.preceding else -int(value)


def _prefix_sums(values: np.ndarray) -> np.ndarray:
    """0, v0, v0+v1, ...: sums over frames are differences (exact for integers and decimal
    limbs; floats within their rounding)."""
    prefix = np.empty((len(values) + 1, *values.shape[1:]), values.dtype)
    prefix[0] = 0
    np.cumsum(values, axis=0, out=prefix[1:])
    return prefix


def _between(prefix: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Sums over the inclusive frames lo..hi (empty frames: 0)."""
    return prefix[np.maximum(hi, lo - 1) + 1] - prefix[lo]


def _sortable(values: np.ndarray) -> np.ndarray:
    """Keys for the deque kernel: floats with NaN largest (as DuckDB orders them)."""
    if values.dtype.kind == "f":
        return np.where(np.isnan(values), np.inf, values).astype(np.float64)
    return values.astype(np.float64) if values.dtype.kind == "b" else values


def _rows(valid: np.ndarray, values: np.ndarray) -> np.ndarray:
    return valid[:, None] if values.ndim == 2 else valid


def _full_values(col: Col, n: int) -> np.ndarray:
    """The column's values as n rows (a scalar broadcast; decimal scalars are one limb row)."""
    values = col.values
    if values.ndim == 0 or values.shape[0] != n:
        return np.broadcast_to(values, (n, *values.shape[1:]))
    return values


def _to_decimal(
    values: np.ndarray, src: dt.DataType, scale: int, valid: np.ndarray | None = None
) -> np.ndarray:
    """Numbers -> decimal limbs as DuckDB casts them: x * 10**scale rounded half away from 0
    (null rows: 0)."""
    values = np.atleast_1d(np.asarray(values))
    if valid is not None:
        values = np.where(np.broadcast_to(valid, values.shape), values, 0)
    if src.is_integer() or src.is_boolean():
        return _limbs([int(v) * 10**scale for v in values.tolist()])
    if not src.is_floating():
        raise UnsupportedOperation(f"cast {src} -> decimal")
    x = values.astype(np.float64) * 10.0**scale
    if not np.isfinite(x).all() or np.any(np.abs(x) >= 2.0**62):
        raise OverflowError(f"a value beyond DECIMAL(38, {scale}) in the executor's range")
    big = np.abs(x) >= 2.0**52  # already an integer, where adding 0.5 could round up
    ints = np.where(big, x, np.sign(x) * np.floor(np.abs(x) + 0.5)).astype(np.int64)
    hi = np.floor_divide(ints, LIMB)
    return np.stack([hi, ints - hi * LIMB], axis=1)


def _nan_compare(op: Callable) -> Callable:
    """A comparison with DuckDB's NaN: equal to itself and greater than any number."""

    def compare(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        if x.dtype.kind != "f" and y.dtype.kind != "f":
            return op(x, y)
        xn, yn = np.isnan(x), np.isnan(y)
        if not (xn.any() or yn.any()):
            return op(x, y)
        plain = op(x, y)
        # where a NaN takes part, compare ranks instead: NaN 1, a number 0
        return np.where(xn | yn, op(xn.astype(np.int8), yn.astype(np.int8)), plain)

    return compare


def _c_mod(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.fmod(x, y)


def _floor_div(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.floor(np.true_divide(x, y)).astype(np.int64)


_ARITHMETIC = {
    ops.Add: np.add,
    ops.Subtract: np.subtract,
    ops.Multiply: np.multiply,
    ops.Divide: np.true_divide,
    ops.FloorDivide: _floor_div,
    ops.Modulus: _c_mod,
}
_COMPARE = {
    ops.Equals: _nan_compare(np.equal),
    ops.NotEquals: _nan_compare(np.not_equal),
    ops.Greater: _nan_compare(np.greater),
    ops.GreaterEqual: _nan_compare(np.greater_equal),
    ops.Less: _nan_compare(np.less),
    ops.LessEqual: _nan_compare(np.less_equal),
}
_UNARY = {ops.Abs: np.abs, ops.Sin: np.sin, ops.Cos: np.cos, ops.Negate: np.negative}


@functools.cache
def _fields(node: ops.Value) -> tuple[ops.Field, ...]:
    """The fields a value reads (not looking inside their relations); nodes are immutable, so
    this is worked out once per node."""
    return tuple(node.find(ops.Field, filter=ops.Value))


@functools.cache
def _references(node: ops.Value) -> frozenset[ops.Node]:
    """The relations whose fields a value reads."""
    return frozenset(f.rel for f in _fields(node))


@functools.cache
def _projection(node: ops.Project) -> tuple[tuple[str, ...], tuple[str | None, ...], tuple]:
    """Column names; per column the parent column it passes through unchanged (or None); the
    values to compute for the others, in order."""
    names, kept, computed = [], [], []
    for name, value in node.values.items():
        names.append(name)
        passes = isinstance(value, ops.Field) and value.rel == node.parent
        kept.append(value.name if passes else None)
        if not passes:
            computed.append(value)
    return tuple(names), tuple(kept), tuple(computed)


@functools.cache
def _unnests(node: ops.Project) -> tuple[ops.Unnest, ...]:
    return tuple(u for v in node.values.values() for u in v.find(ops.Unnest, filter=ops.Value))


def _relation_of(node: ops.WindowFunction) -> ops.Node | None:
    rels = _references(node)
    if len(rels) > 1:
        raise UnsupportedOperation("a window over several tables")
    return next(iter(rels), None)


def _gather(col: Col, index: Index | None) -> Col:
    return col if index is None else col.take(index)


def _gather_index(idx: np.ndarray, li: np.ndarray) -> np.ndarray:
    out = np.where(li < 0, -1, idx[np.where(li < 0, 0, li)]) if len(idx) else np.full(len(li), -1)
    return out


def _unsort(col: Col, order: np.ndarray | None) -> Col:
    if order is None:
        return col
    inverse = np.empty_like(order)
    inverse[order] = np.arange(len(order))
    return col.take(inverse)


def _order(keys: list[tuple[Col, bool, bool]], n: int) -> np.ndarray | None:
    """The row order sorting by keys (None: the rows are in that order already, as the live
    buffers and most intermediate tables are)."""
    if not keys or n < 2 or _sorted(keys, n):
        return None
    return _lexsort([(c, n, asc, nf) for c, asc, nf in keys])


def _sorted(keys: list[tuple[Col, bool, bool]], n: int) -> bool:
    """Rows already ordered by the keys (no nulls among them; ties broken by later keys)."""
    tied = np.ones(n - 1, np.bool_)
    for col, ascending, _ in keys:
        if col.valid is not None and not col.mask(n).all():
            return False
        values = _full_values(col, n)
        if values.ndim == 2 or (values.dtype.kind == "f" and np.isnan(values).any()):
            return False
        a, b = values[:-1], values[1:]
        step = (a < b) if ascending else (a > b)
        same = a == b
        if (tied & ~step & ~same).any():
            return False
        tied &= same
        if not tied.any():
            return True
    return True


def _run_order(keys: list[tuple[Col, bool, bool]], starts: np.ndarray, n: int) -> int:
    """Within each group (runs from `starts`), whether the rows are in the keys' order (1:
    ties kept in row order, as a stable sort would), strictly in reverse (-1), or neither
    (0). Keys with nulls: 0. Later keys are compared only where the earlier ones tie."""
    pairs = np.ones(max(n - 1, 0), np.bool_)
    pairs[starts[1:] - 1] = False  # a pair across a group boundary is not compared
    tied = np.flatnonzero(pairs)
    forward = backward = False
    for col, ascending, _ in keys:
        if not len(tied):
            break
        values = _full_values(col, n)
        if (col.valid is not None and not col.mask(n).all()) or values.ndim == 2:
            return 0
        a, b = values[tied], values[tied + 1]
        if values.dtype.kind == "f" and (np.isnan(a).any() or np.isnan(b).any()):
            return 0
        before, after = (a < b, a > b) if ascending else (a > b, a < b)
        forward |= bool(before.any())
        backward |= bool(after.any())
        if forward and backward:
            return 0
        tied = tied[~(before | after)]
    if not backward:
        return 1
    return -1 if not len(tied) else 0


def _take_all(col: Col, order: np.ndarray | None, n: int) -> Col:
    return col if order is None else Col(_full_values(col, n), col.valid).take(order)


def _starts(cols: list[Col], n: int) -> np.ndarray:
    """First row of each run of equal key values (rows sorted by the keys)."""
    if n == 0:
        return np.zeros(0, np.int64)
    new = np.zeros(n, np.bool_)
    new[0] = True
    for col in cols:
        values = _full_values(col, n)
        if values.ndim == 2:
            differ = (values[1:] != values[:-1]).any(axis=1)
        else:
            differ = np.asarray(values[1:] != values[:-1], np.bool_)
            if values.dtype.kind == "f":
                differ &= ~(np.isnan(values[1:]) & np.isnan(values[:-1]))
        if col.valid is not None:
            mask = col.mask(n)
            differ = (differ & mask[1:] & mask[:-1]) | (mask[1:] != mask[:-1])
        new[1:] |= differ
    return np.flatnonzero(new)


def _lexsort(keys: list[tuple[Col, int, bool, bool]]) -> np.ndarray:
    """Stable row order by keys (first key most significant), SQL null placement."""
    if not keys:
        n = 0
        return np.arange(n)
    n = keys[0][1]
    columns = []
    for col, _, ascending, nulls_first in keys:
        codes = _sort_keys(col, n)
        if not ascending:  # order-reversing: ~ on integers (no overflow), - on floats
            codes = -codes if codes.dtype.kind == "f" else ~codes
        null = ~col.mask(n)
        # nulls_first: nulls sort before; else after (in either direction)
        null_key = np.where(null, 0 if nulls_first else 1, 1 if nulls_first else 0)
        columns.append((codes, null_key))
    flat = []
    for codes, null_key in reversed(columns):
        flat += [codes, null_key]
    return np.lexsort(flat) if flat else np.arange(n)


def _sort_keys(col: Col, n: int) -> np.ndarray:
    """Values that sort as the column's do (int64 or float64; nulls: any value): the numbers
    themselves (NaN largest, as DuckDB orders it), sorted codes for strings and decimals."""
    values = _full_values(col, n)
    if values.ndim == 1 and values.dtype.kind in "ib":  # (uint64 could pass int64's range)
        return values.astype(np.int64)
    if values.ndim == 1 and values.dtype.kind == "f":
        return np.where(np.isnan(values), np.inf, values)
    return _codes(col, n).astype(np.int64)


def _codes(col: Col, n: int) -> np.ndarray:
    """Order-preserving integer codes of a column's values (nulls: any code)."""
    values = _full_values(col, n)
    if values.ndim == 2:  # decimal limbs: order by the value
        values = values[:, 0].astype(np.float64) * float(LIMB) + values[:, 1]
    if values.dtype.kind == "f":
        values = np.where(np.isnan(values), np.inf, values)
    if col.valid is not None:
        mask = col.mask(n)
        fill = values[mask][0] if mask.any() else values[:1]
        values = np.where(mask, values, fill) if len(values) else values
    # hashing, then sorting only the distinct values: strings are not sorted row by row
    return pd.factorize(np.ascontiguousarray(values), sort=True)[0].astype(np.int64)


def _group_codes(cols: list[Col], n: int) -> np.ndarray:
    """One int64 code per distinct combination of the columns' values (null is a value)."""
    code = np.zeros(n, np.int64)
    for col in cols:
        part = _codes(col, n)
        part = np.where(col.mask(n), part + 1, 0)
        code = code * (int(part.max(initial=0)) + 1) + part
        _, code = np.unique(code, return_inverse=True)
        code = code.reshape(-1).astype(np.int64)
    return code


def _key_codes(left: list[Col], right: list[Col], ln: int, rn: int):
    """Joint codes of the left and right key columns (-1: a null key, which matches nothing)."""
    lcode, rcode = np.zeros(ln, np.int64), np.zeros(rn, np.int64)
    lnull, rnull = np.zeros(ln, np.bool_), np.zeros(rn, np.bool_)
    for a, b in zip(left, right, strict=True):
        av, bv = _full_values(a, ln), _full_values(b, rn)
        both = np.concatenate([av, bv])
        if both.dtype.kind == "f":
            both = np.where(np.isnan(both), np.inf, both)
        codes = pd.factorize(both)[0].astype(np.int64)  # hashing: no sort of strings
        width = int(codes.max(initial=0)) + 1
        lcode, rcode = lcode * width + codes[:ln], rcode * width + codes[ln:]
        lnull |= ~a.mask(ln)
        rnull |= ~b.mask(rn)
    return np.where(lnull, -1, lcode), np.where(rnull, -1, rcode)


def _equi_match(left, right, ln, rn, how):
    lcode, rcode = _key_codes(left, right, ln, rn)
    order = np.argsort(rcode, kind="stable")
    sorted_r = rcode[order]
    first = np.searchsorted(sorted_r, lcode, side="left")
    last = np.searchsorted(sorted_r, lcode, side="right")
    counts = np.where(lcode < 0, 0, last - first)
    if how == "left" and (counts <= 1).all():  # each left row matched at most once
        if not rn:
            return np.arange(ln), np.full(ln, -1, np.int64)
        return np.arange(ln), np.where(counts == 1, order[np.minimum(first, rn - 1)], -1)
    li = np.repeat(np.arange(ln), counts)
    before = np.cumsum(counts) - counts
    offsets = np.repeat(first - before, counts)
    ri = order[np.arange(len(li)) + offsets] if len(li) else np.zeros(0, np.int64)
    if how == "inner":
        return li, ri
    lone = np.flatnonzero(counts == 0)
    li = np.concatenate([li, lone])
    ri = np.concatenate([ri, np.full(len(lone), -1)])
    if how == "outer":
        matched = np.zeros(rn, np.bool_)
        matched[ri[ri >= 0]] = True
        extra = np.flatnonzero(~matched)
        li = np.concatenate([li, np.full(len(extra), -1)])
        ri = np.concatenate([ri, extra])
    order = np.lexsort((ri, np.where(li < 0, ln, li)))
    return li[order], ri[order]


def _asof_match(left, right, lhs: Col, rhs: Col, ln: int, rn: int):
    """Each left row with the right row of equal keys and the largest rhs <= lhs (-1: none)."""
    lcode, rcode = _key_codes(left, right, ln, rn)
    lv, rv = _full_values(lhs, ln), _full_values(rhs, rn)
    _, rank = np.unique(np.concatenate([lv, rv]), return_inverse=True)
    rank = rank.reshape(-1).astype(np.int64)
    width = int(rank.max(initial=0)) + 1
    lkey, rkey = lcode * width + rank[:ln], rcode * width + rank[ln:]
    usable = np.flatnonzero((rcode >= 0) & rhs.mask(rn))
    order = usable[np.argsort(rkey[usable], kind="stable")]
    ri = np.full(ln, -1, np.int64)
    if len(order):
        at = np.searchsorted(rkey[order], lkey, side="right") - 1
        candidate = order[np.maximum(at, 0)]
        found = (at >= 0) & (lcode >= 0) & lhs.mask(ln) & (rcode[candidate] == lcode)
        ri = np.where(found, candidate, -1)
    return np.arange(ln), ri


_RELATIONS: dict[type, Callable] = {
    ops.UnboundTable: _Run._unbound,
    ops.JoinReference: _Run._reference,
    ops.Project: _Run._project,
    ops.Filter: _Run._filter,
    ops.DropColumns: _Run._drop,
    ops.Sort: _Run._sort,
    ops.Distinct: _Run._distinct,
    ops.Union: _Run._union,
    ops.Aggregate: _Run._aggregate,
    ops.JoinChain: _Run._join,
}


# --- values: each group of value nodes compiled once into straight-line numpy code -----------


@functools.cache
def _compiled(roots: tuple[ops.Value, ...]) -> Callable[[_Run, int], tuple[Col, ...]]:
    """A function (run, n) -> the roots' columns: one numpy statement per node of the value DAG
    (in dependency order, shared nodes once), fields / windows / memo entries read from the run.
    Compiled once per node group; the generated source is kept on the function (`__source__`)."""
    return _Compiler(roots).build()


class _Compiler:
    def __init__(self, roots: tuple[ops.Value, ...]):
        self.roots = roots
        self.lines: list[str] = []
        self.names: dict[ops.Node, str] = {}
        self.constants: list[Any] = []
        self.count = 0
        self.relations: dict[ops.Node, str] = {}

    def const(self, value: Any) -> str:
        self.constants.append(value)
        return f"K[{len(self.constants) - 1}]"

    def build(self) -> Callable:
        out = [self.visit(root) for root in self.roots]
        heads = [
            f"{name} = run.rel({self.const(rel)}).columns" for rel, name in self.relations.items()
        ]
        body = "\n".join(f"    {line}" for line in heads + self.lines)
        packed = ", ".join(f"Col({x}, {m})" for x, m in out)
        source = f"def run_values(run, n):\n{body}\n    return ({packed},)\n"
        scope = {"np": np, "Col": Col, "K": self.constants, **_HELPERS}
        exec(compile(source, "<featlib.local>", "exec"), scope)
        fn = scope["run_values"]
        fn.__source__ = source
        return fn

    def visit(self, node: ops.Value) -> tuple[str, str]:
        if node in self.names:
            i = self.names[node]
            return f"x{i}", f"m{i}"
        self.count += 1
        i = str(self.count)
        x, m = f"x{i}", f"m{i}"
        emit = self.lines.append
        kind = type(node)
        if isinstance(node, ops.Field):  # the relation's columns are looked up once
            rel = self.relations.setdefault(node.rel, f"R{len(self.relations)}")
            emit(f"c{i} = {rel}[{node.name!r}]; {x} = c{i}.values; {m} = c{i}.valid")
        elif isinstance(node, ops.Unnest):
            emit(f"c{i} = run.memo[{self.const(node)}]; {x} = c{i}.values; {m} = c{i}.valid")
        elif isinstance(node, ops.WindowFunction):
            emit(f"c{i} = run.window({self.const(node)}, n); {x} = c{i}.values; {m} = c{i}.valid")
        elif isinstance(node, ops.IntegerRange):
            emit(f"c{i} = run._integer_range({self.const(node)}, n)")
            emit(f"{x} = c{i}.values; {m} = c{i}.valid")
        elif isinstance(node, ops.Literal):
            c = self.const(_literal(node))
            emit(f"{x} = {c}.values; {m} = {c}.valid")
        elif kind in _ARITHMETIC:
            if node.left.dtype.is_decimal() or node.right.dtype.is_decimal():
                raise UnsupportedOperation(f"{kind.__name__} on decimals")
            (a, ma), (b, mb) = self.visit(node.left), self.visit(node.right)
            emit(f"{x} = {self.const(_ARITHMETIC[kind])}({a}, {b}); {m} = {_and_masks(ma, mb)}")
        elif kind in _COMPARE:
            (a, ma), (b, mb) = self.visit(node.left), self.visit(node.right)
            emit(f"{x} = {self.const(_COMPARE[kind])}({a}, {b}); {m} = {_and_masks(ma, mb)}")
        elif kind in _UNARY:
            a, ma = self.visit(node.arg)
            emit(f"{x} = {self.const(_UNARY[kind])}({a}); {m} = {ma}")
        elif isinstance(node, ops.IfElse):
            (c, mc), (a, ma), (b, mb) = map(
                self.visit, (node.bool_expr, node.true_expr, node.false_null_expr)
            )
            emit(f"t{i} = _truth({c}, {mc}, n)")
            self.where(node, f"t{i}", a, b, x)
            emit(f"{m} = _mwhere(t{i}, {ma}, {mb}, n)")
        elif isinstance(node, ops.Coalesce):
            args = [self.visit(arg) for arg in node.arg]
            a, ma = args[-1]
            emit(f"{x} = {a}; {m} = {ma}")
            for b, mb in reversed(args[:-1]):
                emit(f"t = _valid({mb}, n)")
                self.where(node, "t", b, x, x)
                emit(f"{m} = None if {mb} is None else _mwhere(t, {mb}, {m}, n)")
        elif isinstance(node, ops.NotNull):
            a, ma = self.visit(node.arg)
            emit(f"{x} = _TRUE if {ma} is None else {ma}; {m} = None")
        elif isinstance(node, ops.IsNull):
            a, ma = self.visit(node.arg)
            emit(f"{x} = _FALSE if {ma} is None else ~{ma}; {m} = None")
        elif isinstance(node, ops.And | ops.Or):
            (a, ma), (b, mb) = self.visit(node.left), self.visit(node.right)
            helper = "_and3" if isinstance(node, ops.And) else "_or3"
            emit(f"{x}, {m} = {helper}({a}, {ma}, {b}, {mb}, n)")
        elif isinstance(node, ops.Not):
            a, ma = self.visit(node.arg)
            emit(f"{x} = ~{a}; {m} = {ma}")
        elif isinstance(node, ops.Cast):
            self.cast(node, x, m)
        elif getattr(node, "__func_name__", None) == "epoch_ms":  # timestamps are epoch ms
            a, ma = self.visit(node.ts)
            emit(f"{x} = {a}; {m} = {ma}")
        elif getattr(node, "__func_name__", None) == "isfinite":
            a, ma = self.visit(node.x)
            emit(f"{x} = np.isfinite({a}); {m} = {ma}")
        else:
            raise UnsupportedOperation(f"operation {kind.__name__}")
        self.names[node] = i
        return x, m

    def where(self, node: ops.Value, take: str, yes: str, no: str, out: str) -> None:
        """Code for `out` = yes where `take`, else no (typed as the node)."""
        if node.dtype.is_decimal():
            self.lines.append(f"{out} = _where_decimal({take}, {yes}, {no}, n)")
        else:
            typed = self.const(_np_type(node))
            self.lines.append(f"{out} = _typed(np.where({take}, {yes}, {no}), {typed})")

    def cast(self, node: ops.Cast, x: str, m: str) -> None:
        a, ma = self.visit(node.arg)
        src, to = node.arg.dtype, node.to
        emit = self.lines.append
        if src.is_decimal() and to.is_floating():
            emit(f"{x} = _decimal_to_float(_full_values(Col({a}), n), {src.scale})")
        elif to.is_decimal():
            emit(f"{x} = _to_decimal({a}, {self.const(src)}, {to.scale}, {ma})")
        elif to.is_floating():
            emit(f"{x} = np.asarray({a}, np.float64)")
        elif to.is_integer():
            emit(f"{x} = np.asarray({a}).astype(np.int64)")
        elif (to.is_string() and src.is_string()) or (to.is_boolean() and src.is_boolean()):
            emit(f"{x} = {a}")
        else:
            raise UnsupportedOperation(f"cast {src} -> {to}")
        emit(f"{m} = {ma}")


def _and_masks(a: str, b: str) -> str:
    """Code for the mask of a value valid where both are (None: all valid)."""
    return f"({b} if {a} is None else {a} if {b} is None else {a} & {b})"


def _literal(node: ops.Literal) -> Col:
    kind = node.dtype
    if node.value is None:
        empty = np.zeros((1, 2), np.int64) if kind.is_decimal() else np.array(0.0)
        return Col(empty, np.array(False))
    if kind.is_decimal():
        return Col(_limbs([int(node.value * 10**kind.scale)]))
    if kind.is_string():
        return Col(np.array(node.value, dtype=object))
    if kind.is_boolean():
        return Col(np.array(bool(node.value)))
    if kind.is_integer():
        return Col(np.array(int(node.value), np.int64))
    if kind.is_floating():
        return Col(np.array(float(node.value)))
    raise UnsupportedOperation(f"literal of type {kind}")


def _np_type(node: ops.Value) -> Any:
    kind = node.dtype
    if kind.is_floating():
        return np.float64
    if kind.is_integer():
        return np.int64
    if kind.is_boolean():
        return np.bool_
    return None


def _typed(values: np.ndarray, kind: Any) -> np.ndarray:
    return values if kind is None or values.dtype == kind else values.astype(kind)


def _mand(a: np.ndarray | None, b: np.ndarray | None) -> np.ndarray | None:
    if a is None:
        return b
    if b is None:
        return a
    return a & b


def _valid(mask: np.ndarray | None, n: int) -> np.ndarray:
    return _TRUE if mask is None else mask


def _truth(values: np.ndarray, mask: np.ndarray | None, n: int) -> np.ndarray:
    """Where a condition holds (null: it does not)."""
    return values if mask is None else values & mask


def _mwhere(take, a: np.ndarray | None, b: np.ndarray | None, n: int) -> np.ndarray | None:
    if a is None and b is None:
        return None
    return np.where(take, _TRUE if a is None else a, _TRUE if b is None else b)


def _where_decimal(take, a: np.ndarray, b: np.ndarray, n: int) -> np.ndarray:
    a = np.zeros((n, 2), np.int64) if a.ndim < 2 else np.broadcast_to(a, (n, 2))
    b = np.zeros((n, 2), np.int64) if b.ndim < 2 else np.broadcast_to(b, (n, 2))
    return np.where(np.broadcast_to(take, (n,))[:, None], a, b)


def _and3(x, mx, y, my, n):
    """SQL AND: false AND null is false."""
    if mx is None and my is None:
        return x & y, None
    vx, vy = _valid(mx, n), _valid(my, n)
    valid = (vx & vy) | (vx & ~x) | (vy & ~y)
    return x & y & valid, valid


def _or3(x, mx, y, my, n):
    """SQL OR: true OR null is true."""
    if mx is None and my is None:
        return x | y, None
    vx, vy = _valid(mx, n), _valid(my, n)
    return (x & vx) | (y & vy), (vx & vy) | (vx & x) | (vy & y)


def _full(col: Col, n: int) -> Col:
    values = col.values
    if values.ndim and values.shape[0] == n and (col.valid is None or col.valid.ndim):
        return col
    valid = None if col.valid is None else np.broadcast_to(col.valid, (n,))
    return Col(_full_values(col, n), valid)


_TRUE = np.ones((), np.bool_)
_FALSE = np.zeros((), np.bool_)
_HELPERS = {
    "_mand": _mand,
    "_valid": _valid,
    "_truth": _truth,
    "_mwhere": _mwhere,
    "_where_decimal": _where_decimal,
    "_and3": _and3,
    "_or3": _or3,
    "_typed": _typed,
    "_decimal_to_float": _decimal_to_float,
    "_to_decimal": _to_decimal,
    "_full_values": _full_values,
    "_TRUE": _TRUE,
    "_FALSE": _FALSE,
}
