"""All curation stages of a run folder, each cached and resumable (`cocu curate`, `cocu archive`).

Stages and outputs (``RUN`` = the output folder):

1. ``emb``: image and caption embeddings in clip-retrieval's layout, ``RUN/emb/`` (:mod:`.embed`; with
   several ranks, rank ``r`` embeds its contiguous share of the shards into ``RUN/emb/rank-{r}/``).
2. ``vocab``: ``RUN/vocab/concepts.txt`` + ``concept_emb.npy`` (:mod:`.vocab`).
3. ``index``: ``RUN/index/image.index`` (and ``caption.index`` for ``lang`` expansion) (:mod:`.index`).
4. ``curation``: ``RUN/curation/archive-{i}.parquet`` (:mod:`.archive`), part ``i`` = anchors
   ``[i * chunk_size, (i + 1) * chunk_size)`` of the embedding rows with distinct keys (a repeated key is
   rejected as ``duplicate_key``); a finished part is never redone. Caption concepts are extracted once
   into ``RUN/curation/concept_lists.npz``. With ``vision`` expansion and at least half of the rows to
   curate, neighbours come from one self-join over an exact or IVF index (:mod:`.knn`) instead of a search
   per chunk (the join is kept in ``RUN/curation/self_join.npz`` for resumed runs);
   ``RUN/curation/neighbor_search.json`` (and the summary's ``neighbor_search``) says which, for the parts
   the last run wrote, with the IVF join's measured recall@k.
5. ``shards`` (``write_shards``): the input shards again with a ``{key}.concepts.json`` member, ``RUN/shards/``.

``RUN/summary.json`` (rewritten at every run from the parts' recorded counts) holds the sample counts,
rejections by reason, archive statistics, the options and, when the data carry ground-truth concepts,
recall/precision of caption, archive, top-L and sampled concepts. ``RUN/options.json`` guards the cache
(:mod:`.runstate`): everything is checked before any long work starts.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from cocu.curation import embed as emb_mod
from cocu.curation import index as index_mod
from cocu.curation import knn as knn_mod
from cocu.curation import vocab as vocab_mod
from cocu.curation.archive import CURATION_DIR, ArchiveLookup, archive_table, part_path, read_part_meta, write_part
from cocu.curation.engine import Curator, CurationParams, TrueConcepts, summarize_stats
from cocu.curation.expand import CaptionConcepts
from cocu.curation.runstate import Ranks, RunState, file_digest, folder_fingerprint, stable_hash
from cocu.curation.sampling import DEFAULT_TAU
from cocu.data import skips as skip_reasons
from cocu.data.reader import iter_samples, resolve_sources
from cocu.data.skips import SkipCounter
from cocu.data.writer import ShardWriter
from cocu.utils.atomic import atomic_path, atomic_write_json

logger = logging.getLogger(__name__)

SUMMARY_FILE = "summary.json"
NEIGHBOR_SEARCH_FILE = "neighbor_search.json"
SELF_JOIN_FILE = "self_join.npz"
CONCEPT_LISTS = "concept_lists.npz"
CONCEPTS_MEMBER = "concepts.json"
NOT_CURATED = "not_curated"
"""``--write-shards``: a sample read from the data that has no archive row (rejected when embedding)."""


@dataclass
class CurateConfig:
    """Options of a curation run (defaults = full CoCu). ``RUNTIME_FIELDS`` do not change any result."""

    expansion: str = "vision"
    neighbors: int = 8
    ranking: str = "t2v"
    sampling: str = "cluster"
    labels: int = 3
    tau: float = DEFAULT_TAU
    kmeans_iters: int = 10
    seed: int = 0
    vocab: str | None = None
    rows_per_part: int = 100_000
    chunk_size: int = 8192
    index_kind: str = "auto"
    exact_max: int = index_mod.DEFAULT_EXACT_MAX
    write_shards: bool = False
    samples_per_shard: int = 1000
    batch_size: int = 256
    device: str = "auto"
    precision: str | None = None
    workers: int | None = None
    threads: int | None = None
    overwrite: bool = False

    RUNTIME_FIELDS = frozenset({"batch_size", "device", "precision", "workers", "threads", "overwrite"})

    def params(self) -> CurationParams:
        return CurationParams(
            expansion=self.expansion,
            neighbors=self.neighbors,
            ranking=self.ranking,
            sampling=self.sampling,
            labels=self.labels,
            tau=self.tau,
            kmeans_iters=self.kmeans_iters,
            seed=self.seed,
        )

    def result_options(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k not in self.RUNTIME_FIELDS}


def _vocab_identity(vocab: str | None) -> dict[str, str]:
    if vocab is None:
        return {"vocab": "default"}
    path = Path(vocab)
    if not path.is_file():
        raise FileNotFoundError(f"vocabulary file {path} not found")
    return {"vocab": str(path.resolve()), "sha": file_digest(path)}


def _data_identity(data_spec: str | Sequence[str]) -> list[tuple[str, int]]:
    return [(src, Path(src).stat().st_size) for src in resolve_sources(data_spec)]


def _stage_ids(cfg: CurateConfig, encoder_spec: str, data: list[tuple[str, int]], world: int) -> dict[str, str]:
    ids = {"emb": stable_hash([data, encoder_spec, cfg.rows_per_part, world])}
    ids["vocab"] = stable_hash([encoder_spec, _vocab_identity(cfg.vocab)])
    ids["index"] = stable_hash([ids["emb"], cfg.expansion, cfg.index_kind, cfg.exact_max, cfg.neighbors, cfg.seed])
    curation = [ids["emb"], ids["vocab"], ids["index"], asdict(cfg.params()), cfg.chunk_size]
    ids["curation"] = stable_hash(curation)
    if cfg.write_shards:
        ids["shards"] = stable_hash([ids["curation"], cfg.samples_per_shard])
    return ids


def _emb_dirs(run: Path, world: int) -> list[Path]:
    return [run / "emb"] if world == 1 else [run / "emb" / f"rank-{r}" for r in range(world)]


def _load_embeddings(dirs: list[Path]) -> tuple[emb_mod.Embeddings, list[list[str] | None] | None, dict[str, int]]:
    """Concatenate embedding folders; also the per-row ground truth (``None`` = row without it) and the
    rejected counts by reason."""
    parts = [emb_mod.load_embeddings(d) for d in dirs]
    if len(parts) == 1:
        merged = parts[0]
    else:
        merged = emb_mod.Embeddings(
            image=np.concatenate([p.image for p in parts]),
            text=np.concatenate([p.text for p in parts]),
            keys=[k for p in parts for k in p.keys],
            captions=[c for p in parts for c in p.captions],
            true_concepts=None,
        )
    bad = ~(np.isfinite(merged.image).all(axis=1) & np.isfinite(merged.text).all(axis=1))
    if bad.any():
        first = merged.keys[int(np.argmax(bad))]
        raise ValueError(
            f"{int(bad.sum())} embedding row(s) in {', '.join(map(str, dirs))} are not finite (first key {first!r}): "
            "the embeddings are damaged; delete that folder and rerun (the embedding stage is then redone)"
        )
    truth: list[list[str] | None] = []
    any_truth = False
    rejected: Counter[str] = Counter()
    for folder in dirs:
        metas = sorted(
            (folder / emb_mod.META_DIR).glob("metadata_*.parquet"), key=lambda p: int(p.stem.split("_")[-1])
        )
        for meta in metas:
            table = pq.read_table(meta)
            if "true_concepts" in table.column_names:
                any_truth = True
                truth.extend(table.column("true_concepts").to_pylist())
            else:
                truth.extend([None] * table.num_rows)
        rejected_file = folder / emb_mod.REJECTED_FILE
        if rejected_file.is_file():
            rejected.update(pq.read_table(rejected_file, columns=["reason"]).column("reason").to_pylist())
    if len(truth) != len(merged.keys):
        raise ValueError(
            f"metadata of {', '.join(map(str, dirs))} lists {len(truth)} rows but the embeddings {len(merged.keys)}"
        )
    return merged, truth if any_truth else None, dict(rejected)


def _concept_lists(
    path: Path, captions: list[str], truth: list[list[str] | None] | None, vocab: vocab_mod.Vocabulary
) -> tuple[CaptionConcepts, TrueConcepts | None]:
    """Caption concept ids (and mapped ground truth) of every row, cached in ``path``."""
    if path.is_file():
        with np.load(path) as z:
            caption_ids = CaptionConcepts(z["indptr"], z["indices"])
            true = (
                TrueConcepts(CaptionConcepts(z["t_indptr"], z["t_indices"]), z["t_unmapped"], z["t_known"])
                if "t_known" in z
                else None
            )
        if len(caption_ids) == len(captions):
            return caption_ids, true
    index = {name: i for i, name in enumerate(vocab.concepts)}
    memo: dict[str, list[int]] = {}
    rows = []
    for caption in tqdm(captions, desc="caption concepts", unit="caption", mininterval=2.0):
        found = memo.get(caption)
        if found is None:
            found = memo[caption] = [index[c] for c in vocab.extract(caption)]
        rows.append(found)
    caption_ids = CaptionConcepts.from_lists(rows)
    true = None
    if truth is not None:
        # True names map through the vocabulary (any form or alias); an unknown name stays as it is, which
        # is not a concept name, so it counts as a true concept that curation missed.
        distinct = {name for names in truth for name in names or ()}
        canonical = {name: vocab.lookup(name) for name in distinct}
        mapped = [None if names is None else [canonical[n] or n for n in names] for names in truth]
        true = TrueConcepts.from_names(mapped, index)
    arrays = {"indptr": caption_ids.indptr, "indices": caption_ids.indices}
    if true is not None:
        arrays.update(
            t_indptr=true.ids.indptr, t_indices=true.ids.indices, t_unmapped=true.unmapped, t_known=true.known
        )
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.savez(handle, **arrays)
    return caption_ids, true


def _vocabulary(vocab_dir: Path) -> vocab_mod.Vocabulary:
    """The run's vocabulary with aliases (``vocab.txt``), checked against ``concepts.txt``."""
    concepts, _ = vocab_mod.read_vocab_dir(vocab_dir)
    with_aliases = vocab_dir / vocab_mod.VOCAB_FILE
    vocab = vocab_mod.Vocabulary.from_file(with_aliases) if with_aliases.is_file() else vocab_mod.Vocabulary(concepts)
    if vocab.concepts != concepts:
        raise ValueError(
            f"{with_aliases} and {vocab_dir / vocab_mod.CONCEPTS_FILE} list different concepts; rerun `cocu vocab`"
        )
    return vocab


