"""Deploys through a faulty link: does every one end within its bound, naming what runs?

Issue 19's fault run, repeatable. A real sshd on loopback (tests/sshd_fixture.py) stands
for the Pi, a TCP relay (tests/tcp_relay.py) between it and the deploy stalls, cuts or
flips a bit after N bytes, at offsets spread over a whole deploy (about 500 kB up, 19 kB
down in this setup). For each fault the table gives how long the deploy took, whether it
ended within the bound that `heartsound deploy --help` states (DEAD_LINK_BOUND_FACTOR x
the link timeout, counted here from the deploy's start, so a late fault can exceed it
while still inside its own bound: such rows say "late"), and whether the message named
the release the device actually runs (or said "unknown"), checked against the device's
`current` link. A lock is left behind only when the link stays dead (no clean-up can reach
the device); it names this process, which a new `heartsound deploy` run breaks at once
(tests/deploy/test_remote.py tests that), but this long-lived process cannot, so the
bench removes it before the next row. A lock left on a link that came back is a failure.

    sudo python3 bench/bench_deploy_faults.py [--link-timeout 2]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edge.cli import quiet_library_logging  # noqa: E402
from edge.deploy import remote  # noqa: E402
from edge.deploy.bundle import build_bundle, build_wheel  # noqa: E402
from edge.deploy.link import DEAD_LINK_BOUND_FACTOR  # noqa: E402
from edge.errors import DeviceError  # noqa: E402
from tests.sshd_fixture import SshServer  # noqa: E402
from tests.tcp_relay import Fault, TcpRelay  # noqa: E402

FAULTS = ([Fault("stall", n) for n in (100_000, 300_000, 480_000, 499_000)]
          + [Fault("stall", n, dead_after=True) for n in (200_000, 499_500)]
          + [Fault("cut", n) for n in (50_000, 200_000, 459_000, 490_000, 499_000, 499_800)]
          + [Fault("cut", n, dead_after=True) for n in (300_000, 499_800)]
          + [Fault("flip", n, "down") for n in (4_000, 8_000, 12_000, 16_000, 18_000)]
          + [Fault("flip", n, "up") for n in (150_000, 400_000)])
NAMED = re.compile(r"(?:runs|stays on) (\S+) \(read back\)|deployed (\S+)|stays on (\S+) "
                   r"\(the switch")


def named_release(message: str) -> str | None:
    """The release a deploy's message says the device runs (None: it names none)."""
    found = [x for groups in NAMED.findall(message) for x in groups if x]
    return found[0] if found else None


def run_one(server: SshServer, bundle, root: Path, options, fault: Fault) -> dict:
    pub = " ".join((server.folder / "host_ed25519.pub").read_text().split()[:2])
    relay = TcpRelay(server.port, fault)
    known = server.folder / f"known_hosts_{relay.port}"
    known.write_text(f"[127.0.0.1]:{relay.port} {pub}\n")
    start = time.monotonic()
    try:
        name = remote.deploy(bundle, remote.Target.parse(f"{server.user}@127.0.0.1:"
                                                         f"{relay.port}"),
                             _with_known_hosts(options, known))
        message = f"deployed {name}"
    except DeviceError as exc:
        message = str(exc)
    took = time.monotonic() - start
    relay.close()
    runs = os.readlink(root / "current").removeprefix("releases/")
    lock = root / remote.LOCK
    left = lock.exists()
    if left:
        shutil.rmtree(lock)
    return {"fault": fault, "took": took, "runs": runs, "said": named_release(message),
            "unknown": "is unknown" in message, "lock_left": left}


def _with_known_hosts(options, known: Path):
    from dataclasses import replace

    return replace(options, known_hosts=known)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--link-timeout", type=float, default=2.0,
                        help="--link-timeout of every deploy, s (default %(default)s)")
    args = parser.parse_args()
    quiet_library_logging()
    bound = DEAD_LINK_BOUND_FACTOR * args.link_timeout
    tmp = Path(tempfile.mkdtemp(prefix="bench-deploy-faults-"))
    server = SshServer(tmp / "sshd")
    try:
        bundle = build_bundle(tmp / "bundle", wheel=build_wheel(tmp / "wheel"))
        root = tmp / "device" / "heartsound"
        options = remote.DeployOptions(root=str(root), key=server.client_key,
                                       known_hosts=server.known_hosts, python=sys.executable,
                                       system_site_packages=True, offline=True,
                                       link_timeout=args.link_timeout)
        remote.deploy(bundle, remote.Target.parse(server.address), options)
        print(f"bound {bound:g} s ({DEAD_LINK_BOUND_FACTOR} x link timeout "
              f"{args.link_timeout:g} s)")
        print(f"{'fault':<6}{'dir':<5}{'after':>8} {'dead':<5}{'took s':>7}  "
              f"{'in bound':<9}{'message names what runs':<24}lock left")
        bad = 0
        for fault in FAULTS:
            r = run_one(server, bundle, root, options, fault)
            honest = r["unknown"] or r["said"] == r["runs"]
            in_bound = "yes" if r["took"] <= bound else "late"
            stray_lock = r["lock_left"] and not fault.dead_after
            bad += not honest or stray_lock
            print(f"{fault.kind:<6}{fault.direction:<5}{fault.after:>8} "
                  f"{'yes' if fault.dead_after else 'no':<5}{r['took']:>7.1f}  {in_bound:<9}"
                  f"{('unknown' if r['unknown'] else 'yes') if honest else 'NO':<24}"
                  f"{'YES' if stray_lock else 'dead link' if r['lock_left'] else 'no'}")
        print(f"{bad} of {len(FAULTS)} deploys misreported what runs or left a lock on a live link")
        return 1 if bad else 0
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
