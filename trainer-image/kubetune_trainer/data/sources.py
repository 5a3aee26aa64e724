"""Where rows come from: a DatasetSource resolved to rows, each labelled with its place."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

from kubetune.api.spec import DatasetSource
from kubetune_trainer.data.fetch import FetchPolicy, fetch
from kubetune_trainer.data.readers import SUFFIXES, Row, read_rows
from kubetune_trainer.disk import disk_full
from kubetune_trainer.errors import InvalidData, InvalidSpec
from kubetune_trainer.mounts import inside, readable
from kubetune_trainer.runtime import Runtime
from kubetune_trainer.stores.s3 import Bucket
from kubetune_trainer.stores.secrets import secret_value


def source_rows(source: DatasetSource, runtime: Runtime) -> Iterator[Row]:
    """Every row of the source, in order. Raises InvalidData naming the source when it has none."""
    empty = True
    for row in _rows(source, runtime):
        empty = False
        yield row
    if empty:
        raise InvalidData(f"{_describe(source)} holds no rows; a dataset needs at least one example")


def _describe(source: DatasetSource) -> str:
    match source.kind:
        case "pvc" if source.pvc is not None:
            return f"{source.pvc.claim_name}:{source.pvc.path}"
        case "configMap" if source.config_map is not None:
            return f"ConfigMap {source.config_map.name} key {source.config_map.key}"
        case "huggingFace" if source.hugging_face is not None:
            return f"Hugging Face dataset {source.hugging_face.name} ({source.hugging_face.split})"
        case "s3" if source.s3 is not None:
            return source.s3.uri
        case "urls" if source.urls:
            return source.urls[0].url if len(source.urls) == 1 else f"the {len(source.urls)} URLs"
    return f"the {source.kind} dataset"


def _rows(source: DatasetSource, runtime: Runtime) -> Iterator[Row]:
    match source.kind:
        case "pvc":
            assert source.pvc is not None
            for file in data_files(runtime.claim_path(source.pvc.claim_name, source.pvc.path)):
                yield from read_rows(file)
        case "configMap":
            assert source.config_map is not None
            file = runtime.config_map_file(source.config_map.name, source.config_map.key)
            if not file.is_file():
                raise InvalidSpec(
                    f"ConfigMap {source.config_map.name} key {source.config_map.key} is not mounted at {file}"
                )
            yield from read_rows(file)
        case "huggingFace":
            yield from _hub_rows(source, runtime)
        case "s3":
            assert source.s3 is not None
            bucket = Bucket.open(source.s3, runtime)
            folder = inside(
                runtime.work / "downloads" / "s3" / bucket.name, bucket.prefix, "bucket prefix", InvalidData
            )
            for file in bucket.download(folder, SUFFIXES):
                yield from read_rows(file)
        case "urls":
            assert source.urls is not None
            policy = FetchPolicy(allowed_networks=runtime.allowed_networks)
            for index, item in enumerate(source.urls):
                name = PurePosixPath(urlsplit(item.url).path).name or "data.jsonl"
                file = runtime.work / "downloads" / f"{index:03d}-{name}"
                yield from read_rows(fetch(item.url, file, item.sha256, policy))
        case kind:
            raise InvalidSpec(f"dataset source {kind} is not available in this trainer build yet")


def mounted_files(source: DatasetSource, runtime: Runtime) -> list[Path]:
    """The files a volume or ConfigMap source reads, as they are now (none for the other
    sources, or where the path is missing: reading says so)."""
    match source.kind:
        case "pvc" if source.pvc is not None:
            try:
                return data_files(runtime.claim_path(source.pvc.claim_name, source.pvc.path))
            except InvalidData:
                return []
        case "configMap" if source.config_map is not None:
            file = runtime.config_map_file(source.config_map.name, source.config_map.key)
            return [file] if file.is_file() else []
    return []


def data_files(path: Path) -> list[Path]:
    """A file, or the dataset files under a folder (sorted, so the order is stable), each
    readable by the trainer."""
    readable(path, "dataset", InvalidData)
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES)
        if not files:
            raise InvalidData(f"{path}: no {', '.join(SUFFIXES)} files in the folder")
        return files
    raise InvalidData(f"{path}: no such file or folder on the volume")


def _hub_rows(source: DatasetSource, runtime: Runtime) -> Iterator[Row]:
    hub = source.hugging_face
    assert hub is not None
    import datasets  # only Hub sources need it

    token = secret_value(runtime, hub.token_secret.name, hub.token_secret.key) if hub.token_secret else None
    try:
        table = datasets.load_dataset(hub.name, hub.config, split=hub.split, revision=hub.revision, token=token)
    except Exception as error:  # the Hub client raises many types; the message is what matters
        problem = InvalidData(f"Hugging Face dataset {hub.name} ({hub.split}): cannot load: {error}")
        raise disk_full(error, [runtime.work]) or problem from None
    for index, values in enumerate(table):
        yield Row(dict(values), f"{hub.name} row {index}")
