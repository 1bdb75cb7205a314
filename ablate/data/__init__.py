"""Datasets: the synthetic smoke set in ADE20K's layout, and a check of a real ADE20K tree.

- :mod:`ablate.data.synthetic` writes a tiny, deterministic dataset whose labels can be learned
  in a few dozen iterations (``ablate data synth``); the smoke profile makes it when missing.
- :mod:`ablate.data.check` says what is wrong with an ADEChallengeData2016 folder
  (``ablate data check``).
"""
from ablate.data.check import CheckReport, check_ade20k
from ablate.data.synthetic import META_FILE, default_root, ensure_synthetic, make_synthetic, read_meta

__all__ = ["META_FILE", "CheckReport", "check_ade20k", "default_root", "ensure_synthetic", "make_synthetic",
           "read_meta"]
