"""One JSON line per run folder of umodels11-run.sh (the report's ratios, validation and test accuracy, what slimmed):

    python benchmarks/results/autopilot-thirtyseventh/runs_table.py /tmp/s37/u11 > umodels11-runs.txt

A run that exported nothing is listed with the log's last "Error:" line."""
import json
import sys
from pathlib import Path

for log in sorted(Path(sys.argv[1]).glob("*-*.log")):
    name = log.stem
    if name.endswith("-dense"):
        continue
    report = log.with_suffix("") / "report.json"
    if not report.exists():
        error = [line for line in log.read_text().splitlines() if line.startswith("Error:")]
        print(name, json.dumps({"error": error[-1][:300] if error else "no report"}))
        continue
    r = json.loads(report.read_text())
    print(name, json.dumps({
        "params": r["params"]["ratio"], "flops_dense": r["flops"]["ratio"], "flops_nonzero": r["flops"]["nonzero_ratio"],
        "uncounted": r["flops"].get("uncounted_layers"),
        "val": [r["metric"]["before"], r["metric"]["after"]], "test": [r["test_metric"].get("before"),
                                                                        r["test_metric"].get("after")],
        "removed": (r.get("slim") or {}).get("removed"), "beta": (r.get("autopilot") or {}).get("beta_final")}))
