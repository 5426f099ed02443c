"""Leaderboard of a sweep: one row per method x dataset x test set, every metric as mean and std over seeds.

Input: ``<sweep>/runs/<dataset>/<method>/seed_<n>/metrics.json`` (schema ``normbench.metrics/2``, one per job).
A run of a method with score variants (``variants`` in its metrics.json, e.g. the VAE's ``rec``, ``grad_kl``,
``combi``) gives one leaderboard entry per variant, named ``<method>[<variant>]``.
Output: ``<sweep>/leaderboard.csv``, rewritten atomically under a file lock so that runner processes finishing at
the same time never leave a torn file. Columns, in this order:

* ``method, dataset, test_set, rank, n_seeds, seeds, status, failures``: ``rank`` 1 = best within dataset x test
  set by the primary metric's mean (higher is better; empty where that mean is NaN; with comma-separated
  fallbacks such as ``pixel/auprc,sample/vs_healthy/auroc`` the first with a finite mean in that dataset x test
  set, see :func:`group_primary`); ``n_seeds`` / ``seeds``: the
  completed seeds behind the numbers; ``status``: ``completed``, ``partial: 1/3 failed`` or ``failed``.
  A method x dataset whose every seed failed keeps one row, test set ``-``, with its failures.
* ``beats_random, p_vs_random``: the paired subject-bootstrap test of this entry against the entry named
  ``random`` of the same dataset x test set on that group's rank metric (:func:`group_primary`):
  ``p_vs_random = (1 + #{b : T_entry(b) - T_random(b) <= 0}) / (B + 1)`` over the bootstrap replicates ``b``
  (:mod:`benchmark.metrics.bootstrap`), ``beats_random`` ``true`` when ``p < alpha`` (0.05), else ``false``;
  ``n.a.`` (and an empty p) for ``random`` itself, without a ``random`` entry, for a rank metric without
  per-subject counts (sample-level metrics such as ``sample/vs_healthy/auroc``; runs without
  ``subject_counts.npz``) or undefined on this test set (no lesion pixels).
* ``<metric>:mean, <metric>:std`` for every metric of :func:`flatten_metrics` (``pixel/auprc``,
  ``calibrated/healthy_fpr@5%/dice``, ``lesion_size/small/best_dice[oracle_test]``, ...); std is the sample std
  (ddof 1), NaN with one seed. A null (undefined) value in any seed makes the mean NaN: no metric is averaged
  over fewer seeds than ``n_seeds`` says. ``pixel/auroc``, ``pixel/auprc`` and every ``calibrated/<t>/dice`` are
  followed by ``<metric>:ci_low, <metric>:ci_high``: the 95 % percentile interval of the two-level bootstrap
  (seeds and test subjects drawn with replacement, the mean over drawn seeds of each seed's metric on the pooled
  counts of the drawn subjects; :mod:`benchmark.metrics.bootstrap`) from each run's ``subject_counts.npz``; NaN
  when a seed has no such file (older runs) or the metric is undefined.
* ``wall_time_s, train_time_s, test_time_s, n_parameters, train_images_per_s, inference_images_per_s``: means
  over the completed seeds (over the failed ones when none completed), of the values present.
* ``generative/ssim_max, generative/ssim_mean, generative/ssim_min``: a generative method's sample quality
  (``metrics.json``'s ``generative``: the max / mean / min over its samples of each sample's best SSIM against the
  held-out healthy images, see ``benchmark/metrics/generative.py``), per run, so the same on every test set row and
  every score variant of the run; means over the completed seeds that report them, NaN for other methods.
* ``precision, devices, evaluation (profile name), postprocessing, normative/feature_extractor (the features of
  AHI's Frechet distances), normative/rqi_reading (bercea_v1 or mae), version/torch, version/pytorch-lightning,
  version/normbench, schema``: as recorded by the runs (distinct values joined with ``;`` if seeds disagree).
"""

from __future__ import annotations

import json
import math
import os
import re
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from filelock import FileLock

from benchmark.io import atomic_write_text
from benchmark.metrics.bootstrap import (
    DEFAULT_RESAMPLING,
    PIXEL_METRICS,
    Resampling,
    combine_seeds,
    paired_p_value,
    percentile_interval,
    replicate_metrics,
    seed_weights,
    subject_weights,
)
from benchmark.metrics.subject_counts import SUBJECT_COUNTS_NAME, SubjectCounts, read_subject_counts
from benchmark.naming import variant_method

