"""The confinement of the servers the bench compares on CPU per request (`bench.servers`)."""

from __future__ import annotations

import os
import subprocess
import sys

from bench.servers import Confinement, cpu_seconds

# Linux's personality flag for "no address space randomisation" (<linux/personality.h>).
ADDR_NO_RANDOMIZE = 0x0040000
PROBE = (
    "import os; print(max(os.sched_getaffinity(0)), len(os.sched_getaffinity(0)),"
    " open('/proc/self/personality').read().strip(), hash('one-system'), id(object()))"
)


def _run(command: list[str], env: dict[str, str]) -> list[str]:
    completed = subprocess.run(
        command, env=env, capture_output=True, text=True, check=True, timeout=30
    )
    return completed.stdout.split()


def test_a_confined_server_runs_on_its_cpu_laid_out_and_hashing_alike_at_every_start() -> None:
    cpus = sorted(os.sched_getaffinity(0))
    confined = Confinement(server_cpu=cpus[-1], client_cpu=cpus[0])
    command = confined.server_command([sys.executable, "-c", PROBE])
    env = confined.server_env(dict(os.environ))

    first, second = _run(command, env), _run(command, env)

    cpu, allowed, personality, hashed, address = first
    assert (int(cpu), int(allowed)) == (cpus[-1], 1)
    assert int(personality, 16) & ADDR_NO_RANDOMIZE
    # Same hash seed and same layout: the same string hash and the same first object address.
    assert second[3:] == [hashed, address]


def test_a_confined_servers_load_runs_on_the_other_cpu() -> None:
    cpus = sorted(os.sched_getaffinity(0))
    confined = Confinement(server_cpu=cpus[-1], client_cpu=cpus[0])

    cpu, allowed, *_ = _run(
        confined.client_command([sys.executable, "-c", PROBE]), dict(os.environ)
    )

    assert (int(cpu), int(allowed)) == (cpus[0], 1)


BURNER = """
import threading, time
def burn():
    end = time.thread_time() + 0.2
    while time.thread_time() < end:
        pass
    print("burnt", flush=True)
    time.sleep(60)
threading.Thread(target=burn, daemon=True).start()
time.sleep(60)
"""


def test_a_servers_cpu_time_is_every_threads() -> None:
    with subprocess.Popen(
        [sys.executable, "-c", BURNER], stdout=subprocess.PIPE, text=True
    ) as child:
        try:
            assert child.stdout is not None
            assert child.stdout.readline() == "burnt\n"
            # The burning thread's 0.2 s, not only the main thread's start-up.
            assert 0.2 <= cpu_seconds([child.pid]) < 1.0
        finally:
            child.kill()
