"""The records bce-audit passes between its parts, and their one JSON codec.

A leaf: it imports nothing of bce_audit, so every module may import it (report, plot, gate,
config and cli take their types from here, not from the pipeline). JSON is strict and versioned
(`SCHEMA`): inf and nan are the strings "inf", "-inf", "nan" everywhere, in documents, streams,
baselines and the cache, and `decode_float` reads them back.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np

SCHEMA = "bce-audit/1"  # 1: the first version; rows, key points, worst, gate results
# (gate results gained "error" and "status", key points "cause" and "side": additions a
# reader of 1 may ignore)
# the built-in formulas, in table order (formulas.py)
FORMULA_NAMES = ("naive", "keras2-logits", "tf-keras", "keras3", "torch-bce", "logits-stable",
                 "torch-bce-logits", "optax", "sklearn", "keras3-torch", "keras-sigmoid-logits",
                 "keras3-numpy")
Label = int | str  # 1, 0 or "pair"

LABELS = ("1", "0", "both")
SPACINGS = ("lin", "log")
KERAS_BACKENDS = ("tensorflow", "jax", "torch", "numpy")  # --keras-backend: what Keras 3 runs on
DEFAULT_RANGE = (-40.0, 40.0)
DEFAULT_POINTS = 161
DEFAULT_EPS = (1e-7,)
DEFAULT_THRESHOLDS = (1e-3, 1e-2)
MAX_POINTS = 100_000_000  # beyond this a grid is a mistake; --exhaustive covers the 16-bit dtypes
# the choices and defaults of plot's and the gate's options (here: the command line reads them
# without loading plot, gate and baseline, which only their commands need)
PLOT_KINDS = ("roundtrip", "bce", "error", "grad")
PLOT_SIZE = (1200, 700)  # pixels, at PLOT_DPI
PLOT_DPI = 100
BASELINE_TOLERANCE = 0.1  # a figure may worsen by 10% of its baseline before it counts


def step_count(lo: float, hi: float, step: float) -> int:
    """Points of a stepped grid: LO, LO + step, ... up to HI (a hair of slack for rounding)."""
    return math.floor((hi - lo) / step + 1e-9) + 1


def _option(default: Any, flag: str) -> Any:
    """A Settings field that is also an option: its config key is the field's name, its flag
    ``flag`` (cli and config read both from here), and it is part of the JSON settings."""
    return field(default=default, metadata={"flag": flag})


@dataclass(frozen=True)
class Settings:
    """One validated selection; every command works from one of these."""

    dtypes: tuple[str, ...] = _option(("float32",), "--dtype")
    eps: tuple[float, ...] = _option(DEFAULT_EPS, "--eps")
    formulas: tuple[str, ...] = _option(FORMULA_NAMES, "--formula")
    range: tuple[float, float] = _option(DEFAULT_RANGE, "--range")
    points: int = _option(DEFAULT_POINTS, "--points")
    step: float | None = _option(None, "--step")
    spacing: str = _option("lin", "--spacing")
    label: str = _option("both", "--label")
    mode: str = _option("native", "--mode")
    thresholds: tuple[float, ...] = _option(DEFAULT_THRESHOLDS, "--threshold")
    backend: str = _option("numpy", "--backend")
    device: str = _option("cpu", "--device")
    keras_backend: str = _option(KERAS_BACKENDS[0], "--keras-backend")  # with --backend keras
    grad: bool = _option(False, "--grad")
    reference: str = _option("fast", "--reference")  # "fast" (float64, <= 32-bit dtypes) or "mpmath"
    exhaustive: bool = _option(False, "--exhaustive")  # every value of each dtype in the range
    keep: int | None = None   # grid rows kept in the result (evenly spread); None: all
    values: tuple[float, ...] | None = None  # given inputs instead of a grid (the check command)

    @property
    def labels(self) -> tuple[int | str, ...]:
        """Labels audited: 1, 0 and the seed's two-point pair when both are asked for."""
        return {"1": (1,), "0": (0,), "both": (1, 0, "pair")}[self.label]

    def to_dict(self) -> dict:
        """The options, JSON-safe: the ``settings`` object of the CLI's JSON."""
        return clean(self.as_dict())

    def as_dict(self) -> dict:
        """The options, as the JSON settings record (tuples as lists)."""
        out = {}
        for f in fields(self):
            if "flag" in f.metadata:
                v = getattr(self, f.name)
                out[f.name] = list(v) if isinstance(v, tuple) else v
        return out


