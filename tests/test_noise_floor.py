"""The criterion's noise-floor control (qdq_optimizer.testing.noise_floor): only activation
scales move, Q and DQ stay a pair, factor 1 is the identity, and the measured spread is real."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from qdq_optimizer.runtime import run
from qdq_optimizer.testing.held_out import effective_samples, sample_noise
from qdq_optimizer.testing.noise_floor import (
    activation_scale_names,
    bootstrap_delta_ci,
    noise_floor,
    paired_change,
    rescale_activation_scales,
)
from tests.qdq_builders import Builder


def _model(quantized: bool = True) -> onnx.ModelProto:
    b = Builder(seed=3)
    x = b.input("x", [4, 3, 8, 8])
    y = b.conv(x, 3, 8, in_scale=0.02 if quantized else None, name="c1")
    y = b.conv(y, 8, 4, act=None, in_scale=0.05 if quantized else None, name="c2")
    b.output(y)
    return b.build()


def _inits(m: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}


def test_activation_scales_are_the_pairs_on_computed_tensors() -> None:
    m = _model()
    names = activation_scale_names(m)
    nodes = {n.name: n for n in m.graph.node}
    expected = {nodes[f"{c}_in_{k}"].input[1] for c in ("c1", "c2") for k in ("Q", "DQ")}
    assert names == expected  # the per-channel weight DQ scales are not among them


def test_rescale_moves_only_activation_scales() -> None:
    m = _model()
    doubled = rescale_activation_scales(m, 2.0)
    onnx.checker.check_model(doubled, full_check=True)
    before, after = _inits(m), _inits(doubled)
    names = activation_scale_names(m)
    for name, value in before.items():
        expect = value * 2 if name in names else value
        np.testing.assert_array_equal(after[name], expect.astype(value.dtype))
    assert after[next(iter(names))].dtype == np.float32


def test_factor_one_is_bit_identical() -> None:
    m = _model()
    x = {"x": np.random.default_rng(0).standard_normal((4, 3, 8, 8)).astype(np.float32)}
    a, b = run(m, x), run(rescale_activation_scales(m, 1.0), x)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])


def test_a_scale_shared_with_a_weight_stays() -> None:
    m = _model()
    nodes = {n.name: n for n in m.graph.node}
    shared = nodes["c1_in_Q"].input[1]
    nodes["c1_wDQ"].input[1] = shared  # now a weight DQ reads it too (per-tensor)
    assert shared not in activation_scale_names(m)
    assert np.array_equal(_inits(rescale_activation_scales(m, 2.0))[shared], _inits(m)[shared])


def test_noise_floor_measures_a_spread(tmp_path) -> None:
    q, ref = tmp_path / "q.onnx", tmp_path / "ref.onnx"
    onnx.save(_model(), q)
    onnx.save(_model(quantized=False), ref)
    data = tmp_path / "x.npz"
    rng = np.random.default_rng(1)
    np.savez(data, x=rng.standard_normal((4, 3, 8, 8)).astype(np.float32))
    nf = noise_floor(q, ref, data, factors=(0.98, 1.02))
    assert np.isfinite(nf.sqnr_db) and set(nf.shifts_db) == {0.98, 1.02}
    assert nf.spread_db > 0  # another rounding grid gives another error
    assert nf.worst_shift_db <= 0


def test_paired_change_of_an_exact_rewrite_is_zero(tmp_path) -> None:
    """A rewrite that changes nothing costs 0 dB on every realisation; one that drops the input
    pair's rounding changes SQNR, differently per realisation."""
    q, ref, data = tmp_path / "q.onnx", tmp_path / "ref.onnx", tmp_path / "x.npz"
    onnx.save(_model(), q)
    onnx.save(_model(quantized=False), ref)
    np.savez(data, x=np.random.default_rng(2).standard_normal((4, 3, 8, 8)).astype(np.float32))
    same = paired_change(q, lambda m: m, ref, data, factors=(1.0, 0.98, 1.02))
    assert same.changes_db == {1.0: 0.0, 0.98: 0.0, 1.02: 0.0} and same.mean_db == 0.0

    def drop_first_pair(m: onnx.ModelProto) -> onnx.ModelProto:
        out = onnx.ModelProto()
        out.CopyFrom(m)
        nodes = {n.name: n for n in out.graph.node}
        conv = nodes["c1"]
        conv.input[0] = nodes["c1_in_Q"].input[0]
        out.graph.node.remove(nodes["c1_in_DQ"])
        out.graph.node.remove(nodes["c1_in_Q"])
        return out

    moved = paired_change(q, drop_first_pair, ref, data, factors=(1.0, 0.98, 1.02))
    assert all(v != 0.0 for v in moved.changes_db.values())
    assert len(set(moved.changes_db.values())) == 3


