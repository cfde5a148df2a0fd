"""The pinned TFLite Micro source tree and the operators the app registers.

Why a module of its own: the firmware export (which ops to enable, which TFLite Micro files
a PlatformIO project carries) and the CMake build (which kernels the cached library holds)
read the same facts; both import them from here, so neither imports the other for them.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from edge.errors import HeartsoundError, ModelError
from edge.tflite_file import parse_tflite

FIRMWARE_DIR = Path(__file__).resolve().parent
REPO_ROOT = FIRMWARE_DIR.parent
MODEL_OPS_HEADER = FIRMWARE_DIR / "app" / "model_ops.h"

#: TFLite Micro revision of ``../shared/third_party/tflite-micro`` (also in cmake/tflm.cmake).
TFLM_REVISION = "90b983c2b3f1480642e040bbd2ddb37b998f3424"
TFLM_DIR_ENV = "HEARTSOUND_TFLM_DIR"
DEFAULT_TFLM_DIR = REPO_ROOT.parent / "shared" / "third_party" / "tflite-micro"


class FirmwareBuildError(HeartsoundError):
    """The firmware could not be configured, built or run (toolchain, sources, emulator)."""


def default_tflm_dir() -> Path:
    """The pinned TFLite Micro tree: ``$HEARTSOUND_TFLM_DIR`` or ``<repo>/../shared/...``."""
    env = os.environ.get(TFLM_DIR_ENV, "").strip()
    return Path(env).expanduser().resolve() if env else DEFAULT_TFLM_DIR.resolve()


def check_tflm_dir(tflm_dir: Path) -> None:
    marker = tflm_dir / "tensorflow" / "lite" / "micro" / "micro_interpreter.h"
    if not marker.is_file():
        raise FirmwareBuildError(
            f"{tflm_dir} is not a TFLite Micro source tree (no {marker.name}): pass "
            f"--tflm-tree DIR or set {TFLM_DIR_ENV} to the tree made by create_tflm_tree.py "
            f"(revision {TFLM_REVISION[:12]}; in a checkout ../shared/third_party/"
            "tflite-micro), or leave its sources out with --no-tflm")


# ---- operators the app registers ---------------------------------------------------------
_OP_ENTRY = re.compile(r"X\(\s*Add\w+\s*,\s*(\w+)\s*,")
_KERNEL_STEMS = re.compile(r'X\(\s*Add\w+\s*,[\s\\]*\w+\s*,[\s\\]*"([a-z0-9_|]+)"')
_BUILTIN_ENUM = re.compile(r"BuiltinOperator_(\w+) = (-?\d+),")


def firmware_ops() -> tuple[str, ...]:
    """Builtin operator names the app registers (from app/model_ops.h, the one list)."""
    return tuple(_OP_ENTRY.findall(MODEL_OPS_HEADER.read_text()))


def kernel_stems() -> tuple[str, ...]:
    """Kernel file stems cmake/tflm.cmake compiles (third column of app/model_ops.h)."""
    stems = "|".join(_KERNEL_STEMS.findall(MODEL_OPS_HEADER.read_text()))
    return tuple(dict.fromkeys(stems.split("|")))


#: Preprocessor flags and include folders TFLite Micro is built with (cmake/tflm.cmake's
#: TFLM_DEFINES and TFLM_INCLUDES, for builds that do not go through CMake: PlatformIO).
TFLM_DEFINES = ("TF_LITE_STATIC_MEMORY", "CMSIS_NN", "ARM_NN_ENABLE_F16=0",
                "ARM_NN_ENABLE_F32=0")
TFLM_INCLUDES = ("", "third_party/flatbuffers/include", "third_party/gemmlowp",
                 "third_party/ruy", "third_party/kissfft", "third_party/cmsis",
                 "third_party/cmsis_nn", "third_party/cmsis_nn/Include",
                 "third_party/cmsis/CMSIS/Core/Include")
_HEADER_SUFFIXES = (".h", ".hpp", ".inc")


def tflm_flags(root: str = "lib/tflite-micro") -> list[str]:
    """-D and -I flags for the TFLite Micro tree at ``root`` (relative to a project)."""
    return ([f"-D{d}" for d in TFLM_DEFINES]
            + [f"-I{root}/{inc}".rstrip("/") for inc in TFLM_INCLUDES])


def tflm_source_files(tflm_dir: Path) -> list[Path]:
    """The .cc/.c files cmake/tflm.cmake compiles: the framework, the kernels of
    app/model_ops.h (stem, stem_common, cmsis_nn/stem) and CMSIS-NN's C sources."""
    kernels = tflm_dir / "tensorflow" / "lite" / "micro" / "kernels"
    files = [p for p in (tflm_dir / "tensorflow").rglob("*.cc")
             if kernels not in p.parents]
    for stem in ("kernel_util", "micro_tensor_utils", *kernel_stems()):
        for path in (kernels / f"{stem}.cc", kernels / f"{stem}_common.cc",
                     kernels / "cmsis_nn" / f"{stem}.cc"):
            if path.is_file():
                files.append(path)
    files += sorted((tflm_dir / "third_party" / "cmsis_nn").rglob("*.c"))
    return sorted(set(files))


