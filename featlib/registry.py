"""Feature registry: versioned YAML feature sets (`registry/versions/feature_registry_v{X}.yaml`).

A file is the only source of a feature set. Loading validates it against its schema and
against the declarations in featlib.features; every problem is reported at once, each naming
the feature and what is wrong.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from featlib.features import FEATURES
from featlib.features.base import SOURCES
from featlib.timeutil import DAY_MS, format_duration, parse_duration

REGISTRY_DIR = Path(__file__).resolve().parent.parent / "registry" / "versions"
DEFAULT_VERSION = "1.2.0"
"""The version used until one is activated in the catalog: the minimal backfillable set, which
builds from candles and funding alone (what a fresh installation or a backfill provides)."""
_FILE = re.compile(r"^feature_registry_v(\d+\.\d+\.\d+)\.yaml$")
_SEMVER = re.compile(r"^\d+\.\d+\.\d+$")


class RegistryError(ValueError):
    """A feature set that cannot be used; `problems` lists every reason."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        listing = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{source}: {len(problems)} problem(s):\n{listing}")


class FeatureSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    description: str = Field(min_length=1)
    input_sources: list[str] = Field(default_factory=list)
    lookback_window: str
    lookahead_forbidden: bool
    max_lookback_days: float = Field(gt=0)
    params: dict[str, Any] = Field(default_factory=dict)

    @field_validator("lookback_window")
    @classmethod
    def _duration(cls, value: str) -> str:
        parse_duration(value)
        return value

    @property
    def lookback_ms(self) -> int:
        return parse_duration(self.lookback_window)


class FeatureSet(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: str
    description: str = ""
    features: list[FeatureSpec] = Field(min_length=1)

    @field_validator("version", mode="before")
    @classmethod
    def _semver(cls, value: Any) -> str:
        value = str(value)
        if not _SEMVER.match(value):
            raise ValueError(f"version must look like 1.2.0, got {value!r}")
        return value

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.features]

    def lookbacks(self) -> dict[str, str]:
        return {f.name: f.lookback_window for f in self.features}


def _problems(error: ValidationError, where: str) -> list[str]:
    out = []
    for item in error.errors():
        field = ".".join(str(x) for x in item["loc"])
        out.append(f"{where}{' ' + field if field else ''}: {item['msg']}")
    return out


_PLACEHOLDER = FeatureSpec(
    name="_",
    description="_",
    input_sources=["kline"],
    lookback_window="1m",
    lookahead_forbidden=True,
    max_lookback_days=1,
)


def check(fs: FeatureSet) -> list[str]:
    """Problems of a schema-valid feature set against the declared features."""
    problems = []
    seen: set[str] = set()
    for spec in fs.features:
        name = spec.name
        if name in seen:
            problems.append(f"feature {name!r}: listed more than once")
            continue
        seen.add(name)
        if not spec.lookahead_forbidden:
            problems.append(
                f"feature {name!r}: lookahead_forbidden must be true "
                "(features may only use data at or before t)"
            )
        unknown = [s for s in spec.input_sources if s not in SOURCES]
        if unknown:
            problems.append(
                f"feature {name!r}: unknown input source(s) {unknown} (known: {', '.join(SOURCES)})"
            )
        if spec.lookback_ms > spec.max_lookback_days * DAY_MS:
            problems.append(
                f"feature {name!r}: lookback_window {spec.lookback_window} exceeds "
                f"max_lookback_days {spec.max_lookback_days:g}"
            )
        declared = FEATURES.get(name)
        if declared is None:
            problems.append(
                f"feature {name!r}: unknown feature (no declaration in featlib.features)"
            )
            continue
        reads = [] if declared.source == "clock" else [declared.source]
        if not unknown and spec.input_sources != reads:
            problems.append(
                f"feature {name!r}: input_sources {spec.input_sources} but the "
                f"declaration reads {reads}"
            )
        if spec.lookback_ms < declared.lookback_ms:
            problems.append(
                f"feature {name!r}: lookback_window {spec.lookback_window} is shorter "
                f"than the {format_duration(declared.lookback_ms)} its definition needs"
            )
        if spec.params != dict(declared.params):
            problems.append(
                f"feature {name!r}: params {spec.params} differ from the definition's "
                f"{dict(declared.params)} (a changed definition is a new feature)"
            )
    return problems


def parse(text: str, source: str = "<yaml>") -> FeatureSet:
    """Validate YAML text as a feature set; raise RegistryError listing every problem."""
    return _parse(text, source).model_copy()


@functools.lru_cache(maxsize=64)
def _parse(text: str, source: str) -> FeatureSet:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise RegistryError(source, [f"malformed YAML{where}: {problem}"]) from None
    if not isinstance(data, dict):
        raise RegistryError(
            source, [f"expected a mapping with version and features, got {type(data).__name__}"]
        )
    problems: list[str] = []
    entries = data.get("features")
    specs: list[FeatureSpec] = []
    if not isinstance(entries, list) or not entries:
        problems.append("features: expected a non-empty list of feature entries")
        entries = []
    for i, entry in enumerate(entries):
        name = entry.get("name") if isinstance(entry, dict) else None
        where = f"feature {name!r}" if isinstance(name, str) and name else f"features[{i}]"
        try:
            specs.append(FeatureSpec.model_validate(entry))
        except ValidationError as exc:
            problems += _problems(exc, where)
    try:
        header = FeatureSet.model_validate({**data, "features": specs or [_PLACEHOLDER]})
    except ValidationError as exc:
        problems += _problems(exc, "file")
        header = None
    if header is not None:
        problems += check(header.model_copy(update={"features": specs}))
    if problems:
        raise RegistryError(source, problems)
    return header.model_copy(update={"features": specs})


def path_of(version: str, registry_dir: Path = REGISTRY_DIR) -> Path:
    if not _SEMVER.match(version):
        raise RegistryError(version, [f"not a version: {version!r} (use e.g. 1.2.0)"])
    return Path(registry_dir) / f"feature_registry_v{version}.yaml"


def versions(registry_dir: Path = REGISTRY_DIR) -> list[str]:
    """Versions with a file, oldest first."""
    found = [m.group(1) for p in Path(registry_dir).glob("*.yaml") if (m := _FILE.match(p.name))]
    return sorted(found, key=lambda v: tuple(int(x) for x in v.split(".")))


def load(version: str | None = None, registry_dir: Path = REGISTRY_DIR) -> FeatureSet:
    """Load and validate a version (default: DEFAULT_VERSION, or the newest file without it)."""
    if version is None:
        known = versions(registry_dir)
        if not known:
            raise RegistryError(str(registry_dir), ["no feature_registry_v*.yaml files"])
        version = DEFAULT_VERSION if DEFAULT_VERSION in known else known[-1]
    path = path_of(version, registry_dir)
    if not path.is_file():
        raise RegistryError(
            str(path),
            [
                f"no registry version {version}; available: "
                f"{', '.join(versions(registry_dir)) or 'none'}"
            ],
        )
    fs = parse(path.read_text(), str(path))
    if fs.version != version:
        raise RegistryError(str(path), [f"file says version {fs.version}, name says {version}"])
    return fs
