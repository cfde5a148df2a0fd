"""`heartsound deploy`: install the runtime and model on a Raspberry Pi over SSH.

With ``--hosts FILE`` it does the same on every device of a fleet at once (`edge.deploy.fleet`,
Fabric's ThreadingGroup): each device deploys atomically on its own, one failing device
does not stop the others, a table says what each device runs now, and the exit code is
non-zero if any failed.

Thin layer over `edge.deploy.bundle` (what goes to the device), `edge.deploy.remote`
(how it gets there, atomically) and `edge.deploy.offline` (the USB-stick variant). Those
need Fabric (the `deploy` extra), so they are imported inside `run`: the device itself
never loads them.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
from pathlib import Path

from edge.deploy.hosts import add_ssh_arguments, read_hosts
from edge.deploy.wheels import WheelTarget
from edge.errors import UsageError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--rollback", action="store_true",
                      help="switch the device's 'current' back to the release that ran "
                      "before it (kept in ROOT/history on the device)")
    mode.add_argument("--bench", action="store_true", help="run 'heartsound bench --json' on "
                      "the device and print its figures here as a table")
    mode.add_argument("--list", action="store_true", help="list the releases on the device")
    mode.add_argument("--offline-bundle", type=Path, metavar="OUT.tar.gz",
                      help="write an offline bundle (archive + install.sh) instead of "
                      "deploying; no --host needed")
    add_ssh_arguments(parser, single_host=True)
    parser.add_argument("--remote-python", default="python3", metavar="PYTHON",
                        help="Python 3.11+ on the device (default %(default)s)")
    parser.add_argument("--system-site-packages", action=argparse.BooleanOptionalAction,
                        help="let the device's venv also see system packages: numpy from apt "
                        "on Raspberry Pi OS, PyAudio on a flashed station; default: as the "
                        "release the device runs now (a flashed station: yes), else no")
    parser.add_argument("--offline", action="store_true", help="the device has no network: "
                        "pip installs only from the bundle's wheels (and system packages)")
    parser.add_argument("--download-deps", action="store_true",
                        help="put the 'edge' extra's wheels for the device's platform and "
                        "Python in the bundle (asks the device; --offline-bundle always "
                        "carries them)")
    parser.add_argument("--platform", metavar="TAG", help="with --offline-bundle: the "
                        "device's platform, as a pip tag (manylinux_2_36_aarch64: that glibc "
                        "and older), MACHINE:GLIBC (aarch64:2.36) or 'native' (this machine); "
                        "default Raspberry Pi OS 64-bit bookworm, manylinux_2_36_aarch64")
    parser.add_argument("--python-version", metavar="X.Y", help="with --offline-bundle: the "
                        "device's CPython (default 3.11; with --platform native this one)")
    parser.add_argument("--model", type=Path, help="int8 .tflite to ship (default: "
                        "$HEARTSOUND_MODEL, else the model shipped with heartsound)")
    parser.add_argument("--bundle", type=Path, metavar="DIR", help="reuse the bundle in DIR, "
                        "or build into DIR (new folder) and keep it")
    parser.add_argument("--keep", type=int, default=3, help="releases kept on the device "
                        "(default %(default)s, at least 2)")
    parser.add_argument("--min-free-mb", type=float, default=40.0, help="free space needed "
                        "beyond the bundle for venv and install (default %(default)s MB)")
    parser.add_argument("--runs", type=int, default=100, help="with --bench: timed runs "
                        "(default %(default)s)")


def run(args: argparse.Namespace) -> int:
    if args.offline_bundle:  # no SSH: Fabric not needed
        return _offline_bundle(args)
    try:
        import fabric  # noqa: F401 - only to say what is missing before any work
    except ImportError:
        raise UsageError("deploy needs Fabric on this host: pip install 'heartsound[deploy]'"
                         ) from None
    from edge.deploy import remote

    if bool(args.host) == bool(args.hosts):
        raise UsageError("give one of --host USER@HOST[:PORT] or --hosts FILE (or "
                         "--offline-bundle OUT.tar.gz)")
    if args.keep < 2:
        raise UsageError("--keep must be at least 2: the current release and one to roll back to")
    options = remote.DeployOptions(
        root=args.root, key=args.key, known_hosts=args.known_hosts, python=args.remote_python,
        system_site_packages=args.system_site_packages, offline=args.offline, keep=args.keep,
        min_free_mb=args.min_free_mb, link_timeout=args.link_timeout)
    if args.hosts:
        return _fleet(args, options)
    target = remote.Target.parse(args.host)
    if args.rollback:
        old, new = remote.rollback(target, options, note=_note)
        print(f"{target}: current is now {new} (was {old})")
    elif args.bench:
        print(remote.bench_table(remote.remote_bench(target, options, runs=args.runs)))
    elif args.list:
        _print_releases(remote.list_releases(target, options))
    else:
        with tempfile.TemporaryDirectory(prefix="heartsound-bundle-") as tmp:
            device = remote.preflight(target, options)  # refuse early: nothing built yet
            platform = ((device["platforms"], device["python_version"])
                        if args.download_deps else None)
            bundle = _bundle(args, Path(tmp) / "bundle", platform)
            name = remote.deploy(bundle, target, options, note=_note)
        print(f"{target}: deployed {name}; screen with {args.root}/current/bin/heartsound "
              "screen FILE.wav")
        print(remote.SERVICE_HINT.replace("ROOT", args.root))
    return 0


def _note(text: str) -> None:
    """A remark beside the result (a stale lock broken), on stderr like progress."""
    print(f"heartsound: {text}", file=sys.stderr)


def _fleet(args: argparse.Namespace, options) -> int:
    """Deploy (or bench) every device of the hosts file; the table, then the exit code."""
    from edge.deploy import fleet, remote

    if args.rollback or args.list:
        raise UsageError("--hosts works with a deploy and with --bench; roll back or list "
                         "one device at a time with --host")
    entries = read_hosts(args.hosts)  # a bad line stops everything before any connection
    print(f"{'benchmarking' if args.bench else 'deploying to'} {len(entries)} device(s) "
          f"from {args.hosts} ...", file=sys.stderr)
    if args.bench:
        rows = fleet.bench_fleet(entries, options, args.runs)
        print(fleet.bench_fleet_table(rows))
    else:
        with tempfile.TemporaryDirectory(prefix="heartsound-bundle-") as tmp:
            built = itertools.count()

            def make(platform):
                n = next(built)
                if n and args.bundle:
                    raise UsageError("the devices run on different platforms, each needing "
                                     "its own bundle; --bundle keeps one: drop it, or deploy "
                                     "each platform's devices with their own hosts file")
                return _bundle(args, Path(tmp) / f"platform{n}" / "bundle", platform)

            rows = fleet.deploy_fleet(entries, options, make, download_deps=args.download_deps)
        print(fleet.deploy_table(rows))
        if any(r.ok for r in rows):
            print(remote.SERVICE_HINT.replace("ROOT", args.root))
    error = fleet.failed_error(rows, "bench" if args.bench else "deploy")
    if error:
        raise error
    return 0


def _bundle(args: argparse.Namespace, scratch: Path,
            platform: tuple[list[str], str] | WheelTarget | None):
    """The bundle from --bundle DIR if it holds one, else a new one (in DIR if given).

    `platform`: the device's (pip platform tags, 'X.Y') or a WheelTarget; given, the
    bundle carries the dependency wheels for it.
    """
    from edge.deploy import bundle as db
    from edge.deploy.wheels import download_dependency_wheels

    if args.bundle and (args.bundle / db.MANIFEST).is_file():
        return db.load_bundle(args.bundle)
    out = args.bundle or scratch
    target = (platform if isinstance(platform, WheelTarget) or platform is None
              else WheelTarget(tuple(platform[0]), platform[1]))
    deps = []
    if target:
        print(f"downloading the dependency wheels for {target.describe()} ...",
              file=sys.stderr)
        deps = download_dependency_wheels(scratch.parent / "deps", db.device_requirements(),
                                          target)
    print(f"building the bundle in {out} ...", file=sys.stderr)
    return db.build_bundle(out, model=args.model, dependency_wheels=deps, target=target)


def _offline_bundle(args: argparse.Namespace) -> int:
    """Build the USB-stick archive with every wheel the target needs; print how to install."""
    from edge.deploy.offline import archive_sha256, build_offline_bundle, install_line, top_folder
    from edge.deploy.wheels import parse_target

    if not args.offline_bundle.name.endswith(".tar.gz"):
        raise UsageError(f"{args.offline_bundle}: the offline bundle is a .tar.gz; give a name "
                         "ending so")
    target = parse_target(args.platform, args.python_version)
    with tempfile.TemporaryDirectory(prefix="heartsound-bundle-") as tmp:
        bundle = _bundle(args, Path(tmp) / "bundle", target)
        built_for = bundle.manifest.get("target")
        if built_for and built_for != target.to_manifest():
            raise UsageError(f"{args.bundle}: its wheels are for "
                             f"{WheelTarget.from_manifest(built_for).describe()}, not "
                             f"{target.describe()}; give --platform/--python-version to match, "
                             "or a new --bundle folder")
        out = build_offline_bundle(bundle, args.offline_bundle)
    deps = ", ".join(f"{name} {d['version']}"
                     for name, d in bundle.manifest["dependencies"].items())
    print(f"wrote {out} (sha256 {archive_sha256(out)}), wheels for {target.describe()}: "
          f"heartsound {bundle.version}, {deps}")
    print(f"on the device: tar -xzf {out.name} && sh {top_folder(bundle)}/install.sh")
    print(f"or into a venv of your own: {install_line(bundle)}")
    return 0


def _print_releases(info: dict) -> None:
    print(f"releases under {info['root']} (oldest first):")
    for name in info["releases"]:
        print(f"  {'*' if name == info['current'] else ' '} {name}")
    if info["previous"]:
        print(f"rollback goes to {info['previous']}")
    for name in info["incomplete"]:
        print(f"    {name} (incomplete, removed by the next deploy)")
