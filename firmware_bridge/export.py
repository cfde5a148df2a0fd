"""Export a model as firmware sources: what ``heartsound firmware export`` writes.

A microcontroller has no file system and no JSON parser, so everything the device needs
to know about its model is turned into C here, from the model file's own metadata (never
retyped): the flatbuffer as an ``alignas(16)`` array, ``hs_model.h`` (classes,
threshold, input and output quantisation, digests, arena size), ``hs_mfcc_tables.h``
(the front end of the model's FeatureSpec) and ``hs_ops_enabled.h`` (only the model's
operators are registered, so the linker drops every other kernel). Beside them go the
C99 front end, the protocol, the app, board files and a PlatformIO project.

The QEMU/host build (:func:`firmware_bridge.build.build_app`) compiles an export too, so
there is one way to produce these files. Layout::

    OUT/platformio.ini          PlatformIO project for real boards (Arduino framework)
    OUT/export.json             what was exported: model, digests, arena, files
    OUT/src/                    the app: generated files + copies of c/ and app/
    OUT/boards/mps2-an386/      bare-metal Cortex-M4 start-up, UART, linker script (QEMU)
    OUT/boards/host/            POSIX platform (a pseudo-terminal as the serial port)
    OUT/lib/tflite-micro/       TFLite Micro sources the app needs (PlatformIO library)
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from edge.decision import normal_index
from edge.errors import ModelError, UsageError
from edge.interpreter import input_multiplier
from edge.model_meta import ModelMeta, read_model_meta
from firmware_bridge import tflm_tree
from firmware_bridge.model_array import model_source
from firmware_bridge.tables_header import render_header

FIRMWARE_DIR = Path(__file__).resolve().parent
APP_DIR = FIRMWARE_DIR / "app"
C_DIR = FIRMWARE_DIR / "c"

#: Sources every build compiles (copied to OUT/src).
C_SOURCES = ("hs_mfcc.c", "hs_mfcc.h", "hs_proto.c", "hs_proto.h")
APP_SOURCES = ("main.cc", "hs_device.c", "hs_device.h", "model_runner.cc", "model_runner.h",
               "model_ops.h", "platform.h", "no_inputs.cc", "platform_arduino.cpp")
#: Platform files per board folder (not compiled by PlatformIO, which uses the Arduino one).
BOARD_SOURCES = {
    "mps2-an386": ("startup_cm4.c", "uart_cmsdk.c", "uart_cmsdk.h", "platform_cm4.c",
                   "mps2_an386.ld"),
    "host": ("platform_host.c",),
}
GENERATED = ("model_data.cc", "hs_model.h", "hs_mfcc_tables.h", "hs_ops_enabled.h")

#: Features as the model sees them: train/ feeds the int16 values as they are (frac 0).
FEATURE_FRAC_BITS = 0
#: Bytes added to the measured arena: the Python wheel measures a 64-bit build; a 32-bit
#: MCU needs less, so this only covers allocator alignment differences.
ARENA_MARGIN = 1024
ARENA_ALIGN = 16
DIGEST_PREFIX_BYTES = 8


@dataclass(frozen=True)
class Export:
    """An exported firmware tree and the figures it was generated with."""

    out_dir: Path
    model_sha256: str
    spec_sha256: str
    arena_bytes: int
    arena_measured: int | None
    ops: tuple[str, ...]
    files: tuple[str, ...]

    @property
    def src_dir(self) -> Path:
        return self.out_dir / "src"


# ---- hs_model.h ---------------------------------------------------------------------------
def _c_string(text: str) -> str:
    return json.dumps(text, ensure_ascii=True)  # a JSON string is a valid C string literal


def _c_bytes(data: bytes) -> str:
    return "{" + ", ".join(f"0x{b:02x}" for b in data) + "}"


def _c_float(value: float) -> str:
    return f"{value!r}f" if "e" in repr(value) or "." in repr(value) else f"{value!r}.0f"


def _c_double(value: float) -> str:
    text = repr(float(value))
    return text if ("e" in text or "." in text) else text + ".0"


def check_int8_model(model: bytes, name: str) -> ModelMeta:
    """The model's metadata, or a one-line ModelError for anything the firmware cannot run."""
    meta = read_model_meta(model, name=name)
    for role, tensor in (("input", meta.input), ("output", meta.output)):
        if tensor.dtype != "int8" or len(tensor.scale) != 1:
            raise ModelError(f"{name}: {role} tensor is {tensor.dtype} with {len(tensor.scale)} "
                             "scales; the firmware runs full-int8 models (`heartsound convert`)")
    rows, cols = meta.spec.frames_per_window, meta.spec.n_ceps
    if tuple(meta.input.shape[-2:]) != (rows, cols) or meta.output.shape[-1] != meta.n_classes:
        raise ModelError(f"{name}: input {meta.input.shape} / output {meta.output.shape} do not "
                         f"match {rows}x{cols} windows and {meta.n_classes} classes")
    return meta


