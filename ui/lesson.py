"""Lesson links: each page's settings live in the URL, so a teacher can send a link that opens the page
at the right sliders. The browser's URL also carries the workspace token (?ws=…); the lesson link to
copy does not, so a student who opens it works in a workspace of their own. Also keeps a page's settings when students visit other pages and come back
(Streamlit forgets the state of widgets that are not on screen)."""
from __future__ import annotations

from urllib.parse import urlencode

import streamlit as st

from .format import plain

MAX_VALUE_CHARS = 32     # every setting a link carries is a short word or number
KEPT = ("ws",)           # URL parameters that are not the page's: the workspace token (ui/workspace.py)

def _param(page: str, key: str) -> str:
    return key[len(page) + 1:] if key.startswith(page + "_") else key


def _parse(raw: str, default):
    if isinstance(default, bool):
        if raw.lower() in ("1", "true", "yes", "on"):
            return True
        if raw.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(raw)
    return type(default)(raw)


def restore(page: str, defaults: dict, choices: dict | None = None, bounds: dict | None = None) -> None:
    """Before the page's widgets: give each keyed widget its value — the value from the lesson link on the
    page's first visit, else what the student last set, else the default. Bad link values are ignored."""
    choices, bounds = choices or {}, bounds or {}
    first = not st.session_state.get(f"_lesson_seen_{page}")
    for key, default in defaults.items():
        if key in st.session_state and not first:
            continue                     # the widget is live: the student's latest move wins
        value = st.session_state.get(f"_keep_{key}", default)
        raw = st.query_params.get(_param(page, key)) if first else None
        if raw is not None and len(raw) > MAX_VALUE_CHARS:
            st.toast(f"Ignored the link's {plain(_param(page, key))}: its value is {len(raw):,} characters long, "
                     f"not a setting.")
        elif raw is not None:
            try:
                parsed = _parse(raw, default)
                if key in choices and parsed not in choices[key]:
                    raise ValueError(raw)
                if key in bounds and not bounds[key][0] <= parsed <= bounds[key][1]:
                    raise ValueError(raw)
                value = parsed
            except ValueError:
                st.toast(f"Ignored the link's {plain(_param(page, key))}={plain(raw)}: not a valid setting.")
        st.session_state[key] = value
    st.session_state[f"_lesson_seen_{page}"] = True


def link(container, page: str, keys: list[str]) -> str:
    """After the widgets: remember their values, mirror them in the URL and show a copyable lesson link."""
    params = {}
    for key in keys:
        if key in st.session_state:
            value = st.session_state[key]
            st.session_state[f"_keep_{key}"] = value
            params[_param(page, key)] = str(value).lower() if isinstance(value, bool) else str(value)
    kept = {key: st.query_params[key] for key in KEPT if key in st.query_params}
    st.query_params.from_dict({**params, **kept})      # the lesson link itself never carries a workspace
    base = (st.context.url or "").split("?")[0] or f"http://localhost:8501/{page}"
    url = f"{base}?{urlencode(params)}"
    with container.popover("Copy lesson link", icon=":material/link:"):
        st.caption("Send this link: it opens this page with these settings.")
        st.code(url, language=None, wrap_lines=True)
    return url
