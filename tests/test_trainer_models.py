"""Built-in YOLOv7 models: official key names/shapes, fuse(), decode, export; checkpoint loading."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from qdq_optimizer.errors import InputError, UsageError  # noqa: E402
from trainer.checkpoint import load_model, read_checkpoint, save_checkpoint  # noqa: E402
from trainer.models import build_model  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def yolov7_full():
    return build_model("yolov7", nc=80)


def _randomise_bn(model) -> None:
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(m.num_features, generator=g) - 0.5)


def test_yolov7_official_keys_and_shapes(yolov7_full):
    sd = yolov7_full.state_dict()
    expected = {
        "model.0.conv.weight": (32, 3, 3, 3),
        "model.0.bn.running_mean": (32,),
        "model.11.conv.weight": (256, 256, 1, 1),  # ELAN transition after a 4-way concat
        "model.51.cv1.conv.weight": (512, 1024, 1, 1),  # SPPCSPC
        "model.51.cv7.conv.weight": (512, 1024, 1, 1),
        "model.102.rbr_dense.0.weight": (256, 128, 3, 3),
        "model.102.rbr_1x1.0.weight": (256, 128, 1, 1),
        "model.104.rbr_dense.1.running_var": (1024,),
        "model.105.m.0.weight": (255, 256, 1, 1),
        "model.105.m.2.bias": (255,),
        "model.105.anchors": (3, 3, 2),
        "model.105.anchor_grid": (3, 1, 3, 1, 1, 2),
    }
    for key, shape in expected.items():
        assert tuple(sd[key].shape) == shape, key
    # "Model Summary: 407 layers, 37620125 parameters" for cfg/deploy/yolov7.yaml upstream
    # (WongKinYiu/yolov7 issue #504), Detect alone 457725
    assert sum(p.numel() for p in yolov7_full.parameters()) == 37620125
    assert sum(p.numel() for p in yolov7_full.model[105].parameters()) == 457725
    assert len(yolov7_full.model) == 106
    # anchors are stored in grid units, anchor_grid in pixels (as upstream)
    assert torch.allclose(sd["model.105.anchors"][0, 0], torch.tensor([12 / 8, 16 / 8]))
    assert sd["model.105.anchor_grid"][2, 0, 2, 0, 0].tolist() == [459.0, 401.0]


def test_layer_from_indexes_match_official_wiring(yolov7_full):
    m = yolov7_full.model
    assert [x.i for x in m][:3] == [0, 1, 2]
    assert m[10].f == [-1, -3, -5, -6]
    assert m[14].f == -3
    assert m[54].f == 37 and m[55].f == [-1, -2]
    assert m[80].f == [-1, -3, 63] and m[93].f == [-1, -3, 51]
    assert m[102].f == 75 and m[105].f == [102, 103, 104]
    assert type(m[51]).__name__ == "SPPCSPC" and type(m[53]).__name__ == "Upsample"


def test_tiny_layers_match_upstream_listing():
    tiny = build_model("yolov7-tiny", nc=80)
    m = tiny.model
    assert len(m) == 78
    count = lambda i: sum(p.numel() for p in m[i].parameters())  # noqa: E731
    # per-layer parameter counts printed by upstream for yolov7-tiny (yolov7 PR #1672 log)
    assert (count(52), count(58), count(60), count(62)) == (4160, 73984, 16512, 36992)
    assert m[36].f == [-1, -7] and m[40].f == 21 and m[59].f == [-1, 47] and m[77].f == [74, 75, 76]
    assert isinstance(m[1].act, torch.nn.LeakyReLU) and m[1].act.negative_slope == 0.1
    assert tuple(tiny.state_dict()["model.77.m.2.weight"].shape) == (255, 512, 1, 1)
    assert [m[i].m.kernel_size for i in (31, 32, 33)] == [5, 9, 13]


def test_width_and_classes():
    m = build_model("yolov7-tiny", nc=3, width=0.25)
    sd = m.state_dict()
    assert sd["model.0.conv.weight"].shape[0] == 8
    assert sd["model.77.m.0.weight"].shape[0] == 3 * 8
    with pytest.raises(UsageError):
        build_model("yolov9")
    with pytest.raises(UsageError):
        build_model("yolov7-tiny", nc=0)


def test_train_and_eval_outputs():
    m = build_model("yolov7-tiny", nc=3, width=0.25)
    x = torch.rand(2, 3, 96, 128)
    m.train()
    raw = m(x)
    assert [tuple(r.shape) for r in raw] == [(2, 3, 12, 16, 8), (2, 3, 6, 8, 8), (2, 3, 3, 4, 8)]
    m.eval()
    y = m(x)
    assert tuple(y.shape) == (2, 3 * (12 * 16 + 6 * 8 + 3 * 4), 8)


def test_decode_places_boxes_on_grid_with_anchors():
    m = build_model("yolov7-tiny", nc=2, width=0.25).eval()
    for conv in m.model[77].m:  # logits 0 -> sigmoid 0.5 everywhere
        torch.nn.init.zeros_(conv.weight)
        torch.nn.init.zeros_(conv.bias)
    y = m(torch.rand(1, 3, 64, 64))[0]
    # level 0 (stride 8, 8x8 cells), anchor 0, cell (row 0, col 1): centre ((1 + 0.5) * 8, 4)
    assert y[1].tolist() == pytest.approx([12.0, 4.0, 10.0, 13.0, 0.5, 0.5, 0.5])
    # level 2 (stride 32), anchor 2, last cell
    assert y[-1].tolist() == pytest.approx([48.0, 48.0, 373.0, 326.0, 0.5, 0.5, 0.5])


@pytest.mark.parametrize("name", ["yolov7-tiny", "yolov7"])
def test_fuse_preserves_outputs(name):
    m = build_model(name, nc=4, width=0.25, implicit=True)
    _randomise_bn(m)
    with torch.no_grad():
        for mod in m.modules():
            if type(mod).__name__ in ("ImplicitA", "ImplicitM"):
                mod.implicit.add_(torch.rand_like(mod.implicit) * 0.3)
    m.eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        ref = m(x)
        m.fuse()
        out = m(x)
    assert m.is_fused
    keys = m.state_dict().keys()
    assert not any(".bn." in k or ".ia." in k or ".im." in k or "rbr_dense" in k for k in keys)
    if name == "yolov7":
        assert "model.102.rbr_reparam.weight" in keys
    assert all(x.bn is None for x in m.modules() if type(x).__name__ == "Conv")
    torch.testing.assert_close(out, ref, rtol=1e-3, atol=1e-3)


def test_eval_forward_exports_to_onnx(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    m = build_model("yolov7-tiny", nc=3, width=0.25).eval().fuse()
    x = torch.rand(2, 3, 64, 64)
    path = tmp_path / "m.onnx"
    torch.onnx.export(
        m,
        x,
        str(path),
        input_names=["images"],
        output_names=["outputs"],
        opset_version=13,
        dynamic_axes={"images": {0: "batch"}, "outputs": {0: "batch"}},
        dynamo=False,
    )
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x3 = torch.rand(3, 3, 64, 64)
    got = sess.run(["outputs"], {"images": x3.numpy()})[0]
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(got), m(x3), rtol=1e-4, atol=1e-3)


# ----------------------------------------------------------------------------- checkpoints


def test_checkpoint_roundtrip_weights_only(tmp_path):
    m = build_model("yolov7-tiny", nc=3, width=0.25)
    _randomise_bn(m)
    m.names = ["a", "b", "c"]
    path = save_checkpoint(tmp_path / "c.pt", m, {"img_size": 64, "metrics": {"map": 0.5}})
    payload = torch.load(path, weights_only=True)
    assert payload["model_name"] == "yolov7-tiny" and payload["width"] == 0.25
    assert read_checkpoint(path)["img_size"] == 64
    loaded = load_model(path)
    assert loaded.names == ["a", "b", "c"] and not loaded.training
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), m.eval()(x))
    # a fused model saves and reloads fused; a bare state dict is recognised from its keys
    save_checkpoint(tmp_path / "f.pt", m.fuse())
    assert load_model(tmp_path / "f.pt").is_fused
    torch.save(m.state_dict(), tmp_path / "sd.pt")
    assert load_model(tmp_path / "sd.pt").is_fused
    with pytest.raises(InputError, match="class count"):
        load_model(path, nc=80)
    assert not list(tmp_path.glob(".*tmp"))


def test_not_a_model_is_an_input_error(tmp_path):
    (tmp_path / "text.pt").write_text("hello")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    torch.save({"a": torch.zeros(2)}, tmp_path / "dict.pt")
    for name in ("text.pt", "list.pt", "dict.pt", "missing.pt"):
        with pytest.raises(InputError) as err:
            load_model(tmp_path / name)
        assert "\n" not in str(err.value)
    from cli import main

    for name in ("list.pt", "text.pt"):
        assert main(["eval", str(tmp_path / name), "--data", str(tmp_path)]) == 2


def _fake_upstream(tmp_path: Path) -> Path:
    """A stand-in for the user's yolov7 checkout: same module paths as upstream."""
    repo = tmp_path / "yolov7"
    (repo / "models").mkdir(parents=True)
    (repo / "models" / "__init__.py").write_text("")
    names = ["Conv", "Concat", "MP", "SP", "SPPCSPC", "RepConv", "ImplicitA", "ImplicitM"]
    (repo / "models" / "common.py").write_text(
        "import trainer.models.common as _c\n"
        + "".join(f"class {n}(_c.{n}):\n    pass\n" for n in names)
    )
    (repo / "models" / "yolo.py").write_text(
        textwrap.dedent(
            """
            from trainer.models.common import Detect as _D
            from trainer.models.yolo import YoloModel as _M
            class IDetect(_D):
                pass
            class Model(_M):
                pass
            """
        )
    )
    return repo


