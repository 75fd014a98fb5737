"""The concept vocabulary and the caption -> concepts extraction of curation.

A caption's concepts are its word n-grams that are in the vocabulary: the caption is lower-cased,
accents and punctuation are dropped, and it is split into word tokens; then, greedily from left to
right, the longest n-gram (n <= 4, or longer if a vocabulary entry is longer) starting at the current
token that names a concept is taken and its tokens skipped. Membership is exact over whole tokens
("cat" never matches "bobcat" or "category"), and a concept matches in its singular and its plural
form (rule-based English inflection below), and so do its aliases.

Vocabulary files hold one concept a line, optionally followed by aliases after a colon
(``car: automobile, auto``); an alias found in a caption counts as its concept. The default
vocabulary is the union of the class names of the eight segmentation benchmarks and ImageNet-1k
(``cocu/resources/classnames/*.txt``), normalised to lower-case singular names.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

import numpy as np

from cocu.resources import CLASSNAME_SETS
from cocu.text.prompts import SIMPLE_TEMPLATE
from cocu.utils.atomic import atomic_path, atomic_write_json, atomic_write_text

if TYPE_CHECKING:
    from cocu.curation.encoder import FrozenClip

logger = logging.getLogger(__name__)

MAX_NGRAM = 4
STUFF_QUALIFIER_FILES = frozenset({"coco-stuff"})
"""Files whose ``head-qualifier`` names (``wall-brick``, ``floor-marble``) name the head concept."""
STRIP_SUFFIXES: tuple[str, ...] = ("-other", "-merged", "-stuff")
CONCEPTS_FILE = "concepts.txt"
EMBEDDINGS_FILE = "concept_emb.npy"
VOCAB_FILE = "vocab.txt"
INFO_FILE = "vocab_info.json"

# --- rule-based English inflection -------------------------------------------------------------------

_IRREGULAR = {
    "person": "people",
    "man": "men",
    "woman": "women",
    "child": "children",
    "mouse": "mice",
    "goose": "geese",
    "foot": "feet",
    "tooth": "teeth",
    "ox": "oxen",
    "louse": "lice",
    "die": "dice",
    "cactus": "cacti",
    "fungus": "fungi",
}
_IRREGULAR_SINGULAR = {plural: singular for singular, plural in _IRREGULAR.items()}
_SAME_PLURAL = frozenset(
    "sheep fish deer moose elk bison salmon trout cod shrimp squid aircraft spacecraft hovercraft series "
    "species".split()
)
"""Nouns whose plural is the word itself (their regular plural, ``fishes``, also matches)."""
_NOT_PLURAL = _SAME_PLURAL | frozenset(
    "news gas bus lens canvas atlas christmas chess tennis billiards physics mathematics pants jeans shorts "
    "trousers scissors glasses sunglasses clothes bedclothes pliers tongs binoculars headphones earphones "
    "goggles overalls tights pajamas pyjamas leggings triceratops pyrenees".split()
)
"""Words ending in ``s`` that are not the plural of another word: singularising leaves them as they are."""
_F_TO_VES = {
    "leaf": "leaves",
    "loaf": "loaves",
    "thief": "thieves",
    "sheaf": "sheaves",
    "wolf": "wolves",
    "shelf": "shelves",
    "half": "halves",
    "calf": "calves",
    "elf": "elves",
    "self": "selves",
    "scarf": "scarves",
    "hoof": "hooves",
    "dwarf": "dwarves",
    "knife": "knives",
    "wife": "wives",
    "life": "lives",
    "midwife": "midwives",
}
_VES_TO_F = {plural: singular for singular, plural in _F_TO_VES.items()}
_O_ES = frozenset("potato tomato hero echo torpedo veto volcano mosquito buffalo domino".split())
_MAN_EXCEPTIONS = frozenset(
    "human german roman shaman talisman caiman ottoman walkman cayman specimen abdomen regimen acumen stamen "
    "semen albumen bitumen lumen".split()
)
"""Words ending in man/men that are not compounds of man (no -man/-men switch)."""
_VOWELS = frozenset("aeiou")


def _compound_irregular(word: str, table: dict[str, str]) -> str | None:
    """``fireman`` -> ``firemen``, ``grandchild`` -> ``grandchildren`` (by the longest irregular suffix)."""
    if word in table:
        return table[word]
    if word in _MAN_EXCEPTIONS:
        return None
    for base in sorted(table, key=len, reverse=True):
        if base in ("man", "men", "woman", "women", "child", "children", "foot", "feet", "tooth", "teeth"):
            if word.endswith(base) and len(word) > len(base) + 2:
                return word[: -len(base)] + table[base]
    return None


def _regular_plural(word: str) -> str:
    if word.endswith("y") and len(word) > 1 and word[-2] not in _VOWELS:
        return word[:-1] + "ies"
    if word.endswith(("s", "x", "z", "ch", "sh")):
        return word + "es"
    if word in _O_ES:
        return word + "es"
    return word + "s"


def pluralize(word: str) -> str:
    """The plural of a lower-case English noun (rules plus irregulars; invariants are unchanged)."""
    if not word or not word[-1].isalpha() or word in _SAME_PLURAL:
        return word
    irregular = _compound_irregular(word, _IRREGULAR)
    if irregular is not None:
        return irregular
    for singular, plural in _F_TO_VES.items():
        if word == singular or (word.endswith(singular) and singular in ("knife", "wife", "shelf", "leaf")):
            return word[: -len(singular)] + plural
    return _regular_plural(word)


def plural_forms(word: str) -> set[str]:
    """Every plural a caption may use for ``word``: :func:`pluralize` plus the regular ``-s``/``-es`` form."""
    if not word or not word[-1].isalpha():
        return set()
    forms = {pluralize(word), _regular_plural(word)}
    if word.endswith("o") and word not in _O_ES:
        forms.add(word + "es")
    return forms - {word}


def singular_forms(word: str) -> list[str]:
    """Candidate singulars of a lower-case English noun, best guess first (``[word]`` if not a plural)."""
    if len(word) < 3 or word in _NOT_PLURAL or word.endswith(("ss", "us", "is")):
        return [word]
    irregular = _compound_irregular(word, _IRREGULAR_SINGULAR)
    if irregular is not None:
        return [irregular]
    for plural, singular in _VES_TO_F.items():
        if word == plural or (word.endswith(plural) and plural in ("knives", "wives", "shelves", "leaves")):
            return [word[: -len(plural)] + singular]
    if word.endswith("ies") and len(word) > 4:
        return [word[:-3] + "y", word[:-1]]
    if word.endswith("ves"):
        return [word[:-1], word[:-3] + "f", word[:-3] + "fe"]
    if word.endswith("es") and word[:-2] in _NOT_PLURAL:
        return [word[:-2]]
    if word.endswith(("sses", "xes", "zzes", "ches", "shes")):
        return [word[:-3] if word.endswith("zzes") else word[:-2], word[:-1]]
    if word.endswith("oes"):
        return [word[:-2], word[:-1]]
    if word.endswith("s") and not word.endswith("ss"):
        return [word[:-1]]
    return [word]


def singularize(word: str) -> str:
    """The best-guess singular of a lower-case English noun."""
    return singular_forms(word)[0]


# --- text normalisation --------------------------------------------------------------------------------

_TOKEN = re.compile(r"[^\W_]+")
_POSSESSIVE = re.compile(r"(?<=[^\W_])'s\b")


def tokenize(text: str) -> list[str]:
    """Lower-cased word tokens: accents folded, possessive ``'s`` dropped, other punctuation splits words.

    Letters and digits of any script make words (``犬``, ``собака``); a script written without spaces is
    matched as whole space-separated words only.
    """
    folded = unicodedata.normalize("NFKD", text.lower().replace("\u2019", "'"))
    folded = "".join(ch for ch in folded if not unicodedata.combining(ch))
    folded = _POSSESSIVE.sub("", folded).replace("'", "")
    return _TOKEN.findall(folded)


def _clean_entry(text: str) -> str:
    """Lower-case, collapse whitespace; the displayed form of a vocabulary entry."""
    return " ".join(text.lower().split())


def normalise_class_name(name: str, qualifier_heads: bool = False) -> list[str]:
    """A benchmark class name -> ``[canonical, *aliases]``, lower-case singular.

    ``tench, Tinca tinca`` -> first comma name; ``(bird of prey)`` notes dropped; ``a / b`` -> ``a`` with
    alias ``b``; ``-other``/``-merged``/``-stuff`` suffixes stripped (``grass-merged`` -> ``grass``); with
    ``qualifier_heads`` a ``head-qualifier`` name keeps its head (``wall-brick`` -> ``wall``).
    """
    first = name.split(",")[0]
    first = re.sub(r"\([^)]*\)", " ", first)
    out: list[str] = []
    for part in first.split(" / "):
        text = _clean_entry(part)
        for suffix in STRIP_SUFFIXES:
            if text.endswith(suffix):
                text = text[: -len(suffix)]
        if qualifier_heads and "-" in text and " " not in text:
            text = text.split("-")[0]
        words = text.split()
        if not words or not tokenize(text):
            continue
        head = _head_position(words)
        words[head] = singularize(words[head]) if words[head].isalpha() else words[head]
        out.append(" ".join(words))
    return out


# --- the vocabulary ------------------------------------------------------------------------------------


def _head_position(words: list[str]) -> int:
    """The word that takes the plural: the last one, or the one before "of" ("chests of drawers")."""
    if "of" in words[1:-1]:
        return words.index("of", 1) - 1
    return len(words) - 1


def _singular_key(text: str) -> tuple[str, ...]:
    """The tokens of ``text`` with the head word in its best-guess singular: equal keys = same entry."""
    tokens = tokenize(text)
    head = _head_position(tokens)
    return tuple(tokens[:head]) + (singularize(tokens[head]),) + tuple(tokens[head + 1 :])


def _variant_keys(tokens: tuple[str, ...]) -> list[tuple[str, ...]]:
    """Keys under which an entry also matches: its head word's plurals and singulars."""
    head = _head_position(list(tokens))
    word = tokens[head]
    forms = sorted(plural_forms(word)) + [f for f in singular_forms(word) if f != word]
    return [tokens[:head] + (form,) + tokens[head + 1 :] for form in forms]