def model_header(model: bytes, meta: ModelMeta, arena_bytes: int, measured: bool) -> str:
    """Text of ``hs_model.h``: every model constant the device needs, from the metadata."""
    spec = meta.spec
    mult, shift = input_multiplier(meta.input.scale[0], FEATURE_FRAC_BITS)
    model_sha = hashlib.sha256(model).digest()
    spec_sha = hashlib.sha256(spec.to_json().encode("utf-8")).digest()
    hop_samples = spec.window_hop_frames * spec.hop_length
    names = ", ".join(_c_string(c) for c in meta.class_names)
    defines = [
        ("HS_MODEL_VERSION", _c_string(meta.version), "model version from its metadata"),
        ("HS_MODEL_BYTES", f"{len(model)}u", "size of g_model (model_data.cc)"),
        ("HS_MODEL_SHA256", _c_string(model_sha.hex()), "SHA-256 of the .tflite file"),
        ("HS_MODEL_SHA256_PREFIX_INIT", _c_bytes(model_sha[:DIGEST_PREFIX_BYTES]),
         "what IDENTIFY reports"),
        ("HS_SPEC_SHA256", _c_string(spec_sha.hex()), "SHA-256 of FeatureSpec.to_json()"),
        ("HS_SPEC_SHA256_PREFIX_INIT", _c_bytes(spec_sha[:DIGEST_PREFIX_BYTES]),
         "what IDENTIFY reports"),
        ("HS_MODEL_SAMPLE_RATE_HZ", str(spec.sample_rate_hz), "the front end's rate"),
        ("HS_MODEL_SAMPLE_RATE_TEXT", _c_string(str(spec.sample_rate_hz)), "for messages"),
        ("HS_WINDOW_SAMPLES", f"{spec.window_samples}u", "samples in one analysis window"),
        ("HS_WINDOW_HOP_SAMPLES", f"{hop_samples}u", "samples between window starts"),
        ("HS_MODEL_INPUT_ROWS", str(meta.input.shape[-2]), "frames per model input"),
        ("HS_MODEL_INPUT_COLS", str(meta.input.shape[-1]), "cepstra per frame"),
        ("HS_MODEL_INPUT_SCALE", _c_double(meta.input.scale[0]), "real = scale * (q - zp)"),
        ("HS_MODEL_INPUT_ZERO_POINT", f"({meta.input.zero_point[0]})", "int8"),
        ("HS_MODEL_INPUT_FRAC_BITS", str(FEATURE_FRAC_BITS), "fraction bits the model reads"),
        ("HS_MODEL_INPUT_MULTIPLIER", f"{mult}", "1 / scale = M * 2^-shift, M in [2^30, 2^31)"),
        ("HS_MODEL_INPUT_SHIFT", str(shift), "right shift after the multiply"),
        ("HS_MODEL_OUTPUT_SCALE", _c_float(float(meta.output.scale[0])), "float32"),
        ("HS_MODEL_OUTPUT_ZERO_POINT", f"({meta.output.zero_point[0]})", "int8"),
        ("HS_MODEL_N_CLASSES", str(meta.n_classes), "model outputs"),
        ("HS_MODEL_CLASS_NAMES_INIT", "{" + names + "}", "class names in output order"),
        ("HS_MODEL_NORMAL_INDEX", str(normal_index(meta.class_names, meta.normal_class)),
         "index of the normal class"),
        ("HS_MODEL_THRESHOLD", _c_double(meta.threshold), "abnormal when P(abnormal) >= this"),
        ("HS_ARENA_SIZE", f"{arena_bytes}u", "tensor arena bytes: " + (
            "measured with the TFLite Micro interpreter, plus a margin" if measured
            else "given to the export")),
    ]
    body = "".join(f"#define {name} {value} /* {why} */\n" for name, value, why in defines)
    return (
        "/* hs_model.h: GENERATED by `heartsound firmware export` (firmware_bridge/export.py)\n"
        " * from the model's metadata. Do not edit: export again.\n"
        f" * FeatureSpec: {spec.to_json()}\n */\n"
        "#ifndef HS_MODEL_H\n#define HS_MODEL_H\n\n"
        f"{body}\n#endif /* HS_MODEL_H */\n")


