"""Reading data files row by row (TSV, parquet, JSON arrays, JSON Lines, the Hugging Face hub) and
materialising embedded images once into a content-addressed cache folder: the machinery under both the
training data sources (`data/sources.py`) and the benchmark loaders (`eval/benchmarks/`).

Every row reader yields `(where, row)` where `where` names the file and the row ("x.tsv: row 3 (line 4)"),
so that a loader's error can say exactly what is wrong and where. Nothing holds all rows at once:
a 4 GB base64 JSON or a 3 GB parquet file is streamed, and each image is written to disk as soon as it
is decoded, so a Record only ever holds a file path.
"""

from __future__ import annotations

import base64
import binascii
import csv
import hashlib
import io
import json
import os
import re
import sys
from pathlib import Path
from typing import Any, Iterator

from PIL import Image

from .records import RecordError


class DataFileError(RecordError):
    """A data or benchmark file that cannot be read; the message names the file, the row and what is wrong."""


Row = dict[str, Any]

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def is_hub_id(path_or_id: str | Path) -> bool:
    """True for an 'owner/name' string that is not an existing local path."""
    s = str(path_or_id)
    return not Path(s).exists() and bool(_HUB_ID.match(s))


def default_cache_dir(data_path: str | Path | None) -> Path:
    """`<folder of the data>/.vision_opd_cache` if that folder is writable, else `~/.cache/vision_opd/images`."""
    if data_path is not None and not is_hub_id(data_path):
        p = Path(data_path)
        folder = p if p.is_dir() else p.parent
        if folder.is_dir() and os.access(folder, os.W_OK):
            return folder / ".vision_opd_cache"
    return Path.home() / ".cache" / "vision_opd" / "images"


# ----------------------------------------------------------------------------- images


