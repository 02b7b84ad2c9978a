"""The Distill page. The teacher, the temperature and the sample image rerun only the panel below the
introduction (a fragment: the softened answer, the student form and its job), never the app's navigation,
the sidebar or the introduction."""
import streamlit as st

from compression.data import CLASSES
from compression.distill import MAX_ENTROPY, entropy, softened_probabilities
from compression.models import ARCHS
from ui import charts, jobs, lesson, safety, state, workspace
from ui.format import accuracy


def intro() -> None:
    st.title("Distill")
    st.markdown(
        "A big trained **teacher** knows more than its top answer: for a photo of a cat it might say *cat 90 %, "
        "dog 8 %, truck 0.01 %*. Those small numbers — which wrong answers are *almost* right — are the "
        "“dark knowledge”. Dividing the logits by a **temperature** T > 1 before the softmax makes them visible, "
        "and a small **student** trained to match them learns faster than from the labels alone.")
    st.latex(r"p_i(T) = \frac{e^{z_i/T}}{\sum_j e^{z_j/T}} \qquad "
             r"L = \alpha\, T^2\, \mathrm{KL}\!\left(p^\text{teacher}(T)\,\Vert\, p^\text{student}(T)\right)"
             r" + (1-\alpha)\,\mathrm{CE}\!\left(z^\text{student}, y\right)")
    st.caption("The T² keeps the soft term's gradients the same size whatever the temperature.")


def teacher_and_temperature(variants: dict) -> tuple:
    default = workspace.pretrained_id("resnet20") or next(iter(variants))
    c1, c2 = st.columns(2)
    teacher_id = c1.selectbox("Teacher", list(variants), index=list(variants).index(default),
                              format_func=lambda i: f"{variants[i].name} · "
                                                    f"{accuracy(variants[i].metrics.eval_accuracy)}",
                              key="distill_teacher")
    T = c2.slider("Temperature T", 1.0, 20.0, step=0.5, key="distill_T",
                  help="T = 1 is the ordinary softmax; higher T spreads probability over the other classes.")
    return workspace.variant(teacher_id), T


def softened_answer(teacher, T: float) -> None:
    """The temperature slider at work: the teacher's softened probabilities for one image."""
    gallery = state.gallery()
    g1, g2 = st.columns([1, 2])
    with g1:
        index = st.radio("Sample image", list(range(len(gallery))), key="distill_image", horizontal=True,
                         format_func=lambda i: CLASSES[int(gallery.labels[i])])
        image = gallery.images[index]
        st.image(image.permute(1, 2, 0).numpy(), caption=f"true class: {CLASSES[int(gallery.labels[index])]}",
                 width=192)
    probs = softened_probabilities(teacher.model, image, T)
    label = int(gallery.labels[index])
    with g2:
        fig = charts.bars(list(CLASSES), [100 * p for p in probs.tolist()], f"Teacher's probabilities at T = {T:g}",
                          "probability (%)", x="class", reference=[100.0 if i == label else 0.0 for i in range(10)],
                          reference_name="one-hot label", y_range=[0, 100])
        fig.data[1].name = f"teacher, T = {T:g}"
        st.plotly_chart(fig, key="distill_probs")
        h = float(entropy(probs))
        st.metric("Entropy of the teacher's answer", f"{h:.2f} nats",
                  help=f"0 = certain, {MAX_ENTROPY:.2f} = uniform",
                  delta=f"{100 * h / MAX_ENTROPY:.0f} % of the maximum", delta_color="off", delta_arrow="off")


def student_form(variants: dict, teacher, T: float) -> None:
    """Train the same student twice, with and without the teacher, on the same budget."""
    st.subheader("Train a student, with and without the teacher")
    data = state.data_in_use()
    with st.form("distill_form"):
        f1, f2, f3 = st.columns(3)
        start_from = f1.selectbox("Student", ["new"] + list(variants), key="distill_student",
                                  format_func=lambda i: "a new network (below)" if i == "new" else variants[i].name)
        arch = f1.selectbox("New student architecture", ARCHS, index=ARCHS.index("resnet8"), key="distill_arch")
        width = f1.select_slider("Width", [0.25, 0.5, 0.75, 1.0], value=1.0, key="distill_width")
        alpha = f2.slider("α (weight of the teacher's soft targets)", 0.0, 1.0, step=0.05, key="distill_alpha")
        epochs = f2.number_input("Epochs", 1, 100, 3, key="distill_epochs")
        lr = f3.select_slider("Peak learning rate", [0.01, 0.02, 0.05, 0.1, 0.2], value=0.1, key="distill_lr")
        f3.caption(f"Both students train on {data.label} ({len(data.train):,} images) with the same budget; "
                   f"only the loss differs.")
        go = st.form_submit_button("Train student", type="primary", icon=":material/school:")
    lesson.link(st, "distill", ["distill_T", "distill_alpha", "distill_image"])
    if not go:
        return
    jobs.start("distill", "Distill a student", "distill", {
        "data": data.spec(), "student_arch": arch, "student_width": width, "T": T, "alpha": alpha,
        "config": {"epochs": int(epochs), "lr": lr, "label_smoothing": 0.0}},
        inputs={"teacher": teacher.id, "start": None if start_from == "new" else start_from},
        busy_message="A distillation run of yours is already going.")


@jobs.live
def progress():
    _, points = jobs.status("distill", what="Distillation", done=lambda made: (
        f"With the teacher: {accuracy(made[0].metrics.eval_accuracy)} · without: "
        f"{accuracy(made[-1].metrics.eval_accuracy)}. Both joined the variants."))
    kd = [p for p in points if p.get("phase") == "kd"]
    plain = [p for p in points if p.get("phase") == "plain"]
    if kd:
        st.plotly_chart(charts.training_curves(kd, "Student with KD (solid) and without (dashed)", label="KD",
                                               second=("no KD", plain)), key="distill_curves")


def distill_page() -> None:
    intro()
    variants = {r.id: r for r in workspace.variants()}
    if not variants:
        st.error("No teacher available: train or upload a model first.")
        st.stop()
    lesson.restore("distill", {"distill_T": 4.0, "distill_alpha": 0.9, "distill_image": 0},
                   bounds={"distill_T": (1.0, 20.0), "distill_alpha": (0.0, 1.0), "distill_image": (0, 9)})
    panel(variants)


@safety.fragment(where="The distillation panel")
def panel(variants: dict) -> None:
    """Everything the teacher, the temperature and the sample image change; a move reruns only this."""
    teacher, T = teacher_and_temperature(variants)
    softened_answer(teacher, T)
    student_form(variants, teacher, T)
    progress()


distill_page()
