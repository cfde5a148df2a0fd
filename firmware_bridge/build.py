"""Build the TFLite Micro app for the host and for Cortex-M4, and run it (natively or on QEMU).

The build itself is CMake (``firmware_bridge/CMakeLists.txt``); this module drives it so that
tests, benchmarks and the CLI share one way of building. TFLite Micro (its framework, the
kernels of ``app/model_ops.h`` and CMSIS-NN: ~190 files) takes minutes on two cores, so
:func:`build_tflm_lib` compiles it once per target, flags and op list, and caches the static
library under ``~/.cache/heartsound/tflm/<target>-<hash>/``; the app (a handful of files
plus the model array) is then built against that library in seconds.

Every compiler runs under ``nice -n 19``: this machine is shared with training jobs.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from firmware_bridge.export import export_firmware
from firmware_bridge.model_array import inputs_source
from firmware_bridge.tflm_tree import (
    FIRMWARE_DIR,
    TFLM_REVISION,
    FirmwareBuildError,
    check_model_ops,
    check_tflm_dir,
    default_tflm_dir,
    kernel_stems,
)

TOOLCHAIN_FILE = FIRMWARE_DIR / "cmake" / "arm-none-eabi.cmake"
TFLM_CMAKE = FIRMWARE_DIR / "cmake" / "tflm.cmake"

CACHE_DIR_ENV = "HEARTSOUND_CACHE"

HOST = "host"
CORTEX_M4 = "cortex-m4"
TARGETS = (HOST, CORTEX_M4)
#: CMake build type per target: -O3 on the host, -Os (flash is scarce) on the MCU.
BUILD_TYPES = {HOST: "Release", CORTEX_M4: "MinSizeRel"}

#: Parallel compile jobs: two cores, shared with training.
JOBS = 2
NICE = ("nice", "-n", "19")

#: Default static arena: the project CNN's largest activation map (74x13x16 int8) plus its
#: neighbours fits; the app reports what it actually used (``HS_ARENA_USED``).
DEFAULT_ARENA_SIZE = 32 * 1024

#: QEMU board and the flags that make instruction counts deterministic: with
#: ``-icount shift=0`` one emulated instruction is one ns of virtual time, and SysTick on
#: the processor clock advances one tick per 40 instructions (TOOLCHAIN_FACTS.md).
QEMU = "qemu-system-arm"
QEMU_MACHINE = "mps2-an386"
INSTRUCTIONS_PER_SYSTICK = 40


# ---- TFLite Micro static library ---------------------------------------------------------
def default_cache_dir() -> Path:
    """Where built TFLite Micro libraries live between runs (``$HEARTSOUND_CACHE/tflm``)."""
    root = os.environ.get(CACHE_DIR_ENV, "").strip()
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "heartsound"
    return base / "tflm"


def _check_target(target: str) -> None:
    if target not in TARGETS:
        raise FirmwareBuildError(
            f"unknown firmware target {target!r}: use one of {', '.join(TARGETS)}")


def _compiler_version(target: str) -> str:
    compiler = "arm-none-eabi-g++" if target == CORTEX_M4 else os.environ.get("CXX", "c++")
    try:
        out = subprocess.run([compiler, "--version"], capture_output=True, text=True,
                             check=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        package = "g++-arm-none-eabi" if target == CORTEX_M4 else "g++"
        raise FirmwareBuildError(
            f"{compiler} not usable for target {target} ({exc}): install {package}") from exc
    return out.stdout.splitlines()[0]


def _tree_fingerprint(tflm_dir: Path) -> str:
    """Paths and sizes of every file in the tree: cheap, and changes with any new version."""
    digest = hashlib.sha256()
    for path in sorted(tflm_dir.rglob("*")):
        if path.is_file():
            digest.update(f"{path.relative_to(tflm_dir)}:{path.stat().st_size}\n".encode())
    return digest.hexdigest()


def tflm_cache_key(target: str, tflm_dir: Path) -> str:
    """Hash of everything that changes the library's bits: flags, compiler, tree, revision."""
    parts = [
        target, TFLM_REVISION, BUILD_TYPES[target], str(tflm_dir), _compiler_version(target),
        TFLM_CMAKE.read_text(), _tree_fingerprint(tflm_dir),
        TOOLCHAIN_FILE.read_text() if target == CORTEX_M4 else "",
        "|".join(kernel_stems()),  # the kernels compiled into the library
    ]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


