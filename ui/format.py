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