RUN_PATTERN = "runs/*/*/seed_*/metrics.json"
LEADERBOARD_NAME = "leaderboard.csv"
NO_TEST_SET = "-"
ORACLE_SUFFIX = "[oracle_test]"  # best Dice: threshold chosen on the test labels (an upper bound)
SKIPPED_KEYS = frozenset({"notes", "score_distribution"})
ID_COLUMNS = ("method", "dataset", "test_set", "rank", "n_seeds", "seeds", "status", "failures")
TEST_COLUMNS = ("beats_random", "p_vs_random")
INTERVAL_STATS = ("ci_low", "ci_high")
REFERENCE_METHOD = "random"  # the entry every other entry is tested against
NOT_AVAILABLE = "n.a."
RUN_COLUMNS = ("wall_time_s", "train_time_s", "test_time_s", "n_parameters", "train_images_per_s",
               "inference_images_per_s")
GENERATIVE_COLUMNS = ("generative/ssim_max", "generative/ssim_mean", "generative/ssim_min")  # metrics["generative"]
INFO_COLUMNS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("precision", ("run", "precision")),
    ("devices", ("run", "devices")),
    ("evaluation", ("evaluation", "profile")),  # the evaluation profile name
    ("postprocessing", ("evaluation", "postprocessing")),
    ("normative/feature_extractor", ("normative", "feature_extractor")),  # AHI's features (null: no normative)
    ("normative/rqi_reading", ("normative", "rqi_reading")),  # bercea_v1 (LPIPS) or mae
    ("version/torch", ("versions", "torch")),
    ("version/pytorch-lightning", ("versions", "pytorch-lightning")),
    ("version/normbench", ("versions", "normbench")),
    ("schema", ("schema",)),
)
MESSAGE_CHARS = 160


# ---- reading runs ---------------------------------------------------------------------------------------------
def _seed(name: str) -> int | str:
    suffix = name.removeprefix("seed_")
    return int(suffix) if re.fullmatch(r"\d+", suffix) else suffix


def _identity(path: Path) -> dict[str, Any]:
    """Dataset, method and seed from ``runs/<dataset>/<method>/seed_<n>/metrics.json``."""
    return {"dataset": path.parts[-4], "method": path.parts[-3], "seed": _seed(path.parts[-2])}


def _sort_key(run: dict[str, Any]) -> tuple[str, str, int, int | str]:
    seed = run["seed"]
    return str(run["dataset"]), str(run["method"]), int(not isinstance(seed, int)), seed


def _unreadable(path: Path, error: Exception) -> dict[str, Any]:
    return {**_identity(path), "schema": None, "status": "failed", "run": {}, "run_dir": str(path.parent),
            "error": {"type": type(error).__name__, "message": f"unreadable {path.name}: {error}"}}


def _read_run(path: Path) -> dict[str, Any]:
    """One parsed metrics.json; an unreadable or malformed one becomes a failed run naming the problem."""
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict):
            raise ValueError(f"expected a JSON object, got {type(data).__name__}")
        if data.get("status") == "completed" and not isinstance(data.get("test_sets"), dict):
            raise ValueError("status is 'completed' but there is no test_sets mapping")
    except (OSError, ValueError) as error:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return _unreadable(path, error)
    return {**_identity(path), **data, "run_dir": str(path.parent)}


def sweep_root(sweep_dir: str | Path) -> Path:
    root = Path(sweep_dir)
    if not root.is_dir():
        raise ValueError(f"{root}: no such sweep folder")
    return root


def split_variants(record: dict[str, Any]) -> dict[str | None, dict[str, Any]]:
    """A completed record with ``variants`` as ``{variant: record}`` (that variant's ``test_sets`` and
    ``calibration``, ``method`` renamed ``<method>[<variant>]``, the rest shared); ``{None: record}`` otherwise."""
    variants = record.get("variants") if record.get("status") == "completed" else None
    if not isinstance(variants, dict) or not variants:
        return {None: record}
    return {name: {**record, "method": variant_method(str(record.get("method")), name), "variant": name,
                   "test_sets": entry.get("test_sets") or {}, "calibration": entry.get("calibration")}
            for name, entry in variants.items() if isinstance(entry, dict)}


