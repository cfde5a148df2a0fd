"""The training sweep: many `heartsound train` runs from one YAML file, ranked in one table.

``spec`` reads and checks the sweep file, ``trial`` runs one training, ``tune`` schedules
trials with Ray Tune (locally or on a cluster), ``summary`` ranks them and ``command`` is
what ``heartsound train --sweep`` calls.

May import: ``edge`` (the front end and errors; ``edge.batch.cluster`` to join a Ray
cluster), the training modules below it (``train.models``, ``train.pipeline``, ...), Ray,
PyYAML. Never ``train.commands``: the command imports the sweep, not the other way round.
"""
