"""invoke tasks: the project's steps by name (`invoke --list`).

Each task runs the `heartsound` command of the same name, so that what a developer runs
here is exactly what a user runs; `pipeline` chains them on the real data.
"""

from __future__ import annotations

import shlex
import shutil
from pathlib import Path

from invoke import Context, Exit, task

RUN_DIR = "runs/default"
MODEL = "edge/models/heartsound_int8.tflite"  # the model shipped in the package


def _data_args(data: list[str] | None) -> str:
    return " ".join(f"--data {d}" for d in data or [])


@task
def setup(c: Context) -> None:
    """Install the Debian packages and the project with every extra (idempotent)."""
    c.run("bash scripts/setup.sh", pty=False)


@task
def lint(c: Context) -> None:
    """ruff over the whole project; the tree is kept clean."""
    c.run("ruff check .")


@task(help={"k": "only tests matching this pytest -k expression"})
def test(c: Context, k: str = "") -> None:
    """Run the test suite (the same command CI runs)."""
    c.run("python -m pytest" + (f" -k '{k}'" if k else ""))


@task(iterable=["data"], help={"data": "a data folder (repeatable)"})
def data(c: Context, data: list[str] | None = None) -> None:
    """List the recordings that training will read, per source and label."""
    c.run(f"heartsound data list {_data_args(data)}")


@task(
    iterable=["data"],
    help={
        "out": "run folder to write",
        "arch": "architecture name (default: the best one)",
        "data": "a data folder (repeatable)",
        "force": "overwrite an existing run folder",
    },
)
def train(
    c: Context, out: str = RUN_DIR, arch: str = "", data: list[str] | None = None,
    force: bool = False,
) -> None:
    """Train on the real recordings and evaluate by patient and by database."""
    opts = f" --arch {arch}" if arch else ""
    opts += " --force" if force else ""
    c.run(f"heartsound train --lodo --out {out}{opts} {_data_args(data)}")


@task(
    iterable=["data"],
    help={
        "sweep": "sweep file (YAML)",
        "out": "sweep folder to write",
        "ray": "HOST:PORT of a Ray cluster (default: local Ray)",
        "data": "a data folder (repeatable)",
        "force": "replace an existing sweep folder",
    },
)
def sweep(
    c: Context, sweep: str = "examples/sweep.yaml", out: str = "runs/sweep",
    ray: str = "", data: list[str] | None = None, force: bool = False,
) -> None:
    """Grid or random search with Ray Tune; ranks the trials by validation MAcc."""
    opts = f" --ray {shlex.quote(ray)}" if ray else ""
    opts += " --force" if force else ""
    c.run(f"heartsound train --sweep {shlex.quote(sweep)} --out {shlex.quote(out)}{opts} "
          f"{_data_args(data)}")


@task(help={"run": "training run folder", "out": "int8 .tflite to write (replaced)"})
def convert(c: Context, run: str = RUN_DIR, out: str = MODEL) -> None:
    """Quantise the run's model to full-integer int8 with its metadata.

    Into the packaged model's place (the default), the run's metrics, model card and
    plots travel with it, so what ships always describes the model beside it.
    """
    c.run(f"heartsound convert {run} --out {out} --force")
    if out == MODEL:
        _ship_run_documents(Path(run))


SHIPPED_DOCUMENTS = {"metrics.json": "edge/models/heartsound_int8.metrics.json",
                     "MODEL_CARD.md": "edge/models/MODEL_CARD.md",
                     "training_curves.png": "docs/model/training_curves.png",
                     "confusion_matrix.png": "docs/model/confusion_matrix.png"}


def _ship_run_documents(run: Path) -> None:
    for name, dest in SHIPPED_DOCUMENTS.items():
        shutil.copyfile(run / name, dest)
        print(f"shipped {run / name} -> {dest}")


@task(help={"run": "training run folder", "model": "int8 .tflite"})
def verify(c: Context, run: str = RUN_DIR, model: str = MODEL) -> bool:
    """Float vs int8 (LiteRT) vs TFLite Micro on the validation and test recordings."""
    return c.run(f"heartsound verify {model} --run {run}", warn=True).ok


@task(help={"run": "training run folder", "model": "int8 .tflite"})
def targets(c: Context, run: str = RUN_DIR, model: str = MODEL) -> None:
    """Release check: verify, then the project's targets; exits non-zero on any miss."""
    c.run(f"heartsound verify {model} --run {run} --targets")


@task(help={"model": "int8 .tflite", "host": "USER@HOST[:PORT]: bench the deployed release "
            "on that device instead (see deploy for the other options)",
            "hosts": "hosts file: bench every device in it at once, one table",
            "key": "SSH key", "known_hosts": "known_hosts file",
            "root": "install folder on the device",
            "runs": "with --host/--hosts: timed runs per stage (default 100)"})
def bench(c: Context, model: str = MODEL, host: str = "", hosts: str = "", key: str = "",
          known_hosts: str = "", root: str = "", runs: int = 0) -> None:
    """Latency and memory of the edge runtime on this machine, or with --host on a device."""
    if host or hosts:
        c.run("heartsound deploy --bench" + _remote_args(host, key, known_hosts, root,
                                                         hosts=hosts, runs=str(runs or "")))
        return
    c.run(f"heartsound bench --model {model}")