def expand_variants(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One record per score variant (:func:`split_variants`); a failed run of a method whose other runs have
    variants is repeated under each of those names, so every variant's row counts the failure."""
    known: dict[tuple[str, str], list[str]] = {}
    for run in runs:
        if run.get("status") == "completed" and isinstance(run.get("variants"), dict):
            names = known.setdefault((str(run["dataset"]), str(run["method"])), [])
            names += [name for name in run["variants"] if name not in names]
    expanded = []
    for run in runs:
        if run.get("status") != "completed" and (names := known.get((str(run["dataset"]), str(run["method"])))):
            expanded += [{**run, "method": variant_method(str(run["method"]), name), "variant": name}
                         for name in names]
        else:
            expanded += split_variants(run).values()
    return expanded


def collect_runs(sweep_dir: str | Path) -> list[dict[str, Any]]:
    """Parsed ``metrics.json`` of every run folder of a sweep, sorted by dataset, method and seed.

    Each record is the file's content plus ``run_dir``; dataset, method and seed fall back on the folder names.
    A method with score variants gives one record per variant (:func:`expand_variants`)."""
    paths = sweep_root(sweep_dir).glob(RUN_PATTERN)  # a pattern relative to the root: brackets in it are literal
    return sorted(expand_variants([_read_run(path) for path in paths]), key=_sort_key)


# ---- flattening -----------------------------------------------------------------------------------------------
def _number(value: Any) -> float | None:
    """A metric value as float (null -> NaN), or None for what is not a metric (strings, lists, booleans)."""
    if value is None:
        return math.nan
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else math.nan


def _metric_name(path: tuple[str, ...]) -> str:
    name = "/".join(path)
    return name + ORACLE_SUFFIX if path[-1] == "best_dice" else name


def _flatten(node: dict[str, Any], path: tuple[str, ...], out: dict[str, float]) -> None:
    for key, value in node.items():
        if key in SKIPPED_KEYS:
            continue
        if isinstance(value, dict):
            _flatten(value, path if key == "bins" else (*path, str(key)), out)
            continue
        number = _number(value)
        if number is not None:
            out[_metric_name((*path, str(key)))] = number


def flatten_metrics(test_set_result: dict[str, Any]) -> dict[str, float]:
    """Every number of one test set's nested result as ``"pixel/auroc"``, ``"lesion_size/small/auprc"``, ...

    Null becomes NaN (an undefined metric, never 0). Notes, score distributions, strings and lists (bin edges)
    are left out; ``lesion_size/bins/<bin>`` is shortened to ``lesion_size/<bin>``. Oracle best Dice columns get
    the suffix ``[oracle_test]``; calibrated ones carry their ``healthy_fpr@p`` threshold in the name."""
    out: dict[str, float] = {}
    _flatten(test_set_result, (), out)
    return out


def metric_names(runs: Iterable[dict[str, Any]]) -> list[str]:
    """Flattened metric names of the completed runs, in order of first appearance."""
    names: dict[str, None] = {}
    for run in runs:
        if run.get("status") == "completed":
            for result in run["test_sets"].values():
                names.update(dict.fromkeys(flatten_metrics(result)))
    return list(names)


def primary_metrics(primary: str) -> list[str]:
    """``"pixel/auprc,sample/vs_healthy/auroc"`` -> the rank metrics in order of preference (``:mean`` dropped)."""
    return [part.strip().removesuffix(":mean") for part in primary.split(",") if part.strip()]


def check_primary(primary: str, names: list[str]) -> str:
    """The primary metric(s), comma-separated fallbacks allowed (a trailing ``:mean`` is accepted); ValueError
    listing the available names if one is unknown."""
    wanted = primary_metrics(primary)
    unknown = [name for name in wanted if name not in names]
    if unknown or not wanted:
        raise ValueError(f"primary metric {primary!r} is not among the metrics of this sweep; "
                         f"available: {', '.join(names) or 'none'}")
    return ",".join(wanted)


def group_primary(block: pd.DataFrame, primary: str) -> str:
    """The rank metric of one dataset x test set: the first of ``primary``'s metrics with a finite mean there
    (so ``pixel/auprc,sample/vs_healthy/auroc`` ranks lesion sets by pixel AUPRC and a sample-level dataset by its
    sample AUROC against the healthy set); the first one when none is finite."""
    wanted = primary_metrics(primary)
    for name in wanted:
        column = f"{name}:mean"
        if column in block and pd.to_numeric(block[column], errors="coerce").notna().any():
            return name
    return wanted[0]


# ---- aggregation ----------------------------------------------------------------------------------------------
def _status(n_failed: int, n_runs: int) -> str:
    if n_failed == 0:
        return "completed"
    return "failed" if n_failed == n_runs else f"partial: {n_failed}/{n_runs} failed"


def _failure(run: dict[str, Any]) -> str:
    """``seed 1: ValueError: first line of the message`` (shortened)."""
    error = run.get("error") if isinstance(run.get("error"), dict) else {}
    kind = error.get("type") or f"status {run.get('status')!r}"
    message = (str(error.get("message") or "").strip().splitlines() or [""])[0]
    if len(message) > MESSAGE_CHARS:
        message = message[:MESSAGE_CHARS - 3] + "..."
    return f"seed {run['seed']}: {kind}: {message}" if message else f"seed {run['seed']}: {kind}"


def _lookup(run: dict[str, Any], path: tuple[str, ...]) -> Any:
    value: Any = run
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    return value.get("name") if isinstance(value, dict) else value  # postprocessing: {name, ...}


def _mean_present(runs: list[dict[str, Any]], path: tuple[str, ...]) -> float:
    """Mean of the finite numbers at ``path`` over the runs that have one (NaN when none has)."""
    values = [_number(_lookup(run, path)) for run in runs]
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(finite)) if finite else math.nan


