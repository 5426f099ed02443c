"""Copy a finished sweep folder to a committable reference (``results/reference/<name>/``), without checkpoints.

    python experiments/export_reference.py results/converged/converged results/reference/converged

Copied: ``leaderboard.csv``, ``report.md``, the report's ``figures/``, and of each run its ``metrics.json``,
``subject_counts.npz`` (so that the leaderboard's intervals can be rebuilt), ``job.json``, ``config.yaml`` and the
run figures the report links to. Checkpoints, TensorBoard logs, curves and job logs stay behind. The destination is
replaced. Exit code 2, naming the file, when the sweep has no leaderboard or report yet.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
from pathlib import Path

SWEEP_FILES = ("leaderboard.csv", "report.md")
RUN_FILES = ("metrics.json", "subject_counts.npz", "job.json", "config.yaml")
LINK = re.compile(r"\]\(([^)\s]+)\)")


def linked_files(report: Path) -> set[str]:
    """Relative paths of the files ``report`` links to (markdown links, web addresses excluded)."""
    return {link for link in LINK.findall(report.read_text()) if "://" not in link and not link.startswith("#")}


def export(sweep: Path, destination: Path) -> list[Path]:
    """Copy the committable part of ``sweep`` to ``destination`` (replaced); returns the files written."""
    missing = [sweep / name for name in SWEEP_FILES if not (sweep / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{missing[0]}: not found; is the sweep finished (its leaderboard and report "
                                "are written when it ends)?")
    if destination.exists():
        shutil.rmtree(destination)
    destination.mkdir(parents=True)
    wanted = set(SWEEP_FILES) | linked_files(sweep / "report.md")
    for run in sorted(sweep.glob("runs/*/*/seed_*")):
        wanted |= {str(path.relative_to(sweep)) for name in RUN_FILES if (path := run / name).is_file()}
    if (sweep / "figures").is_dir():
        wanted |= {str(path.relative_to(sweep)) for path in (sweep / "figures").rglob("*") if path.is_file()}
    written = []
    for relative in sorted(wanted):
        source = sweep / relative
        if source.is_file():
            target = destination / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
            written.append(target)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep", type=Path, help="a sweep folder, e.g. results/converged/converged")
    parser.add_argument("destination", type=Path, help="e.g. results/reference/converged")
    args = parser.parse_args(argv)
    try:
        written = export(args.sweep, args.destination)
    except FileNotFoundError as error:
        print(error, file=sys.stderr)
        return 2
    size = sum(path.stat().st_size for path in written) / 1e6
    print(f"{len(written)} files ({size:.1f} MB) written to {args.destination}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
