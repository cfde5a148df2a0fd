"""A fleet of three devices: real OpenSSH servers on 127.0.0.1, one of them broken on purpose.

Each "device" is an sshd in its own mount namespace where the same path holds its own
tmpfs disk, so the three share paths (one --root for the fleet, as real Pis do) but not
files. Device C's disk is read-only: its deploy must fail and be reported while A and B
deploy. The venvs reuse this machine's numpy and LiteRT (--system-site-packages) and the
project wheel goes in with --no-index: nothing is downloaded.

The screening logs the pull gathers are made by the deployed heartsound itself, screening
real recordings (the examples, PASCAL A and B) on the devices over SSH.
"""

from __future__ import annotations

import csv
import io
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from edge.deploy.bundle import build_bundle, build_wheel
from edge.deploy.hosts import read_hosts
from edge.errors import DeviceError, UsageError
from edge.screening_log import MIGRATIONS, Screening, ScreeningLog
from edge.spec import DEFAULT_SPEC
from tests.sshd_fixture import SSHD, SshServer, keygen

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
DISK = "96m"  # a release with system site packages is a few MB; deploy wants 40 MB spare

ssh_only = pytest.mark.skipif(not Path(SSHD).exists() or os.geteuid() != 0,
                              reason="needs Debian's openssh-server and root (CI runs both)")


# ---------------------------------------------------------------------------------------------
# hosts file (no SSH)


def test_hosts_file_format(tmp_path):
    key = tmp_path / "keys" / "ward3"
    key.parent.mkdir()
    key.write_text("not read here")
    hosts = tmp_path / "hosts.txt"
    hosts.write_text("# ward 3\n\npi@bed1.local\n  pi@10.0.4.12:2222   key=keys/ward3  # bed 2\n"
                     "[::1]:2200\n")
    entries = read_hosts(hosts)
    assert [str(e.target) for e in entries] == ["pi@bed1.local:22", "pi@10.0.4.12:2222",
                                                "[::1]:2200"]
    assert [e.line for e in entries] == [3, 4, 5]
    assert entries[0].key is None and entries[1].key == key


@pytest.mark.parametrize("line, says", [
    ("pi@host:99999", "'pi@host:99999' is not USER@HOST[:PORT]"),
    ("pi@host extra", "is not USER@HOST[:PORT] [key=PATH]"),
    ("pi@host key=", "key= needs a path"),
    ("pi@host key=/nonexistent/id", "no such private key file"),
    ("pi@bed1.local:22", "pi@bed1.local:22 is already on line 1"),
])
def test_bad_hosts_line_names_file_and_line(tmp_path, line, says):
    hosts = tmp_path / "hosts.txt"
    hosts.write_text(f"pi@bed1.local\n# comment\n{line}\n")
    with pytest.raises(UsageError) as err:
        read_hosts(hosts)
    msg = str(err.value)
    assert msg.startswith(f"{hosts}:3: ") and says in msg and "\n" not in msg, msg


def test_empty_or_missing_hosts_file(tmp_path):
    (tmp_path / "empty.txt").write_text("# nobody yet\n\n")
    with pytest.raises(UsageError, match="names no device"):
        read_hosts(tmp_path / "empty.txt")
    with pytest.raises(UsageError, match="cannot read it"):
        read_hosts(tmp_path / "absent.txt")


# ---------------------------------------------------------------------------------------------
# the log: row ids, old logs, backup and merge (no SSH)


def _screening(i: int, device: str) -> Screening:
    return Screening(decision=("normal", "abnormal")[i % 2], probability=0.1 * i,
                     window_scores=[0.1 * i], model_sha256="ab" * 32,
                     spec_json=DEFAULT_SPEC.to_json(), file=f"rec{i}.wav", device_id=device)


def test_schema_1_log_stays_readable_and_gets_row_ids(tmp_path):
    db = tmp_path / "old.db"
    with sqlite3.connect(db) as con:  # a log written by the first release of heartsound
        for statement in MIGRATIONS[1]:
            con.execute(statement)
        con.execute("UPDATE schema_version SET version = 1")
        con.execute("INSERT INTO screenings (time_utc, decision, window_scores, model_sha256, "
                    "spec_json, device_id) VALUES ('2026-01-02T03:04:05Z', 'normal', '[0.1]', "
                    "'ab', '{}', 'pi-old')")
    with ScreeningLog(db, create=False, read_only=True) as log:  # read-only never migrates
        assert log.schema_version() == 1 and log.recent()[0].device_id == "pi-old"
        assert log.log_id is None
    with ScreeningLog(db) as log:
        assert log.schema_version() == 2 and len(log.log_id) == 32
        log.add(_screening(1, "pi-old"))
        rows = log._db.execute("SELECT uuid, log_id FROM screenings ORDER BY id").fetchall()
    assert len({r[0] for r in rows}) == 2 and {r[1] for r in rows} == {log.log_id}


