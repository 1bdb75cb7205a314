"""Shared test set-up: ablate's third-party patches go in before anything imports mmseg."""
import ablate.compat

ablate.compat.apply()