@dataclass
class Vocabulary:
    """Canonical concept names (``concepts``, file order) and ``aliases`` (alias -> canonical name)."""

    concepts: list[str]
    aliases: dict[str, str] = field(default_factory=dict)
    source: str = "<memory>"

    def __post_init__(self) -> None:
        self._index = {name: i for i, name in enumerate(self.concepts)}
        if len(self._index) != len(self.concepts):
            dup = next(name for name in self.concepts if self.concepts.count(name) > 1)
            raise ValueError(f"{self.source}: concept {dup!r} is listed twice")
        for alias, canonical in self.aliases.items():
            if canonical not in self._index:
                raise ValueError(f"{self.source}: alias {alias!r} points to unknown concept {canonical!r}")
        exact: dict[tuple[str, ...], str] = {}
        entries = [(name, name) for name in self.concepts] + list(self.aliases.items())
        for text, canonical in entries:
            key = tuple(tokenize(text))
            if not key:
                raise ValueError(f"{self.source}: entry {text!r} has no word characters")
            if key in exact and exact[key] != canonical:
                raise ValueError(
                    f"{self.source}: {text!r} names both {exact[key]!r} and {canonical!r}; remove one of them"
                )
            exact[key] = canonical
        lookup = dict(exact)
        for key, canonical in exact.items():
            for variant in _variant_keys(key):
                lookup.setdefault(variant, canonical)
        self._lookup = lookup
        self._exact = exact
        self.max_ngram = max([MAX_NGRAM, *(len(key) for key in exact)])

    def __len__(self) -> int:
        return len(self.concepts)

    def index_of(self, concept: str) -> int:
        try:
            return self._index[concept]
        except KeyError:
            raise KeyError(f"{concept!r} is not a concept of vocabulary {self.source}") from None

    def lookup(self, phrase: str) -> str | None:
        """The canonical concept a phrase names (any form, any alias), or ``None``."""
        return self._lookup.get(tuple(tokenize(phrase)))

    def extract(self, caption: str) -> list[str]:
        """Canonical concepts named in ``caption``, in order of first appearance, without duplicates."""
        tokens = tokenize(caption)
        found: dict[str, None] = {}
        i = 0
        while i < len(tokens):
            for n in range(min(self.max_ngram, len(tokens) - i), 0, -1):
                concept = self._lookup.get(tuple(tokens[i : i + n]))
                if concept is not None:
                    found.setdefault(concept, None)
                    i += n
                    break
            else:
                i += 1
        return list(found)

    def to_lines(self) -> list[str]:
        """The vocabulary in file format (``name: alias, alias``), readable by :meth:`from_file`."""
        by_concept: dict[str, list[str]] = {name: [] for name in self.concepts}
        for alias, canonical in self.aliases.items():
            by_concept[canonical].append(alias)
        return [f"{name}: {', '.join(al)}" if al else name for name, al in by_concept.items()]

    @classmethod
    def from_file(cls, path: str | Path) -> Vocabulary:
        """Read a vocabulary file (UTF-8, optional byte-order mark, one concept a line, ``name: alias, alias``).

        Raises ``ValueError`` naming the file and line for an empty entry or alias and for an entry that
        repeats an earlier one (also as its singular/plural or as an alias).
        """
        path = Path(path)
        try:
            text = path.read_text("utf-8-sig")  # a byte-order mark is not part of the first entry
        except (OSError, UnicodeError) as err:
            raise ValueError(f"cannot read vocabulary file {path}: {err}") from err
        concepts: list[str] = []
        aliases: dict[str, str] = {}
        seen: dict[tuple[str, ...], tuple[int, str, str]] = {}  # singular key -> (line, entry, concept)
        for lineno, line in enumerate(text.splitlines(), start=1):
            name_part, has_colon, alias_part = line.partition(":")
            name = _clean_entry(name_part)
            if not tokenize(name):
                raise ValueError(f"{path}, line {lineno}: empty concept entry {line!r}; remove the line or name it")
            names = [name]
            if has_colon and alias_part.strip():
                for alias in alias_part.split(","):
                    alias = _clean_entry(alias)
                    if not tokenize(alias):
                        raise ValueError(f"{path}, line {lineno}: empty alias in {line!r}")
                    names.append(alias)
            for entry in names:
                key = _singular_key(entry)
                if key in seen:
                    first_line, first, owner = seen[key]
                    # an alias that is only its own concept's plural ("person: people") is redundant but harmless
                    if owner != name or tokenize(first) == tokenize(entry):
                        raise ValueError(
                            f"{path}, line {lineno}: {entry!r} duplicates {first!r} (line {first_line}); "
                            "list each concept or alias once (singular and plural count as the same)"
                        )
                    continue
                seen[key] = (lineno, entry, name)
            concepts.append(name)
            aliases.update({alias: name for alias in names[1:]})
        if not concepts:
            raise ValueError(f"vocabulary file {path} has no entries")
        return cls(concepts=concepts, aliases=aliases, source=str(path))

    @classmethod
    def default(cls, names: Iterable[str] = CLASSNAME_SETS) -> Vocabulary:
        """Union of the benchmark and ImageNet-1k class names (``resources/classnames/{name}.txt``).

        Missing files are logged and left out; if none of them exists, ``FileNotFoundError``.
        """
        folder = resources.files("cocu.resources").joinpath("classnames")
        concepts: list[str] = []
        aliases: dict[str, str] = {}
        keys: dict[tuple[str, ...], str] = {}
        found: list[str] = []
        for stem in names:
            entry = folder.joinpath(f"{stem}.txt")
            if not entry.is_file():
                logger.warning("default vocabulary: class-name file %s.txt is missing; left out", stem)
                continue
            found.append(stem)
            for line in entry.read_text("utf-8").splitlines():
                forms = normalise_class_name(line, qualifier_heads=stem in STUFF_QUALIFIER_FILES)
                if not forms:
                    continue
                key = tuple(tokenize(forms[0]))
                canonical = keys.get(key)
                if canonical is None:
                    canonical = keys[key] = forms[0]
                    concepts.append(forms[0])
                for alias in forms[1:]:
                    alias_key = tuple(tokenize(alias))
                    if alias_key not in keys:
                        keys[alias_key] = canonical
                        aliases[alias] = canonical
        if not found:
            raise FileNotFoundError(
                f"no class-name files found in {folder} (expected {', '.join(n + '.txt' for n in names)}); "
                "pass a vocabulary file with --vocab instead"
            )
        return cls(concepts=concepts, aliases=aliases, source=f"default({'+'.join(found)})")