def test_merge_is_idempotent_and_keeps_device_ids(tmp_path):
    logs = {}
    for name in ("a", "b"):
        with ScreeningLog(tmp_path / f"{name}.db") as log:
            for i in range(3):
                log.add(_screening(i, "pi-same-name"))  # cloned SD cards: one host name
            logs[name] = log.log_id
            assert log.backup(tmp_path / f"{name}-copy.db") == 3
    with pytest.raises(DeviceError, match="exists already"), ScreeningLog(tmp_path / "a.db") as log:
        log.backup(tmp_path / "a-copy.db")
    with ScreeningLog(tmp_path / "host.db") as host:
        first = host.merge(tmp_path / "a-copy.db")
        assert (first.rows, first.added, first.log_ids) == (3, 3, (logs["a"],))
        assert host.merge(tmp_path / "b-copy.db").added == 3
        assert host.merge(tmp_path / "a-copy.db").added == 0
        assert host.merge(tmp_path / "b-copy.db").added == 0
        got = host._db.execute("SELECT log_id, count(*), min(device_id) FROM screenings "
                               "GROUP BY log_id ORDER BY log_id").fetchall()
    assert got == sorted([(logs["a"], 3, "pi-same-name"), (logs["b"], 3, "pi-same-name")])


def test_backup_is_consistent_while_a_writer_is_busy(tmp_path):
    """Committed rows still in the -wal file are in the copy; an open transaction is not."""
    db = tmp_path / "live.db"
    with ScreeningLog(db) as log:
        for i in range(3):
            log.add(_screening(i, "pi-live"))
        raw = tmp_path / "raw.db"  # what copying the file would give: WAL not checkpointed
        raw.write_bytes(db.read_bytes())
        with sqlite3.connect(raw) as con:
            assert con.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] == 0
        writer = sqlite3.connect(db, isolation_level=None)
        writer.execute("BEGIN IMMEDIATE")
        writer.execute("DELETE FROM screenings")  # a half-done change must not be copied
        try:
            assert log.backup(tmp_path / "copy.db") == 3
        finally:
            writer.execute("ROLLBACK")
            writer.close()
    assert oct((tmp_path / "copy.db").stat().st_mode & 0o777) == "0o600"
    with sqlite3.connect(tmp_path / "copy.db") as con:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert not (tmp_path / "copy.db-wal").exists()


# ---------------------------------------------------------------------------------------------
# the fleet


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fleet-bundle")
    return build_bundle(folder / "bundle", wheel=build_wheel(folder / "wheel"))


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    """{'a', 'b', 'c'}: three sshd devices with the same disk path; c's disk is read-only."""
    if not Path(SSHD).exists() or os.geteuid() != 0:
        pytest.skip("needs Debian's openssh-server and root (CI runs both)")
    base = tmp_path_factory.mktemp("fleet")
    disk = base / "disk"  # the same path on every device, its own tmpfs on each
    disk.mkdir()
    probe = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c",
                            f"mount -t tmpfs -o size=1m tmpfs {disk}"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs in a mount namespace here ({probe.stderr!r})")
    servers = {name: SshServer(base / name, tmpfs=(disk, DISK), read_only=name == "c",
                                 share_environment=True)
               for name in "abc"}
    known = base / "known_hosts"
    known.write_text("".join(s.known_hosts.read_text() for s in servers.values()))
    hosts = base / "hosts.txt"
    hosts.write_text("# the ward's bedside devices\n" + "".join(
        f"{s.address}  key={s.client_key}   # device {name}\n" for name, s in servers.items()))
    yield {"servers": servers, "known": known, "hosts": hosts, "root": disk / "heartsound",
           "base": base}
    for server in servers.values():
        server.stop()


def on_device(server: SshServer, command: str) -> subprocess.CompletedProcess:
    """A command on the device through the real ssh client (strict host key check)."""
    return subprocess.run(
        ["ssh", "-i", str(server.client_key), "-p", str(server.port), "-o", "BatchMode=yes",
         "-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={server.known_hosts}",
         f"{server.user}@127.0.0.1", command], capture_output=True, text=True, timeout=120)


