"""All curation stages of a run folder, each cached and resumable (`cocu curate`, `cocu archive`).

Stages and outputs (``RUN`` = the output folder):

1. ``emb``: image and caption embeddings in clip-retrieval's layout, ``RUN/emb/`` (:mod:`.embed`; with
   several ranks, rank ``r`` embeds its contiguous share of the shards into ``RUN/emb/rank-{r}/``).
2. ``vocab``: ``RUN/vocab/concepts.txt`` + ``concept_emb.npy`` (:mod:`.vocab`).
3. ``index``: ``RUN/index/image.index`` (and ``caption.index`` for ``lang`` expansion) (:mod:`.index`).
4. ``curation``: ``RUN/curation/archive-{i}.parquet`` (:mod:`.archive`; the folder holds nothing else),
   part ``i`` = anchors ``[i * chunk_size, (i + 1) * chunk_size)`` of the embedding rows with distinct keys
   (a repeated key is rejected as ``duplicate_key``); a finished part is never redone. Embeddings and the
   index stay memory-mapped (:mod:`.store`); keys and captions are Arrow arrays. Caption concepts are
   extracted part by part once into ``RUN/cache/concept_lists.npz``. With ``vision`` expansion and at least
   half of the rows to curate, neighbours come from one self-join over an exact or IVF index (:mod:`.knn`)
   instead of a search per chunk (the join is kept memory-mapped in ``RUN/cache/self_join.npy`` for resumed
   runs); ``RUN/cache/neighbor_search.json`` (and the summary's ``neighbor_search``) says which, for the
   parts the last run wrote, with the IVF join's measured recall@k.
5. ``shards`` (``write_shards``): the input shards again with a ``{key}.concepts.json`` member, ``RUN/shards/``.

``RUN/summary.json`` (rewritten at every run from the parts' recorded counts) holds the sample counts,
rejections by reason, archive statistics, the options and, when the data carry ground-truth concepts,
recall/precision of caption, archive, top-L and sampled concepts. ``RUN/options.json`` guards the cache
(:mod:`.runstate`): everything is checked before any long work starts.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
from tqdm import tqdm

from cocu.curation import embed as emb_mod
from cocu.curation import index as index_mod
from cocu.curation import knn as knn_mod
from cocu.curation import vocab as vocab_mod
from cocu.curation.archive import CURATION_DIR, archive_table, part_path, read_part_meta, write_part
from cocu.curation.engine import Curator, CurationParams, TrueConcepts, summarize_stats
from cocu.curation.expand import CaptionConcepts
from cocu.curation.runstate import Ranks, RunState, file_digest, folder_fingerprint, run_lock, stable_hash
from cocu.curation.shards import check_shard_keys, write_curated_shards
from cocu.curation.store import EmbeddingStore, VectorParts, first_occurrences
from cocu.data import skips as skip_reasons
from cocu.data.reader import resolve_sources
from cocu.utils.atomic import atomic_path, atomic_write_json, remove_stale_temps

logger = logging.getLogger(__name__)

SUMMARY_FILE = "summary.json"
NEIGHBOR_SEARCH_FILE = "neighbor_search.json"
CACHE_DIR = "cache"
"""``RUN/cache/``: caches of the curation stage, kept out of ``RUN/curation/`` so that folder holds only
the archive's parquet parts (pandas, duckdb, pyarrow.dataset read it as one data set)."""
SELF_JOIN_FILE, SELF_JOIN_INFO = "self_join.npy", "self_join.json"
CONCEPT_LISTS = "concept_lists.npz"


@dataclass
class CurateConfig:
    """Options of a curation run (defaults = full CoCu). ``RUNTIME_FIELDS`` do not change any result."""

    expansion: str = CurationParams.expansion
    neighbors: int = CurationParams.neighbors
    ranking: str = CurationParams.ranking
    sampling: str = CurationParams.sampling
    labels: int = CurationParams.labels
    tau: float = CurationParams.tau
    kmeans_iters: int = CurationParams.kmeans_iters
    seed: int = CurationParams.seed
    vocab: str | None = None
    rows_per_part: int = 100_000
    chunk_size: int = 8192
    index_kind: str = "auto"
    exact_max: int = index_mod.DEFAULT_EXACT_MAX
    max_memory: float | None = None
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


