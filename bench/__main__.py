"""Run every benchmark (``make bench``): ``python -m bench [NAME ...]``.

Each ``bench/bench_<name>.py`` module is run in its own process (so one's memory and
servers never colour another's figures), writes ``bench-results/<name>.json`` and
prints its figures as ratios against baselines measured in the same run. This runner
then prints one summary line per target with PASS/MISS.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent
RESULTS = Path("bench-results")


def main(argv: list[str]) -> int:
    known = sorted(p.stem.removeprefix("bench_") for p in HERE.glob("bench_*.py"))
    if any(arg in ("-h", "--help") for arg in argv):
        print(__doc__)
        print(f"benchmarks: {', '.join(known)}")
        return 0
    unknown = [name for name in argv if name not in known]
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}; known: {', '.join(known)}")
        return 2
    names = argv or known
    failed = []
    for name in names:
        print(f"\n=== bench {name} ===", flush=True)
        code = subprocess.call([sys.executable, "-m", f"bench.bench_{name}"])
        if code != 0:
            failed.append(name)
    print("\n=== summary ===")
    for path in sorted(RESULTS.glob("*.json")):
        data = json.loads(path.read_text())
        for target in data.get("targets", []):
            mark = "PASS" if target.get("met") else "MISS"
            print(
                f"{mark}  {path.stem:12} {target['name']}: {target['value']:.3g} "
                f"(target {target['op']} {target['target']})"
            )
    if failed:
        print(f"benchmarks that failed to run: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
