"""Run the performance workloads, each in a fresh process, and print one JSON document.

Usage::

    python -m benchmarks.run                      # every workload at its target size
    python -m benchmarks.run --only ingest,effects
    python -m benchmarks.run --quick              # small sizes, to check the harness

Each workload module ``benchmarks/bench_<name>.py`` has ``run(**params) -> dict`` and reports
its wall time against a floor measured in the same run (the machine is shared and noisy:
compare ratios, not seconds). Peak memory is the child process's ``ru_maxrss``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

WORKLOADS: dict[str, dict[str, dict[str, object]]] = {
    # name: {"full": params, "quick": params}
    "ingest": {"full": {"n_participants": 200_000}, "quick": {"n_participants": 5_000}},
    "effects": {"full": {"n_participants": 1_000_000}, "quick": {"n_participants": 20_000}},
    "privacy": {"full": {"n_participants": 200_000}, "quick": {"n_participants": 5_000}},
    "reliability": {"full": {"n_participants": 200_000}, "quick": {"n_participants": 5_000}},
    "growth": {"full": {}, "quick": {"sizes": [2_000], "latent_participants": 300}},
    "telemetry": {
        "full": {"n_events": 100_000_000, "n_participants": 200_000},
        "quick": {"n_events": 1_000_000, "n_participants": 5_000},
    },
}

_CHILD = """
import json, resource, sys, time
import importlib
params = json.loads(sys.argv[2])
mod = importlib.import_module("benchmarks.bench_" + sys.argv[1])
t0 = time.perf_counter()
result = mod.run(**params)
result.setdefault("workload_wall_s", round(time.perf_counter() - t0, 3))
result["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
print("@@RESULT@@" + json.dumps(result))
"""


def _machine() -> dict[str, object]:
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
    }


def run_workload(name: str, params: dict[str, object]) -> dict[str, object]:
    """Run one workload in a child process; return its JSON result (or the error)."""
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, name, json.dumps(params)],
        capture_output=True, text=True,
    )
    for line in proc.stdout.splitlines():
        if line.startswith("@@RESULT@@"):
            result = json.loads(line.removeprefix("@@RESULT@@"))
            result["process_wall_s"] = round(time.perf_counter() - t0, 3)
            result["params"] = params
            return result
    return {"error": proc.stderr.strip().splitlines()[-5:], "params": params}


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run the chosen workloads and print the JSON document."""
    ap = argparse.ArgumentParser(prog="python -m benchmarks.run")
    ap.add_argument("--only", help="comma-separated workloads: " + ",".join(WORKLOADS))
    ap.add_argument("--quick", action="store_true", help="small sizes (harness check)")
    ap.add_argument("--participants", type=int, help="override n_participants")
    ap.add_argument("--out", help="also write the JSON to this file")
    args = ap.parse_args(argv)
    names = args.only.split(",") if args.only else list(WORKLOADS)
    unknown = [n for n in names if n not in WORKLOADS]
    if unknown:
        ap.error(f"unknown workloads {unknown}; known: {', '.join(WORKLOADS)}")
    doc: dict[str, object] = {"machine": _machine(), "started": time.strftime("%FT%TZ", time.gmtime()),
                              "workloads": {}}
    for name in names:
        params = dict(WORKLOADS[name]["quick" if args.quick else "full"])
        if args.participants and "n_participants" in params:
            params["n_participants"] = args.participants
        print(f"running {name} {params} ...", file=sys.stderr)
        doc["workloads"][name] = run_workload(name, params)  # type: ignore[index]
    text = json.dumps(doc, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