def _write_upstream_checkpoint(repo: Path, out: Path) -> None:
    """Pickle a model whose classes live in the fake repo's ``models.*`` (like yolov7.pt)."""
    code = textwrap.dedent(
        f"""
        import sys, torch
        sys.path.insert(0, {str(repo)!r})
        import models.yolo as my, models.common as mc
        from trainer.models import build_model
        m = build_model("yolov7-tiny", nc=3, width=0.25, implicit=True)
        m.__class__ = my.Model
        m.model[77].__class__ = my.IDetect
        for mod in m.modules():
            if hasattr(mc, type(mod).__name__):
                mod.__class__ = getattr(mc, type(mod).__name__)
        torch.manual_seed(1)
        for p in m.parameters():
            p.data.normal_(0, 0.1)
        torch.save(m.state_dict(), {str(out.with_suffix(".ref"))!r})
        torch.save({{"model": m.half(), "optimizer": None, "epoch": -1}}, {str(out)!r})
        """
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_official_pickle_needs_trust_and_loads_with_stand_ins(tmp_path, capsys):
    repo = _fake_upstream(tmp_path)
    ck = tmp_path / "yolov7-tiny.pt"
    _write_upstream_checkpoint(repo, ck)
    with pytest.raises(InputError, match="execute arbitrary code"):
        load_model(ck)
    from cli import main

    assert main(["eval", str(ck), "--data", str(tmp_path)]) == 2
    assert "models" not in sys.modules or "yolov7" not in str(
        getattr(sys.modules["models"], "__file__", "")
    )
    m = load_model(ck, trust_checkpoint=True)  # restricted unpickler, repo NOT importable
    ref = torch.load(ck.with_suffix(".ref"), weights_only=True)
    assert m.cfg["implicit"] and m.cfg["nc"] == 3 and m.cfg["width"] == 0.25
    for k, v in ref.items():  # saved in half precision: compare at half precision
        want = v.half().float() if v.is_floating_point() else v
        torch.testing.assert_close(m.state_dict()[k], want, msg=k)
    m2 = load_model(ck, trust_checkpoint=True, yolov7_repo=repo)
    for k, v in m2.state_dict().items():
        torch.testing.assert_close(v, m.state_dict()[k])
    with pytest.raises(InputError, match="execute arbitrary code"):
        load_model(ck, yolov7_repo=repo)
    args = ["eval", str(ck), "--data", str(tmp_path / "none"), "--yolov7-repo", str(repo)]
    assert main(args) == 2  # refused before any unpickling: no trust flag
    assert "arbitrary code" in capsys.readouterr().err


def test_restricted_unpickler_runs_no_code(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (subprocess.call, (["touch", str(marker)],))

    ck = tmp_path / "evil.pt"
    torch.save({"model": Evil()}, ck)
    with pytest.raises(InputError):
        load_model(ck, trust_checkpoint=True)
    assert not marker.exists()