def copy_tflm_sources(tflm_dir: Path, dest: Path) -> int:
    """Copy every header and the sources of :func:`tflm_source_files` to ``dest`` (a
    PlatformIO library); returns the number of files. Unchanged files are not rewritten."""
    check_tflm_dir(tflm_dir)
    roots = [tflm_dir / "tensorflow", tflm_dir / "signal"]
    roots += [tflm_dir / inc for inc in TFLM_INCLUDES if inc.startswith("third_party/")]
    wanted = sorted({p for root in roots for p in root.rglob("*")
                     if p.suffix in _HEADER_SUFFIXES and p.is_file()})
    wanted += tflm_source_files(tflm_dir)
    for path in wanted:
        target = dest / path.relative_to(tflm_dir)
        if target.is_file() and target.stat().st_size == path.stat().st_size:
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
    license_file = tflm_dir / "LICENSE"
    if license_file.is_file():
        shutil.copy2(license_file, dest / "LICENSE")
    return len(wanted)


def builtin_names(tflm_dir: Path | None = None) -> dict[int, str]:
    """BuiltinOperator code -> name: from the TFLite Micro tree's own schema header, or,
    without a tree (a pip install), from the schema the tflite-micro package carries."""
    tflm_dir = (tflm_dir or default_tflm_dir()).resolve()
    schema = tflm_dir / "tensorflow" / "lite" / "schema" / "schema_generated.h"
    if schema.is_file():
        return {int(code): name for name, code in _BUILTIN_ENUM.findall(schema.read_text())}
    try:
        from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as wheel
    except ModuleNotFoundError:
        raise FirmwareBuildError(
            f"no TFLite Micro to read operator names from: no source tree at {tflm_dir} and "
            "no tflite-micro package; pass --tflm-tree DIR (the pinned tree, revision "
            f"{TFLM_REVISION[:12]}) or pip install 'heartsound[firmware]'") from None
    return {v: k for k, v in vars(wheel.BuiltinOperator).items()
            if k.isupper() and isinstance(v, int)}


def model_ops(model: bytes, tflm_dir: Path | None = None) -> tuple[str, ...]:
    """Sorted builtin operator names a .tflite model uses (custom ops as ``CUSTOM:<name>``)."""
    names = builtin_names(tflm_dir)
    used = set()
    for sub in parse_tflite(model).subgraphs:
        for op in sub.operators:
            name = names.get(op.builtin_code, f"BUILTIN_{op.builtin_code}")
            used.add(f"CUSTOM:{op.custom_code}" if name == "CUSTOM" else name)
    return tuple(sorted(used))


def check_model_ops(model: bytes, tflm_dir: Path | None = None) -> None:
    """Refuse, before a minutes-long build, a model whose ops the firmware cannot run."""
    missing = sorted(set(model_ops(model, tflm_dir)) - set(firmware_ops()))
    if missing:
        raise ModelError(
            f"model needs operators the firmware does not register: {', '.join(missing)}; "
            f"add them to {MODEL_OPS_HEADER.relative_to(REPO_ROOT)} or change the model")


