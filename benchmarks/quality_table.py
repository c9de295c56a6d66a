"""The FID and KID curves of several `benchmarks/quality.py --json` documents side by side, as
one markdown table (gpu_check.sh stylegan2-quality prints it): a row per run and scoring time.

    python benchmarks/quality_table.py .gpu/quality-*.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def rows(path: Path) -> list[str]:
    """The table's rows for one document, or one row saying why it has none."""
    try:
        doc = json.loads(path.read_text().strip().splitlines()[-1])
    except (OSError, ValueError, IndexError) as e:
        return [f"| {path.stem} | (no result: {type(e).__name__}; see {path.with_suffix('.log')}) "
                "| | | | | | |"]
    config = doc["config"]
    name = config.get("preset") or config["arch"]
    if config.get("discriminator") == "projected" and config.get("backbone_resolution"):
        name += f" (backbone {config['backbone_resolution']} px)"
    out = []
    for row in doc["rows"]:
        fid = row.get("fid")
        kid = row.get("kid")
        precision, recall = row.get("precision"), row.get("recall")
        out.append(f"| {name} | {row['seconds']:.0f} | {row['step']} | {row['images']:,} | "
                   f"{'' if fid is None else f'{fid:.2f}'} | "
                   f"{'' if kid is None else f'{kid * 1000:.2f}'} | "
                   f"{'' if precision is None else f'{precision:.3f}'} | "
                   f"{'' if recall is None else f'{recall:.3f}'} |")
    return out


def main(paths: list[str]) -> int:
    print("| run | training s | step | images | FID | KID x1000 | precision | recall |")
    print("|---|---|---|---|---|---|---|---|")
    for path in paths:
        for line in rows(Path(path)):
            print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
