"""Default timing and limits of the serial link (docs/serial_protocol.md, section 4).

A module of its own, with no imports, so that ``heartsound --help`` can show the
defaults without loading numpy or pyserial.
"""

DEFAULT_TIMEOUT_S = 1.0
"""Answer timeout T: above one 512-sample chunk's transmit time at 115200 baud (~91 ms),
a window's front end and inference on a Cortex-M4 (tens of ms) and a RESULT with
features on the way back (~170 ms)."""

DEFAULT_RETRIES = 3
"""Retransmissions of one request before giving up: a request takes at most 4 T."""

DEFAULT_BAUD = 115200

DEFAULT_MAX_BAD_FRAMES = 64
"""Corrupted frames tolerated in one connection before the link is declared unusable."""

NAK_GRACE = 0.25
"""Share of the timeout the host still waits for an answer after a NAK."""
