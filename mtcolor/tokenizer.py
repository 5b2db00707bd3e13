"""An offline SD-1.5 tokenizer: ``CLIPTokenizer`` built from the real CLIP BPE vocabulary that ships
inside ``open-clip-torch`` (``open_clip/bpe_simple_vocab_16e6.txt.gz``, 49,408 tokens).

It tokenises exactly like the ``openai/clip-vit-large-patch14`` tokenizer SD-1.5 uses, including
padding with ``<|endoftext|>`` (id 49407) to 77 tokens.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
from pathlib import Path

NUM_MERGES = 49152 - 256 - 2  # as in CLIP's SimpleTokenizer


def _bytes_to_unicode() -> dict[int, str]:
    # The reversible byte -> unicode table of GPT-2/CLIP BPE (same construction as CLIP's tokenizer).
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def clip_bpe_path() -> Path:
    spec = importlib.util.find_spec("open_clip")
    if spec is None or spec.origin is None:
        raise ImportError(
            "open-clip-torch is required for the offline CLIP vocabulary: pip install open-clip-torch"
        )
    return Path(spec.origin).parent / "bpe_simple_vocab_16e6.txt.gz"


def write_clip_tokenizer_files(folder: str | os.PathLike) -> Path:
    """Write ``vocab.json`` and ``merges.txt`` of the CLIP BPE into ``folder`` and return it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lines = gzip.open(clip_bpe_path()).read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : NUM_MERGES + 1]]
    byte_chars = list(_bytes_to_unicode().values())
    vocab = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(
        json.dumps({tok: i for i, tok in enumerate(vocab)}, ensure_ascii=False)
    )
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    return folder


def clip_tokenizer(cache_dir: str | os.PathLike | None = None, model_max_length: int = 77):
    """The SD-1.5 ``CLIPTokenizer`` built offline (files cached in ``cache_dir``)."""
    from transformers import CLIPTokenizer

    cache_dir = Path(cache_dir or Path.home() / ".cache" / "mtcolor" / "clip_tokenizer")
    if not (cache_dir / "merges.txt").exists():
        tmp = cache_dir.with_name(cache_dir.name + f".tmp{os.getpid()}")
        write_clip_tokenizer_files(tmp)
        try:
            os.replace(tmp, cache_dir)
        except OSError:  # another process won the race; use its files
            for f in tmp.iterdir():
                f.unlink()
            tmp.rmdir()
    return CLIPTokenizer.from_pretrained(
        str(cache_dir), model_max_length=model_max_length, pad_token="<|endoftext|>", local_files_only=True
    )