def ops_header(ops: tuple[str, ...] | None) -> str:
    """``hs_ops_enabled.h``: 1 for each op to register (all of model_ops.h when ``None``)."""
    lines = [f"#define HS_OP_ENABLED_{op} {int(ops is None or op in ops)}\n"
             for op in tflm_tree.firmware_ops()]
    return "/* hs_ops_enabled.h: GENERATED by firmware_bridge/export.py. */\n" + "".join(lines)


# ---- PlatformIO ---------------------------------------------------------------------------
#: A Cortex-M4F Arduino board that TFLite Micro's own examples target.
PLATFORMIO_ENV = "nano33ble"


def platformio_ini(tflm_flags: list[str]) -> str:
    flags = "\n".join(f"    {f}" for f in tflm_flags)
    return (
        "; GENERATED by `heartsound firmware export`. Real boards: `pio run -t upload`, then\n"
        "; `heartsound firmware screen --port /dev/ttyACM0 FILE.wav`.\n"
        "; The app is src/ (main.cc's setup()/loop() under Arduino, platform_arduino.cpp);\n"
        "; TFLite Micro is lib/tflite-micro (the pinned tree, only the files the app needs).\n"
        f"[env:{PLATFORMIO_ENV}]\n"
        "platform = nordicnrf52\nboard = nano33ble\nframework = arduino\n"
        "monitor_speed = 115200\n"
        "build_unflags = -std=gnu++11 -std=gnu++14\n"
        "build_flags =\n    -std=gnu++17\n    -DHS_DEVICE_TRACE=0\n"
        f"{flags}\n"
        "build_src_filter = +<*>\n")


def _tflm_library_json(revision: str, flags: list[str]) -> str:
    return json.dumps({
        "name": "tflite-micro", "version": "0.0.0+" + revision[:12],
        "description": "TFLite Micro with CMSIS-NN, the files heartsound's app needs",
        "frameworks": "*", "platforms": "*",
        "build": {"srcDir": ".", "includeDir": ".", "flags": flags,
                  "srcFilter": ["+<tensorflow/>", "+<third_party/cmsis_nn/Source/>"]},
    }, indent=2) + "\n"


