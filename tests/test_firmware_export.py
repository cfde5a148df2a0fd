"""`heartsound firmware export`: the shipped model as firmware sources.

The exported tree must compile (gcc for the host, arm-none-eabi-gcc for Cortex-M4), its
generated header must say what the model's metadata says (classes, threshold,
quantisation, digests, spec) and its arena must be the one the TFLite Micro interpreter
measured. Bad input is refused with one line. The QEMU and host builds compile an export
too (tests/test_firmware_qemu.py), so these files are the ones that ran there.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from edge.cli import main
from edge.decision import normal_index
from edge.errors import ModelError, UsageError
from edge.interpreter import input_multiplier
from edge.model_meta import read_model_meta
from edge.screening import PACKAGED_MODEL
from edge.spec import NORMALISATIONS, FeatureSpec
from edge.tables import tables_for
from firmware_bridge import build, tflm_tree
from firmware_bridge.export import ARENA_MARGIN, export_firmware
from firmware_bridge.tables_header import render_header
from firmware_bridge.tflm_tree import FirmwareBuildError
from tests.conftest import outside_checkout_env

ARM_FLAGS = ("-mcpu=cortex-m4", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv4-sp-d16")
_DEFINE = re.compile(r"^#define (\w+) (.+?) /\*", re.MULTILINE)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The shipped model exported with its arena measured (TFLite Micro, ~10 s)."""
    out = tmp_path_factory.mktemp("export") / "fw"
    assert main(["firmware", "export", "--out", str(out), "--json"]) == 0
    return out


def _defines(header: Path) -> dict[str, str]:
    return dict(_DEFINE.findall(header.read_text()))


def test_header_matches_the_model_metadata(exported):
    model = PACKAGED_MODEL.read_bytes()
    meta = read_model_meta(model)
    d = _defines(exported / "src" / "hs_model.h")
    assert json.loads(d["HS_MODEL_SHA256"]) == hashlib.sha256(model).hexdigest()
    spec_json = meta.spec.to_json()
    assert json.loads(d["HS_SPEC_SHA256"]) == hashlib.sha256(spec_json.encode()).hexdigest()
    assert d["HS_MODEL_CLASS_NAMES_INIT"] == "{" + ", ".join(
        f'"{c}"' for c in meta.class_names) + "}"
    assert int(d["HS_MODEL_N_CLASSES"]) == meta.n_classes
    assert int(d["HS_MODEL_NORMAL_INDEX"]) == normal_index(meta.class_names, meta.normal_class)
    assert float(d["HS_MODEL_THRESHOLD"]) == meta.threshold  # the same double, bit for bit
    assert np.float32(d["HS_MODEL_OUTPUT_SCALE"].rstrip("f")) == np.float32(meta.output.scale[0])
    assert int(d["HS_MODEL_OUTPUT_ZERO_POINT"].strip("()")) == meta.output.zero_point[0]
    assert int(d["HS_MODEL_INPUT_ZERO_POINT"].strip("()")) == meta.input.zero_point[0]
    mult, shift = input_multiplier(meta.input.scale[0], 0)
    assert (int(d["HS_MODEL_INPUT_MULTIPLIER"]), int(d["HS_MODEL_INPUT_SHIFT"])) == (mult, shift)
    spec = meta.spec
    assert int(d["HS_MODEL_SAMPLE_RATE_HZ"]) == spec.sample_rate_hz
    assert int(d["HS_WINDOW_SAMPLES"].rstrip("u")) == spec.window_samples
    assert (int(d["HS_MODEL_INPUT_ROWS"]), int(d["HS_MODEL_INPUT_COLS"])) == (
        spec.frames_per_window, spec.n_ceps)
    # the front-end tables are the model's spec, embedded as JSON
    tables = (exported / "src" / "hs_mfcc_tables.h").read_text()
    embedded = re.search(r"#define HS_SPEC_JSON (\".*\")\n", tables).group(1)
    assert FeatureSpec.from_json(json.loads(embedded)) == spec
    assert "hs_mel_weights[HS_MEL_WEIGHTS]" in tables
    assert f"#define HS_MEL_WEIGHTS ({int(tables_for(spec).mel_len.sum())})" in tables


