"""The C measuring processes (``episode_writer.c``, ``fork_probe.c``), compiled with the system's C compiler the
first time and kept, one binary per version of the source, in ``$XDG_CACHE_HOME/gpusim``."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

from gpusim.base.machine import user_cache_dir


class NoBinary(RuntimeError):
    """A C measuring process that cannot be built here (no C compiler, or it failed)."""


def c_binary(source: Path) -> Path:
    """The compiled ``source`` (a C file beside this module), built once per version of its text."""
    src = source.read_bytes()
    cache = user_cache_dir()
    out = cache / f"{source.stem}-{hashlib.sha256(src).hexdigest()[:16]}"
    if out.exists():
        return out
    cc = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if cc is None:
        raise NoBinary(f"{source.name}: a C compiler is needed (cc or gcc; or set CC)")
    cache.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(f".{os.getpid()}.tmp")
    done = subprocess.run([cc, "-O2", "-o", str(tmp), str(source)], capture_output=True, text=True)
    if done.returncode != 0:
        raise NoBinary(f"compiling {source.name} failed: {done.stderr.strip()[-300:]}")
    os.replace(tmp, out)
    return out