# ---- the export ---------------------------------------------------------------------------
def _write(path: Path, text: str) -> None:
    """Keep the timestamp of unchanged files so a rebuild recompiles only what changed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.is_file() or path.read_text() != text:
        path.write_text(text)


def _copy(src: Path, dst: Path) -> None:
    _write(dst, src.read_text())


def _check_out(out_dir: Path, force: bool, update: bool) -> None:
    if out_dir.exists() and not (force or update):
        raise UsageError(f"{out_dir} exists: choose another --out or pass --force to "
                         "replace it")
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"{out_dir} is a file, not a folder: choose another --out")


def _staging(out_dir: Path) -> Path:
    """A fresh folder beside ``out_dir``: a new export is written there and renamed into
    place at the end, so a failed one leaves nothing that blocks the rerun."""
    stage = out_dir.parent / f".{out_dir.name}.part"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    return stage


def _publish(stage: Path, out_dir: Path) -> None:
    if out_dir.exists():
        shutil.rmtree(out_dir)
    stage.rename(out_dir)


def measure_arena(model: bytes) -> int:
    """Smallest arena TFLite Micro allocates and runs the model in (child processes)."""
    if importlib.util.find_spec("tflite_micro") is None:
        raise UsageError("measuring the arena needs TFLite Micro's interpreter (the "
                         "tflite-micro package): pip install 'heartsound[firmware]', or give "
                         "the size with --arena BYTES")
    from convert.tflm import smallest_arena

    return smallest_arena(model)


def _write_tree(out_dir: Path, model: bytes, meta: ModelMeta, ops: tuple[str, ...] | None,
                arena_bytes: int, measured: int | None, tree: Path | None) -> tuple[str, ...]:
    """Every file of the export under ``out_dir``; returns the names in src/."""
    src = out_dir / "src"
    _write(src / "model_data.cc", model_source(model))
    _write(src / "hs_model.h", model_header(model, meta, arena_bytes, measured is not None))
    _write(src / "hs_mfcc_tables.h", render_header(meta.spec))
    _write(src / "hs_ops_enabled.h", ops_header(ops))
    for file in C_SOURCES:
        _copy(C_DIR / file, src / file)
    for file in APP_SOURCES:
        _copy(APP_DIR / file, src / file)
    for board, files in BOARD_SOURCES.items():
        for file in files:
            _copy(APP_DIR / file, out_dir / "boards" / board / file)
    flags = tflm_tree.tflm_flags()
    if tree is not None:
        tflm_tree.copy_tflm_sources(tree, out_dir / "lib" / "tflite-micro")
        _write(out_dir / "lib" / "tflite-micro" / "library.json",
               _tflm_library_json(tflm_tree.TFLM_REVISION, flags))
    _write(out_dir / "platformio.ini", platformio_ini(flags))
    return tuple(sorted(str(p.relative_to(out_dir)) for p in src.iterdir()))


def export_firmware(model: bytes, out_dir: Path, *, name: str = "model",
                    arena_bytes: int | None = None, all_ops: bool = False,
                    force: bool = False, update: bool = False,
                    tflm_dir: Path | None = None, with_tflm: bool = True) -> Export:
    """Write the firmware tree for ``model`` into ``out_dir`` (see the module docstring).

    ``arena_bytes`` None measures the arena with the TFLite Micro interpreter (seconds) and
    adds :data:`ARENA_MARGIN`. ``update`` rewrites an existing tree in place, touching only
    changed files (what the build does); ``force`` replaces it. A new or replacing export
    is written beside ``out_dir`` and renamed into place only once complete.
    """
    meta = check_int8_model(model, name)
    ops = None if all_ops else tflm_tree.model_ops(model, tflm_dir)
    if ops is not None:
        tflm_tree.check_model_ops(model, tflm_dir)
    out_dir = Path(out_dir).resolve()
    _check_out(out_dir, force, update)
    tree = (tflm_dir or tflm_tree.default_tflm_dir()).resolve()
    if with_tflm:
        tflm_tree.check_tflm_dir(tree)
    measured = None
    if arena_bytes is None:
        measured = measure_arena(model)
        arena_bytes = measured + ARENA_MARGIN
    arena_bytes = -(-int(arena_bytes) // ARENA_ALIGN) * ARENA_ALIGN
    target = out_dir if update else _staging(out_dir)
    try:
        files = _write_tree(target, model, meta, ops, arena_bytes, measured, tree if with_tflm
                            else None)
        result = Export(out_dir, hashlib.sha256(model).hexdigest(),
                        hashlib.sha256(meta.spec.to_json().encode()).hexdigest(), arena_bytes,
                        measured, tuple(ops or tflm_tree.firmware_ops()), files)
        _write(target / "export.json", json.dumps({
            "model": name, "model_sha256": result.model_sha256, "model_version": meta.version,
            "spec_sha256": result.spec_sha256, "spec": json.loads(meta.spec.to_json()),
            "arena_bytes": arena_bytes, "arena_measured": measured, "ops": list(result.ops),
            "tflm_revision": tflm_tree.TFLM_REVISION, "src": list(result.files)},
            indent=2) + "\n")
        if not update:
            _publish(target, out_dir)
    finally:
        if target != out_dir:
            shutil.rmtree(target, ignore_errors=True)
    return result
