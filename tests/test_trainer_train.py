"""Loss and training loop: the loss learns, train() writes a loadable checkpoint, bad input."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("PIL")

from cli import main  # noqa: E402
from trainer.checkpoint import load_model, read_checkpoint  # noqa: E402
from trainer.data import create_dataloader, synth_dataset  # noqa: E402
from trainer.loss import YoloLoss, bbox_ciou  # noqa: E402
from trainer.models import build_model  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory) -> Path:
    return synth_dataset(tmp_path_factory.mktemp("t") / "set", images=8, size=64, seed=7)


def test_ciou_identity_and_disjoint():
    a = torch.tensor([[5.0, 5, 4, 4], [5, 5, 4, 4]])
    b = torch.tensor([[5.0, 5, 4, 4], [50, 50, 4, 4]])
    c = bbox_ciou(a, b)
    assert c[0].item() == pytest.approx(1.0, abs=1e-5)
    assert c[1].item() < 0  # no overlap: the centre-distance term makes it negative


def test_loss_assigns_targets_and_decreases(tiny_set):
    torch.manual_seed(0)
    model = build_model("yolov7-tiny", nc=3, width=0.25).train()
    imgs, targets, _ = next(iter(create_dataloader(tiny_set, 64, batch_size=8)))
    crit = YoloLoss(model, img_size=64)
    b, a, gj, gi, tbox, tcls, anch = crit._assign(model(imgs)[0], targets, 0)
    assert len(b) > 0 and set(b.tolist()) <= set(range(8))
    assert (gi < 8).all() and (gj < 8).all() and (tcls < 3).all()
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    losses = []
    for _ in range(16):
        loss, parts = crit(model(imgs), targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        assert parts.shape == (3,) and torch.isfinite(parts).all()
    assert min(losses[-3:]) < 0.8 * losses[0]
    empty, _ = crit(model(imgs), torch.zeros((0, 6)))  # images without objects are fine
    assert torch.isfinite(empty)


def test_train_writes_loadable_checkpoint(tiny_set, tmp_path):
    from trainer.train import train

    out = tmp_path / "m.pt"
    summary = train(
        tiny_set,
        out,
        width=0.25,
        img_size=64,
        epochs=2,
        batch_size=4,
        val_data=tiny_set,
        progress=False,
        log=lambda s: None,
    )
    assert [h["epoch"] for h in summary["history"]] == [1, 2]
    assert all("map" in h for h in summary["history"])
    ck = read_checkpoint(out)
    assert ck["img_size"] == 64 and ck["names"] == ["circle", "rectangle", "triangle"]
    assert ck["epoch"] == summary["best"]["epoch"]
    model = load_model(out)
    assert model.cfg["nc"] == 3 and model(torch.rand(1, 3, 64, 64)).shape[-1] == 8
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]  # nothing else written


def test_cli_train_and_bad_input(tiny_set, tmp_path, capsys):
    out = tmp_path / "c.pt"
    rc = main(["train", "--data", str(tiny_set), "--save", str(out), "--epochs", "1",
               "--img-size", "64", "--batch-size", "8", "--no-progress"])  # fmt: skip
    assert rc == 0 and out.is_file()
    assert "saved" in capsys.readouterr().out
    bad = tmp_path / "bad.pt"
    assert main(["train", "--data", str(tmp_path / "none"), "--save", str(bad)]) == 2
    assert main(["train", "--data", str(tiny_set), "--save", str(bad), "--img-size", "70"]) == 2
    assert main(["train", "--data", str(tiny_set), "--save", str(tmp_path / "no" / "x.pt")]) == 2
    assert not bad.exists()
    assert "error" in capsys.readouterr().err


def test_train_seed_repeats_shuffle_and_augmentation(tiny_set, tmp_path):
    """Same --seed, same weights: the shuffle and the augmentation are both seeded."""
    from trainer.train import train

    def weights(seed: int, name: str) -> dict:
        out = tmp_path / name
        train(tiny_set, out, width=0.25, img_size=64, epochs=1, batch_size=4, seed=seed,
              progress=False, log=lambda s: None)  # fmt: skip
        return load_model(out).state_dict()

    a, b, c = weights(3, "a.pt"), weights(3, "b.pt"), weights(4, "c.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
