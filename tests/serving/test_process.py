"""`persona serve --foreground` notices a dead TorchServe even when, as PID 1, it inherited the JVM."""

import signal
import subprocess
import sys
import time

from persona_serving.server import alive


def test_a_dead_unreaped_child_is_not_alive():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    assert alive(child.pid)
    child.send_signal(signal.SIGKILL)
    for _ in range(200):  # until the kernel has made it a zombie (nobody has waited for it yet)
        if not alive(child.pid):
            break
        time.sleep(0.01)
    assert not alive(child.pid)


def test_workers_share_the_cores_unless_told(monkeypatch, tmp_path):
    """Left to torch, every TorchServe worker would take every core (spinning OpenMP threads):
    `--torch-threads` wins, then the environment's OMP_NUM_THREADS, else cores / models served."""
    from persona_serving.server import ServeOptions, worker_threads

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(8)))
    options = ServeOptions(model_store=tmp_path, workdir=tmp_path)
    assert [worker_threads(options, models) for models in (1, 2, 3, 16)] == [8, 4, 2, 1]
    assert worker_threads(options.model_copy(update={"torch_threads": 3}), 2) == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "5")
    assert worker_threads(options, 2) is None  # the environment's, inherited as it is


def test_a_containers_cpu_limit_caps_the_usable_cores(monkeypatch, tmp_path):
    """In a pod the affinity holds every core of the node; `limits.cpu` is the cgroup's quota."""
    from persona_serving import server

    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(64)))
    monkeypatch.setattr(server, "CGROUP_CPU_MAX", tmp_path / "cpu.max")
    assert server.usable_cores() == 64  # no cgroup file: the affinity
    for limit, cores in [("max 100000", 64), ("400000 100000", 4), ("250000 100000", 2), ("50000 100000", 1)]:
        (tmp_path / "cpu.max").write_text(limit + "\n")
        assert server.usable_cores() == cores
