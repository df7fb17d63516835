"""A sweep task that holds the GIL (for the executor test that kills the driver mid-task): it marks that it started,
then sleeps in libc through ``ctypes.PyDLL``, which keeps the GIL for the whole call, so no thread of the worker
(the parent watcher included) runs until it returns."""

import ctypes
import os
from pathlib import Path


def hold_gil_task(point, repetition, out, schema_bytes):
    Path(out, f"started-{os.getpid()}").write_text("")
    ctypes.PyDLL(None).sleep(120)
    return {"config_hash": point, "repetition": repetition}