def test_arena_is_measured_with_tflite_micro(exported):
    from convert.tflm import arena_fits

    info = json.loads((exported / "export.json").read_text())
    measured = info["arena_measured"]
    assert info["arena_bytes"] == measured + ARENA_MARGIN
    d = _defines(exported / "src" / "hs_model.h")
    assert int(d["HS_ARENA_SIZE"].rstrip("u")) == info["arena_bytes"]
    assert arena_fits(PACKAGED_MODEL, measured) and not arena_fits(PACKAGED_MODEL, measured - 16)


def test_model_array_holds_the_model(exported):
    text = (exported / "src" / "model_data.cc").read_text()
    model = PACKAGED_MODEL.read_bytes()
    assert "alignas(16) const unsigned char g_model[]" in text
    assert f"g_model_len = {len(model)}u" in text
    body = text.split("g_model[] = {", 1)[1].split("}", 1)[0]
    assert bytes(int(v, 16) for v in body.replace(",", " ").split()) == model


def test_ops_header_registers_only_the_model_ops(exported):
    text = (exported / "src" / "hs_ops_enabled.h").read_text()
    enabled = set(re.findall(r"HS_OP_ENABLED_(\w+) 1", text))
    assert enabled == set(tflm_tree.model_ops(PACKAGED_MODEL.read_bytes()))


@pytest.mark.parametrize("compiler", ["gcc", "arm-none-eabi-gcc"])
def test_exported_sources_compile(exported, compiler, tmp_path):
    """The C99 front end, protocol and device loop with -Werror, and the model array. (The
    app's C++ against TFLite Micro is compiled from an export by tests/test_firmware_qemu.py.)"""
    src = exported / "src"
    arch = list(ARM_FLAGS) if compiler.startswith("arm") else []
    cxx = compiler.replace("gcc", "g++")
    jobs = [[compiler, *arch, "-std=c99", "-Wall", "-Wextra", "-Werror", "-Os", "-c",
             str(src / name), "-o", str(tmp_path / f"{name}.o")]
            for name in ("hs_mfcc.c", "hs_proto.c", "hs_device.c")]
    jobs.append([cxx, *arch, "-std=c++17", "-Wall", "-Werror", "-Os", "-c",
                 str(src / "model_data.cc"), "-o", str(tmp_path / "model_data.o")])
    for cmd in jobs:
        proc = subprocess.run([*build.NICE, *cmd], capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stderr[-2000:]}"


@pytest.mark.parametrize("compiler", ["gcc", "arm-none-eabi-gcc"])
def test_front_end_and_device_loop_compile_for_every_normalisation(exported, compiler,
                                                                    tmp_path):
    """A model of another spec exports other tables: the front end and the device loop
    build with -Werror for every HS_NORMALISE, the per-recording modes too (their
    statistics live in the device's session; nothing assumes a per-window mode)."""
    spec = read_model_meta(PACKAGED_MODEL.read_bytes()).spec
    arch = list(ARM_FLAGS) if compiler.startswith("arm") else []
    for mode in NORMALISATIONS:
        src = tmp_path / mode
        src.mkdir()
        for path in (exported / "src").iterdir():
            if path.suffix in (".c", ".h"):
                shutil.copy(path, src / path.name)
        tables = render_header(replace(spec, normalise=mode))
        (src / "hs_mfcc_tables.h").write_text(tables)
        assert f"#define HS_NORMALISE ({NORMALISATIONS.index(mode)})" in tables
        for name in ("hs_mfcc.c", "hs_device.c"):
            cmd = [compiler, *arch, "-std=c99", "-Wall", "-Wextra", "-Werror", "-Os", "-c",
                   str(src / name), "-o", str(src / f"{name}.o")]
            proc = subprocess.run([*build.NICE, *cmd], capture_output=True, text=True,
                                  timeout=300)
            assert proc.returncode == 0, f"{mode}: {' '.join(cmd)}\n{proc.stderr[-2000:]}"


def test_platformio_project_is_consistent(exported):
    ini = (exported / "platformio.ini").read_text()
    for flag in tflm_tree.tflm_flags():
        assert flag in ini
        if flag.startswith("-I"):
            assert (exported / flag[2:]).is_dir(), flag
    lib = exported / "lib" / "tflite-micro"
    assert json.loads((lib / "library.json").read_text())["name"] == "tflite-micro"
    shipped = {p.relative_to(tflm_tree.default_tflm_dir()) for p in
               tflm_tree.tflm_source_files(tflm_tree.default_tflm_dir())}
    assert shipped and all((lib / rel).is_file() for rel in shipped)
    assert (exported / "src" / "platform_arduino.cpp").is_file()
    for board in ("mps2-an386", "host"):
        assert any((exported / "boards" / board).iterdir())


