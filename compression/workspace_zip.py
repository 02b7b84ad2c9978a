"""A whole workspace as one .zip: take your work home, or hand a lesson's variants out.

Layout (nothing in it is ever executed or unpickled):

    manifest.json              {"format": FORMAT, "version": 1, "exported": seconds since 1970,
                                "variants": [{"id", "name", "technique", "settings", "parent",
                                              "metrics", "history", "created", "weights"}, …]}
    weights/<sha256>.cmpk      each packed weights file once, named by its SHA-256 ("weights")

The pretrained models are not exported (every workspace has them). Nor are int8 .pt2 files: such a
file can only be checked by loading it, and loading one unpickles code (compression/int8.py), so an
imported variant comes without its int8 download; build it again on the Quantize page.

Import checks everything before it stores anything, as an upload is checked:
- size: the upload ≤ MAX_ZIP_BYTES, at most MAX_MEMBERS files, each file and all of them together
  bounded as they are unpacked (the sizes a zip declares are not trusted: zip bombs);
- names: manifest.json and weights/<64 hex digits>.cmpk only — no folders, "..", absolute paths,
  duplicates or anything else (a pickle or a script inside is refused by its name alone);
- the manifest: JSON without NaN, of the shape MANIFEST_SCHEMA describes (jsonschema);
- each weights file: its SHA-256 matches its name, it unpacks (unpack_model runs no code) and its
  activation settings fit the model; every file is named by some entry, every entry's file is there;
- each entry's id is the one its content and lineage give (an edited manifest is refused).
Then the files are written and every row inserted in one transaction: a bad zip changes nothing.
"""
from __future__ import annotations

import io
import json
import re
import time
import zipfile

import jsonschema

from .blobs import sha256_hex
from .weights import ModelFileError
from .store import PackedVariant, Store, unpack_weights, variant_id
from .store_errors import WorkspaceZipError
from .store_schema import Workspace

FORMAT = "compression-playground-workspace"
VERSION = 1
MANIFEST = "manifest.json"
WEIGHTS = re.compile(r"weights/([0-9a-f]{64})\.cmpk")
MAX_ZIP_BYTES = 512 * 1024 * 1024
MAX_MEMBERS = 1001
MAX_MANIFEST_BYTES = 16 * 1024 * 1024
MAX_WEIGHTS_BYTES = 300 * 1024 * 1024        # one packed file (packed.MAX_ELEMENTS float32 values, and more)
MAX_TOTAL_BYTES = 512 * 1024 * 1024          # everything unpacked
FIXED_TIME = (1980, 1, 1, 0, 0, 0)           # members carry no clock: the same workspace, the same bytes

NUMBER_OR_NULL = {"type": ["number", "null"]}
MANIFEST_SCHEMA = {
    "type": "object",
    "required": ["format", "version", "variants"],
    "properties": {
        "format": {"const": FORMAT},
        "version": {"const": VERSION},
        "exported": {"type": "number"},
        "variants": {"type": "array", "maxItems": MAX_MEMBERS - 1, "items": {
            "type": "object",
            "required": ["id", "name", "technique", "settings", "parent", "metrics", "history", "created",
                         "weights"],
            "additionalProperties": False,
            "properties": {
                "id": {"type": "string", "pattern": "^[0-9a-f]{32}$"},
                "name": {"type": "string", "minLength": 1, "maxLength": 200},
                "technique": {"type": "string", "minLength": 1, "maxLength": 100},
                "settings": {"type": "object"},
                "parent": {"type": ["string", "null"], "maxLength": 200},
                "metrics": {"type": "object", "properties": {
                    "layers": {"type": "array", "items": {"type": "object"}},
                    **{k: NUMBER_OR_NULL for k in ("params", "nonzero_params", "sparsity", "macs", "nonzero_macs",
                                                   "bytes_fp32", "bytes_gzip", "bytes_packed", "reference_bytes",
                                                   "compression_ratio", "eval_accuracy", "test_accuracy",
                                                   "latency_b1_ms", "latency_b256_ms")}}},
                "history": {"type": "array"},
                "created": {"type": "number"},
                "weights": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
            },
        }},
    },
}


def export_workspace(store: Store, workspace: Workspace) -> bytes:
    """The workspace's own variants as a .zip (module docstring); their weights are read (and their
    hashes checked) from the store."""
    entries, files = [], {}
    for record in store.variants(workspace):
        if record.builtin:
            continue
        files[record.weights_sha256] = store.weights(workspace, record.id)
        entries.append({"id": record.id, "name": record.name, "technique": record.technique,
                        "settings": record.settings, "parent": record.parent,
                        "metrics": record.metrics.to_dict(with_layers=True), "history": record.history,
                        "created": record.created, "weights": record.weights_sha256})
    manifest = {"format": FORMAT, "version": VERSION, "exported": time.time(), "variants": entries}
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(zipfile.ZipInfo(MANIFEST, FIXED_TIME), json.dumps(manifest, indent=1, allow_nan=False),
                    zipfile.ZIP_DEFLATED)
        for digest, data in files.items():
            zf.writestr(zipfile.ZipInfo(f"weights/{digest}.cmpk", FIXED_TIME), data, zipfile.ZIP_DEFLATED)
    return out.getvalue()


