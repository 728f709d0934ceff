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
