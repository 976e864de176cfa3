"""What every pipeline shares: logging set-up and turning user errors into one clear line."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

from pydantic import ValidationError

from featlib.dataset import DatasetError
from featlib.raw import RawStoreError
from featlib.registry import RegistryError

USER_ERRORS = (
    DatasetError,
    RegistryError,
    RawStoreError,
    ValidationError,
    ValueError,
    FileNotFoundError,
)


def setup_logging(quiet: bool = False) -> None:
    logging.basicConfig(
        level=logging.WARNING if quiet else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def require_files(paths: Iterable[Path]) -> None:
    """Name every capture file that does not exist, before any work starts."""
    missing = [str(p) for p in paths if not Path(p).is_file()]
    if missing:
        raise FileNotFoundError(f"no such capture file(s): {', '.join(missing)}")


def run(main: Callable[[], int]) -> None:
    """Exit 0 on success, 2 with the message (no traceback) on a user error."""
    try:
        code = main()
    except USER_ERRORS as exc:
        if isinstance(exc, ValidationError):
            lines = [
                f"{'.'.join(str(x) for x in e['loc']) or 'request'}: {e['msg']}"
                for e in exc.errors()
            ]
            message = "invalid request:\n  " + "\n  ".join(lines)
        else:
            message = str(exc)
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)
    sys.exit(code)
