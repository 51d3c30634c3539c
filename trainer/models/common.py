"""Building blocks of the YOLOv7 family, with the official attribute names.

The attribute names (``conv``/``bn``, ``cv1``..``cv7``, ``rbr_dense``/``rbr_1x1``, ``m``, ``ia``/``im``,
``anchors``/``anchor_grid``) are what make ``state_dict`` keys equal to the official checkpoints',
so released weights load without renaming. ``fuse()`` methods fold BatchNorm / re-parameterise in
place, because quantization (like TensorRT) works on the fused convolutions.
"""

from __future__ import annotations

import torch
from torch import nn

BN_EPS = 1e-3  # the official yolov7 initialize_weights() setting; not stored in state_dicts
BN_MOMENTUM = 0.03


def autopad(k: int, p: int | None = None) -> int:
    """'Same' padding for odd kernels."""
    return k // 2 if p is None else p


def make_bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=BN_EPS, momentum=BN_MOMENTUM)


def fuse_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """One Conv2d (with bias) computing conv followed by an inference-mode BatchNorm."""
    fused = nn.Conv2d(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        dilation=conv.dilation,
        groups=conv.groups,
        bias=True,
    ).to(conv.weight.device)
    with torch.no_grad():
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        fused.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
        bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
        fused.bias.copy_((bias - bn.running_mean) * scale + bn.bias)
    fused.requires_grad_(conv.weight.requires_grad)
    return fused


class Conv(nn.Module):
    """Conv2d + BatchNorm + activation (SiLU; YOLOv7-tiny uses LeakyReLU 0.1)."""

    def __init__(self, c1: int, c2: int, k: int = 1, s: int = 1, act: str = "silu") -> None:
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, autopad(k), bias=False)
        self.bn: nn.BatchNorm2d | None = make_bn(c2)
        self.act = nn.LeakyReLU(0.1, inplace=True) if act == "leaky" else nn.SiLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        return self.act(x)

    def fuse(self) -> None:
        if self.bn is not None:
            self.conv = fuse_conv_bn(self.conv, self.bn)
            self.bn = None