def setting_flags() -> dict[str, str]:
    """Each option of Settings: its config key (the field's name) -> its command-line flag."""
    return {f.name: f.metadata["flag"] for f in fields(Settings) if "flag" in f.metadata}


@dataclass(frozen=True)
class Row:
    """One computed quantity at one input, beside its exact value and its errors.

    ``clip_rel``: how far the clipped formula is from the exact BCE in exact arithmetic (the
    part the clipping causes); ``round_ulp``: how far the computed value is from that
    clipped-exact value, in ULPs (the part rounding causes). None where no clipping applies.
    """

    dtype: str
    mode: str
    x: float
    x_dtype: float
    quantity: str  # "sigmoid", "roundtrip", "bce" or "grad"
    formula: str | None
    eps: float | None
    label: int | str | None
    value: float
    exact: float
    abs_err: float
    rel_err: float
    ulp_err: float
    bits: float
    clipped_exact: float | None = None
    clip_rel: float | None = None
    round_ulp: float | None = None
    backend: str = "numpy"

    def to_dict(self) -> dict:
        """A JSON-safe dict of the fields, as the CLI's JSON writes this record."""
        return clean(asdict(self))


@dataclass(frozen=True)
class Worst:
    """The largest error of one formula over the grid, and where it happened."""

    dtype: str
    mode: str
    quantity: str
    formula: str | None
    eps: float | None
    label: int | str | None
    max_ulp: float
    max_rel: float
    max_bits: float
    x: float | None
    nonfinite: int
    points: int
    max_clip_rel: float | None = None   # clipping's share: clipped-exact vs exact
    max_round_ulp: float | None = None  # rounding's share: computed vs clipped-exact
    max_abs: float = math.nan
    x_dtype: float | None = None  # the worst point: its input in the dtype, computed and exact values
    value: float | None = None
    exact: float | None = None
    nonfinite_x: float | None = None  # the first non-finite result: its input, and the exact value
    nonfinite_value: float | None = None
    nonfinite_exact: float | None = None

    def to_dict(self) -> dict:
        """A JSON-safe dict of the fields, as the CLI's JSON writes this record."""
        return clean(asdict(self))


@dataclass
class SweepResult:
    settings: Settings
    keypoints: list[KeyPoint]
    rows: list[Row] = field(default_factory=list)
    worst: list[Worst] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        """The CLI's JSON document of a sweep (``bce-audit sweep --format json``), less its
        ``version``: settings, key points, kept rows, worst errors and notes, JSON-safe."""
        return clean({"schema": SCHEMA, "settings": self.settings.as_dict(),
                      "keypoints": [asdict(k) for k in self.keypoints],
                      "rows": [asdict(r) for r in self.rows], "worst": [asdict(w) for w in self.worst],
                      "notes": list(self.notes)})


def sample_indices(n: int, show: int) -> list[int]:
    """Evenly spread indices of n points, both ends included (all of them when n <= show)."""
    if n <= show:
        return list(range(n))
    return sorted(set(np.linspace(0, n - 1, show).round().astype(int).tolist()))


@dataclass(frozen=True)
class KeyPoint:
    """One key point: a flat record, the JSON schema's unit."""

    dtype: str
    mode: str
    formula: str | None
    eps: float | None
    label: Label | None
    name: str
    threshold: float | None
    x: float
    value: float
    predicted: float | None
    predicts: str | None  # "x" or "value": which field `predicted` stands beside
    method: str
    backend: str = "numpy"  # "numpy" (the models), or the real framework, e.g. "torch-cpu"
    cause: str = ""  # why it is here, one line: "sigmoid rounds to 1", "clip at 1-eps" (causes.py)
    side: str = ""   # "+" or "-": the sign of x, which tells two records of one name apart

    def __post_init__(self) -> None:
        if not self.side:
            object.__setattr__(self, "side", "-" if math.copysign(1.0, self.x) < 0 else "+")

    def to_dict(self) -> dict:
        """A JSON-safe dict of the fields, as the CLI's JSON writes this record."""
        return clean(asdict(self))


