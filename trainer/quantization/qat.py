"""QAT by self-distillation (the seed recipe), single process, DDP under torchrun, or CPU gloo.

The fake-quant model learns to reproduce a frozen float copy of itself: the loss is the sum of
MSEs between the outputs of every ``supervision_stride``-th top-level layer (plus the layer before
the head). No labels are used. Scales (amax) are buffers, so Adam never moves them: QAT trains
the weights against the scales that calibration (and the optimizer's scale groups) fixed.
"""

from __future__ import annotations

import copy
import json
import math
import os
import socket
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from qdq_optimizer.errors import UsageError
from qdq_optimizer.fileio import write_text_atomic

from .calibrate import prepare_images
from .insert import set_quant_enabled

# the callbacks train_qat, train_qat_spawn and run_qat take (one signature for all three)
LoaderFn = Callable[[], Iterable]
EvaluateFn = Callable[[nn.Module], dict]
SaveFn = Callable[[nn.Module, dict], None]

# the seed's schedule: epochs 0-2 / 3-7 / 8-9 of 10
LR_LOW, LR_HIGH = 1e-6, 1e-5


def lr_for_epoch(epoch: int, epochs: int) -> float:
    """The seed's 0-2 / 3-7 / 8-9 of 10 epochs, scaled: each epoch's middle picks its phase."""
    phase = (epoch + 0.5) * 10 / max(epochs, 1)
    return LR_LOW if phase < 3 or phase >= 8 else LR_HIGH


def top_layers(model: nn.Module) -> list[nn.Module]:
    """``model.model`` (YOLO layer list) when present, else the direct children."""
    seq = getattr(model, "model", None)
    if isinstance(seq, (nn.Sequential, nn.ModuleList)):
        return list(seq)
    return list(model.children())


def supervision_indices(n_layers: int, stride: int) -> list[int]:
    """Every ``stride``-th layer except the head, plus the layer right before the head."""
    if stride < 1:
        raise UsageError(f"--supervision-stride must be >= 1, got {stride}")
    if n_layers < 2:
        return list(range(n_layers))
    keep = set(range(0, n_layers - 1, stride))
    keep.add(n_layers - 2)
    return sorted(keep)


@dataclass
class QATConfig:
    epochs: int = 10
    iters: int = 200  # optimizer steps per epoch (per process)
    supervision_stride: int = 1
    device: str = "cpu"
    amp: bool | None = None  # None: on for CUDA
    nproc: int = 1
    seed: int = 0
    progress: bool = True


@dataclass
class QATResult:
    epochs: list[dict] = field(default_factory=list)
    best_epoch: int | None = None
    best_map: float | None = None
    world_size: int = 1
    rank_checksums: list[float] = field(default_factory=list)  # equal when DDP kept ranks in sync


class _Recorder:
    """Forward hooks that keep the outputs of the supervised layers of one model."""

    def __init__(self, layers: list[nn.Module], indices: list[int]) -> None:
        self.outputs: dict[int, object] = {}
        self.handles = [layers[i].register_forward_hook(self._hook(i)) for i in indices]

    def _hook(self, i: int):
        def hook(_m, _inp, out):
            self.outputs[i] = out

        return hook

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def _tensors(x) -> list[torch.Tensor]:
    if isinstance(x, torch.Tensor):
        return [x]
    if isinstance(x, (list, tuple)):
        return [t for y in x for t in _tensors(y)]
    return []


def distill_loss(student: dict[int, object], teacher: dict[int, object]) -> torch.Tensor:
    """Sum of MSEs over every supervised layer output (the seed's quant loss)."""
    loss = None
    for i, out in student.items():
        for s, t in zip(_tensors(out), _tensors(teacher[i]), strict=True):
            term = nn.functional.mse_loss(s.float(), t.float())
            loss = term if loss is None else loss + term
    if loss is None:
        raise UsageError("no supervised layer produced a tensor")
    return loss


