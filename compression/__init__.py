"""Model compression on CIFAR ResNets: the verbs a student or a script uses, in one place.

    import compression as C

    model, _ = C.load_model("assets/resnet20.safetensors")
    pruned = C.prune(model, 0.9)                      # unstructured: 90 % of the weights set to zero
    qat = C.prepare_qat(C.strip(pruned), bits=4)      # train it with C.train, then:
    small = C.convert_qat(qat)
    C.save_model(small, "small.safetensors")
    print(C.measure(small).bytes_packed)

Each technique has a verb that returns a new model and a matching verb that makes its result plain
again (as TF-MOT names them): prune / strip, prepare_shared + cluster_weights / bake_shared,
prepare_qat / convert_qat; `plain_model` makes a plain copy of whatever a model carries.

Names are looked up on first use (PEP 562), so `import compression` loads nothing heavy: torch,
Torch-Pruning and torchao are imported by the verbs that need them. The modules themselves
(compression.prune, compression.packed, …) hold everything else.
"""
from __future__ import annotations

import importlib
import sys
import types

# verb -> the module that defines it
_HOME = {
    "create_model": "models", "load_model": "files", "save_model": "files", "plain_model": "weights",
    "train": "train", "evaluate": "train", "measure": "metrics",
    "prune": "prune", "strip": "prune", "prune_filters": "structured",
    "quantize_model": "activations", "prepare_qat": "qat", "convert_qat": "qat", "to_int8": "int8",
    "distill": "distill", "cluster_weights": "share", "prepare_shared": "share", "bake_shared": "share",
    "pack_model": "packed", "unpack_model": "packed",
}
__all__ = sorted(_HOME)


def __getattr__(name: str):
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_HOME[name]}", __name__), name)
    globals()[name] = value          # looked up once
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


class _Package(types.ModuleType):
    """Three verbs share their module's name (prune, train, distill). Importing such a module would
    make Python set the package's attribute to the module; the verb keeps the name instead. The
    modules stay where they are: `from compression.prune import …`, sys.modules["compression.prune"]."""

    def __setattr__(self, name: str, value) -> None:
        if name in _HOME and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
