"""Tokenizers: any transformers tokenizer by name or path, or a small one built here without a download.

Runs from scratch have no CLIP BPE file at hand; they either take the byte-level tokenizer (no
training, 256 byte symbols) or train a small byte-level BPE on their captions with `tokenizers`.
Both lower-case like CLIP's and wrap every text as ``<|startoftext|> ... <|endoftext|>``, so the
text encoders' pooling (the first end-of-text token) works unchanged.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

BOS = "<|startoftext|>"
EOS = "<|endoftext|>"
PAD = "<|pad|>"
# What the text encoders take: transformers 4.x would otherwise add token_type_ids, which GroupViT's and
# CLIP's forward reject.
MODEL_INPUT_NAMES = ["input_ids", "attention_mask"]
# The class both transformers 4.x and 5.x load a plain tokenizer.json with (5.x writes its own name,
# TokenizersBackend, which 4.x does not know).
FAST_CLASS = "PreTrainedTokenizerFast"
_FAST_CLASSES = {FAST_CLASS, "TokenizersBackend"}
# Some transformers 4.x releases (4.57) rebuild the pre-tokenizer with the add_prefix_space keyword
# (default False) whatever tokenizer.json says, so it is always passed, and written to the config.
PREFIX_SPACE = True
TOKENIZER_JSON = "tokenizer.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
# transformers' CLIP and GroupViT text models treat an end-of-text id of 2 as a legacy config and pool
# at the largest token id instead of the first end-of-text token, so no order here may give EOS id 2.
SPECIAL_TOKENS = (EOS, BOS, PAD)


def _configure(tok: Tokenizer) -> Tokenizer:
    tok.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=PREFIX_SPACE)
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
        model_input_names=MODEL_INPUT_NAMES,
        add_prefix_space=PREFIX_SPACE,
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
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=PREFIX_SPACE)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer=trainer)
    return _wrap(_configure(tok), max_length)


def _legacy_merges(raw: dict[str, Any]) -> dict[str, Any]:
    """BPE merges as ``"a b"`` strings, the form every ``tokenizers`` release reads (0.20+ writes pairs,
    which tokenizers 0.19 and older reject). Byte-level tokens never hold a space."""
    model = raw.get("model", {})
    merges = model.get("merges")
    if model.get("type") == "BPE" and merges and not isinstance(merges[0], str):
        if any(" " in part for pair in merges for part in pair):
            raise ValueError("a BPE merge holds a space; it has no portable form")
        model["merges"] = [" ".join(pair) for pair in merges]
    return raw


def _prefix_space(raw: dict[str, Any]) -> bool | None:
    """The ``add_prefix_space`` of the ByteLevel pre-tokenizer in a tokenizer.json, if it has one."""
    pre = raw.get("pre_tokenizer") or {}
    for step in pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]:
        if step.get("type") == "ByteLevel" and "add_prefix_space" in step:
            return bool(step["add_prefix_space"])
    return None


def _token(value: Any) -> str | None:
    return value.get("content") if isinstance(value, dict) else value


def save_tokenizer(tokenizer: PreTrainedTokenizerBase, folder: str | Path) -> None:
    """``save_pretrained`` into ``folder`` (a staging folder: files are written in place), then make the
    files portable: a class name that transformers 4.x and 5.x both know, no token_type_ids, the
    pre-tokenizer's add_prefix_space stated in the config, and legacy-form merges, so every supported
    version loads the same tokenizer."""
    folder = Path(folder)
    tokenizer.save_pretrained(folder)
    config_path = folder / TOKENIZER_CONFIG
    config = json.loads(config_path.read_text("utf-8"))
    if config.get("tokenizer_class") in _FAST_CLASSES:
        config["tokenizer_class"] = FAST_CLASS
        config.pop("backend", None)
    config["model_input_names"] = MODEL_INPUT_NAMES
    tokenizer_json = folder / TOKENIZER_JSON
    if tokenizer_json.is_file():
        raw = _legacy_merges(json.loads(tokenizer_json.read_text("utf-8")))
        tokenizer_json.write_text(json.dumps(raw, ensure_ascii=False), "utf-8")
        prefix_space = _prefix_space(raw)
        if prefix_space is not None:
            config["add_prefix_space"] = prefix_space
    config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", "utf-8")


def _load_fast(folder: Path, config: dict[str, Any]) -> PreTrainedTokenizerFast:
    """A plain tokenizer.json folder, read the same way under transformers 4.x and 5.x."""
    raw = _legacy_merges(json.loads((folder / TOKENIZER_JSON).read_text("utf-8")))
    prefix_space = _prefix_space(raw)
    extra = {} if prefix_space is None else {"add_prefix_space": prefix_space}
    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(json.dumps(raw)),
        bos_token=_token(config.get("bos_token")),
        eos_token=_token(config.get("eos_token")),
        pad_token=_token(config.get("pad_token")),
        unk_token=_token(config.get("unk_token")),
        model_max_length=int(config.get("model_max_length", 77)),
        model_input_names=MODEL_INPUT_NAMES,
        **extra,
    )


def load_tokenizer(name_or_path: str, max_length: int | None = None) -> PreTrainedTokenizerBase:
    """A transformers tokenizer by hub name or local folder (CLIP's BPE for real runs).

    A local folder holding a plain tokenizer.json (what cocu and transformers 5 write for the tokenizers
    built here) is read directly, whichever transformers wrote it; anything else goes through
    AutoTokenizer. Either way the tokenizer returns input_ids and attention_mask only."""
    folder = Path(os.path.expanduser(name_or_path))
    config_path = folder / TOKENIZER_CONFIG
    config = json.loads(config_path.read_text("utf-8")) if config_path.is_file() else {}
    if (folder / TOKENIZER_JSON).is_file() and config.get("tokenizer_class") in _FAST_CLASSES:
        tokenizer: PreTrainedTokenizerBase = _load_fast(folder, config)
    else:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    tokenizer.model_input_names = list(MODEL_INPUT_NAMES)
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
