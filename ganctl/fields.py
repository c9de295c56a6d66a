"""What a setting is: a field of a frozen settings group that carries its help, panel, bounds or
choices and whether resume may change it (`setting`), and the group that checks its fields'
types and ranges when made (`Group`). ganctl/config.py declares the groups."""

from __future__ import annotations

from dataclasses import field, fields
from typing import Any, ClassVar

from ganctl.values import check_range, check_type

BATCH_AUTO = 0  # batch_size 0: the largest power of two that fits the GPU, found at the start


def setting(default: Any, help: str, *, resume: bool = False, panel: str = "",
            bounds: tuple[float, float] | None = None, choices: tuple[str, ...] = (),
            **cli: Any) -> Any:
    """A field of a settings group. help: its option's help text; resume: `ganctl resume` may
    change it; panel: its help panel (else its group's); bounds (lowest, highest) or choices:
    what a value may be; cli: how its option is spelt, where that is not `--key` of the
    field's type (flag, type, metavar, shown: the default as help shows it, min/max: the
    command line's own range, resume_help, hidden: no option)."""
    meta = {"help": help, "resume": resume, "panel": panel, "bounds": bounds,
            "choices": choices, "cli": cli}
    return field(default=default, metadata=meta)


class Group:
    """A frozen group of settings: checks its fields' types, then their bounds and choices,
    then what its `check` adds."""

    PANEL: ClassVar[str] = ""

    def __post_init__(self) -> None:
        for f in fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            check_type(f.name, value, str(f.type))  # ("auto", true: settings.normalise's)
            if f.type == "float":  # 1 in a TOML file means 1.0; keep config.json typed
                object.__setattr__(self, f.name, float(value))
            elif f.type.startswith("tuple"):  # a JSON list
                object.__setattr__(self, f.name, tuple(value))
        for f in fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if not (f.name == "batch_size" and value == BATCH_AUTO):  # found at the start
                check_range(f.name, value, f.metadata["bounds"], f.metadata["choices"])
        self.check()

    def check(self) -> None:
        """What a group checks beyond each field's type and range."""
