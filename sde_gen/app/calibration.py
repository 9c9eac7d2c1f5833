"""A run's calibration file: the learned grids (:func:`~sde_gen.sampling.calibrate`) of its
model, one per NFE, and the checks on reading one.

``sde-gen calibrate`` and the end of training write ``<run>/calibration.json`` (atomically);
``sde-gen sample --steps K`` reads it. A grid is learned for one model on one time axis, so the
file records both: the SDE's :func:`~sde_gen.sampling.grid_file.sde_signature` and a fingerprint
of the model's weights (:func:`model_fingerprint`). A file made for another SDE or another run's
weights (or this run's before it trained further) is refused in one line.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from ..errors import UserInputError
from ..sampling.calibrate import (
    CALIBRATABLE,
    Calibration,
    calibrate,
    check_calibration_input,
    teacher,
)
from ..sampling.grid_file import sde_signature
from ..sampling.grids import check_grid
from ..sde import SDE
from .atomic import write_atomic

__all__ = ["FILE", "FORMAT", "calibrate_run", "find_calibration", "load_calibrations",
           "model_fingerprint", "save_calibrations"]

FILE = "calibration.json"
FORMAT = "sde-gen-calibration"
_ENTRY_KEYS = {"solver", "ts", "options", "nfe", "start", "error_start", "error", "iterations",
               "seconds"}


def model_fingerprint(model: Any) -> str | None:
    """The first 16 hex digits of the SHA-256 of the model's weights (its ``state_dict``, by
    name); ``None`` for a model without one (a plain callable)."""
    state = getattr(model, "state_dict", None)
    if state is None:
        return None
    h = hashlib.sha256()
    for name, t in sorted(state().items()):
        h.update(name.encode())
        if torch.is_tensor(t):
            h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def save_calibrations(path: str | os.PathLike, calibrations: list[Calibration], sde: SDE,
                      model: Any) -> Path:
    """Write ``calibrations`` (one per NFE) for ``model`` on ``sde`` as JSON, atomically."""
    doc = {"format": FORMAT, "sde": sde_signature(sde), "model": model_fingerprint(model),
           "calibrations": [{"solver": c.solver, "ts": [float(t) for t in c.ts],
                             "options": c.options, "nfe": c.nfe, "start": c.start,
                             "error_start": c.error_start, "error": c.error,
                             "iterations": c.iterations, "seconds": c.seconds}
                            for c in sorted(calibrations, key=lambda c: c.nfe)]}
    text = json.dumps(doc, indent=1, allow_nan=False) + "\n"
    return write_atomic(path, lambda tmp: tmp.write_text(text))


def load_calibrations(path: str | os.PathLike, sde: SDE, model: Any) -> dict[int, Calibration]:
    """The calibrations in ``path`` by NFE, checked to be for ``sde``'s time axis and
    ``model``'s weights.

    Raises:
        UserInputError: a missing or malformed file, or one made for another SDE or another
            model (naming what differs and what to do).
    """
    path = Path(path)

    def bad(why: str) -> UserInputError:
        return UserInputError(f"{path} is not a calibration file from sde-gen calibrate ({why})")

    if not path.is_file():
        raise UserInputError(f"calibration file not found: {path}")
    try:
        doc = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise bad(str(e).splitlines()[0][:120] or type(e).__name__) from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise bad("no sde-gen calibration format")
    if not isinstance(doc.get("sde"), dict) or not isinstance(doc.get("calibrations"), list):
        raise bad('"sde" and "calibrations" are required')
    want = sde_signature(sde)
    if doc["sde"] != want:
        diff = [k for k in sorted(set(want) | set(doc["sde"])) if want.get(k) != doc["sde"].get(k)]
        what = ", ".join(f"{k}: {doc['sde'].get(k)} there, {want.get(k)} here" for k in diff[:3])
        raise UserInputError(f"{path} was calibrated for another SDE ({what}); run sde-gen "
                             "calibrate again for this run")
    if doc.get("model") != model_fingerprint(model):
        raise UserInputError(f"{path} was calibrated for other model weights (another run, or "
                             "this run before it trained further); run sde-gen calibrate again "
                             "or sample with --no-calibration")
    out: dict[int, Calibration] = {}
    for e in doc["calibrations"]:
        if not isinstance(e, dict) or set(e) != _ENTRY_KEYS:
            raise bad(f"an entry must have exactly the keys {', '.join(sorted(_ENTRY_KEYS))}")
        ok = (e["solver"] in CALIBRATABLE and isinstance(e["options"], dict)
              and isinstance(e["nfe"], int) and isinstance(e["ts"], list)
              and all(isinstance(t, (int, float)) and math.isfinite(t) for t in e["ts"]))
        if not ok:
            raise bad(f"a malformed entry (nfe {e.get('nfe')!r})")
        ts = check_grid(sde, torch.tensor(e["ts"], dtype=torch.float64))
        out[e["nfe"]] = Calibration(**{**e, "ts": ts, "sde": doc["sde"]})
    return out


def find_calibration(path: str | os.PathLike, sde: SDE, model: Any, *, steps: int,
                     solver: str | None = None) -> Calibration | None:
    """The calibration of ``steps`` grid intervals (with ``solver``, when given) in ``path``, or
    ``None`` when the file has none for them (a file that is there is checked:
    :func:`load_calibrations`)."""
    for cal in load_calibrations(path, sde, model).values():
        if cal.steps == steps and (solver is None or solver == cal.solver):
            return cal
    return None


def calibrate_run(model: Any, sde: SDE, shape: tuple[int, ...], nfes: list[int], *,
                  budget_s: float, solver: str | None = None, n: int = 256,
                  n_val: int | None = None,
                  seed: int = 0,
                  device: torch.device | str | None = None) -> list[Calibration]:
    """One calibration per NFE of ``nfes`` (each checked before any work) on ``n`` tuning and
    ``n_val`` (default ``n // 2``) validation draws of ``shape``: one teacher solve for all,
    then ``budget_s`` less its time shared equally (each calibration's ``seconds`` includes its
    share of the teacher).

    Raises:
        UserInputError: an empty or repeated NFE list, or a bad NFE, solver or budget.
    """
    if not nfes or len(set(nfes)) != len(nfes):
        raise UserInputError(f"give one or more distinct NFEs to calibrate, got {list(nfes)}")
    for nfe in nfes:
        check_calibration_input(solver, nfe, budget_s)
    n_val = max(n // 2, 1) if n_val is None else n_val
    tch = teacher(model, sde, (n, *shape), n_val=n_val, device=device,
                  generator=torch.Generator(device=device or "cpu").manual_seed(seed))
    per = max(float(budget_s) - tch.seconds, 1e-3) / len(nfes)
    return [replace(cal, seconds=cal.seconds + tch.seconds / len(nfes))
            for cal in (calibrate(model, sde, (n, *shape), nfe=nfe, solver=solver, budget_s=per,
                                  given_teacher=tch, device=device) for nfe in nfes)]
