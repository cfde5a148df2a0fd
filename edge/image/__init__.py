"""The SD-card image of a screening station: made and written on the host, like ``edge.deploy``.

``build`` makes ``station.img`` on the host (mmdebstrap through qemu-user, partitions
built without mounting) and installs the station in it with the offline bundle's own
installer, so the card has the release layout ``heartsound deploy`` manages; ``firstboot``
is copied into the image and run once on the device (standard library only); ``overlay/``
holds the files laid over the Debian root (units, network, fstab, the toml example).
``flash`` writes an image to a card and reads it back (``disk`` says whether a block
device is a card that is safe to overwrite).

May import: ``edge.deploy`` (the bundle it installs), the device runtime, the standard
library, tqdm for progress when it is installed. Nothing but ``edge.commands`` imports this
package; ``firstboot`` imports nothing from heartsound at all (it runs on the bare device).
"""