def tail(k: KeyPoint) -> str:
    """The tail a key point belongs to, "+" or "-": for the loss's floor, ceiling and zero, the
    tail its label gives (a floor at x = 0 still belongs to its tail); else the key point's side."""
    if k.name in ("bce_floor", "bce_zero", "bce_ceiling") and k.label in (0, 1, "pair"):
        good = "-" if k.label == 0 else "+"
        return good if k.name != "bce_ceiling" else {"+": "-", "-": "+"}[good]
    return k.side or ("-" if math.copysign(1.0, k.x) < 0 else "+")


ROW_FLOATS = ("x", "x_dtype", "value", "exact", "abs_err", "rel_err", "ulp_err", "bits")
CLIP_FLOATS = ("clipped_exact", "clip_rel", "round_ulp")


@dataclass
class Block:
    """Kept rows of one series over one chunk, as columns: rows are made only when read, and
    streaming writers format the columns directly. ``clip`` columns are NaN where no clip applies."""

    dtype: str
    mode: str
    backend: str
    quantity: str
    formula: str | None
    eps: float | None
    label: int | str | None
    floats: dict[str, np.ndarray]  # ROW_FLOATS, and CLIP_FLOATS for a clipped formula

    def __len__(self) -> int:
        return len(self.floats["x"])

    def rows(self) -> Iterator[Row]:
        cols = [self.floats[n].tolist() for n in ROW_FLOATS]
        clip = [self.floats[n].tolist() for n in CLIP_FLOATS] if "clipped_exact" in self.floats else None
        for i, (x, xd, v, ex, ab, rel, ulp, bits) in enumerate(zip(*cols, strict=True)):
            more = {}
            if clip is not None and not math.isnan(clip[0][i]):
                more = {"clipped_exact": clip[0][i], "clip_rel": clip[1][i], "round_ulp": clip[2][i]}
            yield Row(self.dtype, self.mode, x, xd, self.quantity, self.formula, self.eps, self.label,
                      v, ex, ab, rel, ulp, bits, **more, backend=self.backend)

    def encode(self) -> dict:
        return clean({**{k: v for k, v in vars(self).items() if k != "floats"},
                      "floats": {k: a.tolist() for k, a in self.floats.items()}})

    @classmethod
    def decode(cls, d: dict) -> Block:
        eps = None if d["eps"] is None else decode_float(d["eps"])
        return cls(**{**d, "eps": eps, "floats": {k: decode_floats(v) for k, v in d["floats"].items()}})


@dataclass(frozen=True)
class CheckResult:
    name: str
    kind: str
    passed: bool
    failures: list[str]
    figures: Mapping[str, float | None]
    limits: dict
    worst: dict | None
    note: str = ""
    regressions: list[str] = field(default_factory=list)
    error: str = ""  # the check could not be measured: its user function's one-line message

    def to_dict(self) -> dict:
        """A JSON-safe dict of the fields and the status, as the CLI's JSON writes this record."""
        return clean({**asdict(self), "status": self.status})

    @property
    def ok(self) -> bool:
        """The verdict: passed its limits and, against a baseline, got no worse."""
        return self.passed and not self.regressions and not self.error

    @property
    def status(self) -> str:
        """PASS, FAIL (a limit or the baseline broken) or ERROR (could not be measured)."""
        return "ERROR" if self.error else "PASS" if self.ok else "FAIL"


