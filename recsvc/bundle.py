"""The model bundle: the versioned contract between the trainer and everything that reads models.

Layout of one bundle (format version 1), `bundles/<version>/`:

    manifest.json                 version id, created_at, input fingerprint, row and bad-row
                                  counts, parameters, library versions, models, artifacts;
                                  catalog_read_at (when the trainer read the items file: item
                                  updates made after it apply to this bundle in the store;
                                  absent, created_at stands for it)
    ids/users.parquet             user_id (row i = user index i)
    ids/items.parquet             item_id, category, price, in_stock, title (row i = item i)
    seen/{indptr,indices,data}.npy    users x items interaction strengths (CSR), for exclusions
    recommenders/<name>/kind.json + arrays    one scorer per model (see recsvc.scorers)
    candidates/{items,scores}.npy users x N best unseen items of the default recommender
                                  (int32, -1 padded; float32), what the store serves from
    similar/{indices,scores}.npy  items x S most similar items (-1 padded), float32 scores
    rules/                        association rules (recsvc.rules.RuleSet)
    buyagain/                     per-user repurchase lists (CSR over users)
    popularity/<list>/            ranked lists (see `RankedLists`): global, trending,
                                  category, segment, cluster; each a set of named groups
    buyagain/                     CSR over users (indptr, items, due_score), sorted best
                                  first per user, with parallel next_due (epoch s),
                                  interval_days, count, last (epoch s), sd_days, confidence,
                                  and meta.json (trained_at, horizon_days); recsvc.buyagain
    segments/users.parquet        per user index: segment, cluster, recency_days, frequency,
                                  monetary, r, f, m (quantile scores 1-5)

Arrays are `.npy` (memory-mapped on load); tables are Parquet. A bundle is written into a
hidden `.partial-<version>` directory and renamed into place when complete, then the `latest`
symlink is switched atomically, so a reader never sees half a bundle. A reader refuses a
bundle whose `format_version` it does not know, with a clear error.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recsvc import BUNDLE_FORMAT_VERSION, __version__
from recsvc.errors import BundleFormatError
from recsvc.events import Catalog
from recsvc.ids import IdMap

MANIFEST = "manifest.json"
LATEST = "latest"


def utc_timestamp() -> str:
    """The time now, ISO-8601 UTC to the millisecond (for manifest times: catalog_read_at)."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def fingerprint_files(paths: Iterable[str | Path | None]) -> dict[str, Any]:
    """sha256 and size of each input file: the input fingerprint of a bundle."""
    out: dict[str, Any] = {}
    for path in paths:
        if path is None:
            continue
        path = Path(path)
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        out[path.name] = {"sha256": digest.hexdigest(), "bytes": path.stat().st_size}
    return out


def library_versions() -> dict[str, str]:
    from importlib import metadata

    names = ["numpy", "scipy", "pandas", "pyarrow", "implicit"]
    versions = {"recsvc": __version__}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def new_version_id(salt: str = "") -> str:
    """Sortable, unique version id: UTC time plus a short hash."""
    now = datetime.now(UTC)
    digest = hashlib.sha256(f"{now.isoformat()}{salt}{os.getpid()}".encode()).hexdigest()[:8]
    return f"{now.strftime('%Y%m%dT%H%M%S')}Z-{digest}"


