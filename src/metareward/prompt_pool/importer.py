"""Importing a prompt pool from the user's data: JSONL, CSV/TSV, or a Hugging Face dataset.

Sources (chosen from the path):

* ``*.jsonl`` / ``*.json`` (one object per line): the prompt is in ``column`` (default: the first of
  ``prompt``, ``text``, ``instruction`` present on the line);
* ``*.csv`` / ``*.tsv``: a header row, then one prompt per row in ``column`` (same default names);
* ``*.parquet`` / ``*.arrow``, a folder written by ``Dataset.save_to_disk``, a folder of data files, or a
  Hugging Face hub id (``org/name``; needs the network or a warm cache): loaded with ``datasets``,
  ``split`` (default ``train``), and ``column`` (same default names).

A cell may also hold a chat (a list of ``{"role", "content"}`` messages, e.g. an OASST or UltraChat
``messages`` column): its first user turn is the prompt, since the paper's prompts are single-turn.

Then, in this order: whitespace is stripped; prompts outside the length bounds (words and characters)
are dropped; exact duplicates (case- and whitespace-insensitive) are dropped, first kept. Ids come from
``id_column`` when given (must be unique, non-empty, without "/"), else ``p000001``, ``p000002``... in
file order of the kept prompts.

Malformed input stops the import with an ``InputError`` naming the file, the line (JSONL, CSV) or row
(datasets) and the field: a line that is not JSON, a missing column, a cell that is not text.
The output is written atomically; it is a pool JSONL (``{"id", "prompt"}`` per line) that
``metareward.pool.load_prompt_pool`` reads.
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from metareward.errors import InputError
from metareward.files import atomic_write_json, atomic_write_text
from metareward.pool import TEXT_KEYS
from metareward.prompt_pool.filters import normalise, word_count
from metareward.records import iter_json_objects


@dataclass(frozen=True)
class ImportSettings:
    column: str | None = None  # None: the first of TEXT_KEYS present
    id_column: str | None = None  # None: sequential ids p000001...
    split: str = "train"  # datasets only
    min_words: int = 1
    max_words: int = 1000
    min_chars: int = 1
    max_chars: int = 20000
    dedup: bool = True
    limit: int | None = None  # stop after this many kept prompts


@dataclass
class ImportReport:
    source: str
    rows: int = 0
    kept: int = 0
    dropped: dict[str, int] = field(default_factory=lambda: {"length": 0, "duplicate": 0})
    settings: dict[str, Any] = field(default_factory=dict)


def _cell_text(value: Any, where: str, column: str) -> str:
    """The prompt held in one cell: a string, or the first user turn of a list of chat messages."""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, list) and value and all(isinstance(m, dict) for m in value):
        for m in value:
            if m.get("role") in ("user", "human", "prompter") and isinstance(m.get("content"), str):
                return m["content"].strip()
        raise InputError(f"{where}: field '{column}' is a list of messages with no user turn")
    raise InputError(f"{where}: field '{column}' must be text (or a list of chat messages), got {type(value).__name__}")


def _pick_column(keys: Any, column: str | None, where: str) -> str:
    if column is not None:
        if column not in keys:
            raise InputError(f"{where}: no column '{column}' (columns: {sorted(keys)})")
        return column
    found = next((k for k in TEXT_KEYS if k in keys), None)
    if found is None:
        raise InputError(f"{where}: no prompt column (expected one of {list(TEXT_KEYS)}, or pass --column); "
                         f"columns: {sorted(keys)}")
    return found


def _rows_jsonl(path: Path, s: ImportSettings) -> Iterator[tuple[str, str, Any]]:
    """(where, text, id value) per non-empty line."""
    for where, _, obj in iter_json_objects(path):
        col = _pick_column(obj.keys(), s.column, where)
        yield where, _cell_text(obj[col], where, col), _id_value(obj, s.id_column, where)


def _rows_csv(path: Path, s: ImportSettings) -> Iterator[tuple[str, str, Any]]:
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f, delimiter=delimiter)
        if not reader.fieldnames:
            raise InputError(f"{path}:1: empty file or missing header row")
        col = _pick_column(reader.fieldnames, s.column, f"{path}:1")
        if s.id_column is not None and s.id_column not in reader.fieldnames:
            raise InputError(f"{path}:1: no column '{s.id_column}' (columns: {sorted(reader.fieldnames)})")
        start = reader.line_num
        for row in reader:
            where = f"{path}:{start + 1}"  # first physical line of this record
            start = reader.line_num
            if None in row:
                raise InputError(f"{where}: {len(reader.fieldnames) + len(row[None])} fields, "
                                 f"the header has {len(reader.fieldnames)}")
            if row.get(col) is None:
                raise InputError(f"{where}: missing field '{col}' (row has fewer fields than the header)")
            yield where, row[col].strip(), _id_value(row, s.id_column, where)


def _rows_dataset(source: str, s: ImportSettings) -> Iterator[tuple[str, str, Any]]:
    ds = load_hf_dataset(source, s.split)
    col = _pick_column(ds.column_names, s.column, source)
    if s.id_column is not None and s.id_column not in ds.column_names:
        raise InputError(f"{source}: no column '{s.id_column}' (columns: {sorted(ds.column_names)})")
    for i, row in enumerate(ds):
        where = f"{source} row {i}"
        yield where, _cell_text(row[col], where, col), _id_value(row, s.id_column, where)


def load_hf_dataset(source: str, split: str):
    """A ``datasets.Dataset`` from a local file or folder, or a hub id; ``InputError`` if it cannot load."""
    import datasets

    path = Path(source)
    try:
        if path.is_dir() and any((path / n).is_file() for n in ("dataset_info.json", "dataset_dict.json")):
            ds = datasets.load_from_disk(str(path))
        elif path.is_file():
            builder = {".parquet": "parquet", ".arrow": "arrow", ".json": "json"}.get(path.suffix.lower())
            if builder is None:
                raise InputError(f"{source}: unsupported file type '{path.suffix}' "
                                 "(expected .jsonl, .json, .csv, .tsv, .parquet or .arrow)")
            ds = datasets.load_dataset(builder, data_files=str(path))
        else:
            ds = datasets.load_dataset(source)
    except InputError:
        raise
    except Exception as e:  # datasets raises many types: missing hub id, offline, bad files
        raise InputError(f"{source}: cannot load as a Hugging Face dataset ({type(e).__name__}: {e})") from None
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise InputError(f"{source}: no split '{split}' (splits: {sorted(ds)})")
        ds = ds[split]
    return ds


def _id_value(row: Any, id_column: str | None, where: str) -> str | None:
    if id_column is None:
        return None
    if id_column not in row:
        raise InputError(f"{where}: missing id field '{id_column}'")
    value = row[id_column]
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value.strip() or "/" in value:
        raise InputError(f"{where}: field '{id_column}' must be a non-empty id without '/', got {value!r}")
    return value.strip()


def iter_source(source: str | Path, settings: ImportSettings) -> Iterator[tuple[str, str, Any]]:
    """Every row of ``source`` as ``(where, prompt text, id or None)``, in file order."""
    source = str(source)
    path = Path(source)
    suffix = path.suffix.lower()
    if path.is_file() and suffix in (".jsonl", ".json"):
        # ".json" holding one array is a datasets file; one object per line is JSONL
        with path.open(encoding="utf-8") as f:
            head = f.read(1)
        if suffix == ".jsonl" or head != "[":
            return _rows_jsonl(path, settings)
        return _rows_dataset(source, settings)
    if path.is_file() and suffix in (".csv", ".tsv"):
        return _rows_csv(path, settings)
    if not path.exists() and (path.suffix or source.startswith((".", "/", "~"))):
        raise InputError(f"{source}: file not found")
    return _rows_dataset(source, settings)


def import_prompts(source: str | Path, out: str | Path, settings: ImportSettings = ImportSettings()) -> ImportReport:
    """Read ``source``, filter and dedup, write the pool JSONL to ``out`` (atomically) and a report
    next to it (``<out>.report.json``). Returns the report."""
    s = settings
    if s.min_words > s.max_words or s.min_chars > s.max_chars:
        raise InputError("length bounds: the minimum is above the maximum")
    report = ImportReport(source=str(source), settings=asdict(s))
    seen_text: set[str] = set()
    seen_id: dict[str, str] = {}
    lines: list[str] = []
    for where, text, pid in iter_source(source, s):
        report.rows += 1
        words = word_count(text)
        if not (s.min_words <= words <= s.max_words and s.min_chars <= len(text) <= s.max_chars) or not text:
            report.dropped["length"] += 1
            continue
        key = normalise(text)
        if s.dedup and key in seen_text:
            report.dropped["duplicate"] += 1
            continue
        seen_text.add(key)
        if pid is None:
            pid = f"p{len(lines) + 1:06d}"
        elif pid in seen_id:
            raise InputError(f"{where}: duplicate id {pid!r} (first at {seen_id[pid]})")
        seen_id[pid] = where
        lines.append(json.dumps({"id": pid, "prompt": text}, ensure_ascii=False))
        if s.limit is not None and len(lines) >= s.limit:
            break
    if not lines:
        raise InputError(f"{source}: no prompt passed the filters ({report.rows} rows read)")
    report.kept = len(lines)
    out = Path(out)
    atomic_write_text(out, "\n".join(lines) + "\n")
    atomic_write_json(report_path(out), asdict(report))
    return report


def report_path(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(out.name + ".report.json")
