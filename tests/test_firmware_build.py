"""The TFLite Micro app on the host and on an emulated Cortex-M4 gives the Python TFLM bits.

One real model (the project's CNN, converted to full int8 by convert.quantize.to_int8 and
calibrated on real windows) and real inputs (fixed-point MFCC windows of recordings from
every source) go through three interpreters: the ``tflite-micro`` Python wheel, the app
built for the host, and the app built for Cortex-M4 and booted on QEMU's mps2-an386. The
int8 outputs must be identical. The TFLite Micro libraries are cached by
firmware_bridge.build (the first run compiles them: minutes; later runs take seconds).
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from edge.errors import ModelError
from edge.interpreter import Quantisation, quantise_features
from edge.mfcc import mfcc, windows
from edge.spec import DEFAULT_SPEC
from edge.tflite_file import parse_tflite
from firmware_bridge import build, tflm_tree
from firmware_bridge.model_array import inputs_source, model_source
from firmware_bridge.model_cost import model_macs
from tests.mfcc_recordings import SOURCES, load, pick

#: Arena for the test builds: the CNN's largest activations (74x13x16 int8) plus the
#: input, the pooled map and TFLite Micro's bookkeeping fit with room to spare.
ARENA_SIZE = 32 * 1024
#: Windows per source run through every interpreter (one recording per source).
WINDOWS_PER_SOURCE = 2
#: Calibration windows for the int8 conversion (real features, all sources).
CALIBRATION_FILES_PER_SOURCE = 2
#: Targets of the issue for the whole app on a Cortex-M4 board.
FLASH_TARGET, RAM_TARGET = 128 * 1024, 64 * 1024


def _source_windows(data_root: Path, files_per_source: int) -> dict[str, np.ndarray]:
    """int16 feature windows of ``files_per_source`` recordings per source."""
    out = {}
    for source, (folder, _) in SOURCES.items():
        wins = [windows(mfcc(load(path)), DEFAULT_SPEC)
                for path in pick(data_root, folder, files_per_source)]
        out[source] = np.concatenate(wins)
    return out


@pytest.fixture(scope="module")
def real_windows(data_root: Path) -> dict[str, np.ndarray]:
    return _source_windows(data_root, CALIBRATION_FILES_PER_SOURCE)


@dataclass
class Case:
    """One model through every interpreter: the Python TFLM wheel, host app, QEMU app."""

    arch: str
    model: bytes
    inputs: np.ndarray
    python_outputs: np.ndarray
    host: build.AppRun
    m4_build: build.AppBuild
    m4: build.AppRun


def _convert(arch: str, real_windows: dict[str, np.ndarray]) -> bytes:
    """A project architecture (untrained: parity does not need training) in full int8,
    calibrated on real windows of every source, with the metadata every firmware export
    reads (classes, threshold, spec)."""
    from convert.metadata import add_metadata, build_document
    from convert.quantize import to_int8
    from train.models import build_model

    calibration = np.concatenate(list(real_windows.values()))
    scale = 2.0 ** -DEFAULT_SPEC.out_frac_bits  # int16 Q8.7 features -> float model input
    model = to_int8(build_model(arch), calibration.astype(np.float32) * scale,
                    spec=DEFAULT_SPEC, architecture=arch)
    return add_metadata(model, build_document(model, spec=DEFAULT_SPEC,
                                              class_names=("normal", "abnormal"),
                                              threshold=0.5, architecture=arch))


def _int8_inputs(model: bytes, real_windows: dict[str, np.ndarray]) -> np.ndarray:
    """(n, frames, ceps) int8 model inputs: a few windows of every source."""
    info = parse_tflite(model).input_tensors[0]
    quant = Quantisation(info.scale[0], info.zero_point[0])
    picked = np.concatenate([w[:WINDOWS_PER_SOURCE] for w in real_windows.values()])
    return quantise_features(picked, quant, DEFAULT_SPEC.out_frac_bits)


def _tflm_python(model: bytes, inputs: np.ndarray) -> np.ndarray:
    from tflite_micro.python.tflite_micro import runtime

    interp = runtime.Interpreter.from_bytes(model, arena_size=4 * ARENA_SIZE)
    shape = tuple(interp.get_input_details(0)["shape"])
    outs = []
    for window in inputs:
        interp.set_input(window.reshape(shape), 0)
        interp.invoke()
        outs.append(interp.get_output(0).reshape(-1).copy())
    return np.stack(outs)


def _case(arch: str, real_windows, tmp_path_factory) -> Case:
    model = _convert(arch, real_windows)
    inputs = _int8_inputs(model, real_windows)
    host = build.build_app(build.HOST, model, tmp_path_factory.mktemp(f"{arch}-host"),
                           inputs=inputs, arena_size=ARENA_SIZE)
    m4 = build.build_app(build.CORTEX_M4, model, tmp_path_factory.mktemp(f"{arch}-m4"),
                         inputs=inputs, arena_size=ARENA_SIZE)
    return Case(arch, model, inputs, _tflm_python(model, inputs), build.run_host(host.executable),
                m4, build.run_qemu(m4.executable))


@pytest.fixture(scope="module")
def cnn(real_windows, tmp_path_factory) -> Case:
    return _case("cnn", real_windows, tmp_path_factory)


@pytest.fixture(scope="module")
def crnn(real_windows, tmp_path_factory) -> Case:
    return _case("crnn", real_windows, tmp_path_factory)


def _check_complete(run: build.AppRun, n_inputs: int) -> None:
    assert run.returncode == 0 and run.done, run.console[-2000:]
    assert len(run.outputs) == n_inputs, run.console[-2000:]
    assert "HS_SERIAL heartsound" in run.console  # the serial channel works (UART on QEMU)


# ---- parity --------------------------------------------------------------------------------
@pytest.mark.slow
def test_cnn_identical_on_python_tflm_host_and_cortex_m4(cnn: Case):
    _check_complete(cnn.host, len(cnn.inputs))
    _check_complete(cnn.m4, len(cnn.inputs))
    np.testing.assert_array_equal(np.stack(cnn.host.outputs), cnn.python_outputs)
    np.testing.assert_array_equal(np.stack(cnn.m4.outputs), cnn.python_outputs)


@pytest.mark.slow
def test_crnn_identical_on_host_and_cortex_m4(crnn: Case):
    """Host and device run the same CMSIS-NN LSTM kernel: identical bits. The Python wheel
    (like LiteRT's reference kernels) runs TFLM's reference LSTM instead, which this tree
    does not have (CMSIS-NN's replaces it), so that difference is reported, not required."""
    _check_complete(crnn.host, len(crnn.inputs))
    _check_complete(crnn.m4, len(crnn.inputs))
    device = np.stack(crnn.m4.outputs)
    np.testing.assert_array_equal(np.stack(crnn.host.outputs), device)
    diff = np.abs(device.astype(np.int16) - crnn.python_outputs).max(axis=1)
    same_class = device.argmax(axis=1) == crnn.python_outputs.argmax(axis=1)
    print(f"\nCRNN, CMSIS-NN LSTM vs the tflite-micro wheel: {np.count_nonzero(diff == 0)}/"
          f"{len(diff)} windows identical, max {diff.max()} LSB, "
          f"{np.count_nonzero(same_class)}/{len(diff)} same top class")


def test_real_windows_cover_every_source(real_windows):
    assert set(real_windows) == set(SOURCES) and all(len(w) for w in real_windows.values())


# ---- measured figures ---------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("name", ["cnn", "crnn"])
def test_instructions_per_inference_above_mac_floor(name, request):
    """SysTick under -icount shift=0 counts every instruction: deterministic, and never
    below half the multiply-accumulates (SMLAD does two per instruction)."""
    case: Case = request.getfixturevalue(name)
    macs = model_macs(case.model)
    run = case.m4
    instructions = run.instructions
    assert len(instructions) == len(run.outputs) == len(case.inputs)
    assert min(instructions) >= macs // 2
    per_op = sum(n for _, n in run.op_instructions)
    assert 0.95 * min(instructions) <= per_op <= max(instructions)  # operators: nearly all
    print(f"\n{name}: {macs:,} MACs; instructions per inference on the emulated M4: "
          f"{min(instructions):,}..{max(instructions):,} ({min(instructions) / macs:.2f}/MAC); "
          f"arena used {run.arena_used:,} B, stack {run.stack_used:,} B, "
          f"heap {run.heap_used:,} B\n  per operator: "
          + ", ".join(f"{op} {n:,}" for op, n in run.op_instructions))
    assert (max(instructions) - min(instructions)) / min(instructions) < 0.01  # data-blind


@pytest.mark.slow
def test_size_report(cnn: Case):
    report = build.size_report(cnn.m4_build)
    print(f"\nCortex-M4 image, CNN model {len(cnn.model):,} B, arena {ARENA_SIZE:,} B:\n"
          f"{report.table()}")
    parts = report.parts
    assert parts["model array"]["flash"] >= len(cnn.model)
    assert parts["tensor arena"]["ram"] == ARENA_SIZE
    assert parts["TFLite Micro"]["flash"] > 0 and parts["app"]["flash"] > 0
    rest = parts["alignment, merged strings"]
    assert abs(rest["flash"]) < 1024 and abs(rest["ram"]) < 1024  # everything attributed
    assert cnn.m4.arena_used <= ARENA_SIZE
    assert cnn.m4.stack_used < parts["stack reserve"]["ram"]
    assert report.flash <= FLASH_TARGET and report.ram <= RAM_TARGET


# ---- fast checks ---------------------------------------------------------------------------
def test_model_array_is_aligned_and_complete():
    model = b"\x1c\x00\x00\x00TFL3" + bytes(range(40))
    text = model_source(model)
    assert "alignas(16) const unsigned char g_model[]" in text
    assert f"g_model_len = {len(model)}u" in text
    assert text.count("0x") == len(model)
    values = [int(v, 16) for v in text.split("{", 2)[2].split("}")[0].replace(",", " ").split()]
    assert bytes(values) == model


def test_model_array_rejects_non_tflite():
    with pytest.raises(ModelError, match="not a TFLite flatbuffer"):
        model_source(b"\x00" * 64)
    with pytest.raises(ModelError, match="int8"):
        inputs_source(np.zeros((2, 3), dtype=np.int16))


def test_firmware_op_list_is_parsed_from_model_ops_h():
    ops = tflm_tree.firmware_ops()
    assert {"CONV_2D", "MAX_POOL_2D", "MEAN", "FULLY_CONNECTED", "SOFTMAX", "RESHAPE",
            "UNIDIRECTIONAL_SEQUENCE_LSTM", "STRIDED_SLICE"} <= set(ops)
    assert len(ops) == len(set(ops))
    stems = tflm_tree.kernel_stems()
    assert {"conv", "unidirectional_sequence_lstm", "lstm_eval"} <= set(stems)


@pytest.mark.slow
def test_models_use_only_registered_ops(cnn: Case, crnn: Case):
    for case in (cnn, crnn):
        assert set(tflm_tree.model_ops(case.model)) <= set(tflm_tree.firmware_ops())
        tflm_tree.check_model_ops(case.model)


def test_parse_console_reads_every_line_kind():
    run = build.parse_console("HS_SERIAL heartsound\nHS_ARENA_USED 100\nHS_OUT 1 0180\n"
                              "HS_OUT 0 ff7f\nHS_TICKS 0 25\nHS_OP_TICKS 0 CONV_2D 20\n"
                              "HS_STACK_USED 64\nHS_HEAP_USED 8\nHS_DONE\n", 0)
    assert [o.tolist() for o in run.outputs] == [[-1, 127], [1, -128]]
    assert run.instructions == (25 * build.INSTRUCTIONS_PER_SYSTICK,)
    assert run.op_instructions == (("CONV_2D", 20 * build.INSTRUCTIONS_PER_SYSTICK),)
    assert (run.arena_used, run.stack_used, run.heap_used, run.done) == (100, 64, 8, True)
    assert not build.parse_console("HS_OUT 0 00\n", 1).done


def test_unknown_target_and_missing_tree_are_one_line_errors(tmp_path):
    with pytest.raises(build.FirmwareBuildError, match="unknown firmware target"):
        build.build_tflm_lib("risc-v", tmp_path)
    with pytest.raises(build.FirmwareBuildError, match="not a TFLite Micro source tree"):
        build.build_tflm_lib(build.HOST, tmp_path, tflm_dir=tmp_path)


def test_cmake_takes_tflm_from_fetchcontent_override(tmp_path):
    """Without the default tree, CMake's FetchContent is used; its source-dir override
    points it at a local copy (what an offline CI does). Configure only: seconds."""
    tree = tflm_tree.default_tflm_dir()
    proc = subprocess.run(
        [*build.NICE, "cmake", "-S", str(tflm_tree.FIRMWARE_DIR), "-B", str(tmp_path / "b"),
         f"-DTFLM_DEFAULT_DIR={tmp_path / 'missing'}", "-DFETCHCONTENT_FULLY_DISCONNECTED=ON",
         f"-DFETCHCONTENT_SOURCE_DIR_TFLITE_MICRO={tree}"],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"TFLite Micro sources: {tree}" in proc.stdout
    proc = subprocess.run(
        [*build.NICE, "cmake", "-S", str(tflm_tree.FIRMWARE_DIR), "-B", str(tmp_path / "c"),
         f"-DTFLM_DEFAULT_DIR={tmp_path / 'missing'}", "-DFETCHCONTENT_FULLY_DISCONNECTED=ON"],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "no TFLite Micro sources" in proc.stderr


@pytest.mark.slow
def test_too_small_arena_fails_with_status_through_qemu(cnn: Case, tmp_path):
    """A failure on the device reaches the host: the exit status passes through
    semihosting and QEMU, and TFLite Micro says how many bytes were missing."""
    small = build.build_app(build.CORTEX_M4, cnn.model, tmp_path, arena_size=4096)
    run = build.run_qemu(small.executable)
    assert run.returncode == 10 + 3 and not run.done  # kExitModelInit + HS_MODEL_NO_ARENA
    assert "HS_ERROR model init status 3" in run.console and "missing" in run.console