def _data_identity(data_spec: str | Sequence[str]) -> dict[str, dict[str, Any]]:
    """Each input file's content identity (size and a hash of its first and last blocks, as ``cocu embed``
    records it; not its mtime, so a copied or touched file is the same input)."""
    identity = {}
    for src in resolve_sources(data_spec):
        fingerprint = emb_mod.source_fingerprint(src)
        identity[src] = {"size": fingerprint["size"], "sha256": fingerprint["head_tail_sha256"]}
    return identity


def _stage_ids(cfg: CurateConfig, encoder_spec: str, data: dict[str, dict[str, Any]], world: int) -> dict[str, str]:
    ids = {"emb": stable_hash([data, encoder_spec, cfg.rows_per_part, world])}
    ids["vocab"] = stable_hash([encoder_spec, _vocab_identity(cfg.vocab)])
    ids["index"] = stable_hash([ids["emb"], cfg.expansion, cfg.index_kind, cfg.exact_max, cfg.max_memory, cfg.neighbors,
                                 cfg.seed])
    curation = [ids["emb"], ids["vocab"], ids["index"], asdict(cfg.params()), cfg.chunk_size]
    ids["curation"] = stable_hash(curation)
    if cfg.write_shards:
        ids["shards"] = stable_hash([ids["curation"], cfg.samples_per_shard])
    return ids


def _emb_dirs(run: Path, world: int) -> list[Path]:
    return [run / "emb"] if world == 1 else [run / "emb" / f"rank-{r}" for r in range(world)]


def open_store(dirs: list[Path], expansion: str) -> EmbeddingStore:
    """The embedding folders, memory-mapped (:class:`~cocu.curation.store.EmbeddingStore`), checked for
    non-finite rows and, for ``lang`` expansion, for caption embeddings."""
    store = EmbeddingStore(dirs)
    if expansion == "lang" and store.text is None:
        raise ValueError(
            f"{', '.join(map(str, dirs))} hold(s) no caption embeddings ({emb_mod.TEXT_DIR}/, e.g. clip-retrieval run "
            "with --enable_text False): language-driven expansion needs them; use --expansion vision"
        )
    store.check_finite()
    return store


def _concept_lists(
    path: Path, stage_id: str, store: EmbeddingStore, vocab: vocab_mod.Vocabulary
) -> tuple[CaptionConcepts, TrueConcepts | None]:
    """Caption concept ids (and mapped ground truth) of every row, extracted part by part from the metadata and
    cached in ``path`` (with the stage id, so a cache of other inputs is never reused)."""
    cached = _load_npz(path, stage_id)
    if cached is not None and len(cached["indptr"]) == len(store) + 1:
        caption_ids = CaptionConcepts(cached["indptr"], cached["indices"])
        true = (
            TrueConcepts(CaptionConcepts(cached["t_indptr"], cached["t_indices"]), cached["t_unmapped"],
                         cached["t_known"])
            if "t_known" in cached
            else None
        )
        return caption_ids, true
    index = {name: i for i, name in enumerate(vocab.concepts)}
    canonical: dict[str, str | None] = {}
    caption_parts: list[CaptionConcepts] = []
    truth_parts: list[TrueConcepts] = []
    any_truth = store.has_truth
    progress = tqdm(total=len(store), desc="caption concepts", unit="caption", mininterval=2.0)
    for part in store.iter_meta():
        memo: dict[str, list[int]] = {}  # per part: repeated captions (alt-text boilerplate) are common
        rows = []
        for caption in part.captions.to_pylist():
            found = memo.get(caption)
            if found is None:
                found = memo[caption] = [index[c] for c in vocab.extract(caption)]
            rows.append(found)
        caption_parts.append(CaptionConcepts.from_lists(rows))
        if any_truth:
            # True names map through the vocabulary (any form or alias); an unknown name stays as it is, which
            # is not a concept name, so it counts as a true concept that curation missed.
            names = part.truth.to_pylist() if part.truth is not None else [None] * len(rows)
            for name in {n for sample in names for n in sample or ()} - canonical.keys():
                canonical[name] = vocab.lookup(name)
            mapped = [None if sample is None else [canonical[n] or n for n in sample] for sample in names]
            truth_parts.append(TrueConcepts.from_names(mapped, index))
        progress.update(len(rows))
    progress.close()
    caption_ids = _concat_csr(caption_parts)
    true = None
    if any_truth:
        true = TrueConcepts(
            _concat_csr([t.ids for t in truth_parts]),
            np.concatenate([t.unmapped for t in truth_parts]),
            np.concatenate([t.known for t in truth_parts]),
        )
    arrays = {"indptr": caption_ids.indptr, "indices": caption_ids.indices, "stage_id": np.array(stage_id)}
    if true is not None:
        arrays.update(
            t_indptr=true.ids.indptr, t_indices=true.ids.indices, t_unmapped=true.unmapped, t_known=true.known
        )
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.savez(handle, **arrays)
    return caption_ids, true


