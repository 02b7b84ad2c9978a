"""Model Compression Playground: `streamlit run app.py`. A thin entry: the shared sidebar and the pages."""
import streamlit as st

st.set_page_config(page_title="Model Compression Playground", page_icon=":material/compress:", layout="wide")

from ui import sidebar  # noqa: E402  (set_page_config must come first)

PAGES = [
    st.Page("pages/overview.py", title="Overview", icon=":material/home:", default=True),
    st.Page("pages/train.py", title="Train", icon=":material/model_training:"),
    st.Page("pages/prune.py", title="Prune", icon=":material/content_cut:"),
    st.Page("pages/quantize.py", title="Quantize", icon=":material/grain:"),
    st.Page("pages/distill.py", title="Distill", icon=":material/school:"),
    st.Page("pages/share.py", title="Weight sharing", icon=":material/hub:"),
    st.Page("pages/pipeline.py", title="Pipelines", icon=":material/account_tree:"),
    st.Page("pages/compare.py", title="Compare & Download", icon=":material/leaderboard:"),
]

page = st.navigation(PAGES)
sidebar.render()
try:
    page.run()
except Exception as exc:  # the last safety net: a message, never a traceback; the session keeps everything
    sidebar.show_page_error(exc)
