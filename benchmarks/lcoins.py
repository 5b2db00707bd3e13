"""L-CoIns throughput: training samples/s and inference latency, tiny vs paper-sized, in one run.

    python -m mtcolor.bench lcoins [--configs tiny paper] [--iterations 2] [--threads 2]

* ``paper``: ViT-B/16 at 224 px + a BERT-base-sized text encoder (random weights from configs) + 8
  grouping blocks (768 wide, 10 group tokens);
* ``tiny``: the test configuration (32 px, patch 8, width 32) with a 1-layer BERT.

A training step is the full ``training/train_lcoins.py`` step: luminance augmentation, pseudo
captions, text encoder on true + pseudo captions, the model's two batched passes, LC eq. 16,
backward and AdamW. Inference is ``LCoInsPipeline.__call__`` on one 512x384 gray image (resize to
the working size, text encoder, model, ab resized back and recombined with the input's L), and the
model's forward alone at its working size. Medians over
``--iterations`` timed repetitions after one warm-up. Figures depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

CAPTIONS = [
    "a woman in a red coat walks past a yellow taxi on a gray street",
    "two green apples and an orange on a brown wooden table",
    "a man in a blue shirt next to a man in a white shirt",
    "a purple flower in a pink vase",
]
TEXT_PRESET = {"tiny": "tiny", "paper": "bert-base"}


def _components(name: str):
    from mtcolor.training.train_lcoins import TEXT_ENCODER_PRESETS
    from transformers import AutoTokenizer, BertConfig, BertModel

    from mtcolor.models.lcoins import LCOINS_PRESETS, LCoInsModel, minilm_path

    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    torch.manual_seed(0)
    text_config = BertConfig(**{**TEXT_ENCODER_PRESETS[TEXT_PRESET[name]], "vocab_size": len(tokenizer)})
    text_encoder = BertModel(text_config)
    model = LCoInsModel(**{**LCOINS_PRESETS[name], "text_embed_dim": text_config.hidden_size})
    return model, text_encoder, tokenizer


def _median_time(fn, iterations: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(iterations):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(name: str, batch_size: int, iterations: int) -> dict:
    """Train-step and inference timings of one configuration."""
    from mtcolor.pipelines.pipeline_lcoins import LCoInsPipeline
    from mtcolor.training.train_lcoins import compute_loss, parse_args

    from mtcolor.lexicon import default_lexicon

    model, text_encoder, tokenizer = _components(name)
    size = model.config.image_size
    args = parse_args(["--train_data", "unused", "--max_caption_length", "64"])
    lexicon = default_lexicon("extended")
    parameters = list(model.parameters()) + list(text_encoder.parameters())
    optimizer = torch.optim.AdamW(parameters, lr=1e-5, betas=(0.99, 0.999))
    generator = torch.Generator().manual_seed(0)
    batch = {
        "pixel_values": torch.rand(batch_size, 3, size, size, generator=generator),
        "caption": [CAPTIONS[i % len(CAPTIONS)] for i in range(batch_size)],
    }
    model.train()
    text_encoder.train()

    def train_step():
        loss, _ = compute_loss(batch, model, text_encoder, tokenizer, args, lexicon, torch.float32)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step = _median_time(train_step, iterations)
    pipe = LCoInsPipeline(model=model.eval(), text_encoder=text_encoder.eval(), tokenizer=tokenizer)
    pipe.set_progress_bar_config(disable=True)
    gray = torch.rand(1, 384, 512, generator=generator)
    latency = _median_time(lambda: pipe(gray, CAPTIONS[0], output_type="pt"), iterations)
    with torch.no_grad():
        hidden, mask = pipe.encode_caption([CAPTIONS[0]], report=False)
        lightness = torch.rand(1, 1, size, size, generator=generator) * 100
        forward = _median_time(lambda: model(lightness, hidden, mask), iterations)
    return {
        "name": name,
        "params": (
            sum(p.numel() for p in model.parameters()),
            sum(p.numel() for p in text_encoder.parameters()),
        ),
        "size": size,
        "batch": batch_size,
        "step": step,
        "samples_per_s": batch_size / step,
        "latency": latency,
        "forward": forward,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mtcolor.bench lcoins", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--configs", nargs="+", default=["tiny", "paper"], choices=["tiny", "paper"])
    parser.add_argument("--iterations", type=int, default=2, help="timed repetitions after one warm-up")
    parser.add_argument("--tiny-batch", type=int, default=8, help="training batch of the tiny config")
    parser.add_argument("--paper-batch", type=int, default=2, help="training batch of the paper config")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch.set_num_threads (default: unchanged)"
    )
    args = parser.parse_args(argv)
    if args.iterations < 1:
        parser.error(f"--iterations={args.iterations}; pass >= 1.")
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = [
        measure(name, args.tiny_batch if name == "tiny" else args.paper_batch, args.iterations)
        for name in args.configs
    ]
    print(
        f"L-CoIns on {torch.get_num_threads()} CPU thread(s), fp32, torch {torch.__version__}; medians of "
        f"{args.iterations} after 1 warm-up\n"
    )
    print(
        "| config | model / text encoder params | working size | train batch | train step (s) | "
        "train samples/s | pipeline latency, 1 image 512x384 (s) | model forward, 1 image (s) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['name']} | {r['params'][0] / 1e6:.2f} M / {r['params'][1] / 1e6:.2f} M | {r['size']} | {r['batch']} | "
            f"{r['step']:.3f} | {r['samples_per_s']:.2f} | {r['latency']:.3f} | {r['forward']:.3f} |"
        )
    if len(rows) == 2:
        tiny, paper = rows
        print(
            f"\npaper / tiny: training throughput {tiny['samples_per_s'] / paper['samples_per_s']:.0f}x lower, "
            f"inference latency {paper['latency'] / tiny['latency']:.1f}x higher"
        )
    return 0
