"""Data sets: synthetic generator, COCO and yolov7 txt-list loaders, letterbox, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("PIL")

from cli import main  # noqa: E402
from qdq_optimizer.errors import InputError, UsageError  # noqa: E402
from trainer.data import create_dataloader, letterbox, load_dataset, synth_dataset  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    return synth_dataset(tmp_path_factory.mktemp("d") / "set", images=8, size=96, seed=3)


def _to_yolo_layout(src: Path, dst: Path) -> Path:
    """Rewrite a COCO set as the yolov7 txt-list layout (images/, labels/, list.txt)."""
    doc = json.loads((src / "annotations" / "instances.json").read_text())
    (dst / "images").mkdir(parents=True)
    (dst / "labels").mkdir()
    lines = []
    for im in doc["images"]:
        (dst / "images" / im["file_name"]).write_bytes(
            (src / "images" / im["file_name"]).read_bytes()
        )
        rows = []
        for a in doc["annotations"]:
            if a["image_id"] == im["id"]:
                x, y, w, h = a["bbox"]
                cx, cy = (x + w / 2) / im["width"], (y + h / 2) / im["height"]
                rows.append(
                    f"{a['category_id'] - 1} {cx} {cy} {w / im['width']} {h / im['height']}"
                )
        (dst / "labels" / Path(im["file_name"]).with_suffix(".txt")).write_text("\n".join(rows))
        lines.append(f"./images/{im['file_name']}")
    (dst / "list.txt").write_text("\n".join(lines) + "\n")
    return dst / "list.txt"


def test_synth_is_deterministic_and_coco(synth, tmp_path):
    again = synth_dataset(tmp_path / "again", images=8, size=96, seed=3)
    other = synth_dataset(tmp_path / "other", images=8, size=96, seed=4)
    ann = (synth / "annotations" / "instances.json").read_text()
    assert ann == (again / "annotations" / "instances.json").read_text()
    assert ann != (other / "annotations" / "instances.json").read_text()
    img = (synth / "images" / "000000.jpg").read_bytes()
    assert img == (again / "images" / "000000.jpg").read_bytes()
    doc = json.loads(ann)
    assert [c["name"] for c in doc["categories"]] == ["circle", "rectangle", "triangle"]
    assert len(doc["images"]) == 8 and len(doc["annotations"]) >= 8
    for a in doc["annotations"]:
        im = doc["images"][a["image_id"] - 1]
        x, y, w, h = a["bbox"]
        assert 0 <= x and 0 <= y and x + w <= im["width"] + 1 and y + h <= im["height"] + 1
        assert w >= 5 and h >= 5


def test_synth_refuses_non_empty_folder(synth):
    with pytest.raises(UsageError):
        synth_dataset(synth, images=2)
    assert main(["data", "synth", str(synth), "--images", "2"]) == 2


def test_cli_synth(tmp_path, capsys):
    assert main(["data", "synth", str(tmp_path / "s"), "--images", "3", "--size", "64"]) == 0
    assert "wrote 3 images" in capsys.readouterr().out
    assert len(list((tmp_path / "s" / "images").glob("*.jpg"))) == 3
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folder left


def test_letterbox_geometry():
    img = np.zeros((50, 100, 3), np.uint8)
    out, lb = letterbox(img, 64)
    assert out.shape == (64, 64, 3)
    assert lb.ratio == pytest.approx(0.64) and lb.pad == (0.0, 16.0) and lb.orig_hw == (50, 100)
    assert (out[:16] == 114).all() and (out[16:48] == 0).all() and (out[48:] == 114).all()


def test_coco_targets_map_back_to_annotations(synth):
    ds = load_dataset(synth, 64)
    assert ds.nc == 3 and ds.category_ids == [1, 2, 3]
    doc = json.loads((synth / "annotations" / "instances.json").read_text())
    for i in range(len(ds)):
        x, t, meta = ds[i]
        assert x.shape == (3, 64, 64) and 0 <= float(x.min()) and float(x.max()) <= 1
        lb = meta["letterbox"]
        px, py = lb.pad
        cx, cy, w, h = (t[:, 2:] * 64).T
        back = torch.stack(
            [
                (cx - w / 2 - px) / lb.ratio,
                (cy - h / 2 - py) / lb.ratio,
                w / lb.ratio,
                h / lb.ratio,
            ],
            1,
        )
        want = [a for a in doc["annotations"] if a["image_id"] == meta["image_id"]]
        assert torch.allclose(
            back, torch.tensor([a["bbox"] for a in want], dtype=torch.float32), atol=1e-3
        )
        assert t[:, 1].long().tolist() == [a["category_id"] - 1 for a in want]


def test_txt_list_layout_matches_coco(synth, tmp_path):
    lst = _to_yolo_layout(synth, tmp_path / "yolo")
    coco = load_dataset(synth, 64)
    for source in (lst, tmp_path / "yolo"):  # the list file, or the folder holding it
        yolo = load_dataset(source, 64)
        assert len(yolo) == len(coco) and yolo.category_ids == [0, 1, 2]
        for a, b in zip(coco.records, yolo.records, strict=True):
            assert np.allclose(a.boxes, b.boxes, atol=1e-3) and (a.classes == b.classes).all()
        assert len(yolo.coco_gt()["annotations"]) == len(coco.coco_gt()["annotations"])


def test_dataloader_batches(synth):
    loader = create_dataloader(synth, 64, batch_size=3, shuffle=False)
    imgs, targets, metas = next(iter(loader))
    assert imgs.shape == (3, 3, 64, 64) and len(metas) == 3
    assert set(targets[:, 0].long().tolist()) <= {0, 1, 2}
    counts = [len(loader.dataset.records[i].boxes) for i in range(3)]
    assert len(targets) == sum(counts)
    aug = create_dataloader(synth, 64, batch_size=8, shuffle=True, augment=True)
    _, t, _ = next(iter(aug))
    assert ((t[:, 2:4] >= 0) & (t[:, 2:4] <= 1)).all()


def _copy_set(src: Path, dst: Path) -> dict:
    (dst / "annotations").mkdir(parents=True)
    (dst / "images").symlink_to(src / "images")
    return json.loads((src / "annotations" / "instances.json").read_text())


def test_bad_data_is_a_one_line_input_error(synth, tmp_path):
    with pytest.raises(InputError, match="not found"):
        load_dataset(tmp_path / "nope", 64)
    doc = _copy_set(synth, tmp_path / "orphan")
    doc["annotations"][0]["image_id"] = 999
    (tmp_path / "orphan" / "annotations" / "instances.json").write_text(json.dumps(doc))
    with pytest.raises(InputError, match="image_id"):
        load_dataset(tmp_path / "orphan", 64)
    doc = _copy_set(synth, tmp_path / "missing")
    doc["images"][1]["file_name"] = "ghost.jpg"
    (tmp_path / "missing" / "annotations" / "instances.json").write_text(json.dumps(doc))
    with pytest.raises(InputError, match="ghost.jpg"):
        load_dataset(tmp_path / "missing", 64)
    (tmp_path / "junk" / "annotations").mkdir(parents=True)
    (tmp_path / "junk" / "annotations" / "instances.json").write_text("{not json")
    with pytest.raises(InputError, match="not a COCO"):
        load_dataset(tmp_path / "junk", 64)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError):
        load_dataset(tmp_path / "empty", 64)