def test_paired_change_keeps_each_realisation_and_ranks_the_given_one(tmp_path) -> None:
    q, ref, data = tmp_path / "q.onnx", tmp_path / "ref.onnx", tmp_path / "x.npz"
    onnx.save(_model(), q)
    onnx.save(_model(quantized=False), ref)
    np.savez(data, x=np.random.default_rng(2).standard_normal((4, 3, 8, 8)).astype(np.float32))
    pc = paired_change(q, lambda m: m, ref, data, factors=(1.0, 0.98, 1.02))
    assert set(pc.before_db) == {1.0, 0.98, 1.02}
    assert len(set(pc.before_db.values())) == 3  # three rounding grids, three SQNRs
    ranks = sorted(pc.rank_of(f) for f in pc.before_db)
    assert ranks == [1, 2, 3]
    assert pc.se_db == 0.0  # the identity rewrite costs exactly 0 on every realisation


def test_sample_noise_splits_the_pooled_error_by_sample() -> None:
    ref = [np.array([[1.0, 0.0], [0.5, 0.5], [0.0, 1.0]]), np.ones((3, 1, 2))]
    test = [np.array([[0.9, 0.1], [0.5, 0.5], [0.0, 0.7]]), np.ones((3, 1, 2))]
    noise = sample_noise(ref, test)
    assert np.allclose(noise, [0.02, 0.0, 0.09])
    signal = sum(float((r**2).sum()) for r in ref)
    pooled = sum(float(((r - t) ** 2).sum()) for r, t in zip(ref, test, strict=True))
    assert np.isclose(10 * np.log10(signal / noise.sum()), 10 * np.log10(signal / pooled))
    try:
        sample_noise(ref, test[:1])
    except ValueError:
        pass
    else:
        raise AssertionError("a missing output must be refused")


def test_effective_samples_counts_who_carries_the_error() -> None:
    assert np.isclose(effective_samples(np.full(48, 0.3)), 48.0)
    one = np.zeros(48)
    one[7] = 2.0
    assert effective_samples(one) == 1.0
    mostly_one = np.r_[1.0, np.full(47, 0.01)]
    assert 1.0 < effective_samples(mostly_one) < 3.0


def test_bootstrap_interval_of_an_sqnr_change() -> None:
    rng = np.random.default_rng(0)
    before = rng.exponential(1.0, 200)
    lo, hi = bootstrap_delta_ci(before, before)
    assert lo == hi == 0.0  # the same per-sample noise: no change on any draw
    halved = before / 2  # every sample's error halves: +3.01 dB on every draw
    lo, hi = bootstrap_delta_ci(before, halved)
    assert np.isclose(lo, 10 * np.log10(2)) and np.isclose(hi, 10 * np.log10(2))
    # one sample's error grows: the pooled change is negative, and the interval is wide
    # because the draws that leave that sample out see no change at all
    after = before.copy()
    after[0] += before.sum()
    lo, hi = bootstrap_delta_ci(before, after)
    assert lo < -2.5 and hi == 0.0
    point = 10 * np.log10(before.sum() / after.sum())
    assert lo <= point <= hi


def _activation_scale_sum(m: onnx.ModelProto) -> float:
    """A metric that only the activation scales move: their sum."""
    inits = _inits(m)
    return float(sum(inits[n].sum() for n in activation_scale_names(m)))


def test_a_task_metric_replaces_the_sqnr(tmp_path) -> None:
    # the corpus's task metrics (box F1, top-1) have their own noise floor: the metric is what
    # is measured on the model and on each rescaled copy, in its own units
    m = _model()
    base = _activation_scale_sum(m)
    absent = (tmp_path / "absent.onnx", tmp_path / "absent.npz")  # the metric never reads them
    nf = noise_floor(m, *absent, factors=(0.98, 1.02), metric=_activation_scale_sum)
    assert nf.sqnr_db == base
    assert np.isclose(nf.shifts_db[0.98], -0.02 * base) and np.isclose(
        nf.shifts_db[1.02], 0.02 * base
    )
    # a rewrite that doubles the scales changes the metric by the copy's own value each time
    double = lambda x: rescale_activation_scales(x, 2.0)  # noqa: E731
    pc = paired_change(m, double, *absent, factors=(1.0, 1.02), metric=_activation_scale_sum)
    assert np.isclose(pc.changes_db[1.0], base) and np.isclose(pc.changes_db[1.02], 1.02 * base)