@dataclass(frozen=True)
class ReproCase:
    """One case of `bce-audit reproduce`: the seed question's model, evaluated by one Keras on
    the pair {(-a, 0), (a, 1)} at each a, beside the exact mean loss and the two paths' models.

    ``path``: which path the data follow, "logits" (Keras used ``_keras_logits``), "clipped" or
    "unclear"; ``tail``: "floor" (flat above the exact curve from ``floor_a``), "zero" (exactly
    0 from ``floor_a``) or "none" (the loss follows the exact curve to the last a).
    ``differ`` and ``agree``: the evidence from the data for ``path``.
    ``carries_logits``: the output tensor the loss receives carries ``_keras_logits``;
    ``reads_logits``: the backend's ``binary_crossentropy`` looks for it.
    """

    framework: str      # "tf-keras" or "keras"
    backend: str        # the Keras backend: "tensorflow", "jax", "torch" or "numpy"
    versions: dict[str, str]
    policy: str         # "float32" or "mixed_float16"
    feeding: str        # "in-graph" (model.evaluate) or "fed" (loss_fn on numpy probabilities)
    output_dtype: str   # the dtype of the probabilities the loss receives
    a: list[float]
    loss: list[float]
    exact: list[float]          # mpmath: log1p(exp(-a)), the exact mean of the pair
    clipped_model: list[float]  # the backend's clip-and-log formula, evaluated in numpy
    logits_model: list[float]   # tf.nn.sigmoid_cross_entropy_with_logits, evaluated in numpy
    path: str
    differ: int         # points where the two models differ by more than a factor of 2
    agree: int          # of those, the points where the loss is nearer the model of ``path``
    tail: str
    floor: float | None
    floor_a: float | None
    carries_logits: bool
    reads_logits: bool

    def to_dict(self) -> dict:
        """A JSON-safe dict of the fields, as the CLI's JSON writes this record."""
        return clean(asdict(self))

    @property
    def name(self) -> str:
        """``tf_keras`` or ``keras/<backend>``."""
        return "tf_keras" if self.framework == "tf-keras" else f"keras/{self.backend}"


@dataclass(frozen=True)
class Target:
    """What is advised on: one formula in one dtype and mode, over a grid of logits."""

    formula: str
    dtype: str
    mode: str = "native"
    eps: float | None = DEFAULT_EPS[0]
    label: str = "both"  # "1", "0", "both" (1, 0 and the pair) or "pair"
    range: tuple[float, float] = DEFAULT_RANGE
    points: int = DEFAULT_POINTS

    @property
    def labels(self) -> tuple:
        return {"1": (1,), "0": (0,), "both": (1, 0, "pair"), "pair": ("pair",)}[self.label]


@dataclass(frozen=True)
class EpsChoice:
    """One eps advise proposes, with the clip bounds it gets in the dtype and mode and the floor
    and ceiling it implies over the range, measured (value, x and where it holds; None: none in
    the range)."""

    eps: float
    lo: float
    hi: float
    floor: float | None = None
    floor_x: float | None = None
    floor_where: str | None = None
    ceiling: float | None = None
    ceiling_x: float | None = None
    ceiling_where: str | None = None


@dataclass(frozen=True)
class SafeEps:
    """For a clipping formula: the eps audited, its clip bounds as the framework rounds them and
    whether they survive (0 < lo < hi < 1); the smallest eps whose bounds survive and the one
    that minimises the worst error over the range (None: no candidate survives); ``tried``: the
    candidates measured; ``best_max_ulp``: the best one's worst error."""

    eps: float
    lo: float
    hi: float
    safe: bool
    smallest: EpsChoice | None = None
    best: EpsChoice | None = None
    tried: int = 0
    best_max_ulp: float | None = None


@dataclass(frozen=True)
class Move:
    """A problem key point that a fix makes vanish ("gone"), move ("moved") or appear ("new"):
    its name, label and quantity ("loss", "gradient"), x and value before and after, and each
    as a line."""

    status: str
    name: str
    label: str
    quantity: str
    x_before: float | None
    x_after: float | None
    value_before: float | None
    value_after: float | None
    before: str = ""
    after: str = ""


@dataclass(frozen=True)
class Audited:
    """One measured audit behind a piece of advice: a formula in a dtype, mode and eps, over a
    logit range. ``max_ulp`` is in ULPs of ``dtype`` (None: no finite result was measured);
    ``nonfinite`` counts inf/nan results; ``keypoints``: the formula's key points (the BCE's and
    its gradient's), wherever they fall."""

    formula: str
    dtype: str
    mode: str
    eps: float | None
    range: tuple[float, float]
    points: int
    max_ulp: float | None
    max_bits: float | None
    max_rel: float | None
    nonfinite: int
    grad_max_ulp: float | None
    keypoints: tuple[KeyPoint, ...]

    def to_dict(self) -> dict:
        """A JSON-safe dict of the fields, as the CLI's JSON writes this record."""
        return clean(asdict(self))