def _run_columns(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Run bookkeeping: numbers averaged over the runs that report them, strings as their distinct values."""
    row: dict[str, Any] = {}
    for column in RUN_COLUMNS:
        row[column] = _mean_present(runs, ("run", column))
    for column in GENERATIVE_COLUMNS:
        row[column] = _mean_present(runs, tuple(column.split("/")))
    for column, path in INFO_COLUMNS:
        values = [_lookup(run, path) for run in runs]
        row[column] = ";".join(dict.fromkeys(str(v) for v in values if v is not None)) or None
    return row


def _aggregate(flat: list[dict[str, float]], names: list[str]) -> dict[str, float]:
    """``<name>:mean`` and ``<name>:std`` (ddof 1) over seeds; NaN in any seed keeps the mean NaN."""
    values = np.array([[f.get(name, math.nan) for name in names] for f in flat], dtype=np.float64)
    means = values.mean(axis=0)
    stds = values.std(axis=0, ddof=1) if len(flat) > 1 else np.full(len(names), math.nan)
    row: dict[str, float] = {}
    for name, mean, std in zip(names, means.tolist(), stds.tolist(), strict=True):
        row[f"{name}:mean"], row[f"{name}:std"] = mean, std
    return row


# ---- subject bootstrap ----------------------------------------------------------------------------------------
def interval_metrics(names: Iterable[str]) -> list[str]:
    """The metrics with bootstrap intervals: pixel AUROC / AUPRC and the pooled Dice at each calibrated threshold."""
    return [name for name in names if name in PIXEL_METRICS or re.fullmatch(r"calibrated/[^/]+/dice", name)]


@dataclass(frozen=True)
class EntryReplicates:
    """The bootstrap replicates ``{metric: [B]}`` of one entry x dataset x test set, and its test subjects."""

    subjects: tuple[str, ...]
    values: dict[str, np.ndarray]


SeedReplicates = tuple[tuple[str, ...], dict[str, np.ndarray]]  # one run's test subjects and replicate metrics
_SEED_CACHE: OrderedDict[tuple[Any, ...], SeedReplicates | None] = OrderedDict()
SEED_CACHE_SIZE = 1024  # runs x variants x test sets kept across builds (about 40 KB each with B = 1000)


class SubjectBootstrap:
    """The two-level bootstrap of every entry from its runs' ``subject_counts.npz``.

    Each run's replicate metrics (on the shared subject draws) are kept in a small in-process cache keyed by the
    file's path, size and modification time, so a sweep runner that rebuilds the leaderboard after every job only
    resamples the new runs."""

    def __init__(self, resampling: Resampling = DEFAULT_RESAMPLING) -> None:
        self.resampling = resampling
        self.entries: dict[tuple[str, str, str], EntryReplicates] = {}  # (dataset, test set, method)
        self._files: dict[Path, dict[tuple[str | None, str], SubjectCounts] | None] = {}
        self._weights: dict[int, np.ndarray] = {}

    def _subject_weights(self, n_subjects: int) -> np.ndarray:
        if n_subjects not in self._weights:
            self._weights[n_subjects] = subject_weights(n_subjects, self.resampling)
        return self._weights[n_subjects]

    def _compute(self, path: Path, run: dict[str, Any], test_set: str) -> SeedReplicates | None:
        if path not in self._files:  # read once per build, whatever the variants and test sets
            self._files[path] = read_subject_counts(path, run.get("key"))
        counts = (self._files[path] or {}).get((run.get("variant"), test_set))
        if counts is None or not counts.subjects:
            return None
        return counts.subjects, replicate_metrics(counts, self._subject_weights(len(counts.subjects)))

    def _seed(self, run: dict[str, Any], test_set: str) -> SeedReplicates | None:
        """One run's replicate metrics on one test set (``None`` without counts)."""
        path = Path(run["run_dir"]) / SUBJECT_COUNTS_NAME
        try:
            stat = path.stat()
        except OSError:
            return None
        key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size, run.get("key"), run.get("variant"), test_set,
               self.resampling)
        if key in _SEED_CACHE:
            _SEED_CACHE.move_to_end(key)
            return _SEED_CACHE[key]
        value = _SEED_CACHE[key] = self._compute(path, run, test_set)
        while len(_SEED_CACHE) > SEED_CACHE_SIZE:
            _SEED_CACHE.popitem(last=False)
        return value

    def add(self, runs: list[dict[str, Any]], dataset: str, test_set: str, method: str) -> dict[str, np.ndarray]:
        """The replicates of one entry from its completed runs (``{}`` unless every run has counts of the same
        subjects for this test set); kept in :attr:`entries` for the paired tests."""
        seeds = [self._seed(run, test_set) for run in runs]
        if not seeds or any(seed is None for seed in seeds):
            return {}
        subjects = seeds[0][0]
        if any(seed[0] != subjects for seed in seeds):
            return {}
        values = combine_seeds([seed[1] for seed in seeds], seed_weights(len(seeds), method, self.resampling))
        self.entries[dataset, test_set, method] = EntryReplicates(subjects, values)
        return values

    def intervals(self, values: dict[str, np.ndarray], names: list[str]) -> dict[str, float]:
        """``<metric>:ci_low`` / ``:ci_high`` of every interval metric (NaN without replicates)."""
        row: dict[str, float] = {}
        for name in names:
            low, high = (percentile_interval(values[name], self.resampling.alpha) if name in values
                         else (math.nan, math.nan))
            row[f"{name}:ci_low"], row[f"{name}:ci_high"] = low, high
        return row

    def test(self, dataset: str, test_set: str, method: str, metric: str) -> float:
        """p-value of the paired test of ``method`` against ``random`` on ``metric`` (NaN: not available)."""
        entry = self.entries.get((dataset, test_set, method))
        reference = self.entries.get((dataset, test_set, REFERENCE_METHOD))
        if method == REFERENCE_METHOD or entry is None or reference is None or entry.subjects != reference.subjects:
            return math.nan
        if metric not in entry.values or metric not in reference.values:
            return math.nan
        return paired_p_value(entry.values[metric], reference.values[metric])