def index_search(index, threads: int | None):
    """A :data:`~cocu.curation.expand.SearchFn` over a faiss index, with ``threads`` faiss threads in whichever
    thread it runs (the curator searches in a background thread)."""

    def search(queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        with index_mod.faiss_threads(threads):
            return index_mod.search(index, queries, k)

    return search


def run_curation_stage(
    run: Path,
    emb_dirs: list[Path],
    cfg: CurateConfig,
    stage_id: str,
    ranks: Ranks,
    loaded: tuple[emb_mod.Embeddings, list[list[str] | None] | None, dict[str, int]] | None = None,
) -> tuple[list[dict[str, float]], dict[str, int], int]:
    """Write this rank's missing archive parts; returns ``(stats of all parts, rejections by reason,
    samples in)``.

    All inputs are loaded and checked (row counts, index dimension and size, vocabulary) before the first
    part is computed. Part ``i`` holds anchors ``[i * chunk_size, (i + 1) * chunk_size)`` of the rows with a
    key not seen before (a repeated key, possible when ranks embed shards separately, is rejected as
    ``duplicate_key``; the row stays searchable). ``loaded``: the result of loading ``emb_dirs`` when the
    caller already has it.
    """
    emb, truth, rejected = loaded if loaded is not None else _load_embeddings(emb_dirs)
    n = len(emb.keys)
    vocab_dir, index_dir = run / "vocab", run / "index"
    vocab = _vocabulary(vocab_dir)
    _, concept_emb = vocab_mod.read_vocab_dir(vocab_dir)
    if concept_emb.shape[1] != emb.dim:
        raise ValueError(
            f"{vocab_dir / vocab_mod.EMBEDDINGS_FILE} has dimension {concept_emb.shape[1]} but the embeddings "
            f"{emb.dim}: they come from different encoders; rerun `cocu vocab` with the embeddings' encoder"
        )
    name = index_mod.IMAGE_INDEX if cfg.expansion == "vision" else index_mod.CAPTION_INDEX
    index = index_mod.load_index(index_dir / name, expected_dim=emb.dim, expected_n=n)
    folder = run / CURATION_DIR
    folder.mkdir(parents=True, exist_ok=True)
    lists_path = folder / CONCEPT_LISTS
    if ranks.main:
        _concept_lists(lists_path, emb.captions, truth, vocab)
    ranks.barrier()
    caption_ids, true = _concept_lists(lists_path, emb.captions, truth, vocab)
    samples_in = n + sum(rejected.values())
    anchors = _first_occurrences(emb.keys)  # int64 [a]: rows whose key was not seen before
    if anchors.shape[0] < n:
        duplicates = n - anchors.shape[0]
        logger.warning("%d row(s) repeat an earlier key (e.g. across ranks' shards): rejected as %s, the first "
                       "occurrence is curated", duplicates, skip_reasons.DUPLICATE_KEY)
        rejected = {**rejected, skip_reasons.DUPLICATE_KEY: rejected.get(skip_reasons.DUPLICATE_KEY, 0) + duplicates}

    num_parts = (anchors.shape[0] + cfg.chunk_size - 1) // cfg.chunk_size
    bounds = [(i, i * cfg.chunk_size, min(anchors.shape[0], (i + 1) * cfg.chunk_size)) for i in range(num_parts)]

    def finished(i: int, start: int, stop: int) -> dict | None:
        meta = read_part_meta(part_path(run, i))
        ok = meta is not None and meta.get("id") == stage_id and (meta.get("start"), meta.get("stop")) == (start, stop)
        return meta if ok else None

    todo = [b for b in bounds if b[0] % ranks.world == ranks.rank and finished(*b) is None]
    if todo:
        logger.info("curating %d of %d part(s) (%d anchors each)", len(todo), num_parts, cfg.chunk_size)
        table = _self_join(run, index, emb.image, cfg, todo, stage_id)
        search = None if table is not None else index_search(index, cfg.threads)
        curator = Curator(emb.image, caption_ids, concept_emb, search, cfg.params(), true, neighbor_table=table)
        keys, captions = pa.array(emb.keys, pa.string()), pa.array(emb.captions, pa.string())
        names = pa.array(vocab.concepts, pa.string())
        progress = tqdm(total=sum(stop - start for _, start, stop in todo), desc="curate", unit="anchor")
        chunks = ((i, anchors[start:stop]) for i, start, stop in todo)
        span = {i: (start, stop) for i, start, stop in todo}
        for i, result in curator.curate_chunks(chunks, cfg.seed):
            rows = result.rows
            _, _, cap = caption_ids.gather(rows)
            table = archive_table(
                keys, captions, rows, caption_ids.lengths[rows], cap, result.neighbor_ids,
                result.archive, result.clusters, names,
            )
            meta = {"id": stage_id, "start": span[i][0], "stop": span[i][1], "stats": result.stats}
            write_part(part_path(run, i), table, meta)
            progress.update(rows.shape[0])
        progress.close()
    ranks.barrier()
    stats = []
    for b in bounds:
        meta = finished(*b)
        if meta is None:
            raise RuntimeError(f"archive part {part_path(run, b[0])} is missing after curation")
        stats.append(meta["stats"])
    return stats, rejected, samples_in


def _self_join(
    run: Path, index, image: np.ndarray, cfg: CurateConfig, todo: list[tuple[int, int, int]], stage_id: str
) -> np.ndarray | None:
    """Every row's neighbours by a self-join (:mod:`.knn`) when that is cheaper than searching the index
    chunk by chunk: image-to-image expansion over an exact or IVF index with at least half of the rows
    still to curate (``todo``: the parts to write, ``(part, start, stop)``); else ``None``. A join is kept
    in ``RUN/curation/self_join.npz`` (with the stage id), so a resumed run reuses it whatever is left. How
    this run finds the neighbours of which parts goes to ``RUN/curation/neighbor_search.json``."""
    cache = run / CURATION_DIR / SELF_JOIN_FILE
    record: dict[str, Any] = {"method": "index search"}
    table, info = _cached_join(cache, stage_id, (image.shape[0], cfg.neighbors))
    if table is not None:
        record = {**info, "cached": True}
    elif cfg.expansion == "vision" and knn_mod.worth_self_join(image.shape[0], sum(b - a for _, a, b in todo)):
        logger.info("self-join of %d images for their %d nearest neighbours", image.shape[0], cfg.neighbors)
        joined = knn_mod.self_join(index, image, cfg.neighbors, threads=cfg.threads, seed=cfg.seed, progress=True)
        if joined is not None:
            table, record = joined.neighbors, {**joined.info(), "cached": False}
            with atomic_path(cache) as tmp, open(tmp, "wb") as f:
                np.savez(f, neighbors=table, stage_id=np.array(stage_id), info=np.array(json.dumps(joined.info())))
    record["parts"] = [part for part, _, _ in todo]
    atomic_write_json(run / CURATION_DIR / NEIGHBOR_SEARCH_FILE, record)
    return table


def _cached_join(path: Path, stage_id: str, shape: tuple[int, int]) -> tuple[np.ndarray | None, dict[str, Any]]:
    """``(neighbour table, join info)`` of an earlier self-join of this stage if ``path`` holds one of ``shape``,
    else ``(None, {})``."""
    if not path.is_file():
        return None, {}
    try:
        with np.load(path, allow_pickle=False) as saved:
            if str(saved["stage_id"]) != stage_id or saved["neighbors"].shape != shape:
                return None, {}
            return saved["neighbors"], json.loads(str(saved["info"]))
    except (OSError, ValueError, KeyError) as err:
        logger.warning("ignoring unreadable %s (%s): joining again", path, err)
        return None, {}


def _first_occurrences(keys: list[str]) -> np.ndarray:
    """Rows (int64) whose key does not occur in an earlier row."""
    seen: set[str] = set()
    rows = []
    for i, key in enumerate(keys):
        if key not in seen:
            seen.add(key)
            rows.append(i)
    return np.asarray(rows, dtype=np.int64)


def _image_ext(data: bytes) -> str:
    return "png" if data[:8] == b"\x89PNG\r\n\x1a\n" else "jpg"


def write_curated_shards(data_spec, run: Path, out_dir: Path, samples_per_shard: int) -> dict[str, int]:
    """Write the input samples again with a ``{key}.concepts.json`` member (the archive row as JSON)."""
    rows = ArchiveLookup(run)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    skipped: Counter[str] = Counter()
    written = 0
    with ShardWriter(out_dir, prefix="shard", samples_per_shard=samples_per_shard) as writer:
        samples = iter_samples(data_spec, decode_images=False, skips=SkipCounter())
        for sample in tqdm(samples, desc="shards", unit="sample"):
            row = rows.get(sample.key)
            if row is None:
                skipped[NOT_CURATED] += 1
                continue
            members = {_image_ext(sample.image_bytes): sample.image_bytes, "txt": sample.caption.encode("utf-8")}
            if sample.meta is not None:
                members["json"] = json.dumps(sample.meta, ensure_ascii=False).encode("utf-8")
            members[CONCEPTS_MEMBER] = row.to_json().encode("utf-8")
            writer.write(sample.key, members)
            written += 1
    return {"written": written, "shards": len(writer.paths), **{f"skipped_{k}": v for k, v in skipped.items()}}


def build_summary(
    stats: list[dict[str, float]],
    rejected: dict[str, int],
    samples_in: int,
    options: dict[str, Any],
    extra: dict[str, Any],
) -> dict[str, Any]:
    """The run summary (see the module docstring); ``extra`` entries are appended."""
    figures = summarize_stats(stats)
    summary: dict[str, Any] = {
        "samples_in": samples_in,
        "samples_written": figures.pop("samples_written"),
        "rejected": dict(sorted(rejected.items())),
        "mean_archive_size": figures.pop("mean_archive_size"),
        "mean_caption_concepts": figures.pop("mean_caption_concepts"),
    }
    summary.update(figures)
    summary["options"] = options
    summary.update(extra)
    return summary


def _prepare_run(state: RunState, ranks: Ranks, overwrite: bool, inputs: tuple[str, ...] = ()) -> None:
    """Check the folder on every rank (so all raise alike), then let rank 0 delete stale stages."""
    changed = state.prepare(overwrite, inputs)
    ranks.barrier()
    if ranks.main:
        state.run_dir.mkdir(parents=True, exist_ok=True)
        state.reset(changed)
    ranks.barrier()


def _finish(
    state: RunState, ranks: Ranks, stats: list[dict[str, float]], rejected: dict[str, int], samples_in: int, extra: dict
) -> dict[str, Any]:
    if ranks.main:
        state.mark_done("curation", {"parts": len(stats)})
        searched = state.run_dir / CURATION_DIR / NEIGHBOR_SEARCH_FILE
        if searched.is_file():
            extra = {**extra, "neighbor_search": json.loads(searched.read_text("utf-8"))}
        summary = build_summary(stats, rejected, samples_in, state.options, extra)
        atomic_write_json(state.run_dir / SUMMARY_FILE, summary)
    ranks.barrier()
    return json.loads((state.run_dir / SUMMARY_FILE).read_text("utf-8"))


def curate(data_spec: str | Sequence[str], encoder_spec: str, run_dir: str | Path, cfg: CurateConfig) -> dict[str, Any]:
    """Run every stage into ``run_dir`` (skipping finished ones) and return the summary (also in
    ``RUN/summary.json``). Raises :class:`~cocu.curation.runstate.RunMismatchError` before any work when
    ``run_dir`` holds a run made with other options and ``cfg.overwrite`` is not set."""
    cfg.params()  # validates the method options
    run = Path(run_dir)
    ranks = Ranks.from_env()
    data = _data_identity(data_spec)
    if len(data) < ranks.world:
        raise ValueError(f"{len(data)} data source file(s) cannot be split over {ranks.world} ranks; use fewer ranks")
    options = {"data": [d[0] for d in data], "encoder": encoder_spec, **cfg.result_options(), "world_size": ranks.world}
    state = RunState(run, options, _stage_ids(cfg, encoder_spec, data, ranks.world))
    _prepare_run(state, ranks, cfg.overwrite)
    emb_dirs = _emb_dirs(run, ranks.world)
    encoder = None

    def get_encoder():
        nonlocal encoder
        if encoder is None:
            from cocu.curation.encoder import load_encoder

            encoder = load_encoder(encoder_spec, device=cfg.device, batch_size=cfg.batch_size, precision=cfg.precision)
        return encoder

    rank_part = f"-{ranks.rank}" if ranks.world > 1 else ""
    my_emb = emb_dirs[ranks.rank]
    if not state.is_done("emb", [my_emb], rank_part):
        sources = ranks.share(resolve_sources(data_spec))
        result = emb_mod.embed_dataset(
            sources, get_encoder(), my_emb, batch_size=cfg.batch_size, rows_per_part=cfg.rows_per_part,
            workers=cfg.workers,
        )
        state.mark_done("emb", result.summary(), rank_part)
    ranks.barrier()
    loaded = None
    if ranks.main:
        if not state.is_done("vocab", [run / "vocab" / vocab_mod.CONCEPTS_FILE]):
            vocab = vocab_mod.load_vocabulary(cfg.vocab)
            vocab_mod.write_vocab_dir(vocab, get_encoder(), run / "vocab")
            state.mark_done("vocab", {"concepts": len(vocab)})
        index_name = index_mod.IMAGE_INDEX if cfg.expansion == "vision" else index_mod.CAPTION_INDEX
        if not state.is_done("index", [run / "index" / index_name]):
            loaded = _load_embeddings(emb_dirs)
            infos = index_mod.index_embeddings(
                loaded[0].image if cfg.expansion == "vision" else None,
                loaded[0].text if cfg.expansion == "lang" else None,
                run / "index",
                kind=cfg.index_kind,
                exact_max=cfg.exact_max,
                k_check=cfg.neighbors,
                threads=cfg.threads,
                seed=cfg.seed,
            )
            state.mark_done("index", {name: info.to_dict() for name, info in infos.items()})
    ranks.barrier()
    stats, rejected, samples_in = run_curation_stage(run, emb_dirs, cfg, state.stage_ids["curation"], ranks, loaded)
    extra: dict[str, Any] = {"index": state.info("index")}
    if cfg.write_shards and ranks.main:
        if not state.is_done("shards", [run / "shards"]):
            state.mark_done("shards", write_curated_shards(data_spec, run, run / "shards", cfg.samples_per_shard))
        extra["shards"] = state.info("shards")
    return _finish(state, ranks, stats, rejected, samples_in, extra)


def curate_archive(run_dir: str | Path, cfg: CurateConfig) -> dict[str, Any]:
    """Only the archive stage, on a run folder whose ``emb/``, ``vocab/`` and ``index/`` were made by
    ``cocu embed``, ``cocu vocab`` and ``cocu index``. Their file listing (names, sizes, times) is part of
    the stage id, so rebuilding any of them invalidates the archive."""
    cfg.params()
    run = Path(run_dir)
    ranks = Ranks.from_env()
    inputs = ("emb", "vocab", "index")
    listings = [folder_fingerprint(run / name) for name in inputs]
    for name, listing in zip(inputs, listings):
        if not listing:
            raise FileNotFoundError(f"{run / name} is missing or empty; make it with `cocu {name}` first")
    options = {"archive_of": str(run), **cfg.result_options()}
    state = RunState(run, options, {"curation": stable_hash([listings, asdict(cfg.params()), cfg.chunk_size])})
    _prepare_run(state, ranks, cfg.overwrite, inputs)
    stats, rejected, samples_in = run_curation_stage(run, [run / "emb"], cfg, state.stage_ids["curation"], ranks)
    return _finish(state, ranks, stats, rejected, samples_in, {})
