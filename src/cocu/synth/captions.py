"""Web-like captions: they name mostly the salient things, rarely the stuff, and are sometimes unrelated.

A thing is named with a probability that grows with its visible area, centrality and nearness to the
viewer; a stuff region with a small probability that grows with its area. Phrases vary in counts,
colours, adjectives, verbs, positions, synonyms, prefixes and noise words; a share of captions is
irrelevant to the image (web noise, or a caption of some other scene). The caption's concepts are
exactly the concepts whose words (names, synonyms, plurals) occur in it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from cocu.synth.canvas import colour_name
from cocu.synth.concepts import CONCEPT_INDEX, STUFF, concept, caption_terms
from cocu.synth.scene import SCENE_TYPES, Scene, choose_things

MIN_VISIBLE = 0.005  # a thing instance covering less of the image is not counted in captions

_ADJECTIVES = {
    "tree": ("tall", "old", "leafy", "lonely"), "house": ("old", "cozy", "little", "pretty"),
    "car": ("shiny", "new", "old", "fast"), "boat": ("old", "wooden", "lovely"),
    "person": ("young", "happy", "smiling"), "dog": ("cute", "happy", "playful", "fluffy"),
    "bird": ("wild", "lovely"), "flower": ("beautiful", "pretty", "lovely"), "fence": ("wooden", "old", "long"),
    "sun": ("bright", "warm", "glowing"), "umbrella": ("striped", "colorful", "open"), "ball": ("striped", "colorful"),
    "chair": ("wooden", "empty", "old"), "kite": ("colorful", "cheap"),
}
_VERBS = {
    "tree": ("standing",), "house": ("standing",), "car": ("parked", "driving"), "boat": ("sailing", "floating"),
    "person": ("walking", "standing", "waiting", "posing"), "dog": ("running", "playing", "sitting", "waiting"),
    "bird": ("flying", "gliding", "soaring"), "flower": ("blooming", "growing"), "fence": ("standing",),
    "sun": ("shining", "setting"), "umbrella": ("standing",), "ball": ("lying", "rolling"),
    "chair": ("standing",), "kite": ("flying",),
}
_PERSON_PLURALS = ("people", "persons", "kids")
_STUFF_PHRASES = {
    "sky": ("under a {c} {n}", "against the {n}", "beneath a {c} {n}", "and {c} {n}"),
    "cloud": ("with {c} clouds", "under the clouds", "and some clouds", "with a {n}"),
    "grass": ("on the {n}", "on {c} {n}", "in the {n}"),
    "water": ("on the {n}", "by the {n}", "near the {c} {n}", "at the {n}"),
    "sand": ("on the {n}", "on the {c} {n}", "at the {n}"),
    "snow": ("in the {n}", "on the {c} {n}", "in deep {n}"),
    "road": ("on the {n}", "in the {n}", "on a {c} {n}"),
    "wall": ("in front of a {c} {n}", "against a {n}", "by the {n}"),
    "mountain": ("with {p} in the background", "near the {p}", "below a {n}", "under {c} {p}"),
    "floor": ("on the {n}", "on a {c} {n}", "on the {c} {n}"),
}
_DETERMINERS = {1: ("a", "a", "the", "one", "this"), 2: ("two", "two", "a pair of", "2"), 3: ("three", "some", "a few", "3")}
_POSITIONS = {"left": ("on the left", "at left"), "right": ("on the right", "at right"),
              "middle": ("in the middle", "in the center"), "front": ("in the foreground", "up close"),
              "back": ("in the distance", "in the background", "far away")}
_PREFIXES = ("a photo of", "photo of", "picture of", "image of", "stock photo of", "view of", "look at",
             "just", "here is", "close-up of")
_SUFFIXES = (", hd wallpaper", " #summer", " - stock image", " 4k", " (2015)", " | free download", " :)",
             " #travel #nature", ", best day ever", " via instagram", " - royalty free", "!!!",
             ", taken with my phone", " 1080p", " #weekend", ". so nice", " lol", " - copyright 2019")
_NOISE = ("click here to enlarge", "untitled", "sale! 50% off today only", "happy birthday to my best friend",
          "throwback to last year", "new post on the blog", "we are open on sunday", "thank you for 1000 followers",
          "loading...", "terms and conditions apply", "what do you think?", "limited edition print",
          "our team at the annual meeting", "download the app now")


@dataclass(frozen=True)
class Caption:
    """A caption, the concepts it names (canonical names, in order of mention) and whether it is irrelevant."""

    text: str
    concepts: list[str]
    irrelevant: bool


@dataclass(frozen=True)
class _Named:
    """A concept to name: count of visible instances, its colour word, size and where it is."""

    name: str
    count: int
    colour: str
    fraction: float
    where: str


def _pick(rng: np.random.Generator, options: tuple[str, ...] | list[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _noun(rng: np.random.Generator, name: str, count: int) -> str:
    c = concept(name)
    if count > 1:
        return _pick(rng, _PERSON_PLURALS) if name == "person" else c.plural
    return _pick(rng, c.synonyms) if rng.random() < 0.3 else name


def _article(det: str, word: str) -> str:
    if det == "a" and word[:1] in "aeiou":
        return "an"
    return det


def _thing_phrase(rng: np.random.Generator, t: _Named) -> str:
    words: list[str] = []
    if t.fraction > 0.14 and rng.random() < 0.3:
        words.append(_pick(rng, ("big", "large", "huge")))
    elif t.fraction < 0.05 and rng.random() < 0.3:
        words.append(_pick(rng, ("small", "little", "tiny")))
    elif rng.random() < 0.25:
        words.append(_pick(rng, _ADJECTIVES[t.name]))
    shirt = t.name == "person" and rng.random() < 0.4
    if rng.random() < 0.45 and t.name != "person":
        words.append(t.colour)
    words.append(_noun(rng, t.name, t.count))
    det = _pick(rng, _DETERMINERS[min(t.count, 3)])
    phrase = " ".join([_article(det, words[0])] + words) if rng.random() < 0.9 else " ".join(words)
    if shirt:
        phrase += f" in a {t.colour} shirt"
    roll = rng.random()
    if roll < 0.3:
        phrase += " " + _pick(rng, _VERBS[t.name])
    elif roll < 0.55:
        phrase += " " + _pick(rng, _POSITIONS[t.where])
    return phrase


def _stuff_phrase(rng: np.random.Generator, s: _Named, alone: bool) -> str:
    c = concept(s.name)
    noun = _pick(rng, c.synonyms) if rng.random() < 0.3 else s.name
    if alone:
        return f"{s.colour} {noun}" if rng.random() < 0.5 else noun
    return _pick(rng, _STUFF_PHRASES[s.name]).format(c=s.colour, n=noun, p=c.plural)


def _join(parts: list[str], rng: np.random.Generator) -> str:
    if len(parts) == 1:
        return parts[0]
    glue = _pick(rng, (" and ", " with ", ", ")) if len(parts) == 2 else " and "
    return ", ".join(parts[:-1]) + glue + parts[-1]


def _compose(rng: np.random.Generator, things: list[_Named], stuff: list[_Named], closeup: bool) -> str:
    if things:
        text = _join([_thing_phrase(rng, t) for t in things], rng)
        if stuff:
            text += " " + " and ".join(_stuff_phrase(rng, s, False) for s in stuff)
    else:
        text = _join([_stuff_phrase(rng, s, True) for s in stuff], rng)
    if rng.random() < 0.45:
        prefix = _pick(rng, _PREFIXES)
        if prefix != "close-up of" or closeup:
            text = f"{prefix} {text}"
    if rng.random() < 0.35:
        text += _pick(rng, _SUFFIXES)
    return text[:1].upper() + text[1:] if rng.random() < 0.5 else text


def _where(box_cx: float, box_bottom: float, size: int) -> str:
    if box_bottom > 0.92 * size and 0.3 * size < box_cx < 0.7 * size:
        return "front"
    if box_bottom < 0.6 * size:
        return "back"
    if box_cx < 0.38 * size:
        return "left"
    if box_cx > 0.62 * size:
        return "right"
    return "middle"


def _salient_things(scene: Scene) -> list[tuple[float, _Named]]:
    """(mention probability, description) of each thing concept visible in ``scene``."""
    size = scene.label.shape[0]
    area = float(size * size)
    out = []
    for name in dict.fromkeys(t.name for t in scene.things):
        visible = [t for t in scene.things if t.name == name and t.pixels >= MIN_VISIBLE * area]
        if not visible:
            continue
        best_p, best = -1.0, visible[0]
        for t in visible:
            cx = t.box.x0 + 0.5 * t.box.w
            cy = t.box.y0 + 0.5 * t.box.h
            central = 1.0 - min(1.0, float(np.hypot(cx / size - 0.5, cy / size - 0.5)) / 0.7)
            near = min(1.0, max(0.0, (t.box.y0 + t.box.h) / size))
            p = 0.15 + 3.0 * t.pixels / area + 0.25 * central + 0.15 * near
            if p > best_p:
                best_p, best = p, t
        where = _where(best.box.x0 + 0.5 * best.box.w, best.box.y0 + best.box.h, size)
        out.append((min(best_p, 0.95), _Named(name, len(visible), best.colour, best.pixels / area, where)))
    return out


def _mean_colours(scene: Scene) -> np.ndarray:
    """[C,3] mean RGB in [0,1] of each class's pixels (0 for absent classes)."""
    flat = scene.label.ravel()
    counts = np.maximum(np.bincount(flat, minlength=len(CONCEPT_INDEX)), 1)
    pixels = scene.image.reshape(-1, 3).astype(np.float64)
    sums = [np.bincount(flat, weights=pixels[:, c], minlength=len(CONCEPT_INDEX)) for c in range(3)]
    return np.stack(sums, axis=1) / counts[:, None] / 255.0


