"""The whole pipeline against a team MLflow server backed by a real PostgreSQL.

The module fixture starts a throwaway PostgreSQL cluster (Debian's packages; `make test` installs
them) and `mlflow server` on it, both on 127.0.0.1 only, then runs `dvc repro` in a scratch clone
with MLFLOW_TRACKING_URI pointing at the server. The tests check what a team would rely on: every
stage's run, tags, params and datasets land in PostgreSQL itself (read with psycopg2, not only
through the server), artifacts go to the server's store, `pedigree lineage` and `pedigree audit`
work against the server, and no planted credential reaches the database.
"""

from __future__ import annotations

import glob
import os
import pwd
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from pedigree.tracking import DIGEST_CHARS, flatten
from tests.scratch import OUTS, SECRETS, STAGES, free_port, manifest, new_project, run
from tests.scratch import env as scratch_env

pytestmark = pytest.mark.slow

DB_USER = "pedigree"  # the cluster's superuser and the database's owner
DB_NAME = "mlflow"
LOOPBACK = "127.0.0.1"


def _postgres_bin() -> Path | None:
    """The newest /usr/lib/postgresql/N/bin that has initdb (Debian's layout)."""
    found = glob.glob("/usr/lib/postgresql/*/bin/initdb")
    if not found:
        return None
    newest = max(found, key=lambda p: int(re.sub(r"\D", "", Path(p).parents[1].name) or 0))
    return Path(newest).parent


