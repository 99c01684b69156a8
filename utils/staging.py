"""Outputs written under temporary names and renamed into place together, once everything has worked."""
from __future__ import annotations

import os
from pathlib import Path


class StagedOutputs:
    """A context manager handing out a temporary path beside each output file (`stage`).

    `commit()` renames every staged file onto its target; leaving the context without a commit
    (an error, Ctrl-C) removes them, so the targets keep their old contents.
    """

    def __init__(self) -> None:
        self._staged: dict[Path, Path] = {}

    def stage(self, target: str | os.PathLike) -> Path:
        """The temporary path that becomes `target` at `commit()` (in the same folder, so the rename is atomic)."""
        target = Path(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        self._staged[target] = target.with_name(f".{target.name}.{os.getpid()}.staged")
        return self._staged[target]

    def commit(self) -> None:
        """Rename every staged file that was written onto its target."""
        for target, staged in self._staged.items():
            if staged.exists():
                os.replace(staged, target)

    def __enter__(self) -> StagedOutputs:
        return self

    def __exit__(self, *exc) -> None:
        for staged in self._staged.values():
            staged.unlink(missing_ok=True)