@task(help={"wav": "recording to screen", "model": "int8 .tflite"})
def screen(c: Context, wav: str = "examples", model: str = MODEL) -> None:
    """Screen a recording (default: the example recordings) offline."""
    c.run(f"heartsound screen {wav} --model {model}")


@task(help={"out": "folder to write (replaced)", "model": "int8 .tflite"})
def firmware(c: Context, out: str = "build/firmware", model: str = MODEL) -> None:
    """Export the model for a microcontroller: C array, header, C front end, app sources,
    PlatformIO project (then `cmake -S firmware_bridge -DHS_EXPORT_DIR=OUT` or `pio run`)."""
    c.run(f"heartsound firmware export --out {shlex.quote(out)} --model {shlex.quote(model)} "
          "--force")


@task
def pipeline(c: Context) -> None:
    """The whole chain on the real data: train, convert, verify, screen, bench.

    A failed verification requirement is reported and fails the pipeline at the end,
    after the screening and benchmark have still shown what the model does. The targets
    verdict is printed last and never fails it: `invoke targets` is the release check.
    """
    train(c, force=True)
    convert(c)
    verified = verify(c)
    screen(c)
    bench(c)
    _print_targets(Path(RUN_DIR) / "metrics.json")
    if not verified:
        raise Exit("pipeline: verification reported a failed requirement (see above)", 1)


def _print_targets(metrics_file: Path) -> None:
    import json

    from train.model_card import verdict_lines

    print(f"\ntargets of {metrics_file.parent}:")
    print("\n".join(verdict_lines(json.loads(metrics_file.read_text())["targets"])))


def _remote_args(host: str, key: str, known_hosts: str, root: str, **flags: str | bool) -> str:
    """`heartsound deploy` options, every value quoted for the local shell."""
    pairs = {"host": host, "key": key, "known-hosts": known_hosts, "root": root}
    pairs.update({k.replace("_", "-"): v for k, v in flags.items()})
    out = ""
    for name, value in pairs.items():
        if value is True:
            out += f" --{name}"
        elif value:
            out += f" --{name} {shlex.quote(str(value))}"
    return out


REMOTE_HELP = {
    "host": "the device, USER@HOST[:PORT]",
    "hosts": "hosts file (one USER@HOST[:PORT] per line): every device at once, a summary "
             "table, non-zero exit if any failed",
    "key": "SSH private key (default: your keys/agent)",
    "known_hosts": "known_hosts holding the device's host key (default ~/.ssh/known_hosts)",
    "root": "install folder on the device (default ~/heartsound)",
}


@task(help={**REMOTE_HELP,
            "model": "int8 .tflite to ship (default: the packaged model)",
            "remote_python": "Python 3.11+ on the device (default python3)",
            "system_site_packages": "venv sees system packages (apt numpy, a flashed station's "
                                    "PyAudio); default: as the release it replaces",
            "offline": "the device has no network: install only from the bundle's wheels",
            "download_deps": "ship the edge extra's wheels for the device's platform",
            "bundle": "reuse (or build into) this bundle folder"})
def deploy(c: Context, host: str = "", hosts: str = "", key: str = "", known_hosts: str = "",
           root: str = "", model: str = "", remote_python: str = "",
           system_site_packages: bool = False, offline: bool = False,
           download_deps: bool = False, bundle: str = "") -> None:
    """Build the bundle, upload, verify, install, smoke-test, switch `current` atomically.

    Any failure leaves the device on its previous release (see `heartsound deploy --help`).
    With --hosts FILE every device of the file at once; the exit code says if any failed.
    """
    c.run("heartsound deploy" + _remote_args(
        host, key, known_hosts, root, hosts=hosts, model=model, remote_python=remote_python,
        system_site_packages=system_site_packages, offline=offline,
        download_deps=download_deps, bundle=bundle))


@task(help={k: v for k, v in REMOTE_HELP.items() if k != "hosts"})
def rollback(c: Context, host: str, key: str = "", known_hosts: str = "",
             root: str = "") -> None:
    """Switch the device's `current` back to the release before it."""
    c.run("heartsound deploy --rollback" + _remote_args(host, key, known_hosts, root))


@task(help={"out": "raw disk image to write (manifest beside it)",
            "cache": "keeps the .deb files between runs (default ~/.cache/heartsound/image)",
            "model": "int8 .tflite the station screens with (default: the packaged model)",
            "compress": "also write a compressed copy: xz or zst"})
def image(c: Context, out: str = "station.img", cache: str = "", model: str = "",
          compress: str = "xz", mirror: str = "") -> None:
    """Build the bootable Raspberry Pi SD-card image with the station inside (as root)."""
    opts = "".join(f" --{name} {shlex.quote(value)}" for name, value in
                   (("cache", cache), ("model", model), ("compress", compress),
                    ("mirror", mirror)) if value)
    c.run(f"heartsound image build --out {shlex.quote(out)}{opts}")
