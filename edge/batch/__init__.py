"""Archive screening from the host: many recordings, one row each (``heartsound screen
--workers/--ray/--csv/--resume``).

``pool`` screens on this machine's processes, ``cluster`` on a Ray cluster (and holds the
Ray connection helpers the training sweep shares), ``output`` writes and resumes the rows.

May import: the device runtime (``edge.screening``, ``edge.audio``, ``edge.errors``, ...),
the standard library and, in ``cluster`` only, Ray. Never ``edge.commands``, ``edge.deploy``,
``train``, ``convert`` or ``firmware_bridge``. The device runtime never imports this package.
"""