class _Distill(nn.Module):
    """Student forward returning the loss, so DDP sees exactly the parameters the loss uses."""

    def __init__(self, model: nn.Module, recorder: _Recorder) -> None:
        super().__init__()
        self.model = model
        self.recorder = recorder

    def forward(self, imgs: torch.Tensor, teacher_outputs: dict[int, object]) -> torch.Tensor:
        self.model(imgs)
        return distill_loss(self.recorder.outputs, teacher_outputs)


def float_copy(model: nn.Module) -> nn.Module:
    """Frozen float teacher: the same fused weights with every quantizer bypassed."""
    teacher = copy.deepcopy(model)
    set_quant_enabled(teacher, False)
    teacher.eval().requires_grad_(False)
    return teacher


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _progress(enabled: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        disable=not enabled,
        transient=False,
    )


def train_qat(
    model: nn.Module,
    loader_fn: LoaderFn,
    cfg: QATConfig,
    evaluate_fn: EvaluateFn | None = None,
    save_fn: SaveFn | None = None,
) -> QATResult:
    """QAT in this process (one rank if a process group is initialised); returns per-epoch results.

    ``evaluate_fn(model) -> {"map50", "map"}`` runs after each epoch (rank 0 only); ``save_fn``
    is called with the model whenever mAP@0.5:0.95 improves (every epoch when not evaluating).
    """
    rank, world = _world()
    device = torch.device(cfg.device)
    use_amp = (device.type == "cuda") if cfg.amp is None else (cfg.amp and device.type == "cuda")
    model.to(device)
    teacher = float_copy(model).to(device)
    set_quant_enabled(model, True)
    model.train().requires_grad_(True)

    layers_s, layers_t = top_layers(model), top_layers(teacher)
    indices = supervision_indices(len(layers_s), cfg.supervision_stride)
    rec_s, rec_t = _Recorder(layers_s, indices), _Recorder(layers_t, indices)

    net: nn.Module = _Distill(model, rec_s)
    if world > 1:
        ids = [device.index] if device.type == "cuda" else None
        # layers that feed only the head are not in the loss at stride > 1: find_unused_parameters
        net = nn.parallel.DistributedDataParallel(net, device_ids=ids, find_unused_parameters=True)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=LR_LOW)
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)

    result = QATResult()
    loader = loader_fn()
    try:
        n_batches = len(loader)  # type: ignore[arg-type]
    except TypeError:
        raise UsageError("the QAT loader must have a length") from None
    steps = min(cfg.iters, n_batches // world)
    if steps < 1:
        raise UsageError(f"QAT needs at least {world} batches, the data set gives {n_batches}")

    with _progress(cfg.progress and rank == 0) as bar:
        for epoch in range(cfg.epochs):
            lr = lr_for_epoch(epoch, cfg.epochs)
            for g in optimizer.param_groups:
                g["lr"] = lr
            torch.manual_seed(cfg.seed + epoch)  # same shuffle on every rank: disjoint shards
            task = bar.add_task(
                f"QAT epoch {epoch + 1}/{cfg.epochs}", total=steps, info=f"lr {lr:g}"
            )
            model.train()
            total, done = 0.0, 0
            for i, batch in enumerate(loader):
                if done >= steps:
                    break
                if i % world != rank:
                    continue
                imgs = prepare_images(batch, device)
                with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
                    with torch.no_grad():
                        teacher(imgs)
                    loss = net(imgs, rec_t.outputs)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                total += float(loss.detach())
                done += 1
                bar.update(task, advance=1, info=f"lr {lr:g} loss {total / done:.3g}")
            record = {"epoch": epoch, "lr": lr, "loss": total / max(done, 1), "iters": done}
            if rank == 0:
                model.eval()
                if evaluate_fn is not None:
                    record.update({k: float(v) for k, v in evaluate_fn(model).items()})
                # without evaluation the last epoch is kept (scores grow with the epoch)
                score = record["map"] if "map" in record else float(epoch)
                if result.best_map is None or score > result.best_map:
                    result.best_map, result.best_epoch = score, epoch
                    if save_fn is not None:
                        save_fn(model, record)
            result.epochs.append(record)
            if world > 1:
                dist.barrier()
    rec_s.close()
    rec_t.close()
    model.eval()
    if evaluate_fn is None:
        result.best_map = None
    return result


# ---------------------------------------------------------------------------------------------
# multi-process on CPU (gloo) or GPUs (nccl)
def under_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1


def init_from_env(device: str) -> str:
    """Join the torchrun process group; returns this rank's device."""
    backend = "nccl" if device.startswith("cuda") else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend)
    if device.startswith("cuda"):
        local = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local)
        return f"cuda:{local}"
    return device


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn_worker(rank, world, port, model, loader_fn, cfg, evaluate_fn, out_dir) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    try:
        best_path = Path(out_dir) / "best.pt"

        def save(m: nn.Module, _record: dict) -> None:
            torch.save(m.state_dict(), best_path)

        result = train_qat(model, loader_fn, cfg, evaluate_fn, save if rank == 0 else None)
        torch.save(model.state_dict(), Path(out_dir) / f"final{rank}.pt")
        checksum = torch.tensor([sum(float(p.detach().double().sum()) for p in model.parameters())])
        sums = [torch.zeros(1, dtype=checksum.dtype) for _ in range(world)]
        dist.all_gather(sums, checksum)
        result.world_size, result.rank_checksums = world, [float(s) for s in sums]
        if rank == 0:
            (Path(out_dir) / "result.json").write_text(json.dumps(asdict(result)))
        # Leave together: a rank tearing gloo down while its peer still holds the connection
        # aborted the peer now and then ("terminate called without an active exception").
        dist.barrier()
    finally:
        dist.destroy_process_group()


