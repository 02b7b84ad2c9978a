"""How numbers read on the page."""


def accuracy(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f} %"


def kib(n: int | None) -> str:
    if not n:
        return "—"
    return f"{n / 1024:.1f} KiB" if n < 1024 * 1024 else f"{n / 1024 / 1024:.2f} MiB"


def ratio(x: float | None) -> str:
    return "—" if not x else f"{x:.1f}×"


def ms(x: float | None) -> str:
    return "—" if x is None else f"{x:.1f} ms"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    seconds = int(seconds)
    return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"


_MARKDOWN = str.maketrans({c: "\\" + c for c in "\\`*_{}[]()<>#|~:$!@"})


def plain(text: object, limit: int = 400) -> str:
    """`text` made safe to show where Streamlit renders Markdown (errors, toasts, captions): the
    characters that make links, images, emphasis, code, HTML, emoji shortcodes and LaTeX are
    backslash-escaped (so are the dots of "www." and the colon of "http://", which would otherwise be
    linked automatically), so it shows as the characters it is; it is cut to `limit` characters."""
    text = str(text)
    if len(text) > limit:
        text = text[:limit] + "…"
    return text.translate(_MARKDOWN).replace("www.", "www\\.")
