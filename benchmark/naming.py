"""Names shared by the writers and readers of run folders: score-variant entries and saved figures."""

from __future__ import annotations


def variant_method(method: str, variant: str | None) -> str:
    """Leaderboard name of one scoring rule of a method: ``vae[combi]`` (``method`` itself without variants)."""
    return method if variant is None else f"{method}[{variant}]"


def qualitative_name(test_set: str, variant: str | None = None) -> str:
    """File name of a run's qualitative grid: ``qualitative_<test set>.png`` or
    ``qualitative_<test set>[<variant>].png``."""
    return f"qualitative_{test_set}.png" if variant is None else f"qualitative_{test_set}[{variant}].png"


def qualitative_arrays_name(test_set: str) -> str:
    """File name of a run's qualitative slices (``benchmark/qualitative.py``; every variant in one file):
    ``qualitative_<test set>.npz``."""
    return f"qualitative_{test_set}.npz"


# generative methods (``benchmark/generative.py`` writes them under a run's ``figures/``, the report reads them)
SAMPLES_PNG = "samples.png"  # a grid of the samples scored at test time
SAMPLES_GIF = "samples_training.gif"  # the fixed-noise grid over training
SAMPLE_FRAMES = "sample_frames"  # folder of the fixed-noise frames, ``step_<global step>.png``


def sample_frame_name(step: int) -> str:
    """File name of the fixed-noise sample grid at a global step."""
    return f"step_{step}.png"
