"""The bench's per-thread CPU reading counts the threads that hold the GIL, and only those."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

from benchmarks.procs import cpu_seconds, python_thread_cpu_seconds

# Three busy threads: the main one and a Python thread, both named as Python leaves
# them, and one renamed the way gRPC names its C threads.
_BUSY = textwrap.dedent(
    """
    import sys, threading, time

    def spin(rename):
        if rename:
            tid = threading.get_native_id()
            with open(f"/proc/self/task/{tid}/comm", "w") as f:
                f.write("event_engine")
        end = time.monotonic() + 60
        while time.monotonic() < end:
            pass

    for rename in (False, True):
        threading.Thread(target=spin, args=(rename,), daemon=True).start()
    print("ready", flush=True)
    spin(False)
    """
)


def test_python_thread_cpu_leaves_out_threads_named_otherwise() -> None:
    proc = subprocess.Popen([sys.executable, "-c", _BUSY], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        py0, all0 = python_thread_cpu_seconds(proc.pid), cpu_seconds(proc.pid)
        time.sleep(1.0)
        python = python_thread_cpu_seconds(proc.pid) - py0
        everything = cpu_seconds(proc.pid) - all0
    finally:
        proc.kill()
        proc.wait()
    # The GIL lets the three threads run one at a time, so they share ~one core; the
    # renamed one gets about a third of it, which the reading must not include.
    assert python > 0.2
    assert everything - python > 0.05
    assert python < everything


def test_python_thread_cpu_of_a_gone_process_is_zero() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    assert python_thread_cpu_seconds(proc.pid) == 0.0
