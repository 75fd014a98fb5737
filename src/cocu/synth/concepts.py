"""The concept inventory of the synthetic world: stuff regions and things, their words and their looks.

The order of ``CONCEPTS`` is the world's class order: the index of a concept in it is its value in the
segmentation label maps and its line number in ``val/classes.txt``. Every pixel of a synthetic image
belongs to exactly one concept (there is no background class).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

STUFF = "stuff"
THING = "thing"


@dataclass(frozen=True)
class HSVRange:
    """A box in HSV space; hue in degrees (``hue_lo > hue_hi`` wraps through red), s and v in [0, 1]."""

    hue_lo: float
    hue_hi: float
    sat_lo: float
    sat_hi: float
    val_lo: float
    val_hi: float
    weight: float = 1.0


@dataclass(frozen=True)
class Concept:
    """One concept of the world.

    ``synonyms`` are the other caption words that name it; ``plural`` is the plural the captions use
    (regular English, so a vocabulary extended with plural forms finds it). ``colours`` maps each
    drawn part to the HSV boxes its base colour is drawn from; ``look`` says in words how it is drawn.
    Things also have a ``placement`` (where they stand), a height range (fraction of the image side
    before ``WorldConfig.thing_scale``) and a width/height aspect range.
    """

    name: str
    kind: str
    synonyms: tuple[str, ...]
    plural: str
    colours: dict[str, tuple[HSVRange, ...]]
    look: str
    placement: str = ""
    height: tuple[float, float] = (0.0, 0.0)
    aspect: tuple[float, float] = (1.0, 1.0)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["synonyms"] = list(self.synonyms)
        out["colours"] = {part: [asdict(r) for r in ranges] for part, ranges in self.colours.items()}
        if self.kind == STUFF:
            for key in ("placement", "height", "aspect"):
                out.pop(key)
        else:
            out["height"] = list(self.height)
            out["aspect"] = list(self.aspect)
        return out


def _r(h0: float, h1: float, s0: float, s1: float, v0: float, v1: float, w: float = 1.0) -> HSVRange:
    return HSVRange(h0, h1, s0, s1, v0, v1, w)


_ANY_HUE = (_r(0, 360, 0.55, 0.9, 0.45, 0.9, 3.0), _r(0, 360, 0.0, 0.08, 0.75, 0.95), _r(0, 360, 0.0, 0.1, 0.15, 0.3))
_WOOD = (_r(20, 38, 0.45, 0.75, 0.3, 0.6),)
_SKIN = (_r(18, 32, 0.3, 0.6, 0.35, 0.95),)
_CLOTH = (_r(0, 360, 0.5, 0.9, 0.35, 0.85, 3.0), _r(0, 360, 0.0, 0.1, 0.15, 0.9))

CONCEPTS: tuple[Concept, ...] = (
    Concept("sky", STUFF, ("heavens",), "skies",
            {"base": (_r(195, 225, 0.3, 0.7, 0.75, 1.0, 4.0), _r(20, 40, 0.4, 0.7, 0.85, 1.0), _r(200, 220, 0.05, 0.2, 0.6, 0.8))},
            "smooth vertical gradient, lighter towards the horizon; blue, dusk orange or overcast grey"),
    Concept("cloud", STUFF, ("cumulus",), "clouds",
            {"base": (_r(0, 360, 0.0, 0.06, 0.85, 1.0, 3.0), _r(200, 230, 0.03, 0.12, 0.6, 0.8))},
            "unions of soft ellipses in the sky, white to grey with a shaded underside"),
    Concept("grass", STUFF, ("lawn", "meadow"), "grasses",
            {"base": (_r(80, 135, 0.45, 0.85, 0.35, 0.75, 4.0), _r(65, 80, 0.45, 0.75, 0.4, 0.65))},
            "green ground with fine vertical blade streaks"),
    Concept("water", STUFF, ("sea", "lake", "ocean"), "waters",
            {"base": (_r(180, 225, 0.45, 0.9, 0.35, 0.8, 4.0), _r(160, 180, 0.4, 0.7, 0.35, 0.65))},
            "blue to teal with horizontal ripples and light glints, darker towards the bottom"),
    Concept("sand", STUFF, ("beach", "dune"), "sands",
            {"base": (_r(33, 48, 0.25, 0.5, 0.75, 0.95),)},
            "pale beige with fine grain speckle"),
    Concept("snow", STUFF, ("snowdrift",), "snows",
            {"base": (_r(190, 230, 0.0, 0.06, 0.9, 1.0),)},
            "near-white with soft blue shading"),
    Concept("road", STUFF, ("street", "highway"), "roads",
            {"base": (_r(0, 360, 0.0, 0.08, 0.22, 0.45),), "line": (_r(45, 55, 0.6, 0.9, 0.85, 1.0), _r(0, 360, 0.0, 0.05, 0.9, 1.0))},
            "dark grey asphalt band with grain and a dashed centre line"),
    Concept("wall", STUFF, ("facade", "brickwork"), "walls",
            {"base": (_r(0, 22, 0.45, 0.75, 0.45, 0.75, 2.0), _r(30, 45, 0.15, 0.35, 0.7, 0.9), _r(0, 360, 0.0, 0.08, 0.5, 0.8))},
            "brick courses: staggered rectangles separated by pale mortar lines"),
    Concept("mountain", STUFF, ("hill", "peak"), "mountains",
            {"base": (_r(220, 260, 0.12, 0.35, 0.35, 0.6, 2.0), _r(20, 40, 0.15, 0.35, 0.35, 0.55))},
            "jagged triangular silhouettes with a lit and a shaded flank"),
    Concept("floor", STUFF, ("parquet", "floorboards"), "floors",
            {"base": (_r(22, 35, 0.35, 0.65, 0.45, 0.75, 2.0), _r(0, 360, 0.0, 0.06, 0.5, 0.8))},
            "horizontal planks of alternating tone with dark seams"),
    Concept("tree", THING, ("oak", "pine"), "trees",
            {"crown": (_r(85, 140, 0.45, 0.85, 0.25, 0.55, 4.0), _r(15, 40, 0.7, 0.95, 0.55, 0.85)), "trunk": _WOOD},
            "brown trunk under a dappled round crown or a stacked-triangle conifer crown",
            "ground", (0.45, 0.7), (0.55, 0.8)),
    Concept("house", THING, ("home", "cottage"), "houses",
            {"walls": (_r(0, 360, 0.15, 0.45, 0.7, 0.95, 2.0), _r(40, 55, 0.3, 0.5, 0.8, 0.95)),
             "roof": (_r(0, 15, 0.55, 0.85, 0.35, 0.6), _r(200, 230, 0.2, 0.4, 0.25, 0.4)),
             "window": (_r(190, 210, 0.3, 0.5, 0.35, 0.6),)},
            "box with a triangular roof, two windows and a door", "ground", (0.4, 0.55), (1.0, 1.35)),
    Concept("car", THING, ("automobile", "auto"), "cars",
            {"body": _ANY_HUE, "window": (_r(190, 210, 0.2, 0.4, 0.55, 0.8),), "wheel": (_r(0, 360, 0.0, 0.05, 0.05, 0.15),)},
            "side view: long body, a cabin with windows, two black wheels with grey hubs", "road", (0.25, 0.33), (1.9, 2.3)),
    Concept("boat", THING, ("ship", "sailboat", "yacht"), "boats",
            {"hull": (_r(0, 360, 0.55, 0.9, 0.3, 0.7, 2.0), _r(0, 360, 0.0, 0.05, 0.85, 1.0)), "sail": (_r(40, 60, 0.0, 0.15, 0.9, 1.0, 3.0), _r(0, 360, 0.5, 0.8, 0.7, 0.95))},
            "trapezoid hull with a mast and a triangular sail", "water", (0.35, 0.5), (0.85, 1.15)),
    Concept("person", THING, ("man", "woman", "child", "kid"), "people",
            {"skin": _SKIN, "shirt": _CLOTH, "trousers": (_r(210, 235, 0.3, 0.7, 0.2, 0.45), _r(0, 360, 0.0, 0.1, 0.1, 0.4))},
            "standing figure: round head, shirt torso with arms, two legs", "ground", (0.55, 0.75), (0.35, 0.45)),
    Concept("dog", THING, ("puppy", "doggy"), "dogs",
            {"fur": (_r(20, 38, 0.4, 0.75, 0.3, 0.75, 3.0), _r(0, 360, 0.0, 0.08, 0.1, 0.25), _r(35, 45, 0.15, 0.35, 0.85, 1.0))},
            "side view: elliptic body, head with a snout and a floppy ear, four legs, a tail", "ground", (0.32, 0.42), (1.3, 1.6)),
    Concept("bird", THING, ("seagull", "pigeon"), "birds",
            {"body": (_r(0, 360, 0.0, 0.08, 0.15, 0.95, 2.0), _r(0, 360, 0.5, 0.9, 0.5, 0.9)), "beak": (_r(30, 50, 0.7, 1.0, 0.8, 1.0),)},
            "flying: oval body and two swept wings in a flat V, small head with an orange beak", "sky", (0.26, 0.34), (1.7, 2.1)),
    Concept("flower", THING, ("daisy", "blossom"), "flowers",
            {"petals": (_r(0, 360, 0.5, 0.85, 0.75, 1.0, 4.0), _r(0, 360, 0.0, 0.05, 0.92, 1.0)), "centre": (_r(40, 55, 0.8, 1.0, 0.8, 1.0), _r(20, 30, 0.7, 0.9, 0.3, 0.5)), "stem": (_r(95, 125, 0.6, 0.85, 0.35, 0.55),)},
            "large head of round petals around a disc on a green stem with a leaf", "ground", (0.5, 0.7), (0.5, 0.6)),
    Concept("fence", THING, ("railing", "paling"), "fences",
            {"wood": _WOOD + (_r(0, 360, 0.0, 0.05, 0.85, 1.0),)},
            "row of pointed pickets on two horizontal rails, spanning much of the width", "ground", (0.2, 0.3), (2.2, 3.8)),
    Concept("sun", THING, ("sunshine",), "suns",
            {"disc": (_r(42, 58, 0.65, 1.0, 0.95, 1.0, 3.0), _r(20, 35, 0.8, 1.0, 0.95, 1.0))},
            "bright disc with a ring of triangular rays", "sky", (0.4, 0.5), (1.0, 1.0)),
    Concept("umbrella", THING, ("parasol", "brolly"), "umbrellas",
            {"canopy": (_r(0, 360, 0.6, 0.95, 0.6, 0.95),), "stripe": (_r(0, 360, 0.0, 0.05, 0.9, 1.0),)},
            "half-disc canopy with alternating radial stripes on a thin pole", "ground", (0.45, 0.6), (0.95, 1.2)),
    Concept("ball", THING, ("football", "beachball"), "balls",
            {"body": (_r(0, 360, 0.6, 0.95, 0.65, 0.95, 2.0), _r(0, 360, 0.0, 0.05, 0.9, 1.0)), "band": (_r(0, 360, 0.6, 0.95, 0.6, 0.95),)},
            "disc with coloured bands crossing it and a highlight", "ground", (0.26, 0.34), (1.0, 1.0)),
    Concept("chair", THING, ("seat", "stool"), "chairs",
            {"wood": _WOOD + (_r(0, 360, 0.5, 0.85, 0.4, 0.8),)},
            "side view: tall back with slats, seat board, four legs", "ground", (0.5, 0.65), (0.6, 0.75)),
    Concept("kite", THING, ("paper kite",), "kites",
            {"sail": (_r(0, 360, 0.65, 0.95, 0.7, 1.0),), "tail": (_r(0, 360, 0.6, 0.9, 0.6, 0.9),)},
            "diamond with two crossing spars and a zig-zag tail", "sky", (0.42, 0.55), (0.65, 0.8)),
)

CONCEPT_INDEX: dict[str, int] = {c.name: i for i, c in enumerate(CONCEPTS)}
STUFF_NAMES: tuple[str, ...] = tuple(c.name for c in CONCEPTS if c.kind == STUFF)
THING_NAMES: tuple[str, ...] = tuple(c.name for c in CONCEPTS if c.kind == THING)


def concept(name: str) -> Concept:
    """The concept called ``name`` (KeyError listing the known names if there is none)."""
    try:
        return CONCEPTS[CONCEPT_INDEX[name]]
    except KeyError:
        raise KeyError(f"unknown synthetic concept {name!r}; known: {', '.join(CONCEPT_INDEX)}") from None


def class_names() -> list[str]:
    """The world's classes in segmentation order (label value i is ``class_names()[i]``)."""
    return [c.name for c in CONCEPTS]


def vocabulary_lines() -> list[str]:
    """The vocabulary file of the world: ``name: synonym, synonym`` one concept a line, in class order."""
    return [f"{c.name}: {', '.join(c.synonyms)}" for c in CONCEPTS]


def caption_terms() -> dict[str, str]:
    """Every lower-case word or phrase that names a concept (names, synonyms, plurals) -> concept name."""
    terms: dict[str, str] = {}
    for c in CONCEPTS:
        for word in (c.name, *c.synonyms):
            terms.setdefault(word, c.name)
            terms.setdefault(word + "s", c.name)
        terms.setdefault(c.plural, c.name)
    return terms
