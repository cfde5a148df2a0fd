"""Child process of :func:`convert.tflm.smallest_arena`: one TFLite Micro arena probe.

Usage: ``python -m convert._tflm_child MODEL.tflite ARENA_BYTES``. Exit 0 when the model
allocates in ARENA_BYTES and one inference on a zero input succeeds, :data:`EXIT_NO_FIT`
when TFLite Micro reports that the arena is too small. A too-small arena can also kill
the process (seen with the LSTM kernel), which is why each probe is its own process.
"""

from __future__ import annotations

import sys

import numpy as np

EXIT_NO_FIT = 2


def main(argv: list[str]) -> int:
    from tflite_micro.python.tflite_micro import runtime

    model_path, arena = argv[0], int(argv[1])
    with open(model_path, "rb") as f:
        model = f.read()
    try:
        interp = runtime.Interpreter.from_bytes(model, arena_size=arena)
        detail = interp.get_input_details(0)
        interp.set_input(np.zeros(detail["shape"], dtype=detail["dtype"]), 0)
        interp.invoke()
    except RuntimeError:
        return EXIT_NO_FIT
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