@dataclass(frozen=True)
class Fix:
    """One fix, verified: the audit run with it applied (``after``) improved the figure.

    ``kind``: "logits" (the with-logits rewrite), "eps" (a safe or best clip epsilon),
    "precision" (compute the loss in a wider dtype) or "builtin" (for user code: the best
    built-in formula). ``figure``: what improved, "max_ulp" (same dtype) or "max_rel";
    ``moves``: the key points that moved, vanished or appeared (``status`` "moved", "gone" or
    "new"; ``name``, ``label``, x and value before and after, and each as a line); ``gate``: with a
    gate check, its verdict with the fix applied ("PASS"/"FAIL"), else ""; ``verdict``: "fix"
    (no figure worse, and within the tolerance), "partial" (no figure worse, still outside it) or
    "trade-off" (one figure better, another worse: inf/nan traded for a larger finite error).
    """

    kind: str
    title: str
    call: str
    snippet: str
    after: Audited
    figure: str
    moves: tuple[Move, ...] = ()
    gate: str = ""
    note: str = ""
    verdict: str = "fix"

    def to_dict(self) -> dict:
        """A JSON-safe dict of the fields, as the CLI's JSON writes this record."""
        return clean(asdict(self))


@dataclass(frozen=True)
class Advice:
    """What goes wrong with one (formula, dtype, mode, eps) over a range, and the fixes, best first.

    ``ok``: nothing to fix (the worst error is within ``tolerance`` ULP, no inf/nan and no key
    point that spoils the range); ``problems``: one line each; ``safe_eps``: for clipping
    formulas, the smallest eps whose clip bounds survive the dtype and mode, and the eps that
    minimises the worst error (None: the formula does not clip); ``check``: the gate check
    advised, if any; ``tried``: how many candidate fixes were run and measured.
    """

    before: Audited
    label: str
    tolerance: float
    ok: bool
    problems: tuple[str, ...]
    fixes: tuple[Fix, ...]
    safe_eps: SafeEps | None = None
    check: str = ""
    notes: tuple[str, ...] = ()
    tried: int = 0

    def to_dict(self) -> dict:
        """A JSON-safe dict of the fields, as the CLI's JSON writes this record."""
        return clean(asdict(self))


# ---------------------------------------------------------------- the codec


def clean(v: Any) -> Any:
    """inf/nan as strings (strict JSON has no NaN), numpy scalars as Python numbers."""
    if isinstance(v, dict):
        return {k: clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [clean(x) for x in v]
    if isinstance(v, (float, np.floating)):
        v = float(v)
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return v
    return v


def to_json(doc: dict) -> str:
    """Deterministic, strictly valid JSON: sorted keys, inf/nan as strings."""
    return json.dumps(clean(doc), sort_keys=True, indent=1, allow_nan=False) + "\n"


def decode(cls: type, d: dict) -> Any:
    """A record read back from its JSON object: float fields from numbers or clean()'s strings."""
    kw = {}
    for f in fields(cls):
        if f.name in d:
            v = d[f.name]
            is_float = isinstance(f.type, str) and f.type.startswith("float")
            kw[f.name] = decode_float(v) if is_float and v is not None else v
    return cls(**kw)


def decode_floats(values: list) -> np.ndarray:
    """A float column read back from JSON (numbers, or clean()'s strings for inf and nan)."""
    return np.array([decode_float(v) for v in values], dtype=np.float64)


def decode_float(v: Any) -> float:
    """A float field read back from JSON: a number, or one of the strings clean() writes."""
    if isinstance(v, str):
        if v not in ("inf", "-inf", "nan"):
            raise ValueError(f"not a number: {v!r}")
        return float(v)
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise TypeError(f"not a number: {v!r}")
    return float(v)