def _run(cmd: Sequence[str], what: str, cwd: Path | None = None,
         timeout: float | None = None) -> subprocess.CompletedProcess:
    try:
        proc = subprocess.run(list(cmd), capture_output=True, text=True, cwd=cwd,
                              timeout=timeout)
    except FileNotFoundError as exc:
        raise FirmwareBuildError(f"{what}: {cmd[0]} not found: install it") from exc
    except subprocess.TimeoutExpired as exc:
        raise FirmwareBuildError(f"{what}: gave no result within {timeout} s") from exc
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-25:])
        raise FirmwareBuildError(f"{what} failed (exit {proc.returncode}):\n{tail}")
    return proc


def _cmake_configure(build_dir: Path, target: str, defines: dict[str, str]) -> None:
    args = [*NICE, "cmake", "-S", str(FIRMWARE_DIR), "-B", str(build_dir),
            f"-DCMAKE_BUILD_TYPE={BUILD_TYPES[target]}"]
    if target == CORTEX_M4:
        args.append(f"-DCMAKE_TOOLCHAIN_FILE={TOOLCHAIN_FILE}")
    args += [f"-D{name}={value}" for name, value in defines.items()]
    _run(args, f"cmake configure ({target}, {build_dir})")


def _cmake_build(build_dir: Path, cmake_target: str, what: str) -> None:
    _run([*NICE, "cmake", "--build", str(build_dir), "--target", cmake_target,
          "-j", str(JOBS)], what)


@dataclass(frozen=True)
class TflmLibrary:
    """A cached TFLite Micro static library and the tree it was built from."""

    target: str
    path: Path
    tflm_dir: Path
    build_seconds: float
    """Wall time of the build that made this cache entry: a full build, or an incremental
    one when the target's build folder already held objects of an earlier key."""


