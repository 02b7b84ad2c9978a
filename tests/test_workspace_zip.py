"""Export and import of a whole workspace (compression/workspace_zip.py): exact round trips, and every
hostile or damaged zip refused with nothing stored."""
import hashlib
import io
import json
import pickle
import zipfile

import pytest
import torch

from compression.prune import prune
from compression.activations import activation_settings, quantize_activations
from compression.store import open_store, pack_weights
from compression.store_errors import WorkspaceZipError
from compression.variant import Variant
from compression.workspace_zip import MAX_MEMBERS, MAX_WEIGHTS_BYTES, export_workspace, import_workspace
from helpers import toy_set
from store_fixtures import (db_url, home, logits, one_torch_thread, opener, pg_url,  # noqa: F401
                            tiny_model, tiny_variant)


@pytest.fixture
def exported(opener):
    """(store, workspace, export bytes, ids) for a workspace holding a chain of three variants made from a
    pretrained model, one of them with rounded activations."""
    store = opener()
    pretrained = store.register_pretrained(tiny_variant(9, "resnet8 (pretrained)", "pretrained"))
    ws, _ = store.create_workspace()
    trained = tiny_variant(0, "trained", parent=pretrained)
    trained.history = [{"epoch": 1, "accuracy": 0.25}]
    ids = [store.keep(ws, trained)]
    ids.append(store.keep(ws, Variant("pruned", prune(trained.model, 0.5), "pruned", {"amount": 0.5}, ids[0],
                                      tiny_variant(1).metrics)))
    rounded = quantize_activations(tiny_model(2), 4, toy_set(64), batches=1, batch_size=32)
    ids.append(store.keep(ws, Variant("a4", rounded, "quantized", {"a_bits": 4}, ids[1])))
    return store, ws, export_workspace(store, ws), ids


def test_export_then_import_into_a_fresh_workspace_reproduces_every_variant_exactly(exported, tmp_path):
    store, ws, data, ids = exported
    names = zipfile.ZipFile(io.BytesIO(data)).namelist()
    assert names[0] == "manifest.json" and len(names) == 4            # the pretrained model is not exported

    other = open_store(tmp_path / "elsewhere")                          # another server, another database
    try:
        target, _ = other.create_workspace()
        assert import_workspace(other, target, data) == ids
        for vid in ids:
            mine, theirs = store.variant(ws, vid), other.variant(target, vid)
            assert (theirs.name, theirs.technique, theirs.settings, theirs.parent, theirs.history) == (
                mine.name, mine.technique, mine.settings, mine.parent, mine.history)
            assert theirs.metrics == mine.metrics
            assert other.weights(target, vid) == store.weights(ws, vid)
            assert torch.equal(logits(other.model(target, vid)), logits(store.model(ws, vid)))
        assert activation_settings(other.model(target, ids[2])) == activation_settings(store.model(ws, ids[2]))
    finally:
        other.close()


def test_importing_twice_or_into_the_same_store_shares_files_and_ids(exported):
    store, ws, data, ids = exported
    files = set(store.blobs.digests())
    again, _ = store.create_workspace()
    assert import_workspace(store, again, data) == ids
    assert import_workspace(store, again, data) == ids
    assert set(store.blobs.digests()) == files
    assert [v.id for v in store.variants(again) if not v.builtin] == ids


# --- hostile and damaged zips -------------------------------------------------------------------------

def rebuild(data: bytes, change) -> bytes:
    """The export with `change(members: dict name -> bytes)` applied."""
    members = {i.filename: zipfile.ZipFile(io.BytesIO(data)).read(i) for i in zipfile.ZipFile(io.BytesIO(data)).infolist()}
    change(members)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, content in members.items():
            zf.writestr(name, content)
    return out.getvalue()


def edit_manifest(edit):
    def change(members):
        manifest = json.loads(members["manifest.json"])
        edit(manifest)
        members["manifest.json"] = json.dumps(manifest).encode()
    return change


def swap_weights(new: bytes):
    """Replace the first variant's weights file with `new`, named by `new`'s hash, manifest updated."""
    def change(members):
        manifest = json.loads(members["manifest.json"])
        old = manifest["variants"][0]["weights"]
        digest = hashlib.sha256(new).hexdigest()
        del members[f"weights/{old}.cmpk"]
        members[f"weights/{digest}.cmpk"] = new
        for entry in manifest["variants"]:
            if entry["weights"] == old:
                entry["weights"] = digest
        members["manifest.json"] = json.dumps(manifest).encode()
    return change


