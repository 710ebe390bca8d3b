"""Method settings as frozen dataclasses. Each field carries its help text and range, so the
command line and the UI build their controls from the same source and check input the same way."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from engines.decoding.sampling import Sampling

MAX_NEW_TOKENS = 512
MAX_PROMPT_TOKENS = 1024   # the default cap on a prompt's tokens; a server may pass another to Run
MAX_SEED = 2 ** 63 - 1


def option(default: Any, help: str, low: float | None = None, high: float | None = None,
           choices: tuple[str, ...] | None = None, label: str | None = None, auto: int | None = None) -> Any:
    """A setting with its help and range. auto: the value the word 'auto' stands for (the CLI takes either)."""
    return field(default=default, metadata={"help": help, "low": low, "high": high, "choices": choices,
                                            "label": label, "auto": auto})


@dataclass(frozen=True)
class Checked:
    """Settings whose every field is checked against its range when they are made."""

    def __post_init__(self):
        for f in dataclasses.fields(self):
            check(f, getattr(self, f.name))


@dataclass(frozen=True)
class RunSettings(Checked):
    """What a run has besides its method's settings."""
    seed: int = option(0, "seed of the random generator: the same seed gives the same trace", 0, MAX_SEED)


@dataclass(frozen=True)
class DecodeConfig(Checked):
    """What every method shares: the budget and how a token is chosen from a distribution."""
    max_new_tokens: int = option(64, "new tokens to generate at most", 1, MAX_NEW_TOKENS)
    temperature: float = option(0.0, "0 is greedy; above 0 samples", 0.0, 2.0)
    top_k: int = option(0, "keep the k most probable tokens (0: off)", 0, 1000, label="top-k")
    top_p: float = option(1.0, "keep the smallest set holding this much probability (1: off)", 0.01, 1.0,
                          label="top-p")

    @property
    def sampling(self) -> Sampling:
        return Sampling(self.temperature, self.top_k, self.top_p)


def acceptance_option() -> Any:
    return option("exact", "exact: the lossless rule (u <= min(1, p/q), residual at a rejection); typical: "
                           "Medusa-2's typical acceptance, keep x when p(x) > min(epsilon, delta * exp(-H(p))), "
                           "LOSSY: more tokens kept, output no longer distributed as the target's",
                  choices=("exact", "typical"))


def exit_layer_option() -> Any:
    return option(0, "early-exit drafter: the target's first L layers draft, then its final norm and head; "
                     "1 to the target's layers - 1, 0 for half of them", 0, 255, label="exit layer")


def epsilon_option() -> Any:
    return option(0.09, "typical acceptance: the threshold's ceiling epsilon", 0.01, 0.99, label="typical epsilon")


def delta_option() -> Any:
    return option(0.3, "typical acceptance: delta, scaling exp(-H(p)) in the threshold", 0.01, 0.99,
                  label="typical delta")


def typical_of(cfg: Any) -> tuple[float, float] | None:
    """(epsilon, delta) of a config set to typical acceptance; None under the exact rule."""
    return (cfg.typical_epsilon, cfg.typical_delta) if getattr(cfg, "acceptance", "exact") == "typical" else None


def check(f: dataclasses.Field, value: Any) -> None:
    """Raise ValueError with one sentence when a setting is out of its range."""
    m = f.metadata
    label = m.get("label") or f.name.replace("_", " ")
    if m.get("choices") and value not in m["choices"]:
        raise ValueError(f"{label} must be one of {', '.join(m['choices'])}, not '{value}'.")
    if f.type in ("int", int) and (isinstance(value, bool) or not isinstance(value, int)):
        raise ValueError(f"{label} must be a whole number, not {value!r}.")
    # a string or a bool sent where a number belongs (raw HTTP) must not reach the range comparison below
    if f.type in ("float", float) and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise ValueError(f"{label} must be a number, not {value!r}.")
    if m.get("low") is not None and not (m["low"] <= value <= m["high"]):
        raise ValueError(f"{label} must be between {number(m['low'])} and {number(m['high'])}, not {number(value)}.")


def number(value: float) -> str:
    """A number as a message shows it: whole numbers in full (a seed's range), others short."""
    return str(value) if isinstance(value, int) else f"{value:g}"


def fields(cls) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if f.metadata]


def build(cls, values: dict[str, Any]):
    """A config from loosely typed values (CLI strings, UI numbers); unknown keys are ignored."""
    kwargs = {}
    for f in fields(cls):
        if f.name in values and values[f.name] is not None:
            v = values[f.name]
            if f.type in ("int", int) and isinstance(v, float) and v.is_integer():
                v = int(v)
            elif f.type in ("float", float) and isinstance(v, int):
                v = float(v)
            kwargs[f.name] = v
    return cls(**kwargs)
