"""The forkserver's preload (see :mod:`ablate.launch.preload`): importing this module warms it up.

A warm-up that fails leaves the server cold rather than broken: each forked worker then imports
what it needs itself, and an import error shows in that run's ``worker.log``.
"""
from ablate.launch.preload import warm_up

try:
    warm_up()
except Exception:  # noqa: BLE001, S110 - see the module doc
    pass
