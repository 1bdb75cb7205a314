"""Params, FLOPs (multiply-accumulates) and latency of a study's models.

Reads resolved variant configs, builds each segmentor on the CPU without pretrained weights and
counts one forward pass of one image in inference mode. Writes one JSON file per model config
to a cache folder (``work_dirs/.measure``), so that ``collect`` and ``report`` never rebuild a
model. One module per job, each importing torch and mmseg only inside its functions, so that
importing this package stays light:

- ``counter``: :class:`MacCounter`, a ``TorchDispatchMode`` that books every operator's MACs by
  kind (conv, matmul, carafe, other); the counting conventions are in its docstring;
- ``model``: :func:`build_model` from a config, :func:`measure_model` (Params, MACs) and
  :func:`measure_latency`;
- ``cache``: :func:`measure_cached`, keyed by :func:`model_hash` (model config, input shape,
  source code of this package and of the config's ``custom_imports``, torch and mmseg versions);
- ``variants``: :func:`measure_study` over a study's variants and the table ``ablate measure``
  prints (:func:`render_measurements`).
"""
from ablate.measure.cache import default_cache_dir, measure_cached, model_hash
from ablate.measure.counter import KINDS, MacCount, MacCounter, count_macs
from ablate.measure.model import build_model, cpu_model, device_name, measure_config, measure_latency, measure_model
from ablate.measure.variants import measure_study, parse_shape, render_measurements, uncounted_note

__all__ = [
    "KINDS", "MacCount", "MacCounter", "build_model", "count_macs", "cpu_model", "default_cache_dir",
    "device_name", "measure_cached", "measure_config", "measure_latency", "measure_model", "measure_study",
    "model_hash", "parse_shape", "render_measurements", "uncounted_note",
]
