"""CPU mode's OpenMP spin governor (worker/cpu_spin_governor.py): the decision from other
processes' CPU use, and the mechanism itself -- libgomp's worker threads really stop
spinning (sleep after each parallel region) while the parked team exists, and spin again
once it is gone, observed from the kernel's count of voluntary context switches."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from vllm_xpu_plugin import host_cpu
from vllm_xpu_plugin.worker import cpu_spin_governor as gov


def _env_without_wait_policy():
    """This environment without the variables that turn the governor off."""
    return {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}


class _FakeMachine:
    """/proc readers and a clock the test drives: ``advance(seconds, others, own)``."""

    def __init__(self):
        self.now, self.machine, self.own = 100.0, 0.0, 0.0

    def advance(self, seconds, others_cores, own_cores=1.0):
        self.now += seconds
        self.own += own_cores * seconds
        self.machine += (own_cores + others_cores) * seconds


def _governor(fake):
    return gov.SpinGovernor(interval_s=1.0, busy_cores=0.5, quiet_cores=0.25,
                            read_machine=lambda: fake.machine, read_own=lambda: fake.own,
                            clock=lambda: fake.now, cpus=2)


def test_yields_while_others_use_the_cpu_and_spins_again_when_they_stop():
    fake = _FakeMachine()
    g = _governor(fake)
    try:
        fake.advance(1.0, others_cores=0.1)
        g.tick()
        assert not g.yielding and g.others_cores == pytest.approx(0.1)
        fake.advance(1.0, others_cores=0.9)
        g.tick()
        assert g.yielding and g.others_cores == pytest.approx(0.9)
        fake.advance(1.0, others_cores=0.4)  # between the thresholds: no change
        g.tick()
        assert g.yielding
        fake.advance(1.0, others_cores=0.1)
        g.tick()
        assert not g.yielding and g.switches == 2
    finally:
        g.close()


def test_reads_at_most_once_per_interval():
    fake = _FakeMachine()
    g = _governor(fake)
    try:
        fake.advance(0.5, others_cores=2.0)
        g.tick()  # half an interval: not sampled
        assert not g.yielding and g.others_cores == 0.0
        fake.advance(0.6, others_cores=2.0)
        g.tick()
        assert g.yielding
    finally:
        g.close()


def test_user_choice_or_one_thread_turns_it_off():
    assert gov.governor_wanted({}, threads=2)
    assert not gov.governor_wanted({"OMP_WAIT_POLICY": "PASSIVE"}, threads=2)
    assert not gov.governor_wanted({"GOMP_SPINCOUNT": "1000"}, threads=2)
    assert not gov.governor_wanted({}, threads=1)


def test_proc_readers_measure_cpu_time():
    own0, machine0 = host_cpu.own_busy_seconds(), host_cpu.machine_busy_seconds()
    end = os.times().elapsed + 0.3
    while os.times().elapsed < end:
        pass
    own, machine = host_cpu.own_busy_seconds(), host_cpu.machine_busy_seconds()
    assert own - own0 >= 0.1
    assert machine - machine0 >= own - own0 - 0.05  # the machine includes this process


_MECHANISM = r"""
import json, os, time, torch
from vllm_xpu_plugin.worker.cpu_spin_governor import _ParkedTeam
torch.set_num_threads(2)
big = torch.randn(1 << 18)

def worker_voluntary_switches():
    total = 0
    for tid in os.listdir("/proc/self/task"):
        if int(tid) == os.getpid():
            continue
        with open(f"/proc/self/task/{tid}/status") as f:
            for line in f:
                if line.startswith("voluntary_ctxt_switches"):
                    total += int(line.split()[1])
    return total

def regions(n=1000):
    before = worker_voluntary_switches()
    for _ in range(n):
        big.add_(1.0)                 # one parallel region on 2 threads
        end = time.perf_counter() + 50e-6
        while time.perf_counter() < end:  # 50 us of serial work between regions
            pass
    return worker_voluntary_switches() - before

regions(50)
spinning = regions()
parked = _ParkedTeam(len(os.sched_getaffinity(0)) + 1)
threads_main = torch.get_num_threads()
yielding = regions()
parked.stop()
time.sleep(0.05)
spinning_again = regions()
print("RESULT", json.dumps(dict(spinning=spinning, yielding=yielding,
                                spinning_again=spinning_again, threads_main=threads_main)))
"""


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 CPUs for a team")
def test_parked_team_makes_libgomp_workers_sleep_and_its_end_makes_them_spin_again():
    env = _env_without_wait_policy()
    env["OMP_NUM_THREADS"] = "2"
    proc = subprocess.run([sys.executable, "-c", _MECHANISM], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (line,) = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    got = json.loads(line.split(" ", 1)[1])
    # Spinning (libgomp's default, ~300k iterations) outlasts a 50 us gap: the worker
    # rarely sleeps. With more OpenMP threads than CPUs libgomp spins 100 iterations, so
    # the worker sleeps after nearly every one of the 1000 regions.
    assert got["spinning"] < 200, got
    assert got["yielding"] > 500, got
    assert got["spinning_again"] < 200, got
    assert got["threads_main"] == 2, got  # the engine thread's team size is untouched


# A governor in a child process samples the real /proc readers while either its parent
# (the test process) or a sibling (a process the test starts) burns one core.
_GOVERNOR_WATCHING = r"""
import json, statistics, sys, time
from vllm_xpu_plugin.worker.cpu_spin_governor import SpinGovernor
g = SpinGovernor(interval_s=0.5, cpus=2)
print("READY", flush=True)
sys.stdin.readline()
time.sleep(0.3)
g.tick()  # starts the window here (the interval has passed since construction)
seen = []
end = time.monotonic() + 2.0
while time.monotonic() < end:
    before = g.others_cores
    g.tick()
    if g.others_cores != before:
        seen.append(g.others_cores)
    time.sleep(0.02)
print("RESULT", json.dumps(dict(others=seen, median=statistics.median(seen or [0.0]))),
      flush=True)
g.close()
"""


def _start_watching_governor():
    env = _env_without_wait_policy()
    proc = subprocess.Popen([sys.executable, "-c", _GOVERNOR_WATCHING], env=env, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    for line in proc.stdout:
        if line.startswith("READY"):
            return proc
    raise AssertionError(proc.stderr.read()[-3000:])


def _result(proc):
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]
    (line,) = [x for x in out.splitlines() if x.startswith("RESULT ")]
    return json.loads(line.split(" ", 1)[1])


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 CPUs")
def test_the_engines_parent_is_its_own_work_and_a_sibling_is_a_neighbour():
    # The engine core's parent is the API server under `vllm serve` (the driver offline):
    # its CPU use is this deployment's own work, not a neighbour's. Any other process
    # still counts.
    proc = _start_watching_governor()
    try:
        proc.stdin.write("go\n")
        proc.stdin.flush()
        end = time.monotonic() + 2.8
        while time.monotonic() < end:  # the parent burns one core
            pass
        parent_burning = _result(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    burner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        proc = _start_watching_governor()
        proc.stdin.write("go\n")
        proc.stdin.flush()
        sibling_burning = _result(proc)
    finally:
        burner.kill()
        burner.wait()
    assert parent_burning["median"] < 0.35, parent_burning
    assert sibling_burning["median"] > 0.65, sibling_burning
