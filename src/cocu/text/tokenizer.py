"""Tokenizers: any transformers tokenizer by name or path, or a small one built here without a download.

Runs from scratch have no CLIP BPE file at hand; they either take the byte-level tokenizer (no
training, 256 byte symbols) or train a small byte-level BPE on their captions with `tokenizers`.
Both lower-case like CLIP's and wrap every text as ``<|startoftext|> ... <|endoftext|>``, so the
text encoders' pooling (the first end-of-text token) works unchanged.
"""

from __future__ import annotations

from typing import Iterable

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

BOS = "<|startoftext|>"
EOS = "<|endoftext|>"
PAD = "<|pad|>"
# transformers' CLIP and GroupViT text models treat an end-of-text id of 2 as a legacy config and pool
# at the largest token id instead of the first end-of-text token, so no order here may give EOS id 2.
SPECIAL_TOKENS = (EOS, BOS, PAD)


def _configure(tok: Tokenizer) -> Tokenizer:
    tok.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A {EOS}",
        special_tokens=[(BOS, tok.token_to_id(BOS)), (EOS, tok.token_to_id(EOS))],
    )
    return tok


def _wrap(tok: Tokenizer, max_length: int) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=None,
        model_max_length=max_length,
    )


def byte_level_tokenizer(max_length: int = 77) -> PreTrainedTokenizerFast:
    """A deterministic tokenizer with one token per byte (ids 0..255), then EOS, BOS and PAD, no merges."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {symbol: i for i, symbol in enumerate(alphabet)}
    vocab.update({token: len(alphabet) + i for i, token in enumerate(SPECIAL_TOKENS)})
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    return _wrap(_configure(tok), max_length)


def train_bpe_tokenizer(
    texts: Iterable[str], vocab_size: int = 4096, max_length: int = 77, min_frequency: int = 2
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on ``texts`` (captions plus vocabulary); deterministic for the same input."""
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer=trainer)
    return _wrap(_configure(tok), max_length)


def load_tokenizer(name_or_path: str, max_length: int | None = None) -> PreTrainedTokenizerBase:
    """A transformers tokenizer by hub name or local folder (CLIP's BPE for real runs)."""
    tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    if max_length is not None:
        tokenizer.model_max_length = max_length
    return tokenizer


def special_token_ids(tokenizer: PreTrainedTokenizerBase) -> dict[str, int]:
    """The ids a text encoder config needs: bos, eos and pad (pad falls back to eos, as in CLIP)."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("the tokenizer has no end-of-text token; the text encoder pools at it")
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else eos
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    return {"bos_token_id": bos, "eos_token_id": eos, "pad_token_id": pad}
