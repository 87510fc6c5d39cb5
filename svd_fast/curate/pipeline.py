"""The curation run: sources -> Ray Data stages -> per-source cache -> filters -> manifest, shards, summary.

1. List the sources under INPUT_DIR (sorted; `--limit N` keeps the first N).
2. Sources without a cached result go through Ray Data: probe + cuts (flat_map, one source to
   many clips), decode, motion, text (tasks), captions and CLIP (one model actor each). Rows come
   back to the driver, which writes each source's rows to OUT_DIR/.work/<key>.json atomically as
   soon as all its clips are in. The key hashes the source's name, size, mtime and the settings
   that change scores, so a killed run restarts where it stopped and a change of settings
   recomputes.
3. Filter thresholds are percentiles over every cached score (only score arrays in memory).
4. The manifest and errors are written by streaming the cache in source order (identical after a
   resume), then the kept clips are encoded into webdataset shards, then the summary.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .config import CurateConfig
from .filters import build_rules, final_reason
from .shards import SHARD_PATTERN, ShardWriter, clip_key, clip_metadata, encode_clip, shard_is_complete
from .stages import clip_stages, drop_payload, process_source_locally, source_rows
from .summary import StageCounter, stage_states, write_summary

MANIFEST_SCHEMA = pa.schema([
    ("source", pa.string()), ("clip_index", pa.int64()), ("start_frame", pa.int64()), ("end_frame", pa.int64()),
    ("fps", pa.float64()), ("width", pa.int64()), ("height", pa.int64()), ("codec", pa.string()),
    ("start_pts", pa.int64()), ("key", pa.string()),
    ("motion", pa.float64()), ("text_area", pa.float64()), ("aesthetic", pa.float64()), ("clip_score", pa.float64()),
    ("caption", pa.string()), ("caption_image", pa.string()), ("caption_video", pa.string()),
    ("caption_summary", pa.string()), ("kept", pa.bool_()), ("reason", pa.string()),
])
ERRORS_SCHEMA = pa.schema([("source", pa.string()), ("reason", pa.string())])
MANIFEST_ROWS_PER_GROUP = 8192
SHARDS_PER_BATCH = 8  # shards encoded per Ray Data job: bounds the clip list held by the driver
SOURCES_PER_JOB = 2000  # one Ray Data block per source; jobs of this many keep the driver's block list small


def log(message: str) -> None:
    print(f"[curate] {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Source:
    name: str  # path relative to INPUT_DIR, '/'-separated: the manifest's `source`
    path: str  # absolute path
    key: str  # cache key


def list_sources(input_dir: str, config: CurateConfig, limit: int | None = None) -> list[Source]:
    """Video files under `input_dir` in sorted order, each with its cache key."""
    if not os.path.isdir(input_dir):
        raise ValueError(f"INPUT_DIR {input_dir} does not exist or is not a folder")
    suffixes = tuple(ext.lower() for ext in config.decode.extensions)
    names = []
    for folder, subfolders, files in os.walk(input_dir):
        subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
        names += [os.path.relpath(os.path.join(folder, f), input_dir) for f in files
                  if f.lower().endswith(suffixes) and not f.startswith(".")]
    names = sorted(name.replace(os.sep, "/") for name in names)[:limit]
    fingerprint = config.fingerprint()
    sources = []
    for name in names:
        path = os.path.abspath(os.path.join(input_dir, name))
        try:
            stat = os.stat(path)
            identity = f"{stat.st_size}|{stat.st_mtime_ns}"
        except OSError as error:  # a dangling link, a file gone since the walk: probing records why
            identity = f"unreadable|{error.errno}"
        key = hashlib.sha1(f"{name}|{identity}|{fingerprint}".encode()).hexdigest()[:24]
        sources.append(Source(name, path, key))
    return sources


class WorkCache:
    """One JSON file per finished source under OUT_DIR/.work, written atomically."""

    def __init__(self, out_dir: str):
        self.folder = os.path.join(out_dir, ".work")
        os.makedirs(self.folder, exist_ok=True)

    def _path(self, key: str) -> str:
        return os.path.join(self.folder, f"{key}.json")

    def has(self, key: str) -> bool:
        return os.path.exists(self._path(key))

    def load(self, key: str) -> dict:
        with open(self._path(key)) as handle:
            return json.load(handle)

    def save(self, key: str, payload: dict) -> None:
        partial = self._path(key) + ".partial"
        with open(partial, "w") as handle:
            json.dump(payload, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(partial, self._path(key))


def _plain(value):
    return value.item() if hasattr(value, "item") else value


def _encode_row(row: dict, config: CurateConfig) -> dict:
    """Shard stage on one kept clip: its mp4 bytes."""
    mp4 = encode_clip(row["source_path"], int(row["start_frame"]), int(row["end_frame"]), int(row["start_pts"]),
                      float(row["fps"]), config.shards.short_side, config.shards.crf)
    return dict(row, mp4=mp4)


class LocalExecutor:
    """Every stage in this process, one source after another: no Ray (debugging, `--no-ray`)."""

    def __init__(self, config: CurateConfig):
        self.actors: dict = {}

    def clip_rows(self, sources: list[Source], config: CurateConfig) -> Iterator[dict]:
        for source in sources:
            yield from process_source_locally({"source": source.name, "source_path": source.path}, config, self.actors)

    def encoded_clips(self, clips: list[dict], config: CurateConfig) -> Iterator[dict]:
        for clip in clips:
            yield _encode_row(clip, config)

    def close(self) -> None:
        self.actors.clear()


class RayExecutor:
    """Ray Data: a local cluster started on first use, or the cluster at ray.address.

    An already initialised Ray (a test session, a notebook) is used as it is and left running.
    """

    def __init__(self, config: CurateConfig):
        self.config, self.started = config, False

    def _ensure(self):
        import ray

        if not ray.is_initialized():
            settings = self.config.ray
            if settings.address:
                ray.init(address=settings.address, include_dashboard=False, log_to_driver=False)
            else:
                ray.init(num_cpus=settings.num_cpus, include_dashboard=False, log_to_driver=False,
                         object_store_memory=settings.object_store_mb * 1024 * 1024)
            self.started = True
        return ray

    def clip_rows(self, sources: list[Source], config: CurateConfig) -> Iterator[dict]:
        """Rows in completion order, frames dropped."""
        ray = self._ensure()
        items = [{"source": s.name, "source_path": s.path} for s in sources]
        dataset = ray.data.from_items(items, override_num_blocks=len(items))
        dataset = dataset.flat_map(source_rows, fn_kwargs={"config": config}, num_cpus=config.ray.task_cpus)
        threads = max(1, int(config.ray.model_actor_cpus))
        for stage in clip_stages(config):
            if stage.actor:
                dataset = dataset.map(stage.fn, fn_constructor_kwargs={"config": config, "threads": threads},
                                      compute=ray.data.ActorPoolStrategy(size=1), num_cpus=config.ray.model_actor_cpus)
            else:
                dataset = dataset.map(stage.fn, fn_kwargs={"config": config}, num_cpus=config.ray.task_cpus)
        for row in dataset.map(drop_payload).iter_rows():
            yield {key: _plain(value) for key, value in row.items()}

    def encoded_clips(self, clips: list[dict], config: CurateConfig) -> Iterator[dict]:
        """Encoded clips in the order given (shards are written in manifest order)."""
        ray = self._ensure()
        context = ray.data.DataContext.get_current()
        keep_order, context.execution_options.preserve_order = context.execution_options.preserve_order, True
        try:
            dataset = ray.data.from_items(clips, override_num_blocks=min(len(clips), 64))
            for row in dataset.map(_encode_row, fn_kwargs={"config": config}).iter_rows():
                yield {key: _plain(value) for key, value in row.items()}
        finally:
            context.execution_options.preserve_order = keep_order

    def close(self) -> None:
        if self.started:
            import ray

            ray.shutdown()


def score_sources(todo: list[Source], config: CurateConfig, cache: WorkCache, executor) -> None:
    """Run the clip stages on `todo`, caching each source as soon as all its clips are back."""
    by_name = {s.name: s for s in todo}
    pending: dict[str, list[dict]] = {}
    done, started = 0, time.time()
    chunks = (todo[i: i + SOURCES_PER_JOB] for i in range(0, len(todo), SOURCES_PER_JOB))
    for row in (row for chunk in chunks for row in executor.clip_rows(chunk, config)):
        source = by_name[row["source"]]
        if row["error"]:
            cache.save(source.key, {"source": source.name, "error": row["error"], "rows": []})
        else:
            pending.setdefault(source.name, []).append(row)
            if len(pending[source.name]) < row["num_clips"]:
                continue
            clips = sorted(pending.pop(source.name), key=lambda r: r["clip_index"])
            cache.save(source.key, {"source": source.name, "error": "", "rows": clips})
        done += 1
        log(f"sources {done}/{len(todo)} scored ({time.time() - started:.1f}s): {source.name}")


def _manifest_row(row: dict, rules) -> dict:
    out = {name: row.get(name) for name in MANIFEST_SCHEMA.names if name in row}
    out["key"] = clip_key(row["source"], int(row["start_frame"]))
    out["reason"] = final_reason(row, rules)
    out["kept"] = out["reason"] == ""
    return out


def _write_parquet_atomic(path: str, schema: pa.Schema, batches: Iterator[list[dict]]) -> None:
    partial = path + ".partial"
    with pq.ParquetWriter(partial, schema) as writer:
        wrote = False
        for rows in batches:
            writer.write_table(pa.Table.from_pylist(rows, schema=schema))
            wrote = True
        if not wrote:
            writer.write_table(schema.empty_table())
    os.replace(partial, path)


def _candidate_scores(sources: list[Source], cache: WorkCache) -> dict[str, np.ndarray]:
    """Pass 1: the scores of every clip that reached the filters, plus durations for the summary."""
    columns = {name: [] for name in ("motion", "text_area", "aesthetic", "clip_score", "duration")}
    for source in sources:
        for row in cache.load(source.key)["rows"]:
            if row["reason"]:
                continue
            row = dict(row, duration=(row["end_frame"] - row["start_frame"]) / row["fps"])
            for name, values in columns.items():
                values.append(math.nan if row[name] is None else row[name])
    return {name: np.asarray(values, np.float64) for name, values in columns.items()}


def write_manifest(out_dir: str, sources: list[Source], cache: WorkCache, rules, counter: StageCounter) -> None:
    """Pass 2: manifest.parquet and errors.parquet, streamed in source order."""
    errors = []

    def manifest_batches() -> Iterator[list[dict]]:
        batch: list[dict] = []
        for source in sources:
            payload = cache.load(source.key)
            if payload["error"]:
                errors.append({"source": source.name, "reason": payload["error"]})
                counter.add_error()
                continue
            rows = [_manifest_row(row, rules) for row in payload["rows"]]
            counter.add_source(rows)
            batch += rows
            if len(batch) >= MANIFEST_ROWS_PER_GROUP:
                yield batch
                batch = []
        if batch:
            yield batch

    _write_parquet_atomic(os.path.join(out_dir, "manifest.parquet"), MANIFEST_SCHEMA, manifest_batches())
    _write_parquet_atomic(os.path.join(out_dir, "errors.parquet"), ERRORS_SCHEMA, iter([errors]))


def _write_shard_jobs(jobs: list[tuple[int, list[dict]]], folder: str, config: CurateConfig, executor) -> None:
    clips = [dict(clip, shard=index) for index, members in jobs for clip in members]
    writer, current = None, None
    for encoded in executor.encoded_clips(clips, config):
        if encoded["shard"] != current:
            if writer is not None:
                writer.close()
            current = encoded["shard"]
            writer = ShardWriter(os.path.join(folder, SHARD_PATTERN.format(current)))
        writer.add(encoded["key"], encoded["mp4"], json.loads(encoded["metadata"]))
    if writer is not None:
        writer.close()


def write_shards(out_dir: str, input_dir: str, config: CurateConfig, executor) -> dict:
    """Encode the kept clips into shard-NNNNNN.tar files; complete shards are left alone."""
    folder = os.path.join(out_dir, "shards")
    os.makedirs(folder, exist_ok=True)
    manifest = pq.ParquetFile(os.path.join(out_dir, "manifest.parquet"))
    per_shard = config.shards.clips_per_shard
    shard_index, clips, jobs, written, total = 0, [], [], 0, 0

    def flush_shard() -> None:
        nonlocal shard_index, clips, written
        path = os.path.join(folder, SHARD_PATTERN.format(shard_index))
        if not shard_is_complete(path, [clip["key"] for clip in clips]):
            jobs.append((shard_index, clips))
            written += 1
        shard_index, clips = shard_index + 1, []

    def run_jobs() -> None:
        if jobs:
            _write_shard_jobs(jobs, folder, config, executor)
            log(f"shards written up to {SHARD_PATTERN.format(jobs[-1][0])}")
            jobs.clear()

    for batch in manifest.iter_batches(batch_size=4096):
        for row in batch.to_pylist():
            if not row["kept"]:
                continue
            total += 1
            clips.append({"key": row["key"], "source_path": os.path.join(os.path.abspath(input_dir), row["source"]),
                          "start_frame": row["start_frame"], "end_frame": row["end_frame"],
                          "start_pts": row["start_pts"], "fps": row["fps"],
                          "metadata": json.dumps(clip_metadata(row))})
            if len(clips) == per_shard:
                flush_shard()
            if len(jobs) >= SHARDS_PER_BATCH:
                run_jobs()
    if clips:
        flush_shard()
    run_jobs()
    return {"shards": shard_index, "clips": total, "written_this_run": written}


def run(input_dir: str, out_dir: str, config: CurateConfig, limit: int | None = None, use_ray: bool = True) -> dict:
    """The whole curation run; returns the summary."""
    config.validate()
    sources = list_sources(input_dir, config, limit)
    if not sources:
        raise ValueError(f"INPUT_DIR {input_dir} holds no videos ({', '.join(config.decode.extensions)})")
    cache = WorkCache(out_dir)
    todo = [s for s in sources if not cache.has(s.key)]
    log(f"{len(sources)} sources, {len(sources) - len(todo)} already done, {len(todo)} to score")
    executor = RayExecutor(config) if use_ray else LocalExecutor(config)
    try:
        if todo:
            score_sources(todo, config, cache, executor)
        scores = _candidate_scores(sources, cache)
        rules = build_rules(scores, config.filters)
        counter = StageCounter(len(sources))
        write_manifest(out_dir, sources, cache, rules, counter)
        shards = write_shards(out_dir, input_dir, config, executor) if config.shards.enabled else {}
    finally:
        executor.close()
    summary = write_summary(out_dir, counter.as_dict(shards), rules, scores, stage_states(config))
    for name, state in summary["stages"].items():
        if state != "on":
            log(f"stage {name} {state}")
    cuts = summary["counts"]["cuts"]
    log(f"kept {summary['counts']['kept']} of {cuts['clips']} spans ({cuts['transitions']} transitions, "
        f"{cuts['too_short']} too short, {cuts['keyframe_snap']} keyframe snaps); "
        f"manifest at {os.path.join(out_dir, 'manifest.parquet')}")
    return summary
