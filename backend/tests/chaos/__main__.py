"""`python -m tests.chaos`: the command line of the chaos run (`tests.chaos.run`).

    python -m tests.chaos [--seconds N] [--seed N] [--report FILE] [--keep-logs]

See the package docstring for what it proves. Exit status: 0 every invariant held, 1 one broke
(each violation is printed), 2 the run itself could not be carried out.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from tests.chaos import invariants
from tests.chaos.run import ChaosRun
from tests.chaos.stack import Stack


def print_report(verdicts: list[invariants.Verdict], summary: dict[str, Any]) -> None:
    print("\n== requests (kind -> status: count)")
    for line, count in summary["requests"].items():
        print(f"  {line}: {count}")
    print("== faults fired:", json.dumps(summary["faults"]))
    print("== Cognito calls faulted:", json.dumps(summary["cognito_calls_faulted"]))
    print("== sessions:", json.dumps(summary["sessions"]))
    print(
        f"== {summary['users']} users, {summary['deactivations']} deactivations judged, "
        f"instance starts {summary['instance_starts']}, "
        f"{summary['error_log_lines']} app log lines at ERROR"
    )
    converged = summary["converged_seconds"]
    print(
        "== converged",
        f"{converged} s after the faults stopped" if converged is not None else "NOT within 60 s",
    )
    print("== invariants")
    for verdict in verdicts:
        outcome = "PASS" if verdict.ok else "FAIL" if verdict.judged else "SKIP"
        print(f"  {outcome}  {verdict.name}{'' if verdict.judged else ' (not judged)'}")
        for violation in verdict.violations[:15]:
            print(f"        - {violation}")
        if len(verdict.violations) > 15:
            print(f"        ... and {len(verdict.violations) - 15} more")


async def _main(seconds: float, seed: int, report: Path | None, keep_logs: bool) -> int:
    asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(max_workers=16))
    stack = Stack()
    failed = True
    chaos = ChaosRun(stack, seconds, random.Random(seed))
    print(f"chaos: working in {stack.workdir}", flush=True)
    try:
        await chaos.set_up()
        verdicts, summary = await chaos.run()
        summary["seed"] = seed
        print_report(verdicts, summary)
        failed = not all(verdict.ok for verdict in verdicts)
        if report is not None:
            await asyncio.to_thread(report.write_text, json.dumps(summary, indent=2))
        return 1 if failed else 0
    finally:
        await chaos.http.aclose()
        if chaos.proxy is not None:
            chaos.proxy.stop()
        stack.close(keep_logs=failed or keep_logs)
        if failed or keep_logs:
            print(f"chaos: logs kept in {stack.workdir}", flush=True)


def _terminated(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.chaos", description=__doc__)
    parser.add_argument(
        "--seconds", type=float, default=float(os.environ.get("CHAOS_SECONDS", "180"))
    )
    parser.add_argument("--seed", type=int, default=int(os.environ.get("CHAOS_SEED", "0")) or None)
    parser.add_argument("--report", type=Path, help="write the counts as JSON here")
    parser.add_argument("--keep-logs", action="store_true")
    arguments = parser.parse_args(argv)
    seed = arguments.seed or random.SystemRandom().randrange(1, 2**31)
    print(f"chaos: seed {seed} (CHAOS_SEED={seed} repeats the choices)", flush=True)
    signal.signal(signal.SIGTERM, _terminated)
    try:
        return asyncio.run(_main(arguments.seconds, seed, arguments.report, arguments.keep_logs))
    except Exception as error:
        print(f"chaos: the run could not be carried out: {error!r}", file=sys.stderr)
        return 2
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()


if __name__ == "__main__":
    sys.exit(main())
