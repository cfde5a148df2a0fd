"""The SD-card image's targets: build time, compressed size, the same image from the same inputs.

Issue 21's benchmarks: a build on 2 cores with a warm package cache within 20 minutes,
the compressed image within 600 MB, and a second build from the same inputs listing the
same Debian packages, wheels and model with the same hashes (the manifest, all but the
release's name, which carries the install time). The first build also warms the cache
(~/.cache/heartsound/image); run it twice to see the warm figure.

    sudo python3 bench/bench_image.py [--out DIR] [--compress xz|zst] [--twice]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edge.errors import HeartsoundError  # noqa: E402
from edge.image.build import BuildOptions, BuildResult, build  # noqa: E402

MAX_BUILD_MIN = 20.0
MAX_COMPRESSED_MB = 600.0
MB = 1e6


def figures(result: BuildResult) -> str:
    raw = result.image.stat().st_size / MB
    line = f"build {result.seconds / 60:.1f} min ({result.seconds / 60 / MAX_BUILD_MIN:.2f} of " \
           f"the {MAX_BUILD_MIN:.0f} min target), raw {raw:.0f} MB, {result.packages} packages"
    if result.compressed:
        packed = result.compressed.stat().st_size / MB
        line += (f", {result.compressed.suffix[1:]} {packed:.0f} MB ({packed / raw:.2f} of raw, "
                 f"{packed / MAX_COMPRESSED_MB:.2f} of the {MAX_COMPRESSED_MB:.0f} MB target)")
    return line


def manifest_without_release(result: BuildResult) -> dict:
    data = json.loads(result.manifest.read_text())
    data.pop("release", None)
    return data


def differences(a: dict, b: dict) -> list[str]:
    """The manifest entries that differ, one level down ("wheels/heartsound-...whl"):
    a NO then says at once which package, wheel or input changed between the builds."""
    out = []
    for key in sorted(set(a) | set(b)):
        x, y = a.get(key), b.get(key)
        if isinstance(x, dict) and isinstance(y, dict):
            out += [f"{key}/{k}" for k in sorted(set(x) | set(y)) if x.get(k) != y.get(k)]
        elif x != y:
            out.append(key)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="folder for the images (default: a "
                        "temporary one)")
    parser.add_argument("--compress", choices=("xz", "zst"), default="xz")
    parser.add_argument("--twice", action="store_true", help="build again and compare")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="bench-image-"))
    runs = []
    try:
        for n in range(2 if args.twice else 1):
            result = build(BuildOptions(out / f"station-{n + 1}.img", compress=args.compress))
            runs.append(result)
            print(f"build {n + 1}: {figures(result)}", flush=True)
    except HeartsoundError as exc:
        print(f"bench_image: {exc}", file=sys.stderr)
        return 1
    if args.twice:
        differ = differences(*(manifest_without_release(r) for r in runs))
        print("same packages, wheels and model in both manifests: "
              f"{'NO (' + ', '.join(differ) + ')' if differ else 'yes'}; "
              f"warm/first build time {runs[1].seconds / runs[0].seconds:.2f}")
        return 1 if differ else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