def _stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM to the process and its group (the server's workers), SIGKILL to what outlives
    it by 30 s: nothing the fixture started is left running."""
    def alive() -> bool:
        return bool(subprocess.run(["pgrep", "-g", str(proc.pid)], capture_output=True,
                                   check=False).stdout)

    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 30
    while (proc.poll() is None or alive()) and time.monotonic() < deadline:
        time.sleep(0.2)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)


@dataclass
class Servers:
    pg_bin: Path
    pg_port: int
    password: str
    data_dir: Path
    mlflow: subprocess.Popen
    mlflow_args: list[str]
    tracking_uri: str
    artifacts: Path

    def connect(self):
        import psycopg2

        return psycopg2.connect(host=LOOPBACK, port=self.pg_port, user=DB_USER,
                                password=self.password, dbname=DB_NAME)

    def query(self, sql: str, args: tuple = ()) -> list[tuple]:
        con = self.connect()
        try:
            with con.cursor() as cur:
                cur.execute(sql, args)
                return cur.fetchall()
        finally:
            con.close()


@pytest.fixture(scope="module")
def servers() -> Iterator[Servers]:
    pg_bin = _postgres_bin()
    if pg_bin is None:
        why = "PostgreSQL is not installed (apt-get install postgresql; `make test` does)"
        if os.environ.get("PEDIGREE_REQUIRE_POSTGRES"):  # set by `make test`: CI must run this
            pytest.fail(why)
        pytest.skip(why)
    # PostgreSQL refuses to run as root: as root, run its binaries as Debian's `postgres` user, in
    # a directory it can reach (pytest's tmp dirs under /tmp/pytest-of-root are 0700).
    as_root = os.geteuid() == 0
    if as_root:
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            pytest.fail("running as root but there is no `postgres` user to run PostgreSQL as "
                        "(Debian's postgresql package creates it)")
    as_pg = ["runuser", "-u", "postgres", "--"] if as_root else []

    base = Path(tempfile.mkdtemp(prefix="pedigree-pg-", dir="/tmp"))
    base.chmod(0o755)
    home = base / "pg"  # the cluster, its log, its socket: PostgreSQL's own
    home.mkdir(mode=0o700)
    if as_root:
        os.chown(home, owner.pw_uid, owner.pw_gid)
    data = home / "data"
    artifacts = base / "artifacts"
    password = secrets.token_hex(16)
    pg_port = free_port()
    mlflow_port = free_port()
    while mlflow_port == pg_port:  # each probe closes its socket: the same port can come back
        mlflow_port = free_port()
    mlflow = None

    def pg(*cmd: str, **kwargs) -> subprocess.CompletedProcess:
        return subprocess.run([*as_pg, *cmd], capture_output=True, text=True, timeout=120,
                              stdin=subprocess.DEVNULL, check=False, **kwargs)

    try:
        pwfile = home / "pwfile"
        pwfile.write_text(password + "\n")
        pwfile.chmod(0o600)
        if as_root:
            os.chown(pwfile, owner.pw_uid, owner.pw_gid)
        # Password authentication on every connection (no `trust`): the server connects the way
        # a team server would, with credentials in its backend URI.
        init = pg(str(pg_bin / "initdb"), "-D", str(data), "-U", DB_USER, f"--pwfile={pwfile}",
                  "--auth=scram-sha-256", "--encoding=UTF8", "--locale=C", "--no-sync",
                  "--no-instructions")
        pwfile.unlink()
        assert init.returncode == 0, f"initdb failed:\n{init.stdout}\n{init.stderr}"
        # Loopback only, socket inside the temp dir (not /var/run/postgresql, which may be
        # missing or belong to the system cluster); durability is pointless for a throwaway one.
        with open(data / "postgresql.conf", "a") as conf:
            conf.write(f"\nlisten_addresses = '{LOOPBACK}'\nport = {pg_port}\n"
                       f"unix_socket_directories = '{home}'\n"
                       "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n")
        start = pg(str(pg_bin / "pg_ctl"), "-D", str(data), "-l", str(home / "log"), "-w",
                   "-t", "60", "start")
        log = (home / "log").read_text() if (home / "log").is_file() else ""
        assert start.returncode == 0, f"pg_ctl start failed:\n{start.stdout}{start.stderr}{log}"

        import psycopg2

        con = psycopg2.connect(host=LOOPBACK, port=pg_port, user=DB_USER, password=password,
                               dbname="postgres")
        con.autocommit = True  # CREATE DATABASE cannot run inside a transaction
        with con.cursor() as cur:
            cur.execute(f"CREATE DATABASE {DB_NAME} OWNER {DB_USER}")
        con.close()

        # Proxied artifacts (`--artifacts-destination`, on by default with --serve-artifacts):
        # pedigree creates its experiment without a location when MLFLOW_TRACKING_URI is set,
        # so the server gives it mlflow-artifacts:/ and stage processes upload over HTTP.
        # The driver is named: SQLAlchemy 2.1 maps a bare postgresql:// to psycopg (3), and the
        # test extra installs psycopg2.
        args = [sys.executable, "-m", "mlflow", "server",
                "--backend-store-uri",
                f"postgresql+psycopg2://{DB_USER}:{password}@{LOOPBACK}:{pg_port}/{DB_NAME}",
                "--artifacts-destination", str(artifacts),
                "--host", LOOPBACK, "--port", str(mlflow_port), "--workers", "1"]
        server_env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
        with open(base / "mlflow.log", "w") as server_log:
            mlflow = subprocess.Popen(args, cwd=base, env=server_env, stdin=subprocess.DEVNULL,
                                      stdout=server_log, stderr=subprocess.STDOUT,
                                      start_new_session=True)  # its own group: workers die too
        uri = f"http://{LOOPBACK}:{mlflow_port}"
        deadline = time.monotonic() + 180  # it creates the schema (migrations) before serving
        while True:
            try:
                urllib.request.urlopen(f"{uri}/health", timeout=2)
                break
            except OSError:
                if mlflow.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"mlflow server did not answer:\n"
                                f"{(base / 'mlflow.log').read_text()[-4000:]}")
                time.sleep(0.5)
        yield Servers(pg_bin, pg_port, password, data, mlflow, args, uri, artifacts)
    finally:
        if mlflow is not None:
            _stop_group(mlflow)
        if (data / "postmaster.pid").exists():
            pg(str(pg_bin / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def project(servers, tmp_path_factory) -> Path:
    root = new_project(tmp_path_factory.mktemp("pg-clone"))
    started = time.monotonic()
    run([sys.executable, "-m", "dvc", "repro"], root, MLFLOW_TRACKING_URI=servers.tracking_uri)
    print(f"\ndvc repro against mlflow server + PostgreSQL: {time.monotonic() - started:.0f}s")
    return root


def experiment_name(project: Path) -> str:
    return yaml.safe_load((project / "params.yaml").read_text())["tracking"]["experiment"]


def server_runs(servers: Servers, project: Path) -> dict:
    """Stage -> the server's run for it (one each: the database started empty)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(servers.tracking_uri)
    exp = client.get_experiment_by_name(experiment_name(project))
    runs = client.search_runs([exp.experiment_id])
    stages = [r.data.tags.get("pedigree.stage") for r in runs]
    assert sorted(stages) == sorted(STAGES), stages
    return {r.data.tags["pedigree.stage"]: r for r in runs}


def test_servers_listen_on_loopback_only(servers):
    host = servers.mlflow_args[servers.mlflow_args.index("--host") + 1]
    assert host == LOOPBACK
    assert servers.query("SHOW listen_addresses") == [(LOOPBACK,)]
    if shutil.which("ss") is None:
        pytest.skip("no `ss` (iproute2) to list listening sockets; the settings above hold")
    # Every listening TCP socket of the postmaster or of any mlflow server process (workers
    # included: they share its process group) is on 127.0.0.1.
    postmaster = int((servers.data_dir / "postmaster.pid").read_text().split()[0])
    group = subprocess.run(["pgrep", "-g", str(servers.mlflow.pid)], capture_output=True,
                           text=True, check=False).stdout.split()
    pids = {postmaster, *map(int, group)}
    listening = subprocess.run(["ss", "-Hltnp"], capture_output=True, text=True,
                               check=True).stdout.splitlines()
    mine = [line.split()[3] for line in listening
            if pids & {int(p) for p in re.findall(r"pid=(\d+)", line)}]
    assert mine, listening
    assert all(addr.rsplit(":", 1)[0] == LOOPBACK for addr in mine), mine
    mlflow_port = servers.tracking_uri.rsplit(":", 1)[1]
    assert {addr.rsplit(":", 1)[1] for addr in mine} == {str(servers.pg_port), mlflow_port}


def test_no_local_store_was_written(project):
    """The server is the only store: no SQLite file, lock or local artifact tree in the project."""
    for name in ("mlflow.db", "mlflow.db.lock", "mlruns", "mlartifacts"):
        assert not (project / name).exists(), name


def test_every_stage_has_a_tagged_run_on_the_server(servers, project):
    by_stage = server_runs(servers, project)
    data_hash = manifest(project, "curate")["roots"]["data_sha256"]
    for stage, r in by_stage.items():
        m, tags = manifest(project, stage), r.data.tags
        assert tags["pedigree.outputs_sha256"] == m["outputs_sha256"], stage
        assert tags["pedigree.output_path"] == OUTS[stage], stage
        assert tags["pedigree.params_sha256"] == m["params_sha256"], stage
        assert tags["pedigree.git_commit"] == m["code"]["git_commit"], stage
        if stage != "base":
            assert tags["pedigree.data_sha256"] == data_hash, stage
        for up in m["upstream"]:  # the hash it was made from, and the run that made that
            assert tags[f"pedigree.upstream.{up['stage']}"] == up["outputs_sha256"], stage
            linked = tags[f"pedigree.upstream_run.{up['stage']}"]
            assert linked == by_stage[up["stage"]].info.run_id, stage
        assert r.data.params == flatten(m["params"]), stage
        # Each input is a dataset with the content hash the manifest records for it.
        digests = {d.dataset.name: d.dataset.digest for d in r.inputs.dataset_inputs}
        for up in m["upstream"]:
            assert digests[up["path"]] == up["outputs_sha256"][:DIGEST_CHARS], stage
    curate = {d.dataset.name: d.dataset.digest for d in by_stage["curate"].inputs.dataset_inputs}
    assert {"data/raw", "data/eval", "models/base/tokenizer.json"} <= set(curate)
    assert curate["data/raw"] == data_hash[:DIGEST_CHARS]
    assert "val_loss" in by_stage["sft"].data.metrics


def test_runs_tags_and_datasets_are_in_postgres_itself(servers, project):
    """Read straight from the database with psycopg2: the server did not keep them elsewhere."""
    exp = experiment_name(project)
    [(artifact_location,)] = servers.query(
        "SELECT artifact_location FROM experiments WHERE name = %s", (exp,))
    assert artifact_location.startswith("mlflow-artifacts:/")  # served, not a local path
    runs = servers.query("SELECT r.run_uuid, r.status FROM runs r JOIN experiments e "
                         "USING (experiment_id) WHERE e.name = %s", (exp,))
    assert len(runs) == len(STAGES) and {status for _, status in runs} == {"FINISHED"}
    stage_of = dict(servers.query(
        "SELECT run_uuid, value FROM tags WHERE key = 'pedigree.stage'"))
    assert sorted(stage_of.values()) == sorted(STAGES)
    assert set(stage_of) == {run_id for run_id, _ in runs}
    run_of = {stage: run_id for run_id, stage in stage_of.items()}
    hashes = dict(servers.query(
        "SELECT run_uuid, value FROM tags WHERE key = 'pedigree.outputs_sha256'"))
    for stage in STAGES:
        assert hashes[run_of[stage]] == manifest(project, stage)["outputs_sha256"], stage
        params = dict(servers.query("SELECT key, value FROM params WHERE run_uuid = %s",
                                    (run_of[stage],)))
        assert params == flatten(manifest(project, stage)["params"]), stage
    datasets = servers.query(
        "SELECT i.destination_id, d.name, d.digest FROM inputs i "
        "JOIN datasets d ON d.dataset_uuid = i.source_id "
        "WHERE i.source_type = 'DATASET' AND i.destination_type = 'RUN'")
    logged = {(stage_of[run_id], name): digest for run_id, name, digest in datasets}
    split = manifest(project, "split")["outputs_sha256"][:DIGEST_CHARS]
    assert logged[("sft", "data/split")] == split
    assert logged[("split", "data/curated")] == \
        manifest(project, "curate")["outputs_sha256"][:DIGEST_CHARS]
    assert ("curate", "data/raw") in logged
    # The server stored each run's manifest in its artifact destination, byte for byte.
    for stage in STAGES:
        stored = list(servers.artifacts.glob(f"*/{run_of[stage]}/artifacts/lineage.json"))
        assert len(stored) == 1, stage
        assert stored[0].read_bytes() == (project / OUTS[stage] / "lineage.json").read_bytes()


def test_lineage_and_audit_read_the_server(servers, project):
    by_stage = server_runs(servers, project)
    env = {"MLFLOW_TRACKING_URI": servers.tracking_uri}
    out = run([sys.executable, "-m", "pedigree.cli", "lineage", "models/merged"], project, **env)
    assert "MLflow runs not looked up" not in out and "no run found" not in out, out
    chain, queue = set(), ["merge"]
    while queue:  # models/merged and everything upstream of it
        stage = queue.pop()
        chain.add(stage)
        queue += [up["stage"] for up in manifest(project, stage)["upstream"]]
    for stage in chain:
        assert f"{OUTS[stage]}  (stage {stage})" in out, stage
        assert f"mlflow   {by_stage[stage].info.run_id}" in out, (stage, out)

    out = run([sys.executable, "-m", "pedigree.cli", "audit"], project, **env)
    assert "audit passed" in out and "MLflow runs agree" in out, out
    # And it really checks the server's tags: one changed there is caught, then restored.
    from mlflow.tracking import MlflowClient

    client, sft = MlflowClient(servers.tracking_uri), by_stage["sft"]
    client.set_tag(sft.info.run_id, "pedigree.data_sha256", "0" * 64)
    try:
        proc = subprocess.run([sys.executable, "-m", "pedigree.cli", "audit"], cwd=project,
                              env=scratch_env(**env), capture_output=True, text=True,
                              timeout=300, check=False)
    finally:
        client.set_tag(sft.info.run_id, "pedigree.data_sha256", sft.data.tags[
            "pedigree.data_sha256"])
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"MLflow run {sft.info.run_id} is tagged data_sha256=" in proc.stderr, proc.stderr


def test_no_planted_secret_reaches_postgres_or_the_artifact_store(servers, project):
    """Every stage ran with credentials in its environment: none is in the database (a full
    pg_dump, as its owner) or in anything the server stored as an artifact."""
    server_runs(servers, project)  # the runs exist: the dump below is not of an empty database
    dump = subprocess.run(
        [str(servers.pg_bin / "pg_dump"), "-h", LOOPBACK, "-p", str(servers.pg_port),
         "-U", DB_USER, "-d", DB_NAME],
        env={**os.environ, "PGPASSWORD": servers.password}, capture_output=True, text=True,
        timeout=120, check=True).stdout
    assert "pedigree.outputs_sha256" in dump and manifest(project, "sft")["params_sha256"] in dump
    assert [name for name, value in SECRETS.items() if value in dump] == []
    leaks = [f"{path.relative_to(servers.artifacts)}: {name}"
             for path in servers.artifacts.rglob("*") if path.is_file()
             for name, value in SECRETS.items() if value.encode() in path.read_bytes()]
    assert leaks == []
