"""A word-level CLIP tokenizer learned from the caption vocabulary."""

import json
import string
import tempfile
from pathlib import Path

from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import CLIPTokenizer

from .dataset import ALL_TRIPLES

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
# Longer than any caption (7 words + 2 specials) with room for users' extra words, which
# tokenize letter by letter because the alphabet is in the vocabulary.
MAX_LENGTH = 32


def build_tokenizer() -> CLIPTokenizer:
    """Learn BPE merges until every caption word is one token, then wrap them as CLIP's.

    Learned rather than hand-written merges: hand-written ones split words like "green" wrongly.
    """
    words = sorted({word for t in ALL_TRIPLES for word in t.caption.split()})
    trainer = trainers.BpeTrainer(
        vocab_size=1000,
        special_tokens=[BOS, EOS],
        initial_alphabet=list(string.ascii_lowercase + string.digits),
        end_of_word_suffix="</w>",
        show_progress=False,
    )
    bpe = Tokenizer(models.BPE(end_of_word_suffix="</w>"))
    bpe.pre_tokenizer = pre_tokenizers.Whitespace()
    bpe.train_from_iterator(words, trainer=trainer)
    state = json.loads(bpe.to_str())["model"]
    merges = [" ".join(m) if isinstance(m, list) else m for m in state["merges"]]
    with tempfile.TemporaryDirectory() as tmp:
        vocab_file, merges_file = Path(tmp, "vocab.json"), Path(tmp, "merges.txt")
        vocab_file.write_text(json.dumps(state["vocab"]))
        merges_file.write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
        return CLIPTokenizer(
            vocab=str(vocab_file), merges=str(merges_file), model_max_length=MAX_LENGTH
        )