def build_tflm_lib(target: str, cache_dir: Path | None = None,
                   tflm_dir: Path | None = None) -> TflmLibrary:
    """Return the TFLite Micro library for ``target``, building it only if not cached.

    Safe to call from parallel processes: one builds under a file lock, the others wait.
    """
    _check_target(target)
    tflm_dir = (tflm_dir or default_tflm_dir()).resolve()
    check_tflm_dir(tflm_dir)
    cache_dir = Path(cache_dir or default_cache_dir())
    cache_dir.mkdir(parents=True, exist_ok=True)
    out_dir = cache_dir / f"{target}-{tflm_cache_key(target, tflm_dir)}"
    # One lock per target: every key of a target shares its build folder.
    with open(cache_dir / f"{target}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (out_dir / "build.json").is_file():
            _build_tflm_into(target, tflm_dir, out_dir, cache_dir / f"{target}.build")
    info = json.loads((out_dir / "build.json").read_text())
    return TflmLibrary(target, out_dir / "libtflm.a", tflm_dir, info["build_seconds"])


def _build_tflm_into(target: str, tflm_dir: Path, out_dir: Path, build_dir: Path) -> None:
    """Build in a folder kept per target, so a new key recompiles only what changed."""
    start = time.monotonic()
    try:
        _cmake_configure(build_dir, target, {"TFLM_DIR": str(tflm_dir)})
    except FirmwareBuildError:  # a cache CMake cannot reuse (other compiler): start afresh
        shutil.rmtree(build_dir, ignore_errors=True)
        _cmake_configure(build_dir, target, {"TFLM_DIR": str(tflm_dir)})
    _cmake_build(build_dir, "tflm", f"building TFLite Micro for {target}")
    seconds = time.monotonic() - start
    out_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy2(build_dir / "libtflm.a", out_dir / "libtflm.a")
    info = {"target": target, "revision": TFLM_REVISION, "tflm_dir": str(tflm_dir),
            "compiler": _compiler_version(target), "build_seconds": round(seconds, 1)}
    # build.json last: its presence marks a complete cache entry.
    (out_dir / "build.json").write_text(json.dumps(info, indent=2) + "\n")


# ---- the app -----------------------------------------------------------------------------
@dataclass(frozen=True)
class AppBuild:
    """A built app: the host executable or the Cortex-M4 ELF, with its link map."""

    target: str
    executable: Path
    build_dir: Path
    library: TflmLibrary
    arena_size: int
    build_seconds: float

    @property
    def map_file(self) -> Path | None:
        path = self.build_dir / "app.map"
        return path if path.is_file() else None

    @property
    def export_dir(self) -> Path:
        """The firmware export (firmware_bridge/export.py) this build compiled."""
        return self.build_dir / "export"


def _write_if_changed(path: Path, text: str) -> None:
    """Keep the timestamp of unchanged generated sources so make does not recompile them."""
    if not path.is_file() or path.read_text() != text:
        path.write_text(text)


def build_app(target: str, model: bytes, build_dir: Path, *,
              inputs: np.ndarray | None = None, arena_size: int | None = DEFAULT_ARENA_SIZE,
              all_ops: bool = False, stack_size: int | None = None,
              heap_size: int | None = None, cache_dir: Path | None = None,
              tflm_dir: Path | None = None) -> AppBuild:
    """Build the app for ``target`` from an export of ``model`` (and int8 test ``inputs``).

    The model's C sources come from :func:`firmware_bridge.export.export_firmware`, written
    to ``build_dir/export`` (the same files ``heartsound firmware export`` writes for a real
    board); ``arena_size`` None measures the arena with TFLite Micro there. The TFLite Micro
    library comes from :func:`build_tflm_lib`'s cache; only the app's own files are compiled
    here. Only the model's own ops are registered unless ``all_ops``: the linker then drops
    every other kernel (about 40 KB of flash for the CNN). With ``inputs`` the app runs them
    at boot and exits (a self-test image); without, it serves the serial protocol.
    ``stack_size``/``heap_size`` change the Cortex-M4 image's RAM reserves (defaults in
    CMakeLists.txt).
    """
    _check_target(target)
    check_model_ops(model, tflm_dir)
    library = build_tflm_lib(target, cache_dir, tflm_dir)
    build_dir = Path(build_dir).resolve()
    build_dir.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    exported = export_firmware(model, build_dir / "export", name="firmware model",
                               arena_bytes=arena_size, all_ops=all_ops, update=True,
                               tflm_dir=tflm_dir, with_tflm=False)
    defines = {"TFLM_DIR": str(library.tflm_dir), "TFLM_LIBRARY": str(library.path),
               "HS_EXPORT_DIR": str(exported.out_dir), "HS_INPUT_SOURCE": ""}
    for name, value in (("HS_STACK_SIZE", stack_size), ("HS_HEAP_SIZE", heap_size)):
        if value is not None:
            defines[name] = str(int(value))
    if inputs is not None:
        inputs_cc = build_dir / "inputs.cc"
        _write_if_changed(inputs_cc, inputs_source(inputs))
        defines["HS_INPUT_SOURCE"] = str(inputs_cc)
    _cmake_configure(build_dir, target, defines)
    _cmake_build(build_dir, "app", f"building the firmware app for {target}")
    exe = build_dir / ("app.elf" if target == CORTEX_M4 else "app")
    return AppBuild(target, exe, build_dir, library, exported.arena_bytes,
                    time.monotonic() - start)


# ---- running it --------------------------------------------------------------------------
@dataclass(frozen=True)
class AppRun:
    """What one boot of the app printed (see app/main.cc for the line format)."""

    returncode: int
    console: str
    outputs: tuple[np.ndarray, ...]
    ticks: tuple[int, ...]
    op_ticks: tuple[tuple[str, int], ...]
    """(operator name, SysTick ticks) of the first window, in execution order."""
    arena_used: int | None
    stack_used: int | None
    heap_used: int | None
    done: bool

    @property
    def instructions(self) -> tuple[int, ...]:
        """Instructions per inference on the emulated core (SysTick ticks x 40)."""
        return tuple(t * INSTRUCTIONS_PER_SYSTICK for t in self.ticks)

    @property
    def op_instructions(self) -> tuple[tuple[str, int], ...]:
        """(operator, instructions) of the first window on the emulated core."""
        return tuple((name, t * INSTRUCTIONS_PER_SYSTICK) for name, t in self.op_ticks)


_LINE_INT = {"HS_ARENA_USED": "arena_used", "HS_STACK_USED": "stack_used",
             "HS_HEAP_USED": "heap_used"}


def parse_console(console: str, returncode: int) -> AppRun:
    """Read the app's ``HS_*`` console lines into an :class:`AppRun`."""
    outputs: dict[int, np.ndarray] = {}
    ticks: dict[int, int] = {}
    op_ticks: dict[int, tuple[str, int]] = {}
    values: dict[str, int | None] = dict.fromkeys(_LINE_INT.values())
    for line in console.splitlines():
        words = line.split()
        if not words:
            continue
        if words[0] == "HS_OUT" and len(words) == 3:
            outputs[int(words[1])] = np.frombuffer(bytes.fromhex(words[2]), dtype=np.int8)
        elif words[0] == "HS_TICKS" and len(words) == 3:
            ticks[int(words[1])] = int(words[2])
        elif words[0] == "HS_OP_TICKS" and len(words) == 4:
            op_ticks[int(words[1])] = (words[2], int(words[3]))
        elif words[0] in _LINE_INT and len(words) == 2:
            values[_LINE_INT[words[0]]] = int(words[1])
    return AppRun(returncode, console, tuple(outputs[i] for i in sorted(outputs)),
                  tuple(ticks[i] for i in sorted(ticks)),
                  tuple(op_ticks[k] for k in sorted(op_ticks)), done="HS_DONE" in console.split(),
                  **values)


def _run_console(cmd: Sequence[str], what: str, timeout: float) -> AppRun:
    try:
        proc = subprocess.run(list(cmd), capture_output=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
    except FileNotFoundError as exc:
        raise FirmwareBuildError(f"{what}: {cmd[0]} not found: install it") from exc
    except subprocess.TimeoutExpired as exc:
        raise FirmwareBuildError(f"{what}: no exit within {timeout} s (firmware hung?)") from exc
    console = (proc.stdout + proc.stderr).decode("utf-8", errors="replace")
    return parse_console(console, proc.returncode)


def run_host(executable: Path, timeout: float = 60.0) -> AppRun:
    """Run the host build to completion."""
    return _run_console([str(executable)], f"running {executable}", timeout)


def qemu_command(elf: Path, serial: str = "stdio",
                 extra_args: Sequence[str] = ()) -> list[str]:
    """QEMU command line booting ``elf`` on mps2-an386 with deterministic instruction counts
    (``-icount shift=0``) and semihosting; ``serial="pty"`` puts UART0 on a pseudo-terminal."""
    return [QEMU, "-M", QEMU_MACHINE, "-nographic", "-monitor", "none",
            "-semihosting-config", "enable=on,target=native", "-icount", "shift=0",
            "-serial", serial, "-kernel", str(elf), *extra_args]


def run_qemu(elf: Path, timeout: float = 120.0, serial: str = "stdio",
             extra_args: Sequence[str] = ()) -> AppRun:
    """Boot the Cortex-M4 ELF on QEMU until the firmware exits through semihosting."""
    return _run_console(qemu_command(elf, serial, extra_args), f"running {elf} on QEMU", timeout)


# ---- size report -------------------------------------------------------------------------
#: Output sections that occupy RAM at run time; .data also occupies flash (its initial
#: values are copied from there at reset).
RAM_SECTIONS = (".data", ".bss", ".heap", ".stack")
FLASH_AND_RAM_SECTIONS = (".data",)
NOLOAD_SECTIONS = (".bss", ".heap", ".stack")

#: Parts of the image, matched in this order against the input section's file in the map.
PART_PATTERNS = (
    ("model array", re.compile(r"model_data\.cc\.o")),
    ("front end", re.compile(r"hs_mfcc\.c\.o")),
    ("protocol", re.compile(r"hs_proto\.c\.o")),
    ("device loop", re.compile(r"hs_device\.c\.o")),
    ("test inputs", re.compile(r"(?<!no_)inputs\.cc\.o")),
    ("TFLite Micro", re.compile(r"libtflm\.a\(")),
    ("app", re.compile(r"CMakeFiles/app\.dir/")),
    ("C/C++ runtime", re.compile(r"lib(c_nano|c|m|g_nano|rdimon_nano|rdimon|stdc\+\+_nano|"
                                 r"stdc\+\+|supc\+\+_nano|supc\+\+|gcc)\.a|crt\w*\.o")),
)
ARENA_SYMBOL = "hs_tensor_arena"

_OUT_SECTION = re.compile(r"^(\.[\w.]+)\s+0x([0-9a-f]+)\s+0x([0-9a-f]+)")
_IN_SECTION = re.compile(r"^ (\S+)\s+0x([0-9a-f]+)\s+0x([0-9a-f]+)\s+(\S.*)$")
_IN_SECTION_WRAPPED = re.compile(r"^\s+0x([0-9a-f]+)\s+0x([0-9a-f]+)\s+(\S.*)$")


@dataclass(frozen=True)
class SizeReport:
    """Flash and RAM of a Cortex-M4 image, whole and per part (bytes, after --gc-sections)."""

    flash: int
    ram: int
    parts: dict[str, dict[str, int]]
    """part -> {"flash": bytes, "ram": bytes}; stack and heap reserves are parts too."""

    def table(self) -> str:
        """Human-readable report (the figure the issue asks for)."""
        rows = [f"{'part':<26}{'flash':>10}{'RAM':>10}"]
        for name, size in self.parts.items():
            rows.append(f"{name:<26}{size['flash']:>10,}{size['ram']:>10,}")
        rows.append(f"{'total':<26}{self.flash:>10,}{self.ram:>10,}")
        return "\n".join(rows)


def _part_of(section: str, origin: str) -> str:
    if section == f".bss.{ARENA_SYMBOL}":  # its own section thanks to -fdata-sections
        return "tensor arena"
    for name, pattern in PART_PATTERNS:
        if pattern.search(origin):
            return name
    return "other"


def _map_input_sections(map_text: str):
    """(output section, input section, size, origin file) for every input section."""
    body = map_text.split("Linker script and memory map", 1)[-1]
    out_name, pending = None, None
    for line in body.splitlines():
        match = _OUT_SECTION.match(line)
        if match:
            out_name, pending = match.group(1), None
            continue
        if re.match(r"^\.[\w.]+$", line):  # long output section name, numbers on next line
            out_name, pending = line.strip(), None
            continue
        match = _IN_SECTION.match(line)
        if match and out_name:
            yield out_name, match.group(1), int(match.group(3), 16), match.group(4)
            pending = None
            continue
        if re.match(r"^ \S+$", line):  # long input section name, numbers on next line
            pending = line.strip()
            continue
        match = _IN_SECTION_WRAPPED.match(line)
        if match and pending and out_name:
            yield out_name, pending, int(match.group(2), 16), match.group(3)
        pending = None


def _output_sections(elf: Path) -> dict[str, int]:
    proc = _run(["arm-none-eabi-size", "-A", str(elf)], f"arm-none-eabi-size {elf}")
    sizes = {}
    for line in proc.stdout.splitlines():
        words = line.split()
        if len(words) == 3 and words[0].startswith(".") and words[1].isdigit():
            sizes[words[0]] = int(words[1])
    return sizes


def size_report(build: AppBuild) -> SizeReport:
    """Flash/RAM per part of a Cortex-M4 build, from its link map and section headers."""
    if build.target != CORTEX_M4 or build.map_file is None:
        raise FirmwareBuildError(f"size report needs a {CORTEX_M4} build with a link map, "
                                 f"not {build.target} ({build.build_dir})")
    loaded = {name: size for name, size in _output_sections(build.executable).items()
              if not name.startswith((".ARM.attributes", ".comment", ".debug"))}
    parts: dict[str, dict[str, int]] = {}
    for out_name, section, size, origin in _map_input_sections(build.map_file.read_text()):
        if out_name not in loaded or size == 0:
            continue
        part = parts.setdefault(_part_of(section, origin), {"flash": 0, "ram": 0})
        if out_name not in NOLOAD_SECTIONS:
            part["flash"] += size
        if out_name in RAM_SECTIONS:
            part["ram"] += size
    for reserve in (".stack", ".heap"):
        parts[f"{reserve[1:]} reserve"] = {"flash": 0, "ram": loaded.get(reserve, 0)}
    flash = sum(s for n, s in loaded.items() if n not in NOLOAD_SECTIONS)
    ram = sum(s for n, s in loaded.items() if n in RAM_SECTIONS)
    # The rest: alignment gaps (+) and strings the linker merged across objects (-).
    parts["alignment, merged strings"] = {
        "flash": flash - sum(p["flash"] for p in parts.values()),
        "ram": ram - sum(p["ram"] for p in parts.values())}
    return SizeReport(flash, ram, parts)
