"""Driving Raspberry Pis from the host: what goes to a device, and how it gets there.

``bundle`` builds what goes to the device (the heartsound wheel, the model, the service
files), ``wheels`` the dependency wheels for the device's platform, ``remote`` deploys,
verifies, switches and rolls back one device over SSH (Fabric), ``link`` watches that link
for death, ``fleet`` does it on many devices at once, ``hosts`` reads a fleet's hosts file
and holds the SSH options, ``offline`` writes the USB-stick archive and ``install`` is the
installer that archive carries (standard library only: it runs on the bare device).

May import: the device runtime (``edge.screening``, ``edge.benchmark``, ``edge.errors``,
...), the standard library, Fabric/Paramiko/Invoke (the ``deploy`` extra; ``remote`` and
``fleet`` only). Never ``edge.commands``, ``edge.batch``, ``train``, ``convert`` or
``firmware_bridge``. The device runtime never imports this package: on the Pi only
``install.py`` (as a copy in the offline archive) and the ``heartsound`` command run.
"""
