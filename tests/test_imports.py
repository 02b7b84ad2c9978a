"""The package's structure: no import cycle between its modules (not even through an import deferred into
a function), every module importable on its own, and the curated API behind `import compression`."""
import ast
import json
import subprocess
import sys
from pathlib import Path

import compression

PACKAGE = Path(compression.__file__).resolve().parent
MODULES = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem not in ("__init__", "__main__"))


def imported_modules(path: Path) -> set[str]:
    """The package's modules `path` imports, anywhere in the file (a function-level import too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            names = [node.module] if node.module else [alias.name for alias in node.names]
            found.update(n.split(".")[0] for n in names)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("compression."):
            found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("compression."))
    return found & set(MODULES)


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle of the directed graph as [a, b, …, a], or None (depth-first search, three colours)."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = "done"
        stack.pop()
        return None

    return next((c for n in sorted(graph) if n not in state and (c := visit(n))), None)


def test_find_cycle_finds_one_and_only_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_no_module_imports_itself_back_even_through_a_deferred_import():
    graph = {m: imported_modules(PACKAGE / f"{m}.py") - {m} for m in MODULES}
    assert graph["files"] == {"checks", "packed", "weights"}, "the graph is read (files.py imports these three)"
    assert find_cycle(graph) is None, f"import cycle: {' -> '.join(find_cycle(graph))}"


# The layers of docs/ARCHITECTURE.md: a module imports from its own layer or the ones below, never above.
LAYERS = {
    1: {"models", "data", "weights", "counts", "huffman", "train", "allocate"},        # maths and foundations
    2: {"prune", "structured", "quantize", "activations", "qat", "distill", "share", "schedule", "int8",
        "layouts", "checks", "packed", "files"},                                       # techniques, file formats
    3: {"metrics", "packed_sizes", "views", "analysis", "variant", "export", "pipelines", "card",  # variants, metrics
        "portable", "job_view", "store_errors", "store_schema", "store_jobs", "blobs", "model_cache", "store",
        "workspace_zip", "auto_prune", "auto_quant", "onnx_export", "onnx_check",     # and the store,
        "challenges", "exercises", "lineage", "grid"},                                 # classes' data, slider grids
    4: {"jobs", "tasks", "runner", "engine",                              # tasks and where they run,
        "class_access", "classes", "board", "remeasure"},                              # classes on the store
    5: {"cli", "commands", "commands_auto"},                                           # the command line
}


def test_every_module_imports_only_from_its_layer_or_below():
    layer = {m: n for n, modules in LAYERS.items() for m in modules}
    assert set(layer) == set(MODULES), "a new module needs a layer (here and in docs/ARCHITECTURE.md)"
    upward = [f"{m} (layer {layer[m]}) imports {d} (layer {layer[d]})" for m in MODULES
              for d in imported_modules(PACKAGE / f"{m}.py") if layer[d] > layer[m]]
    assert upward == []


ALONE = """
import importlib, json, sys
import numpy, torch          # third-party packages stay loaded; each of the package's modules is imported afresh
failed = {}
for name in sys.argv[1:]:
    for key in [k for k in sys.modules if k == "compression" or k.startswith("compression.")]:
        del sys.modules[key]
    try:
        importlib.import_module("compression." + name)
    except ImportError as exc:
        failed[name] = repr(exc)
print(json.dumps(failed))
"""


def test_every_module_imports_on_its_own_in_a_fresh_interpreter():
    done = subprocess.run([sys.executable, "-c", ALONE, *MODULES], capture_output=True, text=True, timeout=300,
                          cwd=PACKAGE.parent)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {}


API = """
import json, sys
import compression
light = not {"torch", "torch_pruning", "torchao"} & set(sys.modules)
import compression.prune, compression.train, compression.distill   # modules named like three verbs
print(json.dumps({"light": light, "api": {n: getattr(compression, n).__module__ for n in compression.__all__},
                  "callable": all(callable(getattr(compression, n)) for n in compression.__all__)}))
"""


def test_the_curated_api_loads_lazily_and_names_the_verbs_not_their_modules():
    done = subprocess.run([sys.executable, "-c", API], capture_output=True, text=True, timeout=300,
                          cwd=PACKAGE.parent)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["light"], "import compression must not import torch, Torch-Pruning or torchao"
    assert out["callable"], "compression.prune / train / distill are the verbs even once their modules are loaded"
    assert {"prune", "strip", "prune_filters", "quantize_model", "prepare_qat", "convert_qat", "to_int8", "distill",
            "cluster_weights", "bake_shared", "pack_model", "unpack_model", "measure", "load_model", "save_model",
            "train", "evaluate", "create_model", "plain_model"} <= set(out["api"])
    assert out["api"]["prune"] == "compression.prune" and out["api"]["prune_filters"] == "compression.structured"
