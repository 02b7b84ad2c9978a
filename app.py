"""Model Compression Playground: `streamlit run app.py`. A thin entry: the shared sidebar and the pages.

The pages live in app_pages/, not pages/: Streamlit runs a file of a folder named pages/ on its own
(no sidebar, no safety net) when a deep link is the first request a fresh server gets, before any
script has called st.navigation (streamlit#9624).

The workspace comes first: the URL's ?ws= token opens it (a visit without one gets a new workspace);
a bad token gets a message and "Start a new workspace" instead of the sidebar and the page.

Everything runs under `if __name__ == "__main__"` (Streamlit runs this file as __main__): the job
engine's local cluster starts its worker processes with multiprocessing's "spawn", which runs the
parent's main file again in each child under the name __mp_main__ — here, this file. Unguarded, every
worker would open the workspace store and run the app once (marking the running jobs interrupted).
"""


def main() -> None:
    import streamlit as st

    st.set_page_config(page_title="Model Compression Playground", page_icon=":material/compress:", layout="wide")

    from ui import memory, safety, sidebar, workspace   # after set_page_config, which must come first

    memory.trim_when_idle()      # give a class's memory back once the server is quiet (ui/memory.py)

    pages = [
        st.Page("app_pages/overview.py", title="Overview", icon=":material/home:", default=True),
        st.Page("app_pages/train.py", title="Train", icon=":material/model_training:"),
        st.Page("app_pages/prune.py", title="Prune", icon=":material/content_cut:"),
        st.Page("app_pages/quantize.py", title="Quantize", icon=":material/grain:"),
        st.Page("app_pages/distill.py", title="Distill", icon=":material/school:"),
        st.Page("app_pages/share.py", title="Weight sharing", icon=":material/hub:"),
        st.Page("app_pages/pipeline.py", title="Pipelines", icon=":material/account_tree:"),
        st.Page("app_pages/compare.py", title="Compare & Download", icon=":material/leaderboard:"),
        st.Page("app_pages/board.py", title="Class board", icon=":material/co_present:"),
    ]
    page = st.navigation(pages)
    if safety.guarded("Opening your workspace")(workspace.enter)():      # ?ws=… in the URL (ui/workspace.py)
        safety.guarded("The sidebar")(sidebar.render)()
        safety.guarded("This page")(page.run)()


if __name__ == "__main__":
    main()
