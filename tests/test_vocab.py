"""Concept vocabulary: inflection, caption -> concepts extraction, vocabulary files, default vocabulary, vocab dir."""

import numpy as np
import pytest

from cocu.cli import main
from cocu.resources import CLASSNAME_SETS
from cocu.curation.vocab import (
    Vocabulary,
    normalise_class_name,
    plural_forms,
    pluralize,
    read_vocab_dir,
    singular_forms,
    singularize,
    tokenize,
    write_vocab_dir,
)

PLURALS = {
    "car": "cars",
    "city": "cities",
    "toy": "toys",
    "leaf": "leaves",
    "knife": "knives",
    "wolf": "wolves",
    "roof": "roofs",
    "giraffe": "giraffes",
    "bus": "buses",
    "box": "boxes",
    "bench": "benches",
    "dish": "dishes",
    "potato": "potatoes",
    "person": "people",
    "man": "men",
    "woman": "women",
    "child": "children",
    "mouse": "mice",
    "goose": "geese",
    "foot": "feet",
    "tooth": "teeth",
    "fireman": "firemen",
    "human": "humans",
    "sheep": "sheep",
    "fish": "fish",
}


@pytest.mark.parametrize(("singular", "plural"), sorted(PLURALS.items()))
def test_pluralize_and_singularize_invert_each_other(singular, plural):
    assert pluralize(singular) == plural
    assert singularize(plural) == singular


@pytest.mark.parametrize(
    "word", ["grass", "glass", "bus", "sheep", "fish", "tennis", "news", "jeans", "cactus", "specimen", "abdomen"]
)
def test_invariant_and_s_final_words_stay_singular(word):
    assert singularize(word) == word


def test_glasses_stays_a_word_of_its_own_but_is_also_the_plural_of_glass():
    assert pluralize("glass") == "glasses" and singularize("glasses") == "glasses"


def test_ambiguous_plurals_offer_every_candidate():
    assert singular_forms("cookies") == ["cooky", "cookie"]
    assert "stove" in singular_forms("stoves") and "horse" == singularize("horses")
    assert "grasses" in plural_forms("grass") and "fishes" in plural_forms("fish")


def test_tokenize_lowercases_and_strips_punctuation_and_possessives():
    assert tokenize("A Dog's BALL, (red)!  Café-au-lait") == ["a", "dog", "ball", "red", "cafe", "au", "lait"]
    assert tokenize("jack-o'-lantern") == ["jack", "o", "lantern"]


@pytest.fixture(scope="module")
def vocab():
    return Vocabulary(
        concepts=["cat", "car", "traffic light", "light", "hot dog", "dog", "person", "mouse", "leaf", "glass",
                  "bus", "sheep", "dining table", "table", "chest of drawers"],
        aliases={"automobile": "car", "auto": "car", "people": "person"},
    )


@pytest.mark.parametrize(
    ("caption", "expected"),
    [
        ("Two cats sleeping", ["cat"]),  # plural
        ("mice and a mouse", ["mouse"]),  # irregular plural, no duplicates
        ("autumn leaves on buses", ["leaf", "bus"]),  # -ves, -es
        ("three sheep", ["sheep"]),  # invariant
        ("An automobile next to two autos", ["car"]),  # alias and its plural count as the concept
        ("people crossing", ["person"]),
        ("traffic lights above the light", ["traffic light", "light"]),  # longest match first
        ("a hot dog and a dog", ["hot dog", "dog"]),
        ("dining tables and a table", ["dining table", "table"]),
        ("two chests of drawers", ["chest of drawers"]),  # the head before "of" takes the plural
        ("a bobcat in this category, scattered", []),  # no substring matches
        ("Cat!!! (car), dog's bowl; GLASS.", ["cat", "car", "dog", "glass"]),  # punctuation, case, possessive
        ("car cat car", ["car", "cat"]),  # order of first appearance
        ("", []),
    ],
)
def test_extract(vocab, caption, expected):
    assert vocab.extract(caption) == expected


def test_index_of_and_len(vocab):
    assert len(vocab) == 15 and vocab.index_of("car") == 1
    assert vocab.lookup("Automobiles") == "car"
    with pytest.raises(KeyError, match="'truck' is not a concept"):
        vocab.index_of("truck")


