"""Engines: worker processes and Ray write the same bytes as a run in this process."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.pipeline.test_resume import outputs
from ulmed.errors import ConfigError, MissingDependencyError
from ulmed.pipeline.engines import EngineConfig
from ulmed.pipeline.protect import protect_path


@pytest.fixture(scope="module")
def reference(tmp_path_factory, sample_data):
    out = tmp_path_factory.mktemp("engines") / "local1"
    manifest = protect_path(sample_data, out, method="lsp")
    return out, manifest


def test_engine_config_validates():
    cases = (({"name": "dask"}, "--engine"), ({"workers": 0}, "--workers"), ({"ray_address": "auto"}, "--ray-address"))
    for kwargs, flag in cases:
        with pytest.raises(ConfigError, match=flag):
            EngineConfig(**kwargs)


def test_a_long_series_travels_alone_and_single_images_in_fours(tmp_path):
    from ulmed.io.dicom import DicomSeries
    from ulmed.io.discover import Item
    from ulmed.pipeline.engines import _batches
    from ulmed.pipeline.units import Unit

    def series(name, n):
        return Unit("dicom", name, DicomSeries(name, [tmp_path / f"{name}{i}.dcm" for i in range(n)], name))

    def image(name):
        return Unit("image", name, Item(tmp_path / name, Path(name)))

    images = [image(f"{i}.png") for i in range(6)]
    units = [series("ct2", 2), series("s0", 25), series("s1", 25), *images, series("x", 3)]
    keys = [[u.key for u in batch] for batch in _batches(units, 4)]
    assert keys == [["ct2"], ["s0"], ["s1"], ["0.png", "1.png", "2.png", "3.png"], ["4.png", "5.png"], ["x"]]
    assert [u for batch in _batches(units, 4) for u in batch] == units


def test_two_local_workers_write_the_same_bytes(reference, sample_data, tmp_path):
    out, manifest = reference
    two = protect_path(sample_data, tmp_path / "local2", method="lsp", workers=2)
    assert two.params["workers"] == 2
    assert outputs(tmp_path / "local2") == outputs(out)
    def seen(m):
        return [(e.input, e.status, e.sha256) for e in m.entries]

    assert seen(two) == seen(manifest)


def test_ray_writes_the_same_bytes(reference, sample_data, tmp_path):
    ray = pytest.importorskip("ray")
    out, manifest = reference
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)  # the test's own local Ray instance
    try:
        got = protect_path(sample_data, tmp_path / "ray", method="lsp", engine="ray", workers=2)
        assert ray.is_initialized(), "an instance the run did not start must be left running"
    finally:
        ray.shutdown()
    assert got.params["engine"] == "ray"
    assert outputs(tmp_path / "ray") == outputs(out)
    assert [(e.input, e.sha256) for e in got.entries] == [(e.input, e.sha256) for e in manifest.entries]


def test_missing_ray_is_a_clear_error(sample_data, tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(MissingDependencyError, match=r"ulmed\[ray\]"):
        protect_path(sample_data / "hc18", tmp_path / "o", method="random", engine="ray")


def test_a_worker_gives_torch_loaded_later_its_share_of_the_cores():
    """lsp loads torch only for its pre-image: a worker must still cap torch's threads (one per core oversubscribed)."""
    import os
    import subprocess
    import sys

    if (os.cpu_count() or 1) < 2:
        pytest.skip("one core: torch's default is already one thread")
    code = (
        "import sys\n"
        "from ulmed.pipeline.engines import _init_worker\n"
        "assert 'torch' not in sys.modules\n"
        "_init_worker(None, 1)\n"
        "import torch\n"
        "print(torch.get_num_threads())\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "1"


def test_this_process_takes_batches_while_the_pool_is_busy_and_results_keep_their_order():
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from ulmed.pipeline.engines import _shared

    release = threading.Event()  # the pool's batches wait until this process has run some of its own
    ran_here: list[int] = []

    def slow(batch):
        release.wait(5)
        return [f"pool{b}" for b in batch]

    def here(batch):
        ran_here.extend(batch)
        if len(ran_here) >= 3:
            release.set()
        return [f"here{b}" for b in batch]

    batches = [[i] for i in range(8)]
    with ThreadPoolExecutor(1) as pool:
        got = list(_shared(batches, lambda b: pool.submit(slow, b), here, in_flight=2))
    assert [int(r[4:]) for r in got] == list(range(8))  # in the order of the units, whoever ran them
    assert got[:2] == ["pool0", "pool1"] and ran_here[:3] == [2, 3, 4]  # the pool's two, then here while it waits


def test_a_worker_ends_when_the_run_that_spawned_it_is_killed(tmp_path):
    """``kill -9`` of a run cannot shut its pool down: its workers must not wait for work forever."""
    import os
    import signal
    import subprocess
    import sys
    import time

    pid_file = tmp_path / "worker.pid"
    code = (
        "import os, sys, time\n"
        "from concurrent.futures import ProcessPoolExecutor\n"
        "from multiprocessing import get_context\n"
        "from ulmed.pipeline.engines import _init_worker\n"
        "pool = ProcessPoolExecutor(1, mp_context=get_context('spawn'), initializer=_init_worker, initargs=(None, 1))\n"
        "pid = pool.submit(os.getpid)\n"
        f"open({str(pid_file)!r}, 'w').write(str(pid.result(timeout=120)))\n"
        "time.sleep(600)\n"
    )
    run = subprocess.Popen([sys.executable, "-c", code])
    try:
        deadline = time.monotonic() + 120
        while not (pid_file.exists() and pid_file.read_text()) and time.monotonic() < deadline:
            time.sleep(0.2)
        worker = int(pid_file.read_text())
        os.kill(run.pid, signal.SIGKILL)
        run.wait(30)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and _alive(worker):
            time.sleep(0.2)
        assert not _alive(worker), "the orphaned worker is still running"
    finally:
        run.kill()
        if pid_file.exists() and pid_file.read_text() and _alive(int(pid_file.read_text())):
            os.kill(int(pid_file.read_text()), signal.SIGKILL)  # a failed run of this test leaves none behind


def _alive(pid: int) -> bool:
    import os

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as fh:  # a zombie has ended; only its parent has not reaped it yet
        return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