def train_qat_spawn(
    model: nn.Module,
    loader_fn: LoaderFn,
    cfg: QATConfig,
    evaluate_fn: EvaluateFn | None = None,
    save_fn: SaveFn | None = None,
) -> QATResult:
    """``cfg.nproc`` CPU processes with gloo (torch.multiprocessing spawn); DDP averages gradients.

    ``model``, ``loader_fn`` and ``evaluate_fn`` are pickled to the workers (use module-level
    functions or ``functools.partial``). The best weights come back into ``model``.
    """
    if cfg.device != "cpu":
        raise UsageError("--nproc spawns CPU processes; for several GPUs use torchrun")
    with tempfile.TemporaryDirectory(prefix="qdqopt-qat-") as tmp:
        mp.spawn(
            _spawn_worker,
            args=(cfg.nproc, _free_port(), model.cpu(), loader_fn, cfg, evaluate_fn, tmp),
            nprocs=cfg.nproc,
            join=True,
        )
        raw = json.loads((Path(tmp) / "result.json").read_text())
        best = Path(tmp) / "best.pt"
        state = torch.load(best if best.exists() else Path(tmp) / "final0.pt", weights_only=True)
    model.load_state_dict(state)
    result = QATResult(**raw)
    if save_fn is not None:
        save_fn(model, result.epochs[result.best_epoch] if result.best_epoch is not None else {})
    return result


def run_qat(
    model: nn.Module,
    loader_fn: LoaderFn,
    cfg: QATConfig,
    evaluate_fn: EvaluateFn | None = None,
    save_fn: SaveFn | None = None,
) -> QATResult:
    """Dispatch: torchrun ranks, ``nproc`` spawned CPU processes, or this process alone."""
    if under_torchrun():
        cfg = QATConfig(**{**asdict(cfg), "device": init_from_env(cfg.device)})
    elif cfg.nproc > 1:
        return train_qat_spawn(model, loader_fn, cfg, evaluate_fn, save_fn)
    return train_qat(model, loader_fn, cfg, evaluate_fn, save_fn)


def write_summary(path: str | os.PathLike, summary: dict) -> None:
    """summary.json: every evaluation of the run (origin, PTQ, each QAT epoch, best)."""

    def clean(v):
        if isinstance(v, float) and not math.isfinite(v):
            return None
        return v

    write_text_atomic(path, json.dumps(summary, indent=2, default=clean) + "\n")
