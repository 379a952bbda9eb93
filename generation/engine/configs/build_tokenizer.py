"""Rebuild the CLIP tokenizer files the shipped family configs use, offline.

    python generation/engine/configs/build_tokenizer.py open_clip_torch-3.3.0-py3-none-any.whl

The source is the ``open_clip_torch`` wheel (``pip download open_clip_torch==3.3.0 --no-deps``,
MIT) or the ``bpe_simple_vocab_16e6.txt.gz`` inside it; its sha256 is checked, so the files
come out byte for byte the ones committed. Writes:

- ``clip/vocab.json`` and ``clip/merges.txt``: CLIP's byte-level BPE, laid out as the hub's
  ``openai/clip-vit-large-patch14`` tokenizer. One copy serves every family: SD 1.x's CLIP-L,
  SD 2.x's OpenCLIP-H and SDXL's CLIP-L and OpenCLIP-bigG share the vocabulary
  (``specs.load_tokenizer`` points each tokenizer folder at it).
- ``<family>/<tokenizer>/tokenizer_config.json``: the special tokens and the 77-token window;
  the families differ only in the padding token (``!`` for the OpenCLIP encoders).

The vocabulary follows open_clip's ``SimpleTokenizer`` (the same as OpenAI's CLIP): the 256
byte characters, the same with ``</w>``, one token per merge, then the start and end tokens,
49,408 in all.
"""

import argparse
import gzip
import hashlib
import json
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
GZ_IN_WHEEL = "open_clip/bpe_simple_vocab_16e6.txt.gz"
GZ_SHA256 = "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"
MERGES = 49152 - 256 - 2
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
# Every tokenizer folder of the shipped configs, and its padding token.
PADS = {
    "sd1/tokenizer": EOS,
    "sd2/tokenizer": "!",
    "sd2v/tokenizer": "!",
    "sdxl/tokenizer": EOS,
    "sdxl/tokenizer_2": "!",
}


def read_bpe(source: Path) -> bytes:
    """The gzipped BPE merges, from the wheel or as given, checked against the known hash."""
    if source.suffix == ".whl":
        with zipfile.ZipFile(source) as wheel:
            data = wheel.read(GZ_IN_WHEEL)
    else:
        data = source.read_bytes()
    if hashlib.sha256(data).hexdigest() != GZ_SHA256:
        raise SystemExit(f"{source}: not open_clip's bpe_simple_vocab_16e6.txt.gz (sha256 differs)")
    return gzip.decompress(data)


def byte_characters() -> list[str]:
    """GPT-2's reversible map of the 256 bytes to printable characters, in CLIP's order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return [chr(code) for code in codes]


def build(source: Path, out: Path = HERE) -> None:
    lines = read_bpe(source).decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : MERGES + 1]]
    characters = byte_characters()
    tokens = [*characters, *(c + "</w>" for c in characters), *("".join(m) for m in merges),
              BOS, EOS]
    vocab = {token: index for index, token in enumerate(tokens)}
    if len(vocab) != 49408:
        raise SystemExit(f"expected 49408 tokens, built {len(vocab)}")
    (out / "clip").mkdir(parents=True, exist_ok=True)
    (out / "clip" / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), "utf-8")
    merge_lines = "".join(f"{a} {b}\n" for a, b in merges)
    (out / "clip" / "merges.txt").write_text("#version: 0.2\n" + merge_lines, "utf-8")
    for folder, pad in PADS.items():
        config = {
            "bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": pad,
            "tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "do_lower_case": True,
            "errors": "replace", "add_prefix_space": False, "clean_up_tokenization_spaces": True,
        }
        (out / folder).mkdir(parents=True, exist_ok=True)
        (out / folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="the open_clip_torch wheel, or the .gz in it")
    build(parser.parse_args().source)
