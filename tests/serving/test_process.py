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
