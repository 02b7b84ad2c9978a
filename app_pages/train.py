import streamlit as st

from compression.models import ARCHS
from ui import charts, jobs, state
from ui.format import accuracy, duration, plain


def intro() -> None:
    st.title("Train a model")
    st.markdown(
        "Training adjusts every weight a little after each batch of images to lower the loss (how wrong the "
        "predictions are). It runs in the background: move sliders or visit other pages meanwhile — it keeps "
        "going. On a laptop CPU, one pass over the 5,000 bundled images takes about half a minute for resnet20.")


WIDTHS, BATCHES, LRS = [0.25, 0.5, 0.75, 1.0, 1.5, 2.0], [32, 64, 128, 256], [0.01, 0.02, 0.05, 0.1, 0.2, 0.4]
DEFAULTS = {"train_arch": "resnet8", "train_width": 1.0, "train_epochs": 3, "train_batch": 128, "train_lr": 0.2}


def form_values() -> None:
    """The form's values: those of the training run going in the workspace (a reload during a run shows
    its settings), else the defaults; a value the student set in this session stays."""
    record = jobs.latest("train")
    spec = record.settings.get("spec", {}) if record is not None and jobs.busy(record) else {}
    config = spec.get("config", {})
    running = {"train_arch": spec.get("arch"), "train_width": spec.get("width"), "train_epochs": config.get("epochs"),
               "train_batch": config.get("batch_size"), "train_lr": config.get("lr")}
    choices = {"train_arch": ARCHS, "train_width": WIDTHS, "train_batch": BATCHES, "train_lr": LRS}
    for key, default in DEFAULTS.items():
        value = running[key]
        ok = value in choices[key] if key in choices else isinstance(value, int) and 1 <= value <= 200
        st.session_state.setdefault(key, value if ok else default)


def settings_form(data) -> None:
    form_values()
    with st.form("train_settings", border=True):
        c1, c2, c3 = st.columns(3)
        arch = c1.selectbox("Architecture", ARCHS, key="train_arch",
                            help="resnetN: N layers with weights. Deeper = more accurate and slower.")
        width = c1.select_slider("Width multiplier", WIDTHS, key="train_width",
                                 help="Scales the channels of every layer (16/32/64 at width 1).")
        epochs = c2.number_input("Epochs", 1, 200, key="train_epochs", help="Passes over the training images.")
        batch = c2.select_slider("Batch size", BATCHES, key="train_batch")
        lr = c3.select_slider("Peak learning rate", LRS, key="train_lr",
                              help="One-cycle schedule: warm up to this, then cosine down to zero.")
        c3.caption(f"Data: {data.label} ({len(data.train):,} images). Change it in the sidebar.")
        start = st.form_submit_button("Start training", type="primary", icon=":material/play_arrow:")
    if not start:
        return
    jobs.start("train", f"Train {arch}", "train", {
        "data": data.spec(), "arch": arch, "width": width,
        "config": {"epochs": int(epochs), "batch_size": batch, "lr": lr}, "checkpoint": jobs.checkpoint_file()},
        busy_message="A training run of yours is already going: stop it first.")


def stopped(made) -> str:
    kept = (f" The model as it was at epoch {made[0].settings.get('stopped_at_epoch', 0):g} joined the "
            "variants.") if made else ""
    return f"Training was stopped.{kept}"


@jobs.live
def progress() -> None:
    record, points = jobs.status("train", "train", what="Training", stopped=stopped, done=lambda made: (
        f"Finished: “{plain(made[0].name)}” joined the variants with eval accuracy "
        f"{accuracy(made[0].metrics.eval_accuracy)}. Pick it as the model in hand in the sidebar."))
    if record is None:
        st.info("No training run yet. Choose settings and press Start.")
        return
    if record.status == jobs.RUNNING:
        last = record.progress
        c = st.columns(4)
        c[0].metric("Epoch", f"{last.get('epoch', 0):.2f}")
        c[1].metric("Images / s", f"{last.get('images_per_s', 0):.0f}")
        c[2].metric("Time left", duration(last.get("eta_s")))
        tests = [p["test_acc"] for p in points if p.get("test_acc") is not None]
        c[3].metric("Eval accuracy", accuracy(tests[-1] if tests else None))
    if points:
        st.plotly_chart(charts.training_curves(points, "Loss and accuracy"), key="train_curve")


def train_page() -> None:
    intro()
    settings_form(state.data_in_use())
    progress()


train_page()