def _random_tests(frame: pd.DataFrame, primary: str | None, bootstrap: SubjectBootstrap) -> pd.DataFrame:
    """``beats_random`` and ``p_vs_random`` of every row, on each dataset x test set's rank metric."""
    tests = pd.DataFrame({"beats_random": NOT_AVAILABLE, "p_vs_random": math.nan}, index=frame.index)
    if primary is None or frame.empty:
        return tests
    for (dataset, test_set), block in frame.groupby(["dataset", "test_set"]):
        metric = group_primary(block, primary)
        for index, method in block["method"].items():
            p = bootstrap.test(str(dataset), str(test_set), str(method), metric)
            if math.isfinite(p):
                tests.loc[index] = ["true" if p < bootstrap.resampling.alpha else "false", p]
    return tests


def _group_rows(runs: list[dict[str, Any]], names: list[str], bootstrap: SubjectBootstrap) -> list[dict[str, Any]]:
    """Rows of one method x dataset (its runs sorted by seed)."""
    completed = [run for run in runs if run.get("status") == "completed"]
    failed = [run for run in runs if run.get("status") != "completed"]
    common = {"method": str(runs[0]["method"]), "dataset": str(runs[0]["dataset"]),
              "status": _status(len(failed), len(runs)), "failures": " | ".join(_failure(r) for r in failed) or None}
    if not completed:
        return [{**common, "test_set": NO_TEST_SET, "n_seeds": 0, "seeds": None, **_run_columns(failed)}]
    test_sets = dict.fromkeys(name for run in completed for name in run["test_sets"])
    rows = []
    for test_set in test_sets:
        having = [run for run in completed if test_set in run["test_sets"]]
        flat = [flatten_metrics(run["test_sets"][test_set]) for run in having]
        replicates = bootstrap.add(having, common["dataset"], str(test_set), common["method"])
        rows.append({**common, "test_set": str(test_set), "n_seeds": len(having),
                     "seeds": ";".join(str(run["seed"]) for run in having), **_aggregate(flat, names),
                     **bootstrap.intervals(replicates, interval_metrics(names)), **_run_columns(having)})
    return rows