def load_vocabulary(path: str | Path | None) -> Vocabulary:
    """A vocabulary file, or the default vocabulary for ``None``."""
    return Vocabulary.default() if path is None else Vocabulary.from_file(path)


def concept_prompt(concept: str) -> str:
    return SIMPLE_TEMPLATE.format(concept)


def write_vocab_dir(vocab: Vocabulary, encoder: FrozenClip, out_dir: str | Path) -> Path:
    """Write ``concepts.txt`` + ``concept_emb.npy`` (row-aligned, float32 L2-normalised text embeddings
    of "a photo of a {concept}.") + ``vocab.txt`` (with aliases) + ``vocab_info.json`` into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    emb = encoder.encode_texts([concept_prompt(c) for c in vocab.concepts])  # [n,d]
    with atomic_path(out / EMBEDDINGS_FILE) as tmp:
        with open(tmp, "wb") as handle:
            np.save(handle, emb.astype(np.float32))
    atomic_write_text(out / VOCAB_FILE, "\n".join(vocab.to_lines()) + "\n")
    atomic_write_json(
        out / INFO_FILE,
        {
            "encoder": encoder.spec,
            "dim": int(emb.shape[1]),
            "concepts": len(vocab),
            "aliases": len(vocab.aliases),
            "source": vocab.source,
            "prompt": SIMPLE_TEMPLATE,
        },
    )
    atomic_write_text(out / CONCEPTS_FILE, "\n".join(vocab.concepts) + "\n")
    return out


def read_vocab_dir(vocab_dir: str | Path) -> tuple[list[str], np.ndarray]:
    """``(concepts, embeddings [n,d] float32)`` from a folder written by :func:`write_vocab_dir`."""
    folder = Path(vocab_dir)
    concepts_file, emb_file = folder / CONCEPTS_FILE, folder / EMBEDDINGS_FILE
    for needed in (concepts_file, emb_file):
        if not needed.is_file():
            raise FileNotFoundError(f"{needed} is missing; write the vocabulary with `cocu vocab --out {folder}`")
    concepts = concepts_file.read_text("utf-8").splitlines()
    emb = np.load(emb_file).astype(np.float32, copy=False)
    if emb.ndim != 2 or emb.shape[0] != len(concepts):
        raise ValueError(
            f"{emb_file} has shape {emb.shape} but {concepts_file} lists {len(concepts)} concepts; "
            "rewrite the folder with `cocu vocab`"
        )
    return concepts, emb
