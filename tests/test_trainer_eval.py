"""NMS against a brute-force reference, COCO mAP end to end, ONNX vs PyTorch, the eval command."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("pycocotools")
pytest.importorskip("PIL")

from cli import main  # noqa: E402
from trainer.data import load_dataset, synth_dataset  # noqa: E402
from trainer.evaluate import coco_map, evaluate  # noqa: E402
from trainer.nms import batched_nms, box_iou, nms, non_max_suppression  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO / "fixtures" / "checkpoints" / "yolov7-tiny-synth.pt"


def _iou(a, b) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


def _reference_nms(boxes, scores, classes, thr):
    """Textbook greedy NMS per class, in plain Python."""
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    keep: list[int] = []
    for i in order:
        if all(classes[i] != classes[k] or _iou(boxes[i], boxes[k]) <= thr for k in keep):
            keep.append(i)
    return keep


def _random_boxes(n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 80
    wh = torch.rand(n, 2, generator=g) * 30 + 2
    boxes = torch.cat((xy, xy + wh), 1)
    scores = torch.rand(n, generator=g)
    classes = torch.randint(0, 3, (n,), generator=g)
    return boxes, scores, classes


@pytest.mark.parametrize("n,seed", [(1, 0), (60, 1), (300, 2), (5000, 3)])
def test_nms_matches_brute_force(n, seed):
    boxes, scores, classes = _random_boxes(n, seed)
    if n > 1000:  # the large-input path; compare on a subset the reference can afford
        keep = batched_nms(boxes, scores, classes, 0.5, max_det=40)
        top = scores.argsort(descending=True)[:400]
        ref = _reference_nms(boxes[top].tolist(), scores[top].tolist(), classes[top].tolist(), 0.5)
        assert keep.tolist() == top[ref][:40].tolist()
        return
    keep = batched_nms(boxes, scores, classes, 0.5)
    ref = _reference_nms(boxes.tolist(), scores.tolist(), classes.tolist(), 0.5)
    assert keep.tolist() == ref
    keep_all = nms(boxes, scores, 0.3)
    ref_all = _reference_nms(boxes.tolist(), scores.tolist(), [0] * n, 0.3)
    assert keep_all.tolist() == ref_all


def test_box_iou_known_values():
    a = torch.tensor([[0.0, 0, 10, 10]])
    b = torch.tensor([[0.0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30]])
    assert box_iou(a, b)[0].tolist() == pytest.approx([1.0, 1 / 3, 0.0])


def test_non_max_suppression_scores_and_classes():
    # two overlapping boxes of class 1, one distant box of class 0; [x, y, w, h, obj, c0, c1]
    pred = torch.tensor(
        [
            [
                [50, 50, 20, 20, 0.9, 0.1, 0.9],
                [51, 50, 20, 20, 0.8, 0.1, 0.9],
                [10, 10, 8, 8, 0.5, 1.0, 0.0],
            ]
        ]
    )
    (det,) = non_max_suppression(pred, conf_thres=0.2, iou_thres=0.5)
    rows = sorted(det.tolist(), key=lambda r: -r[4])
    assert len(rows) == 2
    assert rows[0] == pytest.approx([40, 40, 60, 60, 0.81, 1])
    assert rows[1] == pytest.approx([6, 6, 14, 14, 0.5, 0])


@pytest.fixture(scope="module")
def val_set(tmp_path_factory) -> Path:
    return synth_dataset(tmp_path_factory.mktemp("v") / "val", images=6, size=96, seed=5)


class _Oracle(torch.nn.Module):
    """Emits the ground truth (letterboxed, as decoded head output) for each image in order."""

    def __init__(self, ds, jitter: float = 0.0) -> None:
        super().__init__()
        self.ds, self.i, self.jitter = ds, 0, jitter

    def forward(self, x):
        outs = []
        for _ in range(len(x)):
            _, t, _ = self.ds[self.i]
            self.i += 1
            s = self.ds.img_size
            rows = torch.zeros((max(len(t), 1), 5 + self.ds.nc))
            if len(t):
                rows[:, :4] = t[:, 2:] * s
                rows[:, 0] += self.jitter * rows[:, 2]
                rows[:, 4] = 1.0
                rows[torch.arange(len(t)), 5 + t[:, 1].long()] = 1.0
            outs.append(rows)
        n = max(len(o) for o in outs)
        return torch.stack([torch.cat((o, torch.zeros(n - len(o), o.shape[1]))) for o in outs])


def test_perfect_predictions_score_one(val_set):
    ds = load_dataset(val_set, 64)
    res = evaluate(_Oracle(ds), ds, 64, batch_size=4, progress=False)
    assert res["map"] == pytest.approx(1.0, abs=1e-3) and res["map50"] == pytest.approx(
        1.0, abs=1e-3
    )
    shifted = evaluate(_Oracle(ds, jitter=0.3), ds, 64, batch_size=4, progress=False)
    assert shifted["map50"] > 0.9 and shifted["map"] < 0.7  # IoU ~0.54: only low thresholds
    gt = ds.coco_gt()["annotations"]
    wrong_class = [
        {
            **{k: a[k] for k in ("image_id", "bbox")},
            "category_id": a["category_id"] % 3 + 1,
            "score": 1.0,
        }
        for a in gt
    ]
    assert coco_map(ds, wrong_class, [r.image_id for r in ds.records])["map"] == 0.0
    assert coco_map(ds, [], [1])["map"] == 0.0


def test_model_with_wrong_class_count_is_an_input_error(val_set):
    from qdq_optimizer.errors import InputError
    from trainer.models import build_model

    with pytest.raises(InputError, match="classes"):
        evaluate(build_model("yolov7-tiny", nc=5, width=0.25), val_set, 64, progress=False)


@pytest.fixture(scope="module")
def trained():
    if not FIXTURE.is_file():
        pytest.skip("fixtures/checkpoints/yolov7-tiny-synth.pt not present")
    from trainer.checkpoint import load_model, read_checkpoint

    return load_model(FIXTURE), read_checkpoint(FIXTURE)["img_size"]


def test_fixture_checkpoint_is_a_useful_baseline(trained, tmp_path_factory):
    model, size = trained
    val = synth_dataset(tmp_path_factory.mktemp("b") / "val", images=24, size=256, seed=1)
    res = evaluate(model, val, size, batch_size=24, progress=False)
    assert res["map50"] > 0.8 and res["map"] > 0.5, res


def test_onnx_and_pytorch_agree_and_cli_table(trained, val_set, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    model, size = trained
    fused = model.fuse()
    onnx_path = tmp_path / "m.onnx"
    torch.onnx.export(
        fused,
        torch.rand(1, 3, size, size),
        str(onnx_path),
        input_names=["images"],
        output_names=["outputs"],
        opset_version=13,
        dynamo=False,
    )  # fixed batch 1: evaluate() splits batches for it
    a = evaluate(fused, val_set, size, batch_size=4, progress=False)
    b = evaluate(onnx_path, val_set, size, batch_size=4, progress=False)
    assert abs(a["map"] - b["map"]) < 2e-3 and abs(a["map50"] - b["map50"]) < 2e-3
    assert main(["eval", str(FIXTURE), "--data", str(val_set)]) == 0
    out = capsys.readouterr().out
    assert "mAP@0.5:0.95" in out
    assert any(abs(float(v) - a["map"]) < 2e-3 for v in re.findall(r"\d\.\d{4}", out))
    assert main(["eval", str(onnx_path), "--data", str(tmp_path / "missing")]) == 2
