"""The Restate server as the engine benchmark's peer: invocations of no-op durable steps.

The same shape as `steward bench engine` and the DBOS peer: RUNS concurrent invocations of a
handler that takes STEPS durable steps (`ctx.run`), steps a second over all of them; and the
time one step adds on an idle system. The Restate server (its official Linux binary, from the
npm package @restatedev/restate-server, at RESTATE_SERVER) runs with its default configuration in
a fresh base directory; the service is this file, served by Hypercorn in a child process and
registered with the server's admin API. Run by bench/run engine; the last line printed is one
JSON object. Needs `pip install restate-sdk hypercorn httpx`.
"""
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import restate

RUNS = int(os.environ.get("PEER_RUNS", "200"))
STEPS = int(os.environ.get("PEER_STEPS", "51"))
INGRESS = "http://127.0.0.1:8080"
ADMIN = "http://127.0.0.1:9070"
SERVICE_PORT = 9080

bench = restate.Service("Bench")


def no_op(i: int) -> int:
    return i


def now() -> float:
    return time.perf_counter()


@bench.handler()
async def steps(ctx: restate.Context, n: int) -> int:
    total = 0
    for i in range(n):
        total += await ctx.run_typed(f"s{i}", no_op, restate.RunOptions(), i)
    return total


@bench.handler()
async def timed(ctx: restate.Context, n: int) -> list:
    # The time between one step's body and the next's: what durably recording a step costs.
    marks = []
    for i in range(n):
        marks.append(await ctx.run_typed(f"t{i}", now, restate.RunOptions()))
    return marks


app = restate.app([bench])


def wait_for(url: str, deadline_s: float) -> None:
    import httpx

    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"{url} did not answer within {deadline_s} s")


async def drive() -> dict:
    import httpx

    limits = httpx.Limits(max_connections=RUNS, max_keepalive_connections=RUNS)
    async with httpx.AsyncClient(base_url=INGRESS, timeout=120, limits=limits) as client:

        async def call(handler: str, n: int):
            r = await client.post(f"/Bench/{handler}", json=n)
            r.raise_for_status()
            return r.json()

        await call("steps", 3)  # warm up
        gaps = []
        for _ in range(5):
            marks = await call("timed", STEPS)
            gaps.extend((b - a) * 1000 for a, b in zip(marks, marks[1:]))
        gaps.sort()
        started = time.perf_counter()
        await asyncio.gather(*(call("steps", STEPS) for _ in range(RUNS)))
        took = time.perf_counter() - started
    return {
        "peer": "restate",
        "runs": RUNS,
        "steps_per_run": STEPS,
        "steps_per_s": round(RUNS * STEPS / took),
        "p50_ms": round(statistics.median(gaps), 3),
        "p99_ms": round(gaps[int(len(gaps) * 0.99) - 1], 3),
    }


def main() -> None:
    import httpx

    server_bin = os.environ["RESTATE_SERVER"]
    base = tempfile.mkdtemp(prefix="restate-bench-")
    procs = []
    try:
        procs.append(
            subprocess.Popen(
                [server_bin, "--base-dir", base, "--no-logo", "--listen-mode", "tcp",
                 "--log-filter", "warn"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "hypercorn", "--bind", f"127.0.0.1:{SERVICE_PORT}",
                 "--log-level", "warning", "restate_engine:app"],
                cwd=os.path.dirname(os.path.abspath(__file__)),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        wait_for(f"{ADMIN}/health", 60)
        wait_for(f"http://127.0.0.1:{SERVICE_PORT}/health", 60)
        r = httpx.post(f"{ADMIN}/deployments",
                       json={"uri": f"http://127.0.0.1:{SERVICE_PORT}"}, timeout=30)
        r.raise_for_status()
        wait_for(f"{INGRESS}/restate/health", 60)
        result = asyncio.run(drive())
        result["version"] = subprocess.run(
            [server_bin, "--version"], capture_output=True, text=True
        ).stdout.strip().split()[-1]
        print(json.dumps(result))
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
