"""heartsound's device runtime: what runs on a Raspberry Pi, with numpy and one TFLite
interpreter (``ai_edge_litert``, else ``tflite_runtime``, else ``tensorflow.lite``).

The modules here read audio (``audio``, ``resample``, ``mic``), compute the fixed-point
front end the ``FeatureSpec`` contract describes (``spec``, ``mel``, ``tables``, ``mfcc``),
gate quality (``quality``), run the int8 model (``interpreter``, ``model_meta``) and decide
and log (``screening``, ``decision``, ``screening_log``, ``release``). ``cli`` is the
``heartsound`` command, with its subcommands in ``commands/``.

Two subpackages run on the host only and are never imported by the runtime:
``deploy/`` drives devices (SSH deploy, bundles, fleets, offline install) and ``batch/``
screens archives (process pools, Ray). Nothing here imports TensorFlow, Keras or SciPy, nor
``train``, ``convert`` or ``firmware_bridge``: only the command table in ``cli`` names
their modules (``tests/test_layout.py`` checks these rules).
"""
