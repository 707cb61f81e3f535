"""CLIP's real tokenizer without downloading CLIP: its byte-pair merges file as CLIP's own code ships
it (`bpe_simple_vocab_16e6.txt.gz`, in PyPI's open_clip_torch wheel), turned into the vocab.json and
merges.txt that transformers' CLIPTokenizer reads. The vocabulary is CLIP's: 256 byte symbols, the
same with the end-of-word mark, the first 48,894 merges, then <|startoftext|> and <|endoftext|>
(49,408 tokens, "a photo of a cat" -> 49406 320 1125 539 320 2368 49407).

Text towers with pretrained weights bring their own tokenizer (`model.conditioner.pretrained`); this
one serves towers built without weights (tiny experiments, tests, the demo):
`model.conditioner.tokenizer=clip_bpe`.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
import tempfile
from pathlib import Path

from craftsman_platform.errors import MissingInput

BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"
MERGES = 49152 - 256 - 2  # CLIP keeps this many merges: 49,408 tokens in all
SPECIAL = ("<|startoftext|>", "<|endoftext|>")


def bpe_file() -> Path:
    """The merges file of the installed open_clip package (not imported: only its data is read)."""
    spec = importlib.util.find_spec("open_clip")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / BPE_FILE
        if path.is_file():
            return path
    raise MissingInput(
        f"no {BPE_FILE}: model.conditioner.tokenizer=clip_bpe reads CLIP's vocabulary from the open_clip_torch "
        "package (`pip install --no-deps open_clip_torch`, as `make setup` does), or point "
        "model.conditioner.tokenizer at a folder with a CLIP tokenizer (vocab.json, merges.txt)"
    )


def _byte_symbols() -> list[str]:
    """The printable stand-in of each byte value, in CLIP's (and GPT-2's) order."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = [b for b in range(256) if b not in keep]
    codes = keep + [256 + i for i in range(len(extra))]
    return [chr(c) for c in codes]


def tokenizer_folder(cache: str | None = None) -> Path:
    """A folder with vocab.json and merges.txt built from the merges file (made once, reused)."""
    source = bpe_file()
    folder = Path(cache or os.path.join(tempfile.gettempdir(), "craft-clip-bpe")) / str(source.stat().st_size)
    if (folder / "vocab.json").is_file():
        return folder
    merges = gzip.open(source, "rt", encoding="utf-8").read().split("\n")[1 : MERGES + 1]
    symbols = _byte_symbols()
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m.split()) for m in merges] + list(SPECIAL)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder))
    (tmp / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False))
    (tmp / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    for name in ("merges.txt", "vocab.json"):  # vocab.json last: its presence means complete
        os.replace(tmp / name, folder / name)
    tmp.rmdir()
    return folder


def clip_tokenizer(cache: str | None = None):
    """transformers' CLIPTokenizer on CLIP's vocabulary."""
    from transformers import CLIPTokenizer

    folder = tokenizer_folder(cache)
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))
