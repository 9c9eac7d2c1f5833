"""Grid files: an optimized time grid, what it was made for, and the checks on reading one.

``sde-gen optimize-grid`` writes one (:class:`OptimizedGrid`, JSON); ``sde-gen sample --grid``
reads it back. A grid is a set of times on one model's time axis, so the file records what
identifies that axis (:func:`sde_signature`: the SDE's class, end time, schedule parameters,
chain length and, for a tabulated chain, a hash of its table) and a grid made for another axis
is refused, as is a file without that record.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from ..errors import UserInputError
from ..sde import SDE
from .grids import check_grid
from .solvers import SOLVERS

__all__ = ["FORMAT", "OptimizedGrid", "sde_signature"]

FORMAT = "sde-gen-grid"


def sde_signature(sde: SDE) -> dict[str, Any]:
    """What identifies an SDE's time axis: its class, end time, schedule parameters, chain
    length ``N`` and, for a tabulated chain (a diffusers folder's ``betas``), the SHA-256 of
    its float64 table (a grid optimized for one SDE means nothing on another)."""
    keys = ("beta_min", "beta_max", "schedule_name", "sigma_min", "sigma_max")
    sig: dict[str, Any] = {"sde": type(sde).__name__, "T": float(sde.T), "N": int(sde.N)}
    sig.update({k: getattr(sde, k) for k in keys if hasattr(sde, k)})
    table = getattr(getattr(sde, "schedule", None), "betas", None)
    if torch.is_tensor(table):
        data = table.detach().to(torch.float64).cpu().contiguous().numpy().tobytes()
        sig["table_sha256"] = hashlib.sha256(data).hexdigest()[:16]
    return sig


#: The fields of a grid file and the JSON types each must have.
_TYPES: dict[str, tuple[type, ...]] = {
    "solver": (str,), "options": (dict,), "nfe": (int,), "error_before": (int, float),
    "error_after": (int, float), "heldout_before": (int, float), "heldout_after": (int, float),
    "seconds": (int, float), "method": (str,), "sde": (dict,),
}


@dataclass(frozen=True)
class OptimizedGrid:
    """A grid and what it was measured to do.

    Attributes:
        ts: the grid, decreasing, ``(steps + 1,)`` float64.
        solver, options: the solver (and its options) it was optimized for.
        nfe: model calls of one run on it, the final denoise included.
        error_before, error_after: mean endpoint error on the tuning draws with the solver's
            default grid and with ``ts``.
        heldout_before, heldout_after: the same on held-out draws.
        seconds: wall time of the optimization; ``method``: ``gits`` or ``descent``.
        sde: :func:`sde_signature` of the SDE it is for.
    """

    ts: torch.Tensor
    solver: str
    options: dict[str, Any]
    nfe: int
    error_before: float
    error_after: float
    heldout_before: float
    heldout_after: float
    seconds: float
    method: str
    sde: dict[str, Any] = field(default_factory=dict)

    def save(self, path: str | os.PathLike) -> Path:
        """Write it as JSON (atomically)."""
        path = Path(path)
        if path.suffix.lower() != ".json":
            raise UserInputError(f"a grid file must be a .json path, got {path}")
        d = asdict(self) | {"ts": [float(t) for t in self.ts], "format": FORMAT}
        tmp = path.with_name(".tmp_" + path.name)
        try:
            tmp.write_text(json.dumps(d, indent=2, allow_nan=False) + "\n")
            os.replace(tmp, path)
        except OSError as e:
            raise OSError(e.errno, f"cannot write the grid file {path}: {e.strerror}") from None
        finally:
            tmp.unlink(missing_ok=True)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, sde: SDE | None = None) -> "OptimizedGrid":
        """Read a grid file; with ``sde``, also check that it was made for that SDE's time axis.

        Raises:
            UserInputError: a missing, unreadable or malformed file (naming the field), one
                that does not record its SDE, or one made for another SDE (naming what
                differs).
        """
        path = Path(path)
        if path.is_dir():
            raise UserInputError(f"--grid {path} is a directory, not a grid file")
        if not path.is_file():
            raise UserInputError(f"grid file not found: {path}")
        grid = cls._parse(path)
        if sde is not None:
            grid.check_sde(sde, path)
        return grid

    @classmethod
    def _parse(cls, path: Path) -> "OptimizedGrid":
        def bad(why: str) -> UserInputError:
            return UserInputError(f"{path} is not a grid file from sde-gen optimize-grid ({why})")

        try:
            d = json.loads(path.read_text())
        except (ValueError, UnicodeDecodeError) as e:
            raise bad(str(e).splitlines()[0][:120] or type(e).__name__) from None
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise bad("not an sde-gen grid file")
        names = {f.name for f in fields(cls)}
        missing = sorted(names - set(d) - {"sde"})
        unknown = sorted(set(d) - names - {"format"})
        if missing or unknown:
            raise bad(f"missing {', '.join(missing)}" if missing else
                      f"unknown key {', '.join(unknown)}")
        for key, types in _TYPES.items():
            value = d.get(key, {} if key == "sde" else None)
            if not isinstance(value, types) or isinstance(value, bool):
                raise bad(f'"{key}" must be a {" or ".join(t.__name__ for t in types)}, got '
                          f"{type(value).__name__}")
        ts = d["ts"]
        if not isinstance(ts, list) or not all(
                isinstance(t, (int, float)) and not isinstance(t, bool) and math.isfinite(t)
                for t in ts):
            raise bad('"ts" must be a list of finite numbers')
        spec = SOLVERS.get(d["solver"])
        if spec is None:
            raise bad(f"unknown solver {d['solver']!r}")
        try:  # options the solver takes, with valid values
            spec.resolve(d["solver"], d["options"])
        except UserInputError as e:
            raise bad(str(e)) from None
        d = {k: v for k, v in d.items() if k != "format"}
        return cls(**{**d, "ts": torch.tensor(ts, dtype=torch.float64)})

    def check_sde(self, sde: SDE, path: str | os.PathLike = "the grid file") -> None:
        """Refuse a grid made for another time axis than ``sde``'s (or that does not say).

        Raises:
            UserInputError: naming what differs.
        """
        if not self.sde:
            raise UserInputError(f"{path} does not record the SDE it was optimized for; run "
                                 "sde-gen optimize-grid again for this model")
        want = sde_signature(sde)
        if self.sde != want:
            diff = [k for k in sorted(set(want) | set(self.sde))
                    if want.get(k) != self.sde.get(k)]
            if self.sde.get("sde") != want["sde"]:
                diff = ["sde"]
            what = ", ".join(f"{k}: {self.sde.get(k)} there, {want.get(k)} here" for k in diff)
            raise UserInputError(f"{path} was optimized for another SDE ({what})")
        check_grid(sde, self.ts)