def _concat_csr(parts: list[CaptionConcepts]) -> CaptionConcepts:
    if not parts:
        return CaptionConcepts(np.zeros(1, dtype=np.int64), np.zeros(0, dtype=np.int32))
    shift = np.cumsum([0] + [int(p.indptr[-1]) for p in parts[:-1]])
    indptr = np.concatenate([parts[0].indptr[:1]] + [p.indptr[1:] + o for p, o in zip(parts, shift)])
    return CaptionConcepts(indptr.astype(np.int64), np.concatenate([p.indices for p in parts]).astype(np.int32))


def _load_npz(path: Path, stage_id: str) -> dict[str, np.ndarray] | None:
    """The arrays of a cache file written for ``stage_id``, else ``None``."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as saved:
            if "stage_id" not in saved or str(saved["stage_id"]) != stage_id:
                return None
            return {name: saved[name] for name in saved.files}
    except (OSError, ValueError) as err:
        logger.warning("ignoring unreadable cache %s (%s)", path, err)
        return None


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


def index_search(searcher: index_mod.Searcher, threads: int | None):
    """A :data:`~cocu.curation.expand.SearchFn` over a :class:`~cocu.curation.index.Searcher`, with ``threads``
    faiss threads in whichever thread it runs (the curator searches in a background thread)."""

    def search(queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        with index_mod.faiss_threads(threads):
            return searcher(queries, k)

    return search


def _index_params(index_dir: Path, name: str) -> tuple[str | None, dict[str, Any]]:
    """``(row fingerprint, search parameters)`` that ``cocu index`` recorded for ``name`` (``image`` or
    ``caption``); ``(None, {})`` for an index another tool built."""
    try:
        infos = index_mod.read_index_info(index_dir)
    except FileNotFoundError:
        return None, {}
    info = infos.get(name)
    return (info.fingerprint, info.params) if info is not None else (None, {})


def run_curation_stage(
    run: Path, emb_dirs: list[Path], cfg: CurateConfig, stage_id: str, ranks: Ranks
) -> tuple[list[dict[str, float]], dict[str, int], int]:
    """Write this rank's missing archive parts; returns ``(stats of all parts, rejections by reason,
    samples in)``.

    The embeddings stay memory-mapped (:mod:`.store`); the index is memory-mapped too and checked to number
    its rows as the embedding folder does. All inputs are checked (row counts, finite values, index
    dimension, size and row order, vocabulary) before the first part is computed. Part ``i`` holds anchors
    ``[i * chunk_size, (i + 1) * chunk_size)`` of the rows with a key not seen before (a repeated key,
    possible when ranks embed shards separately, is rejected as ``duplicate_key``; the row stays searchable);
    rank ``r`` writes the parts ``i`` with ``i % world == r``.
    """
    store = open_store(emb_dirs, cfg.expansion)
    n = len(store)
    logger.info("embeddings: %d rows of dim %d in %d part(s), memory-mapped and checked", n, store.dim,
                len(store.image.arrays))
    rejected = dict(store.rejected)
    vocab_dir, index_dir = run / "vocab", run / "index"
    vocab = _vocabulary(vocab_dir)
    _, concept_emb = vocab_mod.read_vocab_dir(vocab_dir)
    if concept_emb.shape[1] != store.dim:
        raise ValueError(
            f"{vocab_dir / vocab_mod.EMBEDDINGS_FILE} has dimension {concept_emb.shape[1]} but the embeddings "
            f"{store.dim}: they come from different encoders; rerun `cocu vocab` with the embeddings' encoder"
        )
    vision = cfg.expansion == "vision"
    name = index_mod.IMAGE_INDEX if vision else index_mod.CAPTION_INDEX
    searched = store.image if vision else store.text
    index = index_mod.load_index(index_dir / name, expected_dim=store.dim, expected_n=n, mmap=True)
    fingerprint, params = _index_params(index_dir, "image" if vision else "caption")
    index_mod.check_rows(index, searched, index_dir / name, fingerprint)
    (run / CURATION_DIR).mkdir(parents=True, exist_ok=True)
    (run / CACHE_DIR).mkdir(parents=True, exist_ok=True)
    lists_path = run / CACHE_DIR / CONCEPT_LISTS
    if ranks.main:
        _concept_lists(lists_path, stage_id, store, vocab)
    ranks.barrier()
    caption_ids, true = _concept_lists(lists_path, stage_id, store, vocab)
    logger.info("caption concepts of %d rows ready (%d in all)", n, caption_ids.indices.shape[0])
    samples_in = n + sum(rejected.values())
    anchors = first_occurrences(store.keys)  # int64 [a]: rows whose key was not seen before
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

    todo_all = [b for b in bounds if finished(*b) is None]
    ranks.barrier()  # every rank has seen the same finished parts
    todo = [b for b in todo_all if b[0] % ranks.world == ranks.rank]
    if todo_all:
        logger.info("curating %d of %d part(s) (%d anchors each; %d by this rank)", len(todo_all), num_parts,
                    cfg.chunk_size, len(todo))
        table = _self_join(run, index, store.image, cfg, todo_all, stage_id, ranks)
        logger.info("neighbours ready (%s); curating", "self-join" if table is not None else "index search")
        search = None
        if table is None:
            search = index_search(index_mod.searcher_for(index, searched, params), cfg.threads)
        curator = Curator(store.image, caption_ids, concept_emb, search, cfg.params(), true, neighbor_table=table)
        names = pa.array(vocab.concepts, pa.string())
        progress = tqdm(total=sum(stop - start for _, start, stop in todo), desc="curate", unit="anchor")
        chunks = ((i, anchors[start:stop]) for i, start, stop in todo)
        span = {i: (start, stop) for i, start, stop in todo}
        for i, result in curator.curate_chunks(chunks, cfg.seed):
            rows = result.rows
            _, _, cap = caption_ids.gather(rows)
            part = archive_table(
                store.keys, store.captions, rows, caption_ids.lengths[rows], cap, result.neighbor_ids,
                result.archive, result.clusters, names,
            )
            meta = {"id": stage_id, "start": span[i][0], "stop": span[i][1], "stats": result.stats}
            write_part(part_path(run, i), part, meta)
            progress.update(rows.shape[0])
        progress.close()
        logger.info("wrote %d archive part(s)", len(todo))
    ranks.barrier()
    stats = []
    for b in bounds:
        meta = finished(*b)
        if meta is None:
            raise RuntimeError(f"archive part {part_path(run, b[0])} is missing after curation")
        stats.append(meta["stats"])
    return stats, rejected, samples_in


def _self_join(
    run: Path, index, image: VectorParts, cfg: CurateConfig, todo: list[tuple[int, int, int]], stage_id: str,
    ranks: Ranks,
) -> np.ndarray | None:
    """Every row's neighbours by a self-join (:mod:`.knn`) when that is cheaper than searching the index
    chunk by chunk: image-to-image expansion over an exact or IVF index with at least half of the rows
    still to curate (``todo``: the parts to write by all ranks, ``(part, start, stop)``); else ``None``.
    Called by every rank: each joins its share of the inverted lists into one table, memory-mapped from
    ``RUN/cache/self_join.npy`` (with the stage id in ``self_join.json``), so a resumed run reuses it.
    How this run finds the neighbours of which parts goes to ``RUN/cache/neighbor_search.json``."""
    cache = run / CACHE_DIR
    table_path, info_path = cache / SELF_JOIN_FILE, cache / SELF_JOIN_INFO
    shape = (len(image), cfg.neighbors)
    record: dict[str, Any] = {"method": "index search"}
    table, info = _cached_join(table_path, info_path, stage_id, shape)
    if table is not None:
        record = {**info, "cached": True}
    elif (cfg.expansion == "vision" and knn_mod.join_kind(index) is not None
          and knn_mod.worth_self_join(shape[0], sum(b - a for _, a, b in todo))):
        logger.info("self-join of %d images for their %d nearest neighbours", shape[0], cfg.neighbors)
        tmp = table_path.with_name(table_path.name + ".tmp")
        if ranks.main:
            np.lib.format.open_memmap(tmp, mode="w+", dtype=np.int64, shape=shape).flush()
        ranks.barrier()
        writable = np.load(tmp, mmap_mode="r+")
        joined = knn_mod.self_join(index, image, cfg.neighbors, writable, rank=ranks.rank, world=ranks.world,
                                   threads=cfg.threads, seed=cfg.seed, progress=True)
        writable.flush()
        del writable
        ranks.barrier()
        if ranks.main:
            if joined is not None:
                os.replace(tmp, table_path)
                atomic_write_json(info_path, {"stage_id": stage_id, "info": joined.info()})
            else:
                tmp.unlink()
        ranks.barrier()
        if joined is not None:
            table, record = np.load(table_path, mmap_mode="r"), {**joined.info(), "cached": False}
    record["parts"] = [part for part, _, _ in todo]
    if ranks.main:
        atomic_write_json(cache / NEIGHBOR_SEARCH_FILE, record)
    return table


def _cached_join(
    table_path: Path, info_path: Path, stage_id: str, shape: tuple[int, int]
) -> tuple[np.ndarray | None, dict[str, Any]]:
    """``(neighbour table memory-mapped, join info)`` of an earlier self-join of this stage, else ``(None, {})``."""
    if not (table_path.is_file() and info_path.is_file()):
        return None, {}
    try:
        saved = json.loads(info_path.read_text("utf-8"))
        table = np.load(table_path, mmap_mode="r")
    except (OSError, ValueError) as err:
        logger.warning("ignoring unreadable %s (%s): joining again", table_path, err)
        return None, {}
    if saved.get("stage_id") != stage_id or table.shape != shape:
        return None, {}
    return table, saved["info"]


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
        for stale in remove_stale_temps(state.run_dir):
            logger.info("removed %s, left by an interrupted run", stale)
        state.reset(changed)
    ranks.barrier()


def _finish(
    state: RunState, ranks: Ranks, stats: list[dict[str, float]], rejected: dict[str, int], samples_in: int, extra: dict
) -> dict[str, Any]:
    if ranks.main:
        state.mark_done("curation", {"parts": len(stats)})
        searched = state.run_dir / CACHE_DIR / NEIGHBOR_SEARCH_FILE
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
    if cfg.write_shards:
        check_shard_keys(list(data))
    options = {"data": list(data), "encoder": encoder_spec, **cfg.result_options(), "world_size": ranks.world}
    state = RunState(run, options, _stage_ids(cfg, encoder_spec, data, ranks.world), sources=data)
    with run_lock(run, ranks, "cocu curate"):
        _prepare_run(state, ranks, cfg.overwrite)
        return _curate_stages(data_spec, encoder_spec, state, cfg, ranks)


def _curate_stages(
    data_spec: str | Sequence[str], encoder_spec: str, state: RunState, cfg: CurateConfig, ranks: Ranks
) -> dict[str, Any]:
    run = state.run_dir
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
    if ranks.main:
        if not state.is_done("vocab", [run / "vocab" / vocab_mod.CONCEPTS_FILE]):
            vocab = vocab_mod.load_vocabulary(cfg.vocab)
            vocab_mod.write_vocab_dir(vocab, get_encoder(), run / "vocab")
            state.mark_done("vocab", {"concepts": len(vocab)})
        index_name = index_mod.IMAGE_INDEX if cfg.expansion == "vision" else index_mod.CAPTION_INDEX
        if not state.is_done("index", [run / "index" / index_name]):
            store = open_store(emb_dirs, cfg.expansion)
            infos = index_mod.index_embeddings(
                store.image if cfg.expansion == "vision" else None,
                store.text if cfg.expansion == "lang" else None,
                run / "index",
                kind=cfg.index_kind,
                exact_max=cfg.exact_max,
                max_memory=cfg.max_memory,
                k_check=cfg.neighbors,
                threads=cfg.threads,
                seed=cfg.seed,
            )
            state.mark_done("index", {name: info.to_dict() for name, info in infos.items()})
    ranks.barrier()
    stats, rejected, samples_in = run_curation_stage(run, emb_dirs, cfg, state.stage_ids["curation"], ranks)
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
            command = {"emb": "embed"}.get(name, name)
            raise FileNotFoundError(f"{run / name} is missing or empty; make it with `cocu {command}` first")
    options = {"archive_of": str(run), **cfg.result_options()}
    state = RunState(run, options, {"curation": stable_hash([listings, asdict(cfg.params()), cfg.chunk_size])})
    with run_lock(run, ranks, "cocu archive"):
        _prepare_run(state, ranks, cfg.overwrite, inputs)
        stats, rejected, samples_in = run_curation_stage(run, [run / "emb"], cfg, state.stage_ids["curation"], ranks)
        return _finish(state, ranks, stats, rejected, samples_in, {})