class ImageCache:
    """Write encoded images once under `folder/<h[:2]>/<sha256>.<ext>`; the same bytes give the same path."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)

    def put_bytes(self, data: bytes, *, where: str) -> str:
        try:
            with Image.open(io.BytesIO(data)) as img:
                fmt = (img.format or "img").lower()
        except Exception as e:  # PIL raises several types for non-images
            raise DataFileError(f"{where}: embedded image cannot be decoded ({type(e).__name__}: {e})") from None
        ext = {"jpeg": "jpg", "mpo": "jpg"}.get(fmt, fmt)
        digest = hashlib.sha256(data).hexdigest()
        path = self.folder / digest[:2] / f"{digest}.{ext}"
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
            tmp.write_bytes(data)
            os.replace(tmp, path)
        return str(path)

    def put_pil(self, img: Image.Image, *, where: str) -> str:
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        return self.put_bytes(buf.getvalue(), where=where)


def _decode_base64(s: str, where: str) -> bytes:
    s = s.strip()
    if s.startswith("data:") and "," in s:  # data URL
        s = s.split(",", 1)[1]
    try:
        return base64.b64decode(s + "=" * (-len(s) % 4), validate=False)
    except (binascii.Error, ValueError) as e:
        raise DataFileError(f"{where}: image string is neither an existing file nor base64 ({e})") from None


def image_to_path(value: Any, *, base_dir: Path, cache: ImageCache, where: str, column: str = "image") -> str:
    """Turn any published image encoding into a file path.

    Accepts an HF image struct `{"bytes": ..., "path": ...}`, raw bytes, a base64 string (optionally a
    data URL), a PIL image, or a path (absolute or relative to `base_dir`). Embedded images are written
    to `cache`; a path is checked to exist.
    """
    if value is None:
        raise DataFileError(f"{where}: column {column!r} is empty (no image)")
    if isinstance(value, dict):
        if value.get("bytes") is not None:
            return image_to_path(value["bytes"], base_dir=base_dir, cache=cache, where=where, column=column)
        if value.get("path"):
            return image_to_path(str(value["path"]), base_dir=base_dir, cache=cache, where=where, column=column)
        raise DataFileError(f"{where}: column {column!r} is an image struct with neither bytes nor path")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return cache.put_bytes(bytes(value), where=f"{where} column {column!r}")
    if isinstance(value, Image.Image):
        return cache.put_pil(value, where=f"{where} column {column!r}")
    if isinstance(value, str):
        if len(value) < 4096 and "\n" not in value:
            candidate = base_dir / value  # an absolute `value` stays itself
            if candidate.is_file():
                return str(candidate.resolve())
            if len(value) <= 255:  # any real base64 image is longer
                raise DataFileError(
                    f"{where}: image file {value!r} not found (looked in {base_dir}); "
                    "extract the benchmark's image archives next to its annotation file"
                )
        return cache.put_bytes(_decode_base64(value, where), where=f"{where} column {column!r}")
    raise DataFileError(f"{where}: column {column!r} has an unsupported image value of type {type(value).__name__}")


# ----------------------------------------------------------------------------- row readers


def iter_tsv(path: Path) -> Iterator[tuple[str, Row]]:
    """Rows of a VLMEvalKit-style TSV (pandas `to_csv(sep='\\t')`: header row, quoted multi-line cells)."""
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # base64 images are far over the 128 kB default
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f, delimiter="\t")
        if not reader.fieldnames:
            raise DataFileError(f"{path}: empty TSV (no header row)")
        for n, row in enumerate(reader, start=1):
            where = f"{path}: row {n} (line {reader.line_num})"
            if None in row or any(v is None for v in row.values()):
                raise DataFileError(
                    f"{where}: has a different number of cells than the header ({len(reader.fieldnames)} columns); "
                    "the file is truncated or not tab-separated"
                )
            yield where, row


def iter_jsonl_rows(path: Path) -> Iterator[tuple[str, Row]]:
    """Objects of a JSON Lines file (blank lines skipped); a bad line raises an error naming it."""
    if not Path(path).is_file():
        raise DataFileError(f"{path}: file not found")
    with open(path, "rb") as f:
        for n, raw in enumerate(f, start=1):
            where = f"{path}: line {n}"
            try:
                line = raw.decode("utf-8-sig" if n == 1 else "utf-8")
            except UnicodeDecodeError as e:
                raise DataFileError(f"{where}: not valid UTF-8 ({e})") from None
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataFileError(f"{where}: invalid JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(obj, dict):
                raise DataFileError(f"{where}: expected a JSON object, got {type(obj).__name__}")
            yield where, obj


def _require(module: str, path: Any):
    try:
        return __import__(module, fromlist=["_"])
    except ImportError:
        raise DataFileError(
            f"{path}: reading this needs the '{module.split('.')[0]}' package, which is not installed; "
            "install it (pip install pyarrow, or pip install 'vision-opd[data]' for datasets + pyarrow)"
        ) from None


def iter_parquet(paths: list[Path], batch_size: int = 16) -> Iterator[tuple[str, Row]]:
    """Rows of parquet files, streamed in small batches (image structs come back as dicts)."""
    pq = _require("pyarrow.parquet", paths[0] if paths else "parquet")
    for path in paths:
        try:
            # buffered column reads: a multi-GB row group of images is not loaded in one piece
            pf = pq.ParquetFile(path, buffer_size=8 << 20, pre_buffer=False)
        except Exception as e:
            raise DataFileError(f"{path}: not a readable parquet file ({type(e).__name__}: {e})") from None
        n = 0
        for batch in pf.iter_batches(batch_size=batch_size):
            for row in batch.to_pylist():
                n += 1
                yield f"{path}: row {n}", row


def iter_json_items(path: Path, chunk_chars: int = 1 << 24) -> Iterator[tuple[str, Row]]:
    """Items of a JSON file holding a top-level array (streamed, so a 4 GB file is not held in memory),
    or of a JSON Lines file (one object a line)."""
    decoder = json.JSONDecoder()
    with open(path, encoding="utf-8-sig") as f:
        buf, pos, eof = "", 0, False

        def fill(min_chars: int) -> None:
            nonlocal buf, pos, eof
            chunk = f.read(max(min_chars, chunk_chars))
            eof = not chunk
            buf, pos = buf[pos:] + chunk, 0

        def skip_ws() -> None:
            nonlocal pos
            while True:
                while pos < len(buf) and buf[pos] in " \t\r\n":
                    pos += 1
                if pos < len(buf) or eof:
                    return
                fill(chunk_chars)

        fill(chunk_chars)
        skip_ws()
        if pos >= len(buf):
            raise DataFileError(f"{path}: empty file")
        if buf[pos] != "[":
            yield from iter_jsonl_rows(path)
            return
        pos += 1
        n = 0
        while True:
            skip_ws()
            if pos >= len(buf):
                raise DataFileError(f"{path}: truncated JSON array after item {n}")
            if buf[pos] == "]":
                return
            if n > 0:
                if buf[pos] != ",":
                    raise DataFileError(f"{path}: item {n + 1}: expected ',' or ']' between array items")
                pos += 1
                skip_ws()
            while True:
                try:
                    obj, end = decoder.raw_decode(buf, pos)
                    break
                except json.JSONDecodeError as e:
                    if eof:
                        raise DataFileError(f"{path}: item {n + 1}: invalid JSON ({e.msg})") from None
                    fill(2 * len(buf))  # the item is not complete in the buffer yet: read more, doubling
            pos = end
            n += 1
            if not isinstance(obj, dict):
                raise DataFileError(f"{path}: item {n}: expected a JSON object, got {type(obj).__name__}")
            yield f"{path}: item {n}", obj


def iter_hub(dataset_id: str, *, split: str, name: str | None = None, **kw: Any) -> Iterator[tuple[str, Row]]:
    """Rows of a Hugging Face dataset via `datasets.load_dataset` (imported here, only when used).

    Image columns are read undecoded ({bytes, path}) so that they go to the cache as published.
    """
    datasets = _require("datasets", dataset_id)
    ds = datasets.load_dataset(dataset_id, name, split=split, **kw)
    features = getattr(ds, "features", None) or {}
    for col, feat in list(features.items()):
        if type(feat).__name__ == "Image":
            ds = ds.cast_column(col, datasets.Image(decode=False))
    for n, row in enumerate(ds, start=1):
        yield f"{dataset_id}[{split}]: row {n}", dict(row)


def find_data_files(root: Path, patterns: list[str], what: str) -> list[Path]:
    """The files matching the first pattern that matches anything under `root`; a clear error otherwise."""
    for pattern in patterns:
        hits = sorted(p for p in root.glob(pattern) if p.is_file() and not p.name.startswith("."))
        if hits:
            return hits
    raise DataFileError(f"{root}: no {what} found (looked for {', '.join(patterns)})")


def need(row: Row, key: str, where: str) -> Any:
    """row[key], or a DataFileError naming the row and the columns it does have."""
    if key not in row:
        raise DataFileError(f"{where}: missing column {key!r} (columns: {sorted(row)})")
    value = row[key]
    if value is None or (isinstance(value, str) and not value.strip()):
        raise DataFileError(f"{where}: column {key!r} is empty")
    return value


def first_key(row: Row, keys: tuple[str, ...]) -> str | None:
    """The first of `keys` present in `row` with a non-empty value."""
    for k in keys:
        v = row.get(k)
        if v is not None and not (isinstance(v, str) and not v.strip()):
            return k
    return None


class RowImages:
    """Images of a VLMEvalKit-style table, where a row may hold, instead of an image, the `index` of
    another row that has it (VLMEvalKit stores a shared image once; any cell of 64 characters or fewer
    that is not a file is read as such a reference, as VLMEvalKit does).

    `path(value, index, where)` returns a file path, or None for a reference to a row not read yet;
    call `defer(record, value, where)` for those and `finish()` after the last row.
    """

    def __init__(self, cache: ImageCache, base_dir: Path):
        self.cache, self.base_dir = cache, base_dir
        self.by_index: dict[str, str] = {}
        self.pending: list[tuple[Any, str, str]] = []

    def _ref(self, value: Any) -> str | None:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(int(value))
        if isinstance(value, str) and len(value.strip()) <= 64:
            s = value.strip()
            if not (self.base_dir / s).is_file():
                return s
        return None

    def path(self, value: Any, index: str | None, where: str, column: str = "image") -> str | None:
        ref = self._ref(value)
        if ref is not None:
            return self.by_index.get(ref)
        p = image_to_path(value, base_dir=self.base_dir, cache=self.cache, where=where, column=column)
        if index is not None:
            self.by_index[index] = p
        return p

    def defer(self, record: Any, value: Any, where: str) -> None:
        self.pending.append((record, self._ref(value) or str(value), where))

    def finish(self) -> None:
        for record, ref, where in self.pending:
            if ref not in self.by_index:
                raise DataFileError(
                    f"{where}: image cell {ref!r} is neither an image, an existing file, nor the index of another row"
                )
            record.image = self.by_index[ref]
        self.pending.clear()