def import_workspace(store: Store, workspace: Workspace, data: bytes, name: str = "the file") -> list[str]:
    """Add the variants of an exported .zip to `workspace`; returns their ids. WorkspaceZipError, with
    what to do, for anything wrong — and then nothing is stored."""
    items = read_export(data, name)
    return store.keep_packed(workspace, items)


def read_export(data: bytes, name: str = "the file") -> list[PackedVariant]:
    """Check an export completely (module docstring) and return its variants, ready to store."""
    if len(data) > MAX_ZIP_BYTES:
        raise _bad(name, f"it is {len(data) / 2**20:.0f} MB, more than the {MAX_ZIP_BYTES // 2**20} MB an "
                         f"import takes")
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            members = _check_names(zf, name)
            contents = _read_members(zf, members, name)
    except zipfile.BadZipFile as exc:
        raise _bad(name, f"it is not a readable zip archive ({exc})") from None
    except (RuntimeError, NotImplementedError, EOFError, ValueError, OSError) as exc:   # encrypted, odd method, cut
        raise _bad(name, f"a file inside cannot be unpacked ({exc})") from None
    manifest = _check_manifest(contents.pop(MANIFEST), name)
    return _check_variants(manifest, contents, name)


def _bad(name: str, what: str) -> WorkspaceZipError:
    return WorkspaceZipError(f"{name} cannot be imported: {what}. Nothing was imported. Export the workspace "
                             f"again from the app and import the .zip it gives, unchanged.")


def _check_names(zf: zipfile.ZipFile, name: str) -> list[zipfile.ZipInfo]:
    members = zf.infolist()
    if len(members) > MAX_MEMBERS:
        raise _bad(name, f"it holds {len(members)} files, more than the {MAX_MEMBERS} an export can have")
    seen = set()
    for info in members:
        if info.filename in seen:
            raise _bad(name, f"it holds {info.filename!r} twice")
        seen.add(info.filename)
        if info.filename != MANIFEST and not WEIGHTS.fullmatch(info.filename):
            raise _bad(name, f"it holds {info.filename!r}, which is not part of a workspace export (only "
                             f"{MANIFEST} and weights/<sha256>.cmpk files are)")
    if MANIFEST not in seen:
        raise _bad(name, f"it has no {MANIFEST}")
    return members


def _read_members(zf: zipfile.ZipFile, members: list[zipfile.ZipInfo], name: str) -> dict[str, bytes]:
    """Every member's bytes, counted as they are unpacked: never more than the limits."""
    contents, total = {}, 0
    for info in members:
        limit = MAX_MANIFEST_BYTES if info.filename == MANIFEST else MAX_WEIGHTS_BYTES
        limit = min(limit, MAX_TOTAL_BYTES - total)
        if info.file_size > limit:
            raise _too_big(name, info.filename)
        with zf.open(info) as f:
            chunk = f.read(limit + 1)
        if len(chunk) > limit:
            raise _too_big(name, info.filename)
        total += len(chunk)
        contents[info.filename] = chunk
    return contents


def _too_big(name: str, member: str) -> WorkspaceZipError:
    return _bad(name, f"{member} unpacks to more than this app imports (at most {MAX_WEIGHTS_BYTES // 2**20} MB a "
                      f"file and {MAX_TOTAL_BYTES // 2**20} MB in all)")


def _check_manifest(raw: bytes, name: str) -> dict:
    try:
        manifest = json.loads(raw.decode("utf-8"), parse_constant=_no_constants)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise _bad(name, f"{MANIFEST} is not valid JSON ({type(exc).__name__})") from None
    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(MANIFEST_SCHEMA).iter_errors(manifest))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "the top level"
        raise _bad(name, f"{MANIFEST} is not a workspace manifest (at {where}: {error.message[:200]})")
    return manifest


def _no_constants(constant: str):
    raise ValueError(f"{constant} is not allowed")


def _check_variants(manifest: dict, weights: dict[str, bytes], name: str) -> list[PackedVariant]:
    files = {WEIGHTS.fullmatch(member).group(1): data for member, data in weights.items()}
    named = {entry["weights"] for entry in manifest["variants"]}
    if set(files) - named:
        raise _bad(name, f"weights/{sorted(set(files) - named)[0]}.cmpk is not named by any variant")
    checked = set()
    items = []
    for entry in manifest["variants"]:
        digest = entry["weights"]
        if digest not in files:
            raise _bad(name, f"the weights of {entry['name']!r} (weights/{digest}.cmpk) are missing")
        if digest not in checked:
            _check_weights(files[digest], digest, entry["name"], name)
            checked.add(digest)
        if variant_id(digest, entry["parent"], entry["technique"], entry["settings"]) != entry["id"]:
            raise _bad(name, f"the id of {entry['name']!r} does not match its weights and recipe (the manifest "
                             f"was edited)")
        items.append(PackedVariant(entry["name"], entry["technique"], entry["settings"], entry["parent"],
                                   entry["metrics"], files[digest], entry["history"], entry["created"]))
    return items


def _check_weights(data: bytes, digest: str, variant: str, name: str) -> None:
    if sha256_hex(data) != digest:
        raise _bad(name, f"the weights of {variant!r} do not match their SHA-256 (the file was damaged or changed)")
    try:
        unpack_weights(data, f"the weights of {variant!r}")
    except ModelFileError as exc:
        raise _bad(name, str(exc).rstrip(".")) from None