def _salient_stuff(scene: Scene, fractions: dict[str, float]) -> list[tuple[float, _Named]]:
    out = []
    means = _mean_colours(scene)
    for name, frac in fractions.items():
        if concept(name).kind != STUFF:
            continue
        colour = colour_name(means[CONCEPT_INDEX[name]])
        out.append((min(0.4, 0.04 + 0.25 * frac), _Named(name, 1, colour, frac, "middle")))
    return out


def _irrelevant(rng: np.random.Generator, scene: Scene) -> str:
    if rng.random() < 0.4:
        noise = _pick(rng, _NOISE)
        return noise if rng.random() < 0.7 else f"IMG_{int(rng.integers(1000, 10000))}.JPG"
    others = [k for k in SCENE_TYPES if k.name != scene.scene_type]
    kind = others[int(rng.integers(len(others)))]
    names = list(dict.fromkeys(choose_things(kind, rng)))[:2]
    fake = [_Named(n, 1, colour_name(rng.random(3)), 0.1, _pick(rng, tuple(_POSITIONS))) for n in names]
    return _compose(rng, fake, [], kind.closeup)


def make_caption(rng: np.random.Generator, scene: Scene, fractions: dict[str, float],
                 irrelevant_share: float = 0.05, mention_scale: float = 1.0) -> Caption:
    """Caption ``scene`` whose concepts cover ``fractions`` (name -> pixel fraction).

    ``mention_scale`` multiplies every mention probability (a knob on the caption recall).
    """
    if rng.random() < irrelevant_share:
        text = _irrelevant(rng, scene)
        return Caption(text, concepts_in(text), True)
    candidates = _salient_things(scene) + _salient_stuff(scene, fractions)
    chosen = [(p, n) for p, n in candidates if rng.random() < min(1.0, p * mention_scale)]
    if not chosen and candidates:
        chosen = [max(candidates, key=lambda pn: pn[0])]
    things = [n for p, n in sorted((c for c in chosen if concept(c[1].name).kind != STUFF), key=lambda pn: -pn[0])]
    stuff = [n for p, n in chosen if concept(n.name).kind == STUFF]
    order = rng.permutation(len(stuff))
    text = _compose(rng, things, [stuff[i] for i in order], scene.scene_type.startswith("closeup"))
    return Caption(text, concepts_in(text), False)


_TERMS = caption_terms()
_MAX_TERM_WORDS = max(len(t.split()) for t in _TERMS)


def concepts_in(text: str) -> list[str]:
    """Concepts named in ``text`` (word n-grams matching a name, synonym or plural), in order of mention.

    Longer n-grams win over the words inside them (``paper kite`` is one mention of kite).
    """
    words = re.findall(r"[a-z]+", text.lower())
    found: list[str] = []
    i = 0
    while i < len(words):
        for n in range(min(_MAX_TERM_WORDS, len(words) - i), 0, -1):
            hit = _TERMS.get(" ".join(words[i:i + n]))
            if hit is not None:
                if hit not in found:
                    found.append(hit)
                i += n
                break
        else:
            i += 1
    return found
