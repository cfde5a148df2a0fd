"""One `heartsound image build` run as a child process, for the session's image.

See tests/image/conftest.py for why it runs in the background. Kept out of the conftest so
that test modules import these names from one module that pytest loads once.
"""


from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

IMAGE_FIXTURE = "station_image"
TEST_IMAGE_ENV = "HEARTSOUND_TEST_IMAGE"
REPO = Path(__file__).resolve().parents[2]


class BackgroundBuild:
    """One `heartsound image build` child; its output goes to a log beside the image."""

    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="heartsound-image-"))
        self.image = self.folder / "station.img"
        self.log = self.folder / "build.log"
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(command(self.image), cwd=REPO, stdout=log,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def wait(self, timeout: float) -> Path:
        """The image once the build has ended; the build's last lines if it failed."""
        code = self.proc.wait(timeout=timeout)
        output = self.log.read_text(errors="replace")
        assert code == 0, f"image build exited {code}:\n{output[-3000:]}"
        assert f"wrote {self.image}" in output, output[-3000:]
        return self.image

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.folder, ignore_errors=True)


BUILD_KEY = pytest.StashKey[BackgroundBuild]()


def command(out: Path) -> list[str]:
    return [sys.executable, "-m", "edge.cli", "image", "build", "--out", str(out)]
