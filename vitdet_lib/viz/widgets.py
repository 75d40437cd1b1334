"""Widget controls: a figure function behind ipywidgets sliders, or rendered once headless."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure


@dataclass(frozen=True)
class Slider:
    """A numeric control; ints everywhere make an integer slider."""

    min: float
    max: float
    step: float
    value: float


@dataclass(frozen=True)
class Choice:
    """A drop-down control."""

    options: Sequence[Any]
    value: Any


def _widget(control: Slider | Choice, name: str) -> Any:
    import ipywidgets as w

    if isinstance(control, Choice):
        return w.Dropdown(options=list(control.options), value=control.value, description=name)
    values = (control.min, control.max, control.step, control.value)
    ints = all(float(v).is_integer() for v in values)
    cls = w.IntSlider if ints else w.FloatSlider
    cast = int if ints else float
    return cls(min=cast(control.min), max=cast(control.max), step=cast(control.step),
               value=cast(control.value), description=name, continuous_update=False)


def explore(plot: Callable[..., Figure], controls: dict[str, Slider | Choice], *,
            interactive: bool = True, save_to: str | Path | None = None, name: str = "figure",
            **fixed: Any) -> None:
    """Show ``plot(**controls, **fixed)`` behind widgets, or once statically.

    Args:
        plot: returns a Figure for one setting of the controls.
        controls: keyword -> control; the control's ``value`` is the static/default setting.
        interactive: widgets (True) or one static figure at the defaults (False, headless).
        save_to: folder to write ``<name>.png`` of the default setting into (None: no file).
    """
    from IPython.display import display

    defaults = {k: c.value for k, c in controls.items()}
    if save_to is not None or not interactive:
        fig = plot(**defaults, **fixed)
        if save_to is not None:
            Path(save_to).mkdir(parents=True, exist_ok=True)
            fig.savefig(Path(save_to) / f"{name}.png", dpi=110, bbox_inches="tight")
        if not interactive:
            display(fig)
            return
    import ipywidgets as w

    w.interact(lambda **kw: display(plot(**kw, **fixed)),
               **{k: _widget(c, k) for k, c in controls.items()})
