"""The suite's state in pytest's `config.stash`: set by the root conftest.py as pytest starts, read by perf/conftest.py.

perf/ is on sys.path from pytest's start (pyproject.toml: `pythonpath`), so both conftest files
import this one module and share its keys.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from embedsearch.storage import Run

SAVE_NAME: pytest.StashKey[str | None] = pytest.StashKey()  # the name a timed run is saved under; None: not saved
BASELINE: pytest.StashKey[Run | None] = pytest.StashKey()  # the --perf-gate run, loaded before this run may be saved beside it
