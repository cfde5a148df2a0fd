"""invoke tasks: the project's steps by name (`invoke --list`).

Each task runs the `heartsound` command of the same name, so that what a developer runs
here is exactly what a user runs; `pipeline` chains them on the real data.
"""

from __future__ import annotations

from invoke import Context, task

RUN_DIR = "runs/default"
MODEL = "models/heartsound_int8.tflite"


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
    c.run("python3 -m pytest" + (f" -k '{k}'" if k else ""))


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
    c.run(f"heartsound train --out {out}{opts} {_data_args(data)}")


@task(help={"run": "training run folder", "out": "int8 .tflite to write"})
def convert(c: Context, run: str = RUN_DIR, out: str = MODEL) -> None:
    """Quantise the run's model to full-integer int8 with its metadata."""
    c.run(f"heartsound convert {run} --out {out}")


@task(help={"run": "training run folder", "model": "int8 .tflite"})
def verify(c: Context, run: str = RUN_DIR, model: str = MODEL) -> None:
    """Float vs int8 (LiteRT) vs TFLite Micro on the validation and test recordings."""
    c.run(f"heartsound verify {model} --run {run}")


@task(help={"model": "int8 .tflite"})
def bench(c: Context, model: str = MODEL) -> None:
    """Latency and memory of the edge runtime on this machine."""
    c.run(f"heartsound bench --model {model}")


@task(help={"wav": "recording to screen", "model": "int8 .tflite"})
def screen(c: Context, wav: str = "examples", model: str = MODEL) -> None:
    """Screen a recording (default: the example recordings) offline."""
    c.run(f"heartsound screen {wav} --model {model}")


@task
def pipeline(c: Context) -> None:
    """The whole chain on the real data: train, convert, verify, screen, bench."""
    train(c, force=True)
    convert(c)
    verify(c)
    screen(c)
    bench(c)
