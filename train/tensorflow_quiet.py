"""Import TensorFlow without its C++ start-up lines on the user's terminal.

Why: TensorFlow 2.21 writes "oneDNN custom operations are on", "Could not find cuda
drivers" and an absl preamble to file descriptor 2 while its shared libraries load, before
``TF_CPP_MIN_LOG_LEVEL`` is read, so the variable cannot hide them. They are harmless on
this CPU-only host but bury the one-line results and errors the commands print. The
lines are kept while TensorFlow loads and shown only if the import fails, so a broken
installation still says why. oneDNN itself stays on: turning it off would change the
numerics, and with them the reproducible shipped model.
"""

from __future__ import annotations

import os
import sys
import tempfile
from types import ModuleType


def import_tensorflow() -> ModuleType:
    """``tensorflow``, imported with fd 2 diverted (a no-op once it is loaded)."""
    if sys.modules.get("tensorflow") is not None:
        return sys.modules["tensorflow"]
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            import tensorflow
        except BaseException:
            _restore(saved)
            held.seek(0)
            sys.stderr.write(held.read().decode(errors="replace"))
            raise
        _restore(saved)
    return tensorflow


def _restore(saved: int) -> None:
    os.dup2(saved, 2)
    os.close(saved)
