"""Content-addressed feature partitions: a dataset rebuild reuses the work of earlier builds.

A (symbol, UTC day) partition of computed features is stored under a key hashing everything
its values depend on: the raw part files it reads (named by their content hash, so their
paths identify their bytes) over [day - lookback, day end), the feature definitions (plan,
registry version and the source code of the compute path) and the grid step. A repeated
build reads every partition back; changing one day's raw data changes the keys of exactly
the partitions whose lookback reaches that day, and only those are computed again.

    cache = FeatureCache(root)                 # e.g. data/cache/features
    key = cache.key(plan, version, inputs, step_ms)
    table = cache.get(key)                     # None on a miss
    cache.put(key, table)                      # atomic (temp file + rename)
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import uuid
from collections.abc import Iterable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from featlib import compute

FORMAT = "1"
_CODE = ("compute.py", "inputs.py", "book.py", "bybit.py", "schema.py", "features")
# and what turns feature rows into a dataset's files
OUTPUT_CODE = (*_CODE, "raw.py", "dataset.py", "targets.py", "splits.py", "quality.py")


@functools.cache
def code_hash(names: tuple[str, ...] = _CODE) -> str:
    """Hash of the source of `names` (default: everything that turns raw rows into feature
    values), files and packages of featlib."""
    root = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for name in names:
        path = root / name
        for file in sorted(path.rglob("*.py")) if path.is_dir() else [path]:
            digest.update(file.relative_to(root).as_posix().encode() + b"\0")
            digest.update(file.read_bytes())
    return digest.hexdigest()


def definition_hash(plan: compute.Plan, registry_version: str) -> str:
    """The feature definitions: names in order, registry version, compute-path code."""
    text = "\n".join([FORMAT, registry_version, *plan.names, code_hash()])
    return hashlib.sha256(text.encode()).hexdigest()


def link_tree(src: Path, dst: Path) -> None:
    """Hard-link (copy across file systems) every file under src to the same place under dst."""
    for path in Path(src).rglob("*"):
        if path.is_file():
            target = Path(dst) / path.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(path, target)
            except OSError:
                shutil.copy2(path, target)


def _relative(path: Path, root: Path) -> str:
    text, prefix = str(path), f"{root}/"
    return text[len(prefix) :] if text.startswith(prefix) else str(Path(path).relative_to(root))


def default_cache_dir(data_dir: Path) -> Path:
    """Beside the raw store: data/raw -> data/cache/features."""
    return Path(data_dir).resolve().parent / "cache" / "features"


class FeatureCache:
    def __init__(self, root: Path):
        self.root = Path(root)

    @staticmethod
    def key(definition: str, data_dir: Path, inputs: Iterable[Path], *parts: object) -> str:
        """Key of one partition: definition hash, its input files, and further parameters
        (symbol, day, lookback, grid step, ...)."""
        digest = hashlib.sha256(definition.encode())
        for path in sorted(_relative(p, data_dir) for p in inputs):
            digest.update(b"\0" + path.encode())
        digest.update(("\0" + "\0".join(map(str, parts))).encode())
        return digest.hexdigest()

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.parquet"

    def get(self, key: str) -> pa.Table | None:
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            return pq.read_table(path)
        except (OSError, pa.ArrowInvalid):  # damaged: compute it again (and overwrite it)
            return None

    @property
    def sql_dir(self) -> Path:
        """Compiled feature plans (featlib.compute.compiled), keyed by features and code."""
        return self.root / "sql"

    def output_dir(self, key: str) -> Path:
        """Where a whole dataset built under `key` is kept (featlib.dataset)."""
        return self.root / "outputs" / key

    def put_dir(self, key: str, src: Path) -> None:
        """Keep a copy of dataset directory `src` (hard links where possible) under `key`."""
        final = self.output_dir(key)
        if final.exists():
            return
        tmp = final.with_name(f".{key}.{uuid.uuid4().hex[:8]}.tmp")
        link_tree(src, tmp)
        try:
            os.replace(tmp, final)
        except OSError:  # another build kept the same output first
            shutil.rmtree(tmp, ignore_errors=True)

    def put(self, key: str, table: pa.Table) -> None:
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
        pq.write_table(table, tmp, compression="zstd")
        os.replace(tmp, path)