def test_vocabulary_file_with_aliases(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_text("car: automobile, auto\nTraffic Light\nperson: man, woman, people, kid\nsky:\n")
    vocab = Vocabulary.from_file(path)
    assert vocab.concepts == ["car", "traffic light", "person", "sky"]
    assert vocab.aliases == {"automobile": "car", "auto": "car", "man": "person", "woman": "person",
                             "people": "person", "kid": "person"}
    assert vocab.extract("Kids, women and men near autos under the sky") == ["person", "car", "sky"]
    written = tmp_path / "again.txt"
    written.write_text("\n".join(vocab.to_lines()) + "\n")
    again = Vocabulary.from_file(written)
    assert (again.concepts, again.aliases) == (vocab.concepts, vocab.aliases)


def test_a_byte_order_mark_is_not_part_of_the_first_concept(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_bytes("sky\ngrass\n".encode("utf-8-sig"))
    vocab = Vocabulary.from_file(path)
    assert vocab.concepts == ["sky", "grass"]
    assert vocab.extract("blue sky") == ["sky"]


def test_non_ascii_concepts_are_accepted_and_matched_as_words(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_text("犬: 狗\nсобака\ncafé\n", encoding="utf-8")
    vocab = Vocabulary.from_file(path)
    assert vocab.concepts == ["犬", "собака", "café"]
    assert vocab.extract("a 狗 and a собака outside the cafe") == ["犬", "собака", "café"]


def test_an_alias_that_is_its_own_concepts_plural_is_accepted(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_text("person: people, persons\n")
    assert Vocabulary.from_file(path).extract("persons and people") == ["person"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("car\n\nbus\n", r"line 2: empty concept entry"),
        ("car\n  : auto\n", r"line 2: empty concept entry"),
        ("car: auto, , automobile\n", r"line 1: empty alias"),
        ("car\nbus\ncar\n", r"line 3: 'car' duplicates 'car' \(line 1\)"),
        ("car\nbus\nCars\n", r"line 3: 'cars' duplicates 'car' \(line 1\)"),
        ("car: auto\nauto\n", r"line 2: 'auto' duplicates 'auto' \(line 1\)"),
        ("car: auto, car\n", r"line 1: 'car' duplicates 'car' \(line 1\)"),
        ("", "has no entries"),
    ],
)
def test_bad_vocabulary_files_name_the_file_and_line(tmp_path, text, message):
    path = tmp_path / "bad.txt"
    path.write_text(text)
    with pytest.raises(ValueError, match=message) as err:
        Vocabulary.from_file(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize(
    ("name", "forms"),
    [
        ("tench, Tinca tinca", ["tench"]),
        ("grass-merged", ["grass"]),
        ("sky-other", ["sky"]),
        ("desk-stuff", ["desk"]),
        ("kite (bird of prey)", ["kite"]),
        ("cardboard box / carton", ["cardboard box", "carton"]),
        ("Traffic Lights", ["traffic light"]),
        ("T-shirt", ["t-shirt"]),
        ("leaves", ["leaf"]),
        ("chests of drawers", ["chest of drawers"]),
        ("triceratops", ["triceratops"]),
    ],
)
def test_normalise_class_name(name, forms):
    assert normalise_class_name(name) == forms


def test_stuff_qualifiers_keep_their_head():
    assert normalise_class_name("wall-brick", qualifier_heads=True) == ["wall"]
    assert normalise_class_name("floor-marble", qualifier_heads=True) == ["floor"]


def test_default_vocabulary_is_the_normalised_union_of_the_class_name_files():
    vocab = Vocabulary.default()
    names = set(vocab.concepts)
    assert {"person", "sky", "grass", "wall", "tench", "car", "traffic light", "leaf"} <= names
    assert not [n for n in names if n != n.lower() or "," in n or n.endswith(("-other", "-merged", "-stuff"))]
    assert "wall-brick" not in names and "grass-merged" not in names and "leaves" not in names
    assert len(names) == len(vocab.concepts)
    assert vocab.extract("Two persons walking on the grass under a cloudy sky") == ["person", "grass", "sky"]


def test_default_vocabulary_without_class_name_files_is_an_error():
    with pytest.raises(FileNotFoundError, match="no class-name files.*--vocab"):
        Vocabulary.default(names=["no-such-benchmark"])
    assert "imagenet" in CLASSNAME_SETS and len(CLASSNAME_SETS) == 9


def test_vocab_dir_round_trip(tmp_path, encoder, vocab):
    write_vocab_dir(vocab, encoder, tmp_path / "vocab")
    concepts, emb = read_vocab_dir(tmp_path / "vocab")
    assert concepts == vocab.concepts and emb.shape == (15, 128) and emb.dtype == np.float32
    np.testing.assert_allclose(emb[2], encoder.encode_texts(["a photo of a traffic light."])[0], atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    again = Vocabulary.from_file(tmp_path / "vocab" / "vocab.txt")
    assert again.concepts == vocab.concepts and again.aliases == vocab.aliases
    np.save(tmp_path / "vocab" / "concept_emb.npy", emb[:5])
    with pytest.raises(ValueError, match=r"concept_emb\.npy has shape \(5, 128\) but .* lists 15"):
        read_vocab_dir(tmp_path / "vocab")


def test_cli_vocab_with_a_file_and_with_the_default(tmp_path, capsys):
    path = tmp_path / "v.txt"
    path.write_text("car: auto\nsky\n")
    assert main(["vocab", "--encoder", "random:clip-tiny", "--out", str(tmp_path / "a"), "--vocab", str(path)]) == 0
    assert "wrote 2 concepts (1 aliases)" in capsys.readouterr().out
    assert (tmp_path / "a" / "concepts.txt").read_text() == "car\nsky\n"
    assert main(["vocab", "--encoder", "random:clip-tiny", "--out", str(tmp_path / "b")]) == 0
    concepts, emb = read_vocab_dir(tmp_path / "b")
    assert len(concepts) == emb.shape[0] > 1000
    path.write_text("car\ncar\n")
    assert main(["vocab", "--encoder", "random:clip-tiny", "--out", str(tmp_path / "c"), "--vocab", str(path)]) == 2
    assert "line 2" in capsys.readouterr().err