class BundleWriter:
    """Writes one bundle into `<root>/.partial-<version>/`; `commit` moves it into place."""

    def __init__(self, root: str | Path, version: str | None = None) -> None:
        self.root = Path(root)
        self.version = version or new_version_id(str(self.root))
        self.root.mkdir(parents=True, exist_ok=True)
        self.path = self.root / f".partial-{self.version}"
        if self.path.exists():
            shutil.rmtree(self.path)
        self.path.mkdir()
        self.artifacts: dict[str, list[str]] = {}

    def _file(self, name: str) -> Path:
        target = self.path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        group = name.split("/", 1)[0]
        self.artifacts.setdefault(group, []).append(name)
        return target

    def dir(self, name: str) -> Path:
        """A subdirectory for a component that saves itself (e.g. RuleSet.save)."""
        target = self.path / name
        target.mkdir(parents=True, exist_ok=True)
        self.artifacts.setdefault(name.split("/", 1)[0], []).append(name + "/")
        return target

    def array(self, name: str, values: np.ndarray) -> None:
        np.save(self._file(f"{name}.npy"), np.ascontiguousarray(values), allow_pickle=False)

    def csr(self, name: str, matrix: sp.csr_matrix) -> None:
        matrix = sp.csr_matrix(matrix)
        self.array(f"{name}/indptr", matrix.indptr.astype(np.int64))
        self.array(f"{name}/indices", matrix.indices.astype(np.int32))
        self.array(f"{name}/data", matrix.data)
        self.json(f"{name}/shape.json", {"shape": list(matrix.shape)})

    def frame(self, name: str, frame: pd.DataFrame) -> None:
        frame.to_parquet(self._file(f"{name}.parquet"), index=False)

    def json(self, name: str, value: Any) -> None:
        self._file(name).write_text(json.dumps(value, indent=2, default=_json_default) + "\n")

    def ids(self, users: IdMap, items: IdMap, catalog: Catalog) -> None:
        self.frame("ids/users", pd.DataFrame({"user_id": pd.array(users.ids, dtype="string")}))
        self.frame(
            "ids/items",
            pd.DataFrame(
                {
                    "item_id": pd.array(items.ids, dtype="string"),
                    "category": pd.array(catalog.category, dtype="string"),
                    "price": catalog.price.astype(np.float32),
                    "in_stock": catalog.in_stock.astype(bool),
                    "title": pd.array(catalog.title, dtype="string"),
                }
            ),
        )

    def commit(self, manifest: dict[str, Any]) -> Path:
        """Write the manifest, move the bundle into place and point `latest` at it."""
        manifest = {
            "format_version": BUNDLE_FORMAT_VERSION,
            "version": self.version,
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "libraries": library_versions(),
            **manifest,
            "artifacts": {k: sorted(v) for k, v in sorted(self.artifacts.items())},
        }
        (self.path / MANIFEST).write_text(
            json.dumps(manifest, indent=2, default=_json_default) + "\n"
        )
        final = self.root / self.version
        os.replace(self.path, final)
        link = self.root / f".{LATEST}.tmp"
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(self.version)
        os.replace(link, self.root / LATEST)
        return final

    def abort(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


@dataclass(frozen=True)
class RankedLists:
    """Named ranked item lists (e.g. popularity per category), stored flat like CSR."""

    names: list[str]
    indptr: np.ndarray  # int64, len(names) + 1
    items: np.ndarray  # int32
    scores: np.ndarray  # float32

    @classmethod
    def from_dict(cls, groups: dict[str, tuple[np.ndarray, np.ndarray]]) -> RankedLists:
        names = list(groups)
        sizes = [len(groups[n][0]) for n in names]
        indptr = np.zeros(len(names) + 1, dtype=np.int64)
        indptr[1:] = np.cumsum(sizes)
        items = np.concatenate([groups[n][0] for n in names]) if names else np.zeros(0)
        scores = np.concatenate([groups[n][1] for n in names]) if names else np.zeros(0)
        return cls(names, indptr, items.astype(np.int32), scores.astype(np.float32))

    def get(self, name: str) -> tuple[np.ndarray, np.ndarray] | None:
        try:
            index = self.names.index(name)
        except ValueError:
            return None
        start, end = self.indptr[index], self.indptr[index + 1]
        return self.items[start:end], self.scores[start:end]

    def to_dict(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        return {name: self.get(name) for name in self.names}  # type: ignore[misc]

    def write(self, writer: BundleWriter, name: str) -> None:
        writer.json(f"{name}/names.json", self.names)
        writer.array(f"{name}/indptr", self.indptr)
        writer.array(f"{name}/items", self.items)
        writer.array(f"{name}/scores", self.scores)

    @classmethod
    def read(cls, bundle: Bundle, name: str) -> RankedLists:
        return cls(
            names=list(bundle.json(f"{name}/names.json")),
            indptr=bundle.array(f"{name}/indptr", mmap=False),
            items=bundle.array(f"{name}/items", mmap=False),
            scores=bundle.array(f"{name}/scores", mmap=False),
        )


def _json_default(value: Any) -> Any:
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot serialise {type(value).__name__}")


class Bundle:
    """A bundle on disk, read lazily; arrays are memory-mapped."""

    def __init__(self, path: str | Path) -> None:
        path = Path(path)
        if path.is_dir() and not (path / MANIFEST).exists() and (path / LATEST).exists():
            path = path / LATEST  # a bundles/ root: take its latest
        self.path = path.resolve()
        manifest_path = self.path / MANIFEST
        if not manifest_path.exists():
            raise BundleFormatError(f"{path}: not a model bundle (no {MANIFEST})")
        try:
            self.manifest: dict[str, Any] = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (ValueError, OSError) as exc:  # JSON or UTF-8 errors are ValueErrors
            raise BundleFormatError(f"{manifest_path}: corrupt manifest: {exc}") from exc
        if not isinstance(self.manifest, dict) or not isinstance(self.manifest.get("version"), str):
            raise BundleFormatError(f"{manifest_path}: corrupt manifest: not an object with a version")
        found = self.manifest.get("format_version")
        if found != BUNDLE_FORMAT_VERSION:
            raise BundleFormatError(
                f"{path}: bundle format version {found!r}; this recsvc ({__version__}) reads "
                f"version {BUNDLE_FORMAT_VERSION}. Retrain, or use a recsvc that matches."
            )

    @property
    def version(self) -> str:
        return str(self.manifest["version"])

    def has(self, name: str) -> bool:
        return (self.path / name).exists() or (self.path / f"{name}.npy").exists()

    @contextmanager
    def _reading(self, name: str) -> Iterator[None]:
        """Turn what a damaged file raises (truncated arrays or Parquet, broken JSON, wrong
        shapes) into a BundleFormatError naming the bundle and the part."""
        import pyarrow as pa

        try:
            yield
        except BundleFormatError:
            raise
        except (ValueError, TypeError, KeyError, IndexError, OSError, EOFError, pa.ArrowException) as exc:
            reason = " ".join(str(exc).split()) or type(exc).__name__
            raise BundleFormatError(f"{self.path.name}: corrupt {name}: {reason}") from exc

    def array(self, name: str, mmap: bool = True) -> np.ndarray:
        file = self.path / f"{name}.npy"
        if not file.exists():
            raise BundleFormatError(f"{self.path.name}: missing array {name}")
        with self._reading(name):
            return np.load(file, mmap_mode="r" if mmap else None, allow_pickle=False)

    def csr(self, name: str) -> sp.csr_matrix:
        with self._reading(name):
            shape = json.loads((self.path / name / "shape.json").read_text(encoding="utf-8"))["shape"]
            if not (isinstance(shape, list) and len(shape) == 2 and all(isinstance(n, int) for n in shape)):
                raise ValueError(f"shape {shape!r} is not two whole numbers")
            return sp.csr_matrix(
                (
                    self.array(f"{name}/data", mmap=False),
                    self.array(f"{name}/indices", mmap=False),
                    self.array(f"{name}/indptr", mmap=False),
                ),
                shape=tuple(shape),
            )

    def json(self, name: str) -> Any:
        with self._reading(name):
            return json.loads((self.path / name).read_text(encoding="utf-8"))

    def frame(self, name: str) -> pd.DataFrame:
        with self._reading(name):
            return pd.read_parquet(self.path / f"{name}.parquet")

    @cached_property
    def users(self) -> IdMap:
        return IdMap(self.frame("ids/users")["user_id"].astype(str).tolist())

    @cached_property
    def _items_frame(self) -> pd.DataFrame:
        return self.frame("ids/items")

    @cached_property
    def items(self) -> IdMap:
        return IdMap(self._items_frame["item_id"].astype(str).tolist())

    @cached_property
    def catalog(self) -> Catalog:
        frame = self._items_frame
        return Catalog(
            category=frame["category"].fillna("").astype(str).to_numpy(dtype=object),
            price=frame["price"].to_numpy(dtype=np.float32),
            in_stock=frame["in_stock"].to_numpy(dtype=bool),
            title=frame["title"].fillna("").astype(str).to_numpy(dtype=object),
        )

    @cached_property
    def seen(self) -> sp.csr_matrix:
        return self.csr("seen")

    @property
    def default_recommender(self) -> str:
        return str(self.manifest.get("default_recommender", "popular"))

    @property
    def recommenders(self) -> list[str]:
        root = self.path / "recommenders"
        return sorted(p.name for p in root.iterdir()) if root.exists() else []

    def popularity(self, name: str = "global") -> RankedLists:
        """Ranked popularity lists: global ('all'), trending ('all'), category, segment, cluster."""
        return RankedLists.read(self, f"popularity/{name}")

    def scorer(self, name: str | None = None) -> Any:
        """The scorer of model `name` (default: the bundle's default recommender)."""
        from recsvc.scorers import load_scorer

        return load_scorer(self, name or self.default_recommender)
