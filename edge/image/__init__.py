"""The SD-card image of a screening station: made and written on the host, like ``edge.deploy``.

``flash`` writes an image to a card and reads it back (``disk`` says whether a block
device is a card that is safe to overwrite). May import: the device runtime
(``edge.errors``, ...) and the standard library, plus tqdm for progress when it is
installed. Never ``edge.commands``, ``edge.deploy``, ``edge.batch``, ``train``, ``convert``
or ``firmware_bridge``. The device runtime never imports this package.
"""
