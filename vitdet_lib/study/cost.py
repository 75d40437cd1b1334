"""What a study run costs: one training step of the real detector timed on this machine, and
device-hour estimates for devices that are not here.

Measured: a few forward+backward passes of ``batch_per_device`` images at the run's image size
through the run's own detector (random weights, dummy targets), on the device the run would use
here. Results are cached in ``work_dirs/plan_cache/<key>.json``, keyed by the model config,
image size, images per pass, precision and device name, so a plan re-runs in seconds.

Estimated (never measured): the step on another device is the measured step scaled by the ratio
of this device's matmul throughput (probed here) to the other device's data-sheet bf16 peak
(``vitdet_lib.bench.DEVICE_BF16_PEAK_TFLOPS``). That assumes both reach the same fraction of
their peak; a small-batch detector step on a large GPU usually reaches less, so read the
estimates as optimistic lower bounds.
"""
from __future__ import annotations

import hashlib
import json
import platform
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from vitdet_lib.bench import DEVICE_BF16_PEAK_TFLOPS
from vitdet_lib.config import to_dict
from vitdet_lib.io import read_json, write_json_atomic

DEFAULT_CACHE = Path("work_dirs/plan_cache")
# devices a plan estimates besides the one it measures on (names of DEVICE_BF16_PEAK_TFLOPS)
ESTIMATE_DEVICES = ("H100 SXM", "A100", "V100")
CHECKPOINT_BYTES_PER_PARAM = 4 * 3  # fp32 weights + AdamW's two moments in every checkpoint


@dataclass
class StepTime:
    """Seconds of one forward+backward pass of ``batch_per_device`` images.

    Attributes:
        seconds: median over the timed passes.
        device: the device it was measured on (or estimated for).
        source: ``measured`` (here, now), ``cached`` (measured here before) or ``estimated``.
        params: detector parameter count (for the checkpoint disk estimate).
    """

    seconds: float
    device: str
    source: str
    params: int
    amp: str = "off"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"cpu: {cpu} x{torch.get_num_threads()} threads"


def run_device(train_device: str) -> torch.device:
    """The device a run with ``train.device`` would use on this machine."""
    if train_device == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda")


def measured_amp(amp: str, device: torch.device) -> str:
    """The precision the step is timed in: fp16 autocast does not run on CPUs (fp32 there)."""
    return "off" if device.type == "cpu" and amp == "fp16" else amp


def cache_key(model_cfg: Any, image_size: int, batch_per_device: int, amp: str,
              device: str) -> str:
    model = to_dict(model_cfg)
    model["backbone"].pop("drop_path_rate", None)  # scales activations; costs nothing
    blob = json.dumps({"model": model, "image_size": image_size,
                       "batch_per_device": batch_per_device, "amp": amp, "device": device},
                      sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


def measure_step(model_cfg: Any, image_size: int, batch_per_device: int, amp: str,
                 device: torch.device, *, steps: int = 2,
                 cache_dir: str | Path = DEFAULT_CACHE) -> StepTime:
    """Time ``steps`` training passes of the detector ``model_cfg`` (after one warm-up), or
    read the cached result of the same measurement."""
    from vitdet_lib.bench import autocast
    from vitdet_lib.complexity import dummy_target
    from vitdet_lib.model import build_detector
    from vitdet_lib.profiling import time_call

    amp = measured_amp(amp, device)
    name = device_name(device)
    path = Path(cache_dir) / f"{cache_key(model_cfg, image_size, batch_per_device, amp, name)}.json"
    cached = read_json(path)
    if cached:
        return StepTime(cached["seconds"], name, "cached", cached["params"], amp)
    torch.manual_seed(0)
    model = build_detector(model_cfg).to(device).train()
    num_classes = model.roi_heads.box_predictor.cls_score.out_features - 1
    images = [torch.rand(3, image_size, image_size, device=device)
              for _ in range(batch_per_device)]
    targets = [dummy_target(image_size, num_classes, device) for _ in images]

    def step() -> None:
        with autocast(device, amp):
            losses = model(images, targets)
        sum(losses.values()).backward()

    seconds = time_call(step, device, iters=steps, warmup=1)
    params = sum(p.numel() for p in model.parameters())
    write_json_atomic(path, {"seconds": seconds, "params": params, "device": name, "amp": amp,
                             "image_size": image_size, "batch_per_device": batch_per_device,
                             "steps": steps, "model": to_dict(model_cfg)})
    return StepTime(seconds, name, "measured", params, amp)


def probe_tflops(device: torch.device, amp: str) -> float:
    """This device's matmul throughput in the step's precision, TFLOP/s."""
    from vitdet_lib.bench import probe_gflops

    return probe_gflops(device, measured_amp(amp, device), n=1024 if device.type == "cpu"
                        else 4096) / 1e3


@dataclass
class DeviceEstimate:
    """How a measured step converts to another device: ``seconds * factor``."""

    device: str
    source: str  # "measured" for the device here, "estimated" for the table's
    tflops: float
    factor: float
    basis: str


def device_estimates(here: str, here_tflops: float,
                     names: tuple[str, ...] = ESTIMATE_DEVICES) -> list[DeviceEstimate]:
    """The device here (factor 1) and each table device, scaled by peak-throughput ratios."""
    out = [DeviceEstimate(here, "measured", here_tflops, 1.0,
                          f"timed here; matmul probe {here_tflops:.2f} TFLOP/s")]
    for name in names:
        peak = DEVICE_BF16_PEAK_TFLOPS[name]
        out.append(DeviceEstimate(
            name, "estimated", peak, here_tflops / peak,
            f"step here x ({here_tflops:.2f} TFLOP/s probed here / {peak:.0f} TFLOP/s bf16 "
            f"data-sheet peak); not measured"))
    return out


def to_dict_estimates(estimates: list[DeviceEstimate]) -> list[dict[str, Any]]:
    return [asdict(e) for e in estimates]