class Concat(nn.Module):
    def __init__(self, dim: int = 1) -> None:
        super().__init__()
        self.d = dim

    def forward(self, xs: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(xs, self.d)


class MP(nn.Module):
    """2x2 stride-2 max pool (the 'MP' branch of the down-sampling blocks)."""

    def __init__(self, k: int = 2) -> None:
        super().__init__()
        self.m = nn.MaxPool2d(kernel_size=k, stride=k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.m(x)


class SP(nn.Module):
    """Stride-1 'same' max pool (YOLOv7-tiny's spatial pyramid)."""

    def __init__(self, k: int = 3, s: int = 1) -> None:
        super().__init__()
        self.m = nn.MaxPool2d(kernel_size=k, stride=s, padding=k // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.m(x)


class SPPCSPC(nn.Module):
    """CSP spatial pyramid: MaxPool 5/9/13 of one branch concatenated, joined with a shortcut branch."""

    def __init__(self, c1: int, c2: int, e: float = 0.5, k: tuple[int, ...] = (5, 9, 13)) -> None:
        super().__init__()
        c_ = int(2 * c2 * e)
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c1, c_, 1, 1)
        self.cv3 = Conv(c_, c_, 3, 1)
        self.cv4 = Conv(c_, c_, 1, 1)
        self.m = nn.ModuleList(nn.MaxPool2d(kernel_size=x, stride=1, padding=x // 2) for x in k)
        self.cv5 = Conv(4 * c_, c_, 1, 1)
        self.cv6 = Conv(c_, c_, 3, 1)
        self.cv7 = Conv(2 * c_, c2, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.cv4(self.cv3(self.cv1(x)))
        y1 = self.cv6(self.cv5(torch.cat([x1] + [m(x1) for m in self.m], 1)))
        y2 = self.cv2(x)
        return self.cv7(torch.cat((y1, y2), dim=1))


class RepConv(nn.Module):
    """RepVGG-style block: 3x3+BN, 1x1+BN (+ identity BN) summed; ``fuse()`` makes one 3x3 conv."""

    def __init__(self, c1: int, c2: int, k: int = 3, s: int = 1) -> None:
        super().__init__()
        self.in_channels, self.out_channels, self.groups = c1, c2, 1
        self.act = nn.SiLU(inplace=True)
        self.rbr_identity = make_bn(c1) if c1 == c2 and s == 1 else None
        self.rbr_dense = nn.Sequential(nn.Conv2d(c1, c2, k, s, autopad(k), bias=False), make_bn(c2))
        self.rbr_1x1 = nn.Sequential(
            nn.Conv2d(c1, c2, 1, s, autopad(k) - k // 2, bias=False), make_bn(c2)
        )
        self.rbr_reparam: nn.Conv2d | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.rbr_reparam is not None:
            return self.act(self.rbr_reparam(x))
        out = self.rbr_dense(x) + self.rbr_1x1(x)
        if self.rbr_identity is not None:
            out = out + self.rbr_identity(x)
        return self.act(out)

    def fuse(self) -> None:
        """Re-parameterise into ``rbr_reparam`` (the official deploy key) and drop the branches."""
        if self.rbr_reparam is not None:
            return
        dense = fuse_conv_bn(self.rbr_dense[0], self.rbr_dense[1])
        one = fuse_conv_bn(self.rbr_1x1[0], self.rbr_1x1[1])
        k = dense.kernel_size[0]
        with torch.no_grad():
            weight = dense.weight.clone()
            c = k // 2
            weight[:, :, c : c + 1, c : c + 1] += one.weight
            bias = dense.bias + one.bias
            if self.rbr_identity is not None:
                bn = self.rbr_identity
                ident = torch.zeros_like(weight)
                for i in range(self.in_channels):
                    ident[i, i, c, c] = 1.0
                scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
                weight += ident * scale.view(-1, 1, 1, 1)
                bias = bias + bn.bias - bn.running_mean * scale
            dense.weight.copy_(weight)
            dense.bias.copy_(bias)
        self.rbr_reparam = dense
        self.rbr_dense = None
        self.rbr_1x1 = None
        self.rbr_identity = None


class ImplicitA(nn.Module):
    """Learned additive input offset of the training-time IDetect head."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.implicit = nn.Parameter(torch.zeros(1, c, 1, 1))
        nn.init.normal_(self.implicit, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.implicit + x


class ImplicitM(nn.Module):
    """Learned multiplicative output scale of the training-time IDetect head."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.implicit = nn.Parameter(torch.ones(1, c, 1, 1))
        nn.init.normal_(self.implicit, mean=1.0, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.implicit * x


class Detect(nn.Module):
    """YOLO head: one 1x1 conv per level; eval mode decodes to ``[B, N, 5 + nc]`` pixel xywh.

    With ``implicit=True`` it is the official training-time IDetect (keys ``ia.*``/``im.*``);
    ``fuse()`` folds those into the 1x1 convs, giving the deploy Detect.
    """

    def __init__(
        self,
        nc: int,
        anchors: list[list[int]],
        ch: list[int],
        strides: list[int],
        implicit: bool = False,
    ) -> None:
        super().__init__()
        self.nc = nc
        self.no = nc + 5
        self.nl = len(anchors)
        self.na = len(anchors[0]) // 2
        a = torch.tensor(anchors, dtype=torch.float32).view(self.nl, -1, 2)
        self.stride = torch.tensor(strides, dtype=torch.float32)  # plain attribute, as official
        self.strides = [float(s) for s in strides]  # Python floats: constants when traced
        self.register_buffer("anchors", a / self.stride.view(-1, 1, 1))  # grid units
        self.register_buffer("anchor_grid", a.clone().view(self.nl, 1, -1, 1, 1, 2))  # pixels
        self.m = nn.ModuleList(nn.Conv2d(c, self.no * self.na, 1) for c in ch)
        self.ia: nn.ModuleList | None = None
        self.im: nn.ModuleList | None = None
        if implicit:
            self.ia = nn.ModuleList(ImplicitA(c) for c in ch)
            self.im = nn.ModuleList(ImplicitM(self.no * self.na) for _ in ch)
        self._init_biases()

    def _init_biases(self) -> None:
        """Objectness/class priors so training from scratch starts stable (as upstream does)."""
        with torch.no_grad():
            for mi, s in zip(self.m, self.stride.tolist(), strict=True):
                b = mi.bias.view(self.na, -1)
                b[:, 4] += torch.log(torch.tensor(8 / (640 / s) ** 2))
                b[:, 5:] += torch.log(torch.tensor(0.6 / (self.nc - 0.99)))

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor] | torch.Tensor:
        raw: list[torch.Tensor] = []
        for i in range(self.nl):
            x = xs[i]
            if self.ia is not None:
                x = self.ia[i](x)
            x = self.m[i](x)
            if self.im is not None:
                x = self.im[i](x)
            bs, _, ny, nx = x.shape
            raw.append(x.view(bs, self.na, self.no, ny, nx).permute(0, 1, 3, 4, 2).contiguous())
        if self.training:
            return raw
        return self.decode(raw)

    def decode(self, raw: list[torch.Tensor]) -> torch.Tensor:
        """Per-level maps -> ``[B, N, no]``; grids come from the map sizes (traceable for ONNX)."""
        out = []
        for i, x in enumerate(raw):
            bs, na, ny, nx, no = x.shape
            yv, xv = torch.meshgrid(
                torch.arange(ny, device=x.device, dtype=x.dtype),
                torch.arange(nx, device=x.device, dtype=x.dtype),
                indexing="ij",
            )
            grid = torch.stack((xv, yv), 2).view(1, 1, ny, nx, 2)
            y = x.sigmoid()
            xy = (y[..., 0:2] * 2.0 - 0.5 + grid) * self.strides[i]
            wh = (y[..., 2:4] * 2.0) ** 2 * self.anchor_grid[i].to(x.dtype)
            y = torch.cat((xy, wh, y[..., 4:]), -1)
            out.append(y.view(bs, -1, no))
        return torch.cat(out, 1)

    def fuse(self) -> None:
        """Fold ImplicitA / ImplicitM into the 1x1 convs (the official IDetect.fuse)."""
        if self.ia is None or self.im is None:
            return
        with torch.no_grad():
            for i, conv in enumerate(self.m):
                w = conv.weight.view(conv.out_channels, -1)
                conv.bias += w @ self.ia[i].implicit.view(-1)
                scale = self.im[i].implicit.view(-1)
                conv.bias *= scale
                conv.weight *= scale.view(-1, 1, 1, 1)
        self.ia = None
        self.im = None
