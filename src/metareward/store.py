"""One iteration's manifest: which stages are done, with which settings, and what they produced.

The manifest (``IterationLayout.manifest``) holds, per stage: done, count, seconds and the hash of its
settings; plus the iteration's model in and out and its summary. It is rewritten whole and atomically
(``files.atomic_write_json``) after every change, so a kill leaves either the old manifest or the new.
Where the files live is ``metareward.layout``'s business; how generation survives a kill (chunk logs) is
``metareward.stages.chunks``'.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from metareward.errors import InputError
from metareward.files import atomic_write_json
from metareward.layout import CONFIG_FILE, IterationLayout


class IterationStore:
    """One iteration's folder (``layout``) and its manifest, read on construction (empty when absent).

    Opening a store creates nothing; the first ``save_manifest`` (or ``mark_done``) creates the folder."""

    def __init__(self, layout: IterationLayout):
        self.layout = layout
        self.iteration = layout.iteration
        self.manifest: dict[str, Any] = (
            json.loads(layout.manifest.read_text()) if layout.manifest.is_file() else {"stages": {}}
        )

    @property
    def dir(self) -> Path:
        return self.layout.dir

    def save_manifest(self) -> None:
        atomic_write_json(self.layout.manifest, self.manifest)

    def stage_done(self, stage: str, settings: str) -> bool:
        """True if ``stage`` finished with these settings. A finished stage whose settings changed is
        an error, not a silent recompute: its outputs cost compute and downstream stages used them."""
        entry = self.manifest["stages"].get(stage)
        if not entry or not entry.get("done"):
            return False
        if entry.get("settings") != settings:
            raise InputError(
                f"{self.dir}: stage '{stage}' already ran with different settings "
                f"(hash {entry.get('settings')} vs {settings} now). Use a new run_dir, or restore the "
                f"config it ran with (see {CONFIG_FILE} in the run directory)."
            )
        return True

    def mark_done(self, stage: str, settings: str, count: int, seconds: float, **extra: Any) -> None:
        self.manifest["stages"][stage] = {
            "done": True,
            "settings": settings,
            "count": count,
            "seconds": round(seconds, 3),
            **extra,
        }
        self.save_manifest()
