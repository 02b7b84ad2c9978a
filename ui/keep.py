"""The "Keep this variant" button every technique page has: the model on screen joins the workspace's
variants for good (the store), measured like every other (size, accuracy, CPU latency).

The button usually sits in a page's fragment (a slider move reruns the fragment alone), but a kept variant
shows everywhere: the sidebar's model in hand, the Compare table, a Distill teacher. So keeping reruns the
whole app, and the message saying what was kept is shown by that run."""
from __future__ import annotations

import streamlit as st
from torch import nn

from compression.variant import Variant, measure_variant

from . import safety, state, workspace
from .format import accuracy, plain


def keep_button(where, model: nn.Module, technique: str, settings: dict, parent: Variant, name: str,
                data: state.DataInUse) -> None:
    """Draw the button in `where` (a column or st); when pressed, measure `model` (eval subset, the full
    test set when the data in use has it, latency) as a child of `parent`, keep it in the workspace and
    rerun the whole app, which says what was kept."""
    kept = st.session_state.pop("_kept_message", None)
    if kept is not None:
        st.success(kept)
    if not where.button("Keep this variant", icon=":material/bookmark_add:", type="primary"):
        return None
    with st.spinner("Measuring size, accuracy and CPU latency…"):
        variant = measure_variant(model, technique, settings, parent, name=name, eval_set=data.eval,
                                  test_set=data.test if data.full else None, latency=True)
        workspace.keep(variant)
    st.session_state["_kept_message"] = (
        f"Kept “{plain(variant.name)}”: {accuracy(variant.metrics.eval_accuracy)}, "
        f"{variant.metrics.compression_ratio:.1f}× smaller (packed). Find it on Compare & Download or pick it as "
        "the model in hand.")
    safety.rerun_app()