def invoke(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["invoke", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=600)


def heartsound(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edge.cli", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=600)


def common(fleet: dict, hosts: Path | None = None) -> list[str]:
    return ["--hosts", str(hosts or fleet["hosts"]), "--known-hosts", str(fleet["known"]),
            "--root", str(fleet["root"])]


def table_rows(stdout: str) -> dict[str, list[str]]:
    """{host: cells} of a fleet summary table (header, rule, rows, reason lines)."""
    rows = {}
    for line in stdout.splitlines():
        cells = line.split()
        if cells and cells[0].count("@127.0.0.1:") == 1:
            rows[cells[0]] = cells
    return rows


def current(fleet: dict, name: str) -> str:
    res = on_device(fleet["servers"][name], f"readlink {fleet['root']}/current")
    return res.stdout.strip().removeprefix("releases/")


@pytest.fixture(scope="module")
def deployed(fleet, bundle):
    """`invoke deploy --hosts`: the result, run once for the tests below."""
    res = invoke("deploy", *common(fleet), "--remote-python", sys.executable,
                 "--system-site-packages", "--offline", "--bundle", str(bundle.path))
    print(res.stdout, res.stderr)
    return res


@ssh_only
def test_deploy_to_fleet_two_succeed_one_reported(fleet, bundle, deployed):
    res = deployed
    assert res.returncode != 0  # one device failed
    servers = fleet["servers"]
    rows = table_rows(res.stdout)
    assert set(rows) == {str(s.address) for s in servers.values()}
    model_sha = bundle.manifest["files"][bundle.role("model")]["sha256"]
    for name in "ab":
        release = current(fleet, name)
        assert release.startswith(bundle.version + "-")
        # host | ok | the release read back from the device | its model
        assert rows[servers[name].address][1:] == ["ok", release, model_sha[:12]]
        wav = EXAMPLES / "physionet_b0001_normal.wav"
        screen = on_device(servers[name], f"{fleet['root']}/current/bin/heartsound screen "
                                          f"--json --no-log {wav}")
        assert screen.returncode == 0, screen.stderr
    bad = servers["c"].address
    assert rows[bad][1:] == ["FAILED", "(none", "or", "unknown)", "-"]
    reason = next(ln for ln in res.stdout.splitlines() if ln.strip().startswith("reason:"))
    assert bad in reason and "preparing the device folder" in reason, reason
    assert "Read-only file system" in reason and "nothing was changed" in reason
    assert "2 of 3 devices deployed" in res.stdout
    assert f"deploy failed on 1 of 3 devices ({bad})" in res.stderr
    assert "Traceback" not in res.stderr
    assert on_device(servers["c"], f"ls -A {fleet['root'].parent}").stdout == ""


@ssh_only
def test_bench_across_the_fleet(fleet, deployed):
    res = invoke("bench", *common(fleet), "--runs", "10")
    print(res.stdout)
    assert res.returncode != 0
    rows = table_rows(res.stdout)
    servers = fleet["servers"]
    header = next(ln for ln in res.stdout.splitlines() if ln.startswith("host")).split()
    assert header[:4] == ["host", "result", "release", "model"] and "p95" in header
    for name in "ab":
        cells = rows[servers[name].address]
        assert cells[1:3] == ["ok", current(fleet, name)]
        figures = [float(x) for x in cells[4:]]
        init, first, mean, p50, p95, p99 = figures[:6]
        assert 0 < p50 <= p95 <= p99 < 10_000 and 0 < mean < 10_000 and init > 0
    assert rows[servers["c"].address][1] == "FAILED"
    assert "bench failed on 1 of 3 devices" in res.stderr


def _pascal(data_root: Path, folder: str) -> Path:
    with open(data_root / "pascal" / "labels.csv", newline="") as fh:
        row = next(r for r in csv.DictReader(fh)
                   if r["file"].startswith(folder + "/") and r["label"] == "normal")
    return data_root / "pascal" / row["file"]


def _device_log(fleet: dict, name: str) -> list[dict]:
    res = on_device(fleet["servers"][name], f"{fleet['root']}/current/bin/heartsound history "
                                            f"--db {fleet['root']}/data/screenings.db --csv -")
    assert res.returncode == 0, res.stderr
    return list(csv.DictReader(io.StringIO(res.stdout)))


@ssh_only
def test_history_pull_merges_good_devices_once(fleet, deployed, data_root, tmp_path):
    servers, root = fleet["servers"], fleet["root"]
    seeds = {"a": [EXAMPLES / "physionet_a0336_abnormal.wav", _pascal(data_root, "set_a")],
             "b": [EXAMPLES / "physionet_b0001_normal.wav",
                   EXAMPLES / "physionet_d0014_abnormal.wav", _pascal(data_root, "set_b")]}
    for name, wavs in seeds.items():  # the device's own heartsound screens and logs
        res = on_device(servers[name], f"env HEARTSOUND_HOME={root}/data HEARTSOUND_DEVICE_ID="
                                       f"pi-ward-{name} {root}/current/bin/heartsound screen "
                                       f"--json {' '.join(map(str, wavs))}")
        assert res.returncode == 0, res.stderr
    # device c cannot log in: its line carries a key its sshd does not accept
    wrong = keygen(tmp_path / "wrong")
    hosts = tmp_path / "hosts.txt"
    hosts.write_text(f"{servers['a'].address} key={servers['a'].client_key}\n"
                     f"{servers['b'].address} key={servers['b'].client_key}\n"
                     f"{servers['c'].address} key={wrong}\n")
    db = tmp_path / "ward.db"

    first = heartsound("history", "--pull", *common(fleet, hosts), "--db", str(db))
    print(first.stdout, first.stderr)
    assert first.returncode == DeviceError.exit_code
    rows = table_rows(first.stdout)
    for name, wavs in seeds.items():
        assert rows[servers[name].address][1:] == ["ok", str(len(wavs)), str(len(wavs)),
                                                   f"pi-ward-{name}"]
    assert rows[servers["c"].address][1] == "FAILED"
    assert "login refused" in first.stdout
    assert "5 screening(s) added" in first.stdout
    assert "pull failed on 1 of 3 devices" in first.stderr

    with sqlite3.connect(db) as con:
        merged = con.execute("SELECT device_id, log_id, file, decision, probability "
                             "FROM screenings").fetchall()
    for name, wavs in seeds.items():  # every row as the device logged it, device id kept
        on_dev = {(r["file"], r["decision"], r["probability"]) for r in _device_log(fleet, name)}
        here = {(f, d, "" if p is None else f"{p:.6f}") for dev, _, f, d, p in merged
                if dev == f"pi-ward-{name}"}
        assert here == on_dev and len(here) == len(wavs)
    assert len({log for _, log, *_ in merged}) == 2
    # no copy is left behind on the devices
    left = on_device(servers["a"], f"ls -A {root}/data").stdout.split()
    assert [f for f in left if f.startswith(".pull-")] == []

    again = heartsound("history", "--pull", *common(fleet, hosts), "--db", str(db))
    assert again.returncode == DeviceError.exit_code
    rows = table_rows(again.stdout)
    for name, wavs in seeds.items():
        assert rows[servers[name].address][1:4] == ["ok", str(len(wavs)), "0"]
    assert "0 screening(s) added" in again.stdout
    with sqlite3.connect(db) as con:
        assert con.execute("SELECT count(*) FROM screenings").fetchone()[0] == 5
    listing = heartsound("history", "--db", str(db))
    assert listing.returncode == 0 and "5 shown, 5 in" in listing.stdout


@ssh_only
def test_bad_hosts_line_deploys_nothing(fleet, deployed, bundle, tmp_path):
    a = fleet["servers"]["a"]
    before = on_device(a, f"ls {fleet['root']}/releases").stdout
    hosts = tmp_path / "hosts.txt"
    hosts.write_text(f"{a.address} key={a.client_key}\n\npi@ward3:notaport\n")
    res = heartsound("deploy", *common(fleet, hosts), "--remote-python", sys.executable,
                     "--system-site-packages", "--offline", "--bundle", str(bundle.path))
    assert res.returncode == UsageError.exit_code
    assert res.stderr.strip().splitlines() == [
        f"heartsound: {hosts}:3: 'pi@ward3:notaport' is not USER@HOST[:PORT]; fix the line "
        "(nothing was done)"]
    assert on_device(a, f"ls {fleet['root']}/releases").stdout == before
    res = heartsound("history", "--pull", *common(fleet, hosts))
    assert res.returncode == UsageError.exit_code and f"{hosts}:3:" in res.stderr
