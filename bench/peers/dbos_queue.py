"""DBOS Transact's durable queue as the queue benchmark's peer, on PostgreSQL.

As `steward bench queue` measures: TASKS tasks enqueued and run by 16 at once, tasks a second
from the first enqueue to the last completion; and dispatch latency, enqueue to the start of the
task, at RATE tasks a second. A task is a workflow of one no-op step. The queue polls every
10 ms (DBOS's default is 1 s). Run by bench/run queue; the last line printed is one JSON object.
"""
import json
import os
import time

from dbos import DBOS, DBOSConfig

TASKS = int(os.environ.get("PEER_TASKS", "2000"))
RATE = int(os.environ.get("PEER_RATE", "100"))


@DBOS.step()
def started_at() -> float:
    return time.perf_counter()


@DBOS.workflow()
def task(enqueued: float) -> float:
    return (started_at() - enqueued) * 1000


def main() -> None:
    config: DBOSConfig = {
        "name": "steward-bench-peer",
        "system_database_url": os.environ["DBOS_SYSTEM_DATABASE_URL"],
        "executor_id": "bench",
    }
    DBOS(config=config)
    DBOS.launch()
    queue = DBOS.register_queue("bench", worker_concurrency=16, polling_interval_sec=0.01)
    queue.enqueue(task, time.perf_counter()).get_result()
    started = time.perf_counter()
    handles = [queue.enqueue(task, time.perf_counter()) for _ in range(TASKS)]
    for h in handles:
        h.get_result()
    tasks_per_s = TASKS / (time.perf_counter() - started)
    handles = []
    for i in range(max(RATE * 5, 100)):
        due = started + i / RATE
        started_wait = time.perf_counter()
        if i == 0:
            started = started_wait
            due = started
        if due > started_wait:
            time.sleep(due - started_wait)
        handles.append(queue.enqueue(task, time.perf_counter()))
    lat = sorted(h.get_result() for h in handles)
    out = {
        "peer": "dbos",
        "version": __import__("importlib.metadata").metadata.version("dbos"),
        "tasks": TASKS,
        "tasks_per_s": round(tasks_per_s),
        "dispatch_p50_ms": round(lat[len(lat) // 2], 3),
        "dispatch_p99_ms": round(lat[int(len(lat) * 0.99)], 3),
    }
    DBOS.destroy()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
