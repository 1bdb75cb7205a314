"""ablate: ablation studies for semantic segmentation on MMSegmentation.

A study file names a base mmengine config and the variants to compare; ablate resolves each
variant into a config, trains and evaluates it, measures Params and FLOPs, and reports the
comparison against the baseline and the paper. ``ablate --help`` lists the commands.

The stages, in the order data flows through them (each reads what the one before wrote to disk):

==========================  ================================================================
``ablate.study``            study files -> :class:`~ablate.study.Study` (validated, file:line errors)
``ablate.configs``          (variant, profile, seed) -> mmengine Config; overrides checked; run keys
``ablate.launch``           runs -> workers (local pool, torchrun, Slurm); ``orchestrate`` decides
``ablate.train``            the worker: one run folder -> a trained, evaluated run
``ablate.collect``          run folders -> one row per run (a pandas DataFrame), Params/FLOPs
``ablate.results``          rows -> per-variant statistics (pandas; the notebook API)
``ablate.report``           results -> markdown, CSV, LaTeX, JSON, plot
``ablate.measure``          a config's model -> Params, MACs (counter, model, cache), latency
``ablate.evaluate``         a checkpoint (0.x renamed by ``ablate.convert``) -> its mIoU, beside the runs
``ablate.tracking``         W&B; the only module that imports ``wandb``
==========================  ================================================================

Every stage reads and writes run folders through :mod:`ablate.runs` (layout, typed records,
lock, :func:`~ablate.runs.read_state`), which imports no stage; ``ablate.errors``, ``ablate.io``
and ``ablate.display`` are leaf helpers; ``ablate.compat`` is the one place that patches
third-party code. ``freqfusion`` is reached only through mmseg's registry, and imports nothing
of ablate.

Where this differs from the design card (``DESIGN.md``): run folders got a package of their own
(``ablate/runs/``) instead of living in the launch wing; ``ablate.measure`` is a package split by
job; the local and torchrun launchers share ``ablate/launch/pool.py`` instead of one subclassing
the other; workers are fresh interpreters (the preloaded forkserver of earlier versions saved
seconds per smoke run only, and is gone).
"""
__version__ = "0.1.0"
