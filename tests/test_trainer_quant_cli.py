"""qdqopt quantize / export / sensitive end to end on a tiny YOLOv7 and a synthetic set (CPU)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import onnx
import pytest

torch = pytest.importorskip("torch")

import cli  # noqa: E402
from trainer.checkpoint import save_checkpoint  # noqa: E402
from trainer.data import synth_dataset  # noqa: E402
from trainer.models import build_model  # noqa: E402

SIZE = 64
FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "checkpoints" / "yolov7-tiny-synth.pt"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("quant_cli")
    data = synth_dataset(root / "synth", 6, size=SIZE, nc=3, seed=0)
    if FIXTURE.is_file():  # the trained baseline: realistic activations, few detections
        return root, data, FIXTURE
    torch.manual_seed(0)
    weights = root / "tiny.pt"
    save_checkpoint(weights, build_model("yolov7-tiny", nc=3, width=0.25))
    return root, data, weights


def _quant_args(weights, data, *extra):
    return ["quantize", str(weights), "--data", str(data), "--img-size", str(SIZE), "--batch-size", "3",
            "--calib-batches", "1", "--no-progress", *extra]  # fmt: skip


def test_quantize_ptq_qat_export_optimize_eval(setup, capsys):
    root, data, weights = setup
    ptq, qat, onnx_out = root / "ptq.pt", root / "qat.pt", root / "qat.onnx"
    args = _quant_args(weights, data, "--ptq", str(ptq), "--qat", str(qat), "--eval-origin",
                       "--eval-ptq", "--epochs", "1", "--iters", "1",
                       "--ignore-policy", r"model\.77\.m\.(.*)", "--ignore-policy", r"model\.999\.(.*)")  # fmt: skip
    assert cli.main(args) == 0
    err = capsys.readouterr().err
    assert "model\\\\.999" in err or "model\\.999" in err  # dead regex warned about
    summary = json.loads((root / "summary.json").read_text())
    res = summary["results"]
    assert {"origin", "ptq", "qat_epochs", "qat_best"} <= set(res)
    assert summary["scale_groups"] and summary["unmatched_ignore_patterns"] == [r"model\.999\.(.*)"]
    assert "model.77.m.0" in summary["ignored_layers"]
    raw = torch.load(ptq, weights_only=True)  # plain types only
    assert raw["quant"]["groups"] and raw["loader"].endswith(":rebuild")

    assert cli.main(["export", str(qat), "--save", str(onnx_out), "--size", str(SIZE), "--dynamic",
                     "--optimize", "--rules", "yolov7-tiny"]) == 0  # fmt: skip
    proto = onnx.load(str(onnx_out))
    assert [i.name for i in proto.graph.input] == ["images"]
    assert [o.name for o in proto.graph.output] == ["outputs"]
    assert any(n.op_type == "QuantizeLinear" for n in proto.graph.node)
    assert cli.main(["lint", str(onnx_out), "--rules", "yolov7"]) == 0
    capsys.readouterr()
    assert cli.main(["eval", str(qat), "--data", str(data), "--img-size", str(SIZE)]) == 0


def test_sensitive_table_and_summary(setup, capsys):
    root, data, weights = setup
    out = root / "sens.json"
    args = ["sensitive", str(weights), "--data", str(data), "--img-size", str(SIZE), "--batch-size", "6",
            "--calib-batches", "1", "--summary", str(out), "--num-image", "3", "--top", "5", "--layers", "0,1,77"]  # fmt: skip
    assert cli.main(args) == 0
    res = json.loads(out.read_text())
    assert {r["layer"] for r in res["layers"]} == {0, 1, 77}  # all quantized, head too

    maps = [r["map"] for r in res["layers"]]
    assert maps == sorted(maps, reverse=True)
    assert "Sensitivity" in capsys.readouterr().out


def test_bad_inputs_fail_cleanly_and_write_nothing(setup, tmp_path, capsys):
    _, data, weights = setup
    ptq = tmp_path / "ptq.pt"
    assert cli.main(_quant_args(weights, tmp_path / "nope", "--ptq", str(ptq))) == 2
    assert "not found" in capsys.readouterr().err
    junk = tmp_path / "junk.pt"
    torch.save({"a": 1}, junk)
    assert cli.main(_quant_args(junk, data, "--ptq", str(ptq))) == 2
    assert "not a model checkpoint" in capsys.readouterr().err
    broken = tmp_path / "broken"
    shutil.copytree(data, broken)
    ann = next((broken / "annotations").glob("*.json"))
    coco = json.loads(ann.read_text())
    coco["images"][0]["file_name"] = "missing.jpg"
    ann.write_text(json.dumps(coco))
    assert cli.main(_quant_args(weights, broken, "--ptq", str(ptq))) == 2
    assert capsys.readouterr().err.startswith("qdqopt: error:")
    assert cli.main(["export", str(junk), "--save", str(tmp_path / "x.onnx")]) == 2
    assert not ptq.exists() and not (tmp_path / "x.onnx").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp files


def test_float_export_and_device_check(setup, tmp_path, capsys):
    _, data, weights = setup
    out = tmp_path / "float.onnx"
    assert cli.main(["export", str(weights), "--save", str(out), "--size", str(SIZE)]) == 0
    assert "exported float model" in capsys.readouterr().out
    proto = onnx.load(str(out))
    assert not any(n.op_type == "QuantizeLinear" for n in proto.graph.node)
    assert "model.0.conv.weight" in {i.name for i in proto.graph.initializer}  # module paths
    if not torch.cuda.is_available():
        assert (
            cli.main(
                _quant_args(weights, data, "--device", "cuda", "--ptq", str(tmp_path / "p.pt"))
            )
            == 2
        )
        assert "CUDA is not available" in capsys.readouterr().err
    assert cli.main(_quant_args(weights, data, "--calib-method", "nope")) == 2


def test_sensitive_same_seed_same_results_and_quiet_log(setup, tmp_path, capsys):
    """Two runs with one --seed agree byte for byte; into a non-TTY nothing but the table."""
    root, data, weights = setup
    outs = [tmp_path / "a.json", tmp_path / "b.json"]
    for out in outs:
        args = ["sensitive", str(weights), "--data", str(data), "--img-size", str(SIZE),
                "--batch-size", "2", "--calib-batches", "2", "--num-image", "3",
                "--layers", "0,77", "--seed", "5", "--summary", str(out)]  # fmt: skip
        assert cli.main(args) == 0
        captured = capsys.readouterr()
        assert captured.err == ""  # no progress bars, no blank lines (stderr is not a TTY)
        assert "" not in captured.out.splitlines()[1:-1]  # the table has no blank lines either
    assert outs[0].read_bytes() == outs[1].read_bytes()


def test_loader_seed_fixes_order_and_augmentation(setup):
    from trainer.data import create_dataloader, load_dataset

    _, data, _ = setup

    def epoch(seed):
        ds = load_dataset(data, SIZE, augment=True)
        loader = create_dataloader(ds, SIZE, 2, shuffle=True, seed=seed)
        batches = list(loader)
        ids = [m["image_id"] for _, _, metas in batches for m in metas]
        return ids, torch.cat([x for x, _, _ in batches])

    ids_a, px_a = epoch(11)
    ids_b, px_b = epoch(11)
    ids_c, px_c = epoch(12)
    assert ids_a == ids_b and torch.equal(px_a, px_b)  # same shuffle, same augmentations
    assert ids_a != ids_c  # another seed, another order (6 images: checked once, fixed seeds)


def test_sizes_default_to_the_checkpoints(setup, tmp_path, capsys):
    """quantize / sensitive / export without a size use the one the checkpoint records."""
    _, data, weights = setup
    from trainer.evaluate import stored_img_size

    recorded = stored_img_size(weights)
    if recorded is None:
        pytest.skip("the fixture checkpoint is absent (a fresh model records no size)")
    ptq = tmp_path / "ptq.pt"
    args = ["quantize", str(weights), "--data", str(data), "--batch-size", "3",
            "--calib-batches", "1", "--no-progress", "--ptq", str(ptq), "--rules", "yolov7-tiny"]  # fmt: skip
    assert cli.main(args) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["options"]["img_size"] == recorded == stored_img_size(ptq)
    capsys.readouterr()
    onnx_out = tmp_path / "ptq.onnx"
    assert cli.main(["export", str(ptq), "--save", str(onnx_out)]) == 0  # size from PTQ meta
    assert f"({recorded} px)" in capsys.readouterr().out
    dims = onnx.load(str(onnx_out)).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims][2:] == [recorded, recorded]
    args = ["sensitive", str(weights), "--data", str(data), "--batch-size", "3",
            "--calib-batches", "1", "--num-image", "2", "--layers", "0"]  # fmt: skip
    assert cli.main(args) == 0
    assert f"at {recorded} px" in capsys.readouterr().out
