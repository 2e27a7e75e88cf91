"""DBOS Transact as the engine benchmark's peer: workflows of no-op durable steps on PostgreSQL.

The same shape as `steward bench engine`: RUNS concurrent workflows of STEPS steps each, steps
a second over all of them; and the overhead one step adds on an idle system (a workflow of STEPS
steps alone, minus nothing: the steps do no work). Run by bench/run engine; the last line printed
is one JSON object. Needs `pip install dbos` and a PostgreSQL URL (DBOS_SYSTEM_DATABASE_URL).
"""
import json
import os
import statistics
import sys
import time

from dbos import DBOS, DBOSConfig

RUNS = int(os.environ.get("PEER_RUNS", "200"))
STEPS = int(os.environ.get("PEER_STEPS", "51"))


@DBOS.step()
def no_op(i: int) -> int:
    return i


@DBOS.workflow()
def workflow(steps: int) -> int:
    total = 0
    for i in range(steps):
        total += no_op(i)
    return total


@DBOS.step()
def timed_step(i: int) -> float:
    return time.perf_counter()


@DBOS.workflow()
def timed(steps: int) -> list:
    # The time between one step's body and the next's: what durably recording a step costs.
    return [timed_step(i) for i in range(steps)]


def main() -> None:
    url = os.environ["DBOS_SYSTEM_DATABASE_URL"]
    config: DBOSConfig = {
        "name": "steward-bench-peer",
        "system_database_url": url,
        "max_executor_threads": 64,
    }
    DBOS(config=config)
    DBOS.launch()
    # Warm up.
    workflow(3)
    gaps = []
    for _ in range(5):
        marks = timed(STEPS)
        gaps.extend((b - a) * 1000 for a, b in zip(marks, marks[1:]))
    gaps.sort()
    started = time.perf_counter()
    handles = [DBOS.start_workflow(workflow, STEPS) for _ in range(RUNS)]
    for h in handles:
        h.get_result()
    elapsed = time.perf_counter() - started
    out = {
        "peer": "dbos",
        "version": __import__("importlib.metadata").metadata.version("dbos"),
        "runs": RUNS,
        "steps_per_run": STEPS,
        "steps_per_s": round(RUNS * STEPS / elapsed),
        "p50_ms": round(statistics.median(gaps), 3),
        "p99_ms": round(gaps[int(len(gaps) * 0.99)], 3),
    }
    DBOS.destroy()
    print(json.dumps(out))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
