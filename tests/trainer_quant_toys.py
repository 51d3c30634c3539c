"""Small models for the trainer.quantization tests (module level so they pickle to workers)."""

from __future__ import annotations

import torch
from torch import nn

from trainer.quantization.scale_sharing import ResidualAdd


class ConvBNAct(nn.Module):
    def __init__(self, a: int, b: int, k: int = 1, s: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(a, b, k, s, k // 2, bias=False)
        self.bn: nn.BatchNorm2d | None = nn.BatchNorm2d(b)
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        return self.act(self.bn(x) if self.bn is not None else x)

    def fuse(self) -> None:
        if self.bn is None:
            return
        bn, conv = self.bn, self.conv
        fused = nn.Conv2d(
            conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding
        )
        with torch.no_grad():
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            fused.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
            fused.bias.copy_(bn.bias - bn.running_mean * scale)
        self.conv, self.bn = fused, None


class Bottleneck(nn.Module):
    """yolov5 style: ``x + cv2(cv1(x))`` when ``add``."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.cv1, self.cv2, self.add = ConvBNAct(c, c), ConvBNAct(c, c, 3), True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.cv2(self.cv1(x)) if self.add else self.cv2(self.cv1(x))


class UserBlock(nn.Module):
    """A user block written with the ResidualAdd hook."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.body, self.add = ConvBNAct(c, c, 3), ResidualAdd()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.add(x, self.body(x))


class Toy(nn.Module):
    """stem -> bottleneck -> user block -> two convs -> concat -> maxpool -> conv -> deconv."""

    def __init__(self) -> None:
        super().__init__()
        self.model = nn.ModuleList(
            [
                ConvBNAct(3, 8, 3, 2),
                Bottleneck(8),
                UserBlock(8),
                ConvBNAct(8, 8),
                ConvBNAct(8, 8, 3),
                nn.MaxPool2d(2),
                ConvBNAct(16, 8),
                nn.ConvTranspose2d(8, 4, 2, 2),
            ]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.model
        x = m[2](m[1](m[0](x)))
        y = torch.cat([m[3](x), m[4](x)], 1)
        return m[7](m[6](m[5](y)))

    def fuse(self) -> Toy:
        for mod in self.modules():
            if isinstance(mod, ConvBNAct):
                mod.fuse()
        return self


def toy(seed: int = 0) -> Toy:
    torch.manual_seed(seed)
    model = Toy()
    with torch.no_grad():  # non-trivial BN statistics
        for mod in model.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.2, 0.2)
                mod.running_var.uniform_(0.5, 1.5)
    return model.eval()


def toy_batches(n: int = 4, batch: int = 2, size: int = 32, seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(batch, 3, size, size, generator=g) for _ in range(n)]


def toy_loader() -> list[torch.Tensor]:
    return toy_batches(6)