def _ranks(frame: pd.DataFrame, primary: str | None) -> pd.Series:
    ranks = pd.Series(pd.NA, index=frame.index, dtype="Int64")
    if primary is None or frame.empty:
        return ranks
    for _, block in frame.groupby(["dataset", "test_set"]):
        metric = group_primary(block, primary)
        ranks.loc[block.index] = block[f"{metric}:mean"].rank(ascending=False, method="min").astype("Int64")
    return ranks


def columns(names: list[str]) -> list[str]:
    """The leaderboard's column order for these metric names."""
    with_intervals = set(interval_metrics(names))
    stats = [f"{name}:{stat}" for name in names
             for stat in ("mean", "std", *(INTERVAL_STATS if name in with_intervals else ()))]
    return [*ID_COLUMNS, *TEST_COLUMNS, *stats, *RUN_COLUMNS, *GENERATIVE_COLUMNS,
            *(column for column, _ in INFO_COLUMNS)]


def build_leaderboard(sweep_dir: str | Path, primary: str = "pixel/auprc") -> pd.DataFrame:
    """One row per method x dataset x test set of a sweep folder (see the module docstring for the columns).

    ValueError when the folder holds no run, or the primary metric is not among the metrics of the completed
    runs (a sweep without any completed run gets a leaderboard of its failures and no ranks)."""
    runs = collect_runs(sweep_dir)
    if not runs:
        raise ValueError(f"{sweep_dir}: no run folder with a metrics.json ({RUN_PATTERN})")
    names = metric_names(runs)
    checked = check_primary(primary, names) if names else None
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for run in runs:
        groups.setdefault((str(run["dataset"]), str(run["method"])), []).append(run)
    bootstrap = SubjectBootstrap()
    rows = [row for group in groups.values() for row in _group_rows(group, names, bootstrap)]
    frame = pd.DataFrame(rows, columns=columns(names))
    frame["rank"] = _ranks(frame, checked)
    frame[list(TEST_COLUMNS)] = _random_tests(frame, checked, bootstrap)
    frame["n_seeds"] = frame["n_seeds"].astype("int64")
    frame = frame.sort_values(["dataset", "test_set", "rank", "method"], na_position="last", kind="stable")
    return frame.reset_index(drop=True)


# ---- files ----------------------------------------------------------------------------------------------------
def leaderboard_csv(frame: pd.DataFrame) -> str:
    """The CSV text of a leaderboard (NaN as an empty cell, floats written to round-trip exactly)."""
    return frame.to_csv(index=False, lineterminator="\n")


def read_leaderboard(path: str | Path) -> pd.DataFrame:
    """A leaderboard CSV back as a DataFrame (only empty cells are NaN: a method named ``NA`` stays a name)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: write it with `run_benchmark.py leaderboard SWEEP_DIR`")
    text_columns = {"method": str, "dataset": str, "test_set": str, "seeds": str, "status": str, "failures": str,
                    "beats_random": str}
    try:
        frame = pd.read_csv(path, keep_default_na=False, na_values=[""], dtype=text_columns)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: not a readable CSV file ({error})") from error
    missing = [column for column in ("method", "dataset", "test_set") if column not in frame.columns]
    if missing:
        raise ValueError(f"{path}: not a leaderboard (missing column(s) {missing})")
    return frame.copy()  # one block per dtype instead of one per column


def write_leaderboard(sweep_dir: str | Path, primary: str = "pixel/auprc") -> Path:
    """Build the leaderboard and write ``<sweep_dir>/leaderboard.csv``; returns its path.

    Built and written while holding ``leaderboard.csv.lock``, through a temporary file in the same folder renamed
    into place: concurrent writers take turns, the last one writes what is on disk by then, and a reader always
    sees a complete file."""
    root = sweep_root(sweep_dir)
    path = root / LEADERBOARD_NAME
    with FileLock(os.fspath(path) + ".lock"):
        atomic_write_text(path, leaderboard_csv(build_leaderboard(root, primary)))
    return path