# ---- bad input ------------------------------------------------------------------------------
def _one_line_error(capsys, argv: list[str], exit_code: int, match: str) -> None:
    assert main(argv) == exit_code
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and match in err, err


def test_existing_out_needs_force(exported, capsys):
    _one_line_error(capsys, ["firmware", "export", "--out", str(exported), "--arena", "32768"],
                    UsageError.exit_code, "--force")


def test_not_a_model_is_refused(tmp_path, capsys):
    bogus = tmp_path / "notes.tflite"
    bogus.write_bytes(b"not a flatbuffer at all" * 10)
    _one_line_error(capsys, ["firmware", "export", "--out", str(tmp_path / "o"), "--model",
                             str(bogus)], ModelError.exit_code, str(bogus))
    assert not (tmp_path / "o").exists()


def test_float_model_is_refused(tmp_path, capsys):
    import tensorflow as tf

    keras = tf.keras.Sequential([tf.keras.Input((74, 13)), tf.keras.layers.Flatten(),
                                 tf.keras.layers.Dense(2, activation="softmax")])
    path = tmp_path / "float.tflite"
    path.write_bytes(tf.lite.TFLiteConverter.from_keras_model(keras).convert())
    _one_line_error(capsys, ["firmware", "export", "--out", str(tmp_path / "o"), "--model",
                             str(path)], ModelError.exit_code, "not int8")


def test_force_replaces_and_arena_can_be_given(tmp_path):
    out = tmp_path / "fw"
    (out / "stale").mkdir(parents=True)
    result = export_firmware(PACKAGED_MODEL.read_bytes(), out, arena_bytes=30000, force=True,
                             with_tflm=False)
    assert not (out / "stale").exists() and result.arena_measured is None
    assert result.arena_bytes == 30000 + (-30000 % 16)


# ---- from a pip install: no checkout, no TFLite Micro tree beside it -----------------------
def _installed_export(venv: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in outside_checkout_env().items() if k != tflm_tree.TFLM_DIR_ENV}
    return subprocess.run([str(venv / "bin/heartsound"), "firmware", "export", *args],
                          capture_output=True, text=True, cwd=cwd, env=env, timeout=300)


def test_export_from_the_wheel_without_the_tree(installed_station, tmp_path):
    """A pip install has the app sources; without the TFLite Micro tree it exports with
    --no-tflm (op names from the tflite-micro package), and asks for --tflm-tree otherwise,
    in one line and without leaving a folder behind."""
    out = tmp_path / "fw"
    refused = _installed_export(installed_station, tmp_path, "--out", str(out), "--arena",
                                "30000")
    assert refused.returncode == FirmwareBuildError.exit_code, refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    assert "--tflm-tree" in refused.stderr and "--no-tflm" in refused.stderr
    assert not out.exists() and not list(tmp_path.glob(".fw*"))
    for extra in ((), ("--all-ops",)):
        done = _installed_export(installed_station, tmp_path, "--out", str(out), "--arena",
                                 "30000", "--no-tflm", "--force", *extra)
        assert done.returncode == 0, done.stderr
        assert (out / "src" / "model_ops.h").is_file() and not (out / "lib").exists()
    with_tree = _installed_export(installed_station, tmp_path, "--out", str(tmp_path / "full"),
                                  "--arena", "30000", "--tflm-tree",
                                  str(tflm_tree.default_tflm_dir()))
    assert with_tree.returncode == 0, with_tree.stderr
    assert (tmp_path / "full" / "lib" / "tflite-micro" / "library.json").is_file()


def test_arena_without_tflite_micro_is_one_line(tmp_path):
    code = ("import sys; sys.modules['tflite_micro'] = None\n"
            "from edge.cli import main\n"
            f"sys.exit(main(['firmware', 'export', '--out', {str(tmp_path / 'fw')!r}, "
            "'--no-tflm', '--all-ops']))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == UsageError.exit_code, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "heartsound[firmware]" in result.stderr and "--arena" in result.stderr
    assert not (tmp_path / "fw").exists()
