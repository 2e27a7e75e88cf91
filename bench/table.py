"""bench/run all's table: this project's figures beside each peer's from the same run.

Arguments: the last JSON line of each benchmark. Prints a table, then all of them as one JSON
object (the last line).
"""
import json
import sys

results = {}
for arg in sys.argv[1:]:
    try:
        r = json.loads(arg)
    except ValueError:
        continue
    results[r.get("bench", "?")] = r


def get(d, *path):
    for p in path:
        if not isinstance(d, dict) or p not in d:
            return None
        d = d[p]
    return d


# (benchmark, what, ours, peer's name, theirs, higher is better)
rows = []
e = results.get("engine", {})
rows += [
    ("engine", "PostgreSQL steps/s", get(e, "postgres", "steps_per_s"), "DBOS", get(e, "dbos", "steps_per_s"), True),
    ("engine", "PostgreSQL ms a step (idle p50)", get(e, "postgres", "p50_ms"), "DBOS", get(e, "dbos", "p50_ms"), False),
    ("engine", "SQLite steps/s", get(e, "sqlite", "steps_per_s"), "Restate", get(e, "restate", "steps_per_s"), True),
    ("engine", "SQLite ms a step (idle p50)", get(e, "sqlite", "p50_ms"), "Restate", get(e, "restate", "p50_ms"), False),
]
g = results.get("gateway", {})
for peer in ("litellm", "portkey"):
    rows += [
        ("gateway", "added p50 ms at 500 req/s", get(g, "steward", "p50_added_ms"), peer, get(g, peer, "p50_added_ms"), False),
        ("gateway", "max req/s", get(g, "steward", "max_rps"), peer, get(g, peer, "max_rps"), True),
    ]
q = results.get("queue", {})
rows += [
    ("queue", "PostgreSQL tasks/s", get(q, "postgres", "tasks_per_s"), "DBOS", get(q, "dbos", "tasks_per_s"), True),
    ("queue", "PostgreSQL dispatch p99 ms", get(q, "postgres", "dispatch_p99_ms"), "DBOS", get(q, "dbos", "dispatch_p99_ms"), False),
    ("queue", "SQLite tasks/s", get(q, "sqlite", "tasks_per_s"), None, None, True),
]
b = results.get("sandbox", {})
rows += [
    ("sandbox", "cold start p50 ms", get(b, "cold_start_p50_ms"), "bubblewrap", get(b, "bwrap_p50_ms"), False),
]
t = results.get("tools", {})
rows += [
    # The peer is the upstream itself, called directly: the difference is what /mcp adds.
    ("tools", "call p50 ms (upstream direct)", get(t, "through_steward", "p50_ms"), "direct", get(t, "direct", "p50_ms"), False),
    ("tools", "p50 ms added by /mcp", get(t, "p50_added_ms"), None, None, False),
    ("tools", "calls/s through /mcp", get(t, "calls_per_s"), None, None, True),
]
m = results.get("memory", {})
rows += [
    # No peer runs here (Mem0, Zep and Letta write through a model API); their published
    # figures are in bench/README.md.
    ("memory", "search p95 ms at the full size", get(m, "search_p95_ms_100k"), None, None, False),
    ("memory", "fast-path write p50 ms", get(m, "write_p50_ms"), None, None, False),
    ("memory", "recall@10 hybrid", get(m, "recall_at_10", "hybrid"), None, None, True),
    ("memory", "recall@10 vector", get(m, "recall_at_10", "vector"), None, None, True),
    ("memory", "recall@10 full text", get(m, "recall_at_10", "bm25"), None, None, True),
]
c = results.get("console", {})
rows += [
    ("console", "spans/s ingested over OTLP", get(c, "ingest_spans_per_s"), None, None, True),
    ("console", "runs page p95 ms (100k runs)", get(c, "runs_page_p95_ms"), None, None, False),
    ("console", "run page p95 ms (1,000 steps)", get(c, "run_page_p95_ms"), None, None, False),
]


def fmt(x):
    if x is None:
        return "-"
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.3g}"


print(f"{'benchmark':<9} {'figure':<34} {'steward':>10} {'peer':<11} {'peer figure':>12} {'steward is':>14}")
for bench, what, ours, peer, theirs, higher in rows:
    ratio = "-"
    if ours and theirs:
        r = ours / theirs if higher else theirs / ours
        ratio = f"{r:.2f}x better" if r >= 1 else f"{1 / r:.2f}x worse"
    print(f"{bench:<9} {what:<34} {fmt(ours):>10} {peer or '-':<11} {fmt(theirs):>12} {ratio:>14}")
print(json.dumps({"bench": "all", "results": results}))