def add_member(name, content=b"x"):
    return lambda members: members.__setitem__(name, content)


HOSTILE = {
    "path traversal": (add_member("../../evil.cmpk"), "not part of a workspace export"),
    "absolute path": (add_member("/etc/cron.d/evil"), "not part of a workspace export"),
    "traversal inside weights/": (add_member("weights/../../" + "a" * 64 + ".cmpk"), "not part of"),
    "a pickle by name": (add_member("model.pkl", pickle.dumps({"w": 1})), "not part of a workspace export"),
    "a pickle as weights": (swap_weights(pickle.dumps({"weight": [1.0, 2.0]})), "not a packed model file"),
    "weights not matching their name": (
        lambda m: m.__setitem__(next(k for k in m if k.startswith("weights/")), pack_weights(tiny_model(5))),
        "do not match their SHA-256"),
    "a weights file nobody names": (add_member(f"weights/{'b' * 64}.cmpk", pack_weights(tiny_model(5))),
                                    "not named by any variant"),
    "a missing weights file": (lambda m: m.pop(next(k for k in m if k.startswith("weights/"))), "are missing"),
    "no manifest": (lambda m: m.pop("manifest.json"), "has no manifest.json"),
    "manifest not JSON": (add_member("manifest.json", b"{not json"), "not valid JSON"),
    "manifest with NaN": (add_member("manifest.json", b'{"format": NaN}'), "not valid JSON"),
    "manifest of another format": (edit_manifest(lambda m: m.update(format="something-else")), "at format"),
    "manifest with a wrong type": (edit_manifest(lambda m: m["variants"][0].update(name=7)), "at variants/0/name"),
    "manifest with an extra key": (edit_manifest(lambda m: m["variants"][0].update(code="import os")),
                                   "not a workspace manifest"),
    "an edited recipe": (edit_manifest(lambda m: m["variants"][1]["settings"].update(amount=0.9)),
                         "does not match its weights and recipe"),
    "too many files": (lambda m: m.update({f"weights/{i:064x}.cmpk": b"" for i in range(MAX_MEMBERS)}),
                       "more than the"),
}


def nothing_changed(store, ws, before):
    assert [v.id for v in store.variants(ws)] == before[0]
    assert set(store.blobs.digests()) == before[1]


@pytest.mark.parametrize("case", list(HOSTILE))
def test_a_hostile_or_damaged_zip_is_refused_and_changes_nothing(exported, case):
    store, _, data, _ = exported
    change, message = HOSTILE[case]
    target, _ = store.create_workspace()
    before = ([v.id for v in store.variants(target)], set(store.blobs.digests()))
    with pytest.raises(WorkspaceZipError, match=message) as err:
        import_workspace(store, target, rebuild(data, change), "lesson.zip")
    assert "Nothing was imported" in str(err.value)
    nothing_changed(store, target, before)


@pytest.mark.parametrize("cut", [0.5, 0.9, 0.999])
def test_a_truncated_zip_is_refused(exported, cut):
    store, _, data, _ = exported
    target, _ = store.create_workspace()
    before = ([v.id for v in store.variants(target)], set(store.blobs.digests()))
    with pytest.raises(WorkspaceZipError, match="not a readable zip|cannot be unpacked"):
        import_workspace(store, target, data[:int(len(data) * cut)])
    nothing_changed(store, target, before)


def test_a_zip_bomb_is_refused_without_unpacking_it(exported):
    """A member that unpacks to more than any weights file may be (a few MB of zip, 300+ MB of zeros)."""
    store, _, data, _ = exported
    target, _ = store.create_workspace()
    bomb = io.BytesIO()
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        zf.writestr("manifest.json", zipfile.ZipFile(io.BytesIO(data)).read("manifest.json"))
        with zf.open(f"weights/{'c' * 64}.cmpk", "w", force_zip64=True) as member:
            zeros = bytes(1 << 20)
            for _ in range(MAX_WEIGHTS_BYTES // len(zeros) + 1):
                member.write(zeros)
    assert len(bomb.getvalue()) < 5 * 2**20
    with pytest.raises(WorkspaceZipError, match="unpacks to more than this app imports"):
        import_workspace(store, target, bomb.getvalue())
    assert [v.id for v in store.variants(target) if not v.builtin] == []


def test_an_empty_workspace_exports_and_imports_nothing(opener):
    store = opener()
    ws, _ = store.create_workspace()
    data = export_workspace(store, ws)
    assert json.loads(zipfile.ZipFile(io.BytesIO(data)).read("manifest.json"))["variants"] == []
    assert import_workspace(store, ws, data) == []
