"""Fixtures shared by several test files, and the ``lowest`` marker on whole test files.

`make test` runs the suite, then the tests marked ``lowest`` again in a second environment holding the
lowest numpy, transformers, pyarrow and webdataset that pyproject.toml allows. Besides single tests
marked in place, every test in the files below (data, curation, training, evaluation) is marked here.
"""

import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Callable

import pytest

from cocu.curation.encoder import FrozenClip, load_encoder

LOWEST_FILES = frozenset(
    {
        # data
        "test_data_io.py",
        "test_transforms.py",
        "test_randaugment.py",
        "test_synth.py",
        "test_tarscan.py",
        "test_img2dataset_layouts.py",
        "test_lock.py",
        # curation
        "test_encoder.py",
        "test_vocab.py",
        "test_embed_index.py",
        "test_embed_workers.py",
        "test_curation_core.py",
        "test_curation_knn.py",
        "test_curate_cli.py",
        # training
        "test_loss.py",
        "test_train_config.py",
        "test_train_data.py",
        "test_train_world.py",
        "test_train_resume.py",
        "test_train_distributed.py",
        "test_train_gpu_paths.py",
        "test_archive_join.py",
        # evaluation
        "test_eval_metrics.py",
        "test_eval_protocol.py",
        "test_eval_cls.py",
        "test_eval_seg.py",
        "test_segment.py",
        "test_eval_outputs.py",
        "test_eval_reference.py",
        "test_eval_refine.py",
        "test_dense_clip.py",
    }
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if Path(str(item.fspath)).name in LOWEST_FILES:
            item.add_marker(pytest.mark.lowest)


@pytest.fixture(scope="session")
def encoder() -> FrozenClip:
    """The random-weight plumbing CLIP (``random:clip-tiny``, seed 0); tests read it, none changes it."""
    return load_encoder("random:clip-tiny")


@pytest.fixture(scope="session")
def load_script() -> Callable[[str], ModuleType]:
    """Import one of ``scripts/*.py`` by name (they are not a package), e.g. ``load_script("sampling_study")``."""

    def load(name: str) -> ModuleType:
        path = Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load
