"""The hosts file of a fleet, and the SSH options every remote command shares.

Format (one device per line)::

    # ward 3 bedside Pis
    pi@ward3-bed1.local
    pi@10.0.4.12:2222          key=~/.ssh/ward3_ed25519

``USER@HOST[:PORT]`` (user and port optional, IPv6 in brackets), optionally followed by
``key=PATH`` for a device that needs another private key than ``--key`` (a relative PATH
is relative to the hosts file). ``#`` starts a comment; blank lines are skipped.

Why the whole file is checked before any host is contacted: a typo on line 12 must not
leave a fleet half-deployed with the operator guessing which half. A bad line is one
error naming ``file:line``, and nothing is done.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from edge.deploy.link import DEAD_LINK_BOUND_FACTOR, LINK_TIMEOUT_S
from edge.errors import UsageError

if TYPE_CHECKING:  # the CLI imports this module for its options: keep its start-up light
    from edge.deploy.remote import Target

COMMENT = "#"
KEY_PREFIX = "key="
HOST_FORMAT = "USER@HOST[:PORT] [key=PATH]"


@dataclass(frozen=True)
class HostEntry:
    """One device of the fleet: where it is, which key logs in, where it was written."""

    target: Target
    key: Path | None  # key=PATH of its line, else None (then --key, else keys/agent)
    line: int


def read_hosts(path: str | Path) -> list[HostEntry]:
    """Every device of a hosts file, in file order; UsageError naming file:line if not."""
    from edge.deploy.remote import Target  # one parser for an address, shared with --host

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or "not a text file"
        raise UsageError(f"hosts file {path}: cannot read it ({reason}); give a file with "
                         f"one {HOST_FORMAT} per line") from None
    entries: list[HostEntry] = []
    seen: dict[Target, int] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        words = raw.split(COMMENT, 1)[0].split()
        if not words:
            continue
        where = f"{path}:{number}"
        if len(words) > 2 or (len(words) == 2 and not words[1].startswith(KEY_PREFIX)):
            raise UsageError(f"{where}: {raw.strip()!r} is not {HOST_FORMAT}; fix the line "
                             "(nothing was done)")
        try:
            target = Target.parse(words[0])
        except UsageError:
            raise UsageError(f"{where}: {words[0]!r} is not USER@HOST[:PORT]; fix the line "
                             "(nothing was done)") from None
        if target in seen:
            raise UsageError(f"{where}: {words[0]} is already on line {seen[target]}; one "
                             "line per device (nothing was done)")
        seen[target] = number
        key = _key(words[1][len(KEY_PREFIX):], path, where) if len(words) == 2 else None
        entries.append(HostEntry(target, key, number))
    if not entries:
        raise UsageError(f"hosts file {path} names no device; write one {HOST_FORMAT} per "
                         "line")
    return entries


def _key(text: str, hosts_file: Path, where: str) -> Path:
    if not text:
        raise UsageError(f"{where}: key= needs a path to a private key (nothing was done)")
    key = Path(text).expanduser()
    key = key if key.is_absolute() else hosts_file.parent / key
    if not key.is_file():
        raise UsageError(f"{where}: key={text}: no such private key file ({key}); fix the "
                         "line (nothing was done)")
    return key


def add_ssh_arguments(parser: argparse.ArgumentParser, *, single_host: bool) -> None:
    """--hosts (and --host), --key, --known-hosts, --root: how to reach the devices."""
    if single_host:
        parser.add_argument("--host", metavar="USER@HOST[:PORT]", help="the device")
    parser.add_argument("--hosts", type=Path, metavar="FILE", help="a fleet: one "
                        f"{HOST_FORMAT} per line ('#' comments); every device is done in "
                        "parallel, one failing does not stop the others")
    parser.add_argument("--key", type=Path, help="SSH private key (default: your keys/agent)")
    parser.add_argument("--known-hosts", type=Path, help="known_hosts file holding the "
                        "device's host key (default ~/.ssh/known_hosts); unknown keys are "
                        "refused")
    parser.add_argument("--root", default="heartsound", help="install folder on the device "
                        "(default: ~/heartsound)")
    parser.add_argument("--link-timeout", type=_seconds, default=LINK_TIMEOUT_S,
                        metavar="SECONDS", help="a link that answers no SSH keepalive for "
                        "this long is dead, and each phase of connecting gets this long "
                        "(default %(default)g); when the link dies, a deploy to one device ends "
                        f"with exit 7 and one line within {DEAD_LINK_BOUND_FACTOR}x this ("
                        f"{DEAD_LINK_BOUND_FACTOR * LINK_TIMEOUT_S / 60:g} min by default), "
                        "each device of a fleet within 3 times that")


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return value
