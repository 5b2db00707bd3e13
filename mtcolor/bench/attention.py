"""Masked attention benchmark: every mode x implementation against unmasked SDPA, in one run.

``python -m mtcolor.bench attention [--sizes 1024 4096 16384] [--repeats 3] [--threads N] [--clock wall|cpu]``

Shapes (docs/design.md, "Performance goals"): batch 2, 8 heads, head dim 40, float32, inputs in the
``(B, N, H, d)`` memory layout diffusers processors pass (viewed as ``(B, H, N, d)``), and a label
map of 8 ellipses + background (about 65% background) on a square-ish token grid, different in the
two batch items. The partition is built once per size, outside the timed calls, as a pipeline
caches it per resolution and step.

On a machine shared with other jobs, ``--threads 1 --clock cpu`` gives stable ratios: with 2
OpenMP threads and a busy neighbour, every parallel region can stall on a descheduled thread,
which penalises the many short SDPA calls of ``"segments"`` far more than one long unmasked call.

Per size, a first untimed round runs every variant once (warm-up) and records its peak memory;
then ``--repeats`` timed rounds run all variants interleaved, so machine noise hits them alike.
Times are medians; ratios are against unmasked SDPA of the same rounds (forward variants against
unmasked forward, forward+backward variants against unmasked forward+backward).

Peak memory is the peak resident set size during the call minus the resident size just before it
(Linux ``VmHWM``, reset through ``/proc/self/clear_refs``), after glibc ``malloc_trim`` and with
glibc's mmap threshold fixed at 128 KiB so that freed buffers leave the process; ``n/a`` where
that is unavailable. The timed rounds run with the threshold fixed at 32 MiB instead, the value
glibc's adaptive threshold settles at in a process that frees large tensors.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mtcolor.attention import LabelPartition, masked_attention

BATCH, HEADS, HEAD_DIM = 2, 8, 40


def benchmark_labels(batch: int, tokens: int) -> torch.Tensor:
    """``(batch, tokens)`` int64 label map: 8 ellipses (labels 1-8) on a ``h x w`` grid, 0 elsewhere.

    ``h`` is the largest divisor of ``tokens`` not above ``sqrt(tokens)``. Item ``b`` has slightly
    wider ellipses than item ``b - 1``; about 65% of the tokens are background on average.
    """
    height = max(h for h in range(1, math.isqrt(tokens) + 1) if tokens % h == 0)
    width = tokens // height
    y, x = torch.meshgrid(
        (torch.arange(height) + 0.5) / height, (torch.arange(width) + 0.5) / width, indexing="ij"
    )
    maps = []
    for b in range(batch):
        labels = torch.zeros(height, width, dtype=torch.long)
        for i in range(8):
            cx, cy = 0.125 + 0.25 * (i % 4), 0.25 + 0.5 * (i // 4)
            inside = ((x - cx) / (0.085 + 0.01 * (b % 2))) ** 2 + ((y - cy) / 0.155) ** 2 <= 1
            labels[inside] = i + 1
        maps.append(labels.reshape(-1))
    return torch.stack(maps)


_M_MMAP_THRESHOLD = -3  # glibc mallopt parameter


class _PeakRSS:
    """Peak resident memory of a call above the resident memory before it (Linux + glibc only)."""

    def __init__(self) -> None:
        self.supported = False
        try:
            with open("/proc/self/clear_refs", "w") as handle:
                handle.write("5")
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            self._mallopt, self._malloc_trim = libc.mallopt, libc.malloc_trim
            self.supported = True
        except (OSError, AttributeError):
            pass

    def timing_mode(self) -> None:
        """Large mmap threshold for the timed rounds (see the module docstring)."""
        if self.supported:
            self._mallopt(_M_MMAP_THRESHOLD, 32 * 1024 * 1024)

    @staticmethod
    def _status_kib(field: str) -> int:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
        raise OSError(f"{field} missing from /proc/self/status")

    def measure(self, fn: Callable[[], object]) -> float | None:
        """Run ``fn`` once; return its peak RSS increase in MiB, or ``None`` if unsupported."""
        if not self.supported:
            fn()
            return None
        self._mallopt(_M_MMAP_THRESHOLD, 128 * 1024)
        self._malloc_trim(0)
        before = self._status_kib("VmRSS")
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        fn()
        return (self._status_kib("VmHWM") - before) / 1024


@dataclass
class _Variant:
    mode: str
    impl: str
    passes: str  # "fwd" or "fwd+bwd"
    fn: Callable[[], object]
    times: list[float]
    peak_mib: float | None = None


def _variants(tokens: int, reference_max: int, backward: bool) -> list[_Variant]:
    gen = torch.Generator().manual_seed(tokens)

    def rand(requires_grad: bool = False) -> torch.Tensor:
        x = torch.randn(BATCH, tokens, HEADS, HEAD_DIM, generator=gen).transpose(1, 2)
        return x.requires_grad_(requires_grad)

    labels = benchmark_labels(BATCH, tokens)
    partition = LabelPartition.build(labels, labels)
    q, k, v = rand(), rand(), rand()

    def forward(mode: str, impl: str) -> Callable[[], object]:
        if impl == "unmasked":
            return lambda: F.scaled_dot_product_attention(q, k, v)
        part = partition if impl == "segments" else None
        return lambda: masked_attention(q, k, v, labels, labels, mode=mode, impl=impl, partition=part)

    variants = [_Variant("-", "unmasked", "fwd", forward("-", "unmasked"), [])]
    for mode in ("renormalized", "paper"):
        for impl in ("segments", "sdpa_mask", "reference"):
            if impl != "reference" or tokens <= reference_max:
                variants.append(_Variant(mode, impl, "fwd", forward(mode, impl), []))
    if backward:
        qg, kg, vg = rand(True), rand(True), rand(True)
        grad_out = rand()

        def train_step(mode: str, impl: str) -> Callable[[], object]:
            def step() -> None:
                if impl == "unmasked":
                    out = F.scaled_dot_product_attention(qg, kg, vg)
                else:
                    out = masked_attention(
                        qg, kg, vg, labels, labels, mode=mode, impl=impl, partition=partition
                    )
                out.backward(grad_out)
                qg.grad = kg.grad = vg.grad = None

            return step

        variants.append(_Variant("-", "unmasked", "fwd+bwd", train_step("-", "unmasked"), []))
        for mode in ("renormalized", "paper"):
            variants.append(_Variant(mode, "segments", "fwd+bwd", train_step(mode, "segments"), []))
    return variants


def _run_size(
    tokens: int, repeats: int, reference_max: int, backward: bool, peak: _PeakRSS, clock: Callable[[], float]
) -> list[str]:
    labels = benchmark_labels(BATCH, tokens)
    start = time.perf_counter()
    LabelPartition.build(labels, labels)
    build_ms = (time.perf_counter() - start) * 1e3
    background = (labels == 0).float().mean().item()
    variants = _variants(tokens, reference_max, backward)
    with torch.no_grad():
        for variant in variants:
            if variant.passes == "fwd":
                variant.peak_mib = peak.measure(variant.fn)
    for variant in variants:
        if variant.passes == "fwd+bwd":
            variant.peak_mib = peak.measure(variant.fn)
    peak.timing_mode()
    for _ in range(repeats):
        for variant in variants:
            with torch.set_grad_enabled(variant.passes == "fwd+bwd"):
                start = clock()
                variant.fn()
                variant.times.append(clock() - start)
    base = {v.passes: statistics.median(v.times) for v in variants if v.impl == "unmasked"}
    rows = []
    for variant in variants:
        median = statistics.median(variant.times)
        mem = "n/a" if variant.peak_mib is None else f"{variant.peak_mib:.0f}"
        rows.append(
            f"| {tokens} | {variant.mode} | {variant.impl} | {variant.passes} | {median * 1e3:.1f} | "
            f"{median / base[variant.passes]:.2f} | {mem} |"
        )
    print(
        f"N = {tokens}: background {background:.0%}, partition build {build_ms:.1f} ms (once per size)",
        flush=True,
    )
    return rows


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mtcolor.bench attention", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 4096, 16384], help="token counts N")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds per size (median reported)")
    parser.add_argument(
        "--reference-max", type=int, default=4096, help="largest N at which the dense reference is timed"
    )
    parser.add_argument("--no-backward", action="store_true", help="skip the forward+backward rows")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch.set_num_threads (default: unchanged)"
    )
    parser.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="wall: time.perf_counter; cpu: process CPU time (robust on a shared machine with --threads 1)",
    )
    args = parser.parse_args(argv)
    if args.repeats < 1 or any(n < 1 for n in args.sizes) or (args.threads is not None and args.threads < 1):
        parser.error("--repeats, --sizes and --threads must be positive")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    peak = _PeakRSS()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, float32, B={BATCH}, heads={HEADS}, "
        f"head dim={HEAD_DIM}, inputs in (B, N, H, d) memory, {args.repeats} timed interleaved rounds, "
        f"{args.clock} clock; "
        "peak memory = peak RSS during the first (untimed) call minus RSS before it"
    )
    rows = []
    for tokens in args.sizes:
        rows.extend(_run_size(tokens, args.repeats, args.reference_max, not args.no_backward, peak, clock))
    print()
    print("| N | mode | impl | pass | median ms | x unmasked | peak MiB |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    return 0
