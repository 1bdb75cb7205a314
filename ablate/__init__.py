"""ablate: ablation studies for semantic segmentation on MMSegmentation.

A study file names a base mmengine config and the variants to compare; ablate resolves each
variant into a config, trains and evaluates it, measures Params and FLOPs, and reports the
comparison against the baseline and the paper. ``ablate --help`` lists the commands.
"""
__version__ = "0.1.0"
