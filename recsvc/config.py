"""Configuration: one dataclass tree, loaded from TOML, overridden by RECSVC_* variables and flags.

Order of precedence (last wins): the defaults shipped in `recsvc/defaults/train.toml` (tuned),
a user's `--config FILE`, `RECSVC_TRAIN__SECTION__KEY=value` environment variables, then CLI flags.
Unknown keys and wrong types raise InvalidInput naming the key.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import tomllib
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from recsvc.errors import InvalidInput


@dataclass
class EventsConfig:
    """How events become interaction strength."""

    weights: dict[str, float] = field(
        default_factory=lambda: {"view": 1.0, "cart": 4.0, "purchase": 8.0, "interaction": 1.0}
    )
    half_life_days: float = 0.0  # exponential time decay; 0 turns it off
    use_quantity: bool = False  # multiply by quantity (log-damped)
    rating_weight: float = 0.0  # weight *= 1 + rating_weight * (rating - 3) where a rating exists
    cancel_prefix: str = "C"
    max_bad_rows: str = ""  # fraction (0.01) or count (500); empty: no limit


@dataclass
class ALSConfig:
    enabled: bool = True
    factors: int = 64
    iterations: int = 15
    regularization: float = 0.05
    alpha: float = 2.0
    seed: int = 42


@dataclass
class BPRConfig:
    enabled: bool = False
    factors: int = 64
    iterations: int = 100
    learning_rate: float = 0.01
    regularization: float = 0.01
    seed: int = 42


@dataclass
class EASEConfig:
    enabled: bool = True
    l2: float = 300.0
    max_items: int = 20000  # above this the dense solve is skipped (see README)
    top_n: int = 0  # keep only the top_n weights per column (0: keep all)
    local_neighbours: int = 200  # above max_items: each column solved over its strongest co-items
    column_norm: float = 0.0  # fit on X D^-column_norm (D: item degrees); 0: plain EASE
    column_restore: float = 0.0  # weights W = D^-column_norm B D^column_restore


@dataclass
class ItemKNNConfig:
    enabled: bool = True
    similarity: str = "cosine"  # cosine | jaccard | lift
    neighbours: int = 100
    shrink: float = 0.0


@dataclass
class SimilarConfig:
    n: int = 50  # similar items kept per item


@dataclass
class RulesConfig:
    enabled: bool = True
    min_support: float = 0.001
    min_confidence: float = 0.1
    max_len: int = 3
    window_days: float = 1.0  # for logs without order ids: a user's purchases within a window
    max_basket_items: int = 100  # larger baskets are left out of mining (counted in the manifest)
    max_rules: int = 2_000_000


@dataclass
class BuyAgainConfig:
    enabled: bool = True
    min_population_rate: float = 0.3  # offer once-bought items when this many buyers re-buy
    max_items_per_user: int = 50


@dataclass
class PopularityConfig:
    trending_half_life_days: float = 7.0
    top_n: int = 500


@dataclass
class SegmentsConfig:
    enabled: bool = True
    clusters: int = 8
    seed: int = 42


@dataclass
class TrainConfig:
    """Everything `recsvc train` does."""

    default_recommender: str = "ease"  # ease | als | bpr | itemknn | popular | blend
    candidates: int = 200  # per-user top-N written for the store
    events: EventsConfig = field(default_factory=EventsConfig)
    als: ALSConfig = field(default_factory=ALSConfig)
    bpr: BPRConfig = field(default_factory=BPRConfig)
    ease: EASEConfig = field(default_factory=EASEConfig)
    itemknn: ItemKNNConfig = field(default_factory=ItemKNNConfig)
    similar: SimilarConfig = field(default_factory=SimilarConfig)
    rules: RulesConfig = field(default_factory=RulesConfig)
    buyagain: BuyAgainConfig = field(default_factory=BuyAgainConfig)
    popularity: PopularityConfig = field(default_factory=PopularityConfig)
    segments: SegmentsConfig = field(default_factory=SegmentsConfig)
    blend: dict[str, float] = field(default_factory=dict)  # model -> weight, for "blend"


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    origin = typing.get_origin(annotation)
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, dict):
            raise InvalidInput(key, "expected a table")
        return _build(annotation, value, key)
    if origin is dict:
        if not isinstance(value, dict):
            raise InvalidInput(key, "expected a table")
        _, value_type = typing.get_args(annotation)
        return {str(k): _coerce(v, value_type, f"{key}.{k}") for k, v in value.items()}
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            return value.lower() in ("1", "true", "yes", "on")
        raise InvalidInput(key, f"expected true or false, got {value!r}")
    if annotation in (int, float):
        if isinstance(value, bool):  # TOML true is no number (int(True) would be 1)
            raise InvalidInput(key, f"expected a number, got {value!r}")
        if annotation is int and isinstance(value, float) and not value.is_integer():
            raise InvalidInput(key, f"expected a whole number, got {value!r}")  # nan, inf too
        try:
            number = annotation(value)
        except (TypeError, ValueError, OverflowError):
            raise InvalidInput(key, f"expected a number, got {value!r}") from None
        return number
    if annotation is str:
        if not isinstance(value, str | int | float):
            raise InvalidInput(key, f"expected text, got {value!r}")
        return str(value)
    return value


def _build(cls: Any, data: dict[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in names:
            where = f"{prefix}.{key}" if prefix else key
            raise InvalidInput(where, f"unknown setting (known: {', '.join(sorted(names))})")
    kwargs = {
        key: _coerce(value, hints[key], f"{prefix}.{key}" if prefix else key)
        for key, value in data.items()
    }
    return cls(**kwargs)


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key not in ("weights", "blend"):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _set_path(data: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = data
    for depth, part in enumerate(parts[:-1]):
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            setting = ".".join(parts[: depth + 1])
            raise InvalidInput(dotted, f"'{setting}' is a setting, not a table")
    node[parts[-1]] = value


def packaged_defaults() -> dict[str, Any]:
    """The tuned defaults that ship in the package."""
    text = resources.files("recsvc").joinpath("defaults/train.toml").read_text(encoding="utf-8")
    return tomllib.loads(text)


def read_toml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InvalidInput("--config", f"file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise InvalidInput("--config", f"{path}: not valid TOML: {exc}") from None
    except UnicodeDecodeError as exc:  # TOML is UTF-8 by definition
        raise InvalidInput("--config", f"{path}: not UTF-8 text (byte {exc.start})") from None


# Every RECSVC_* variable the project reads, and the two prefixes of settings. A name outside
# them is a typo (RECSVC_TRAIN_ALS__FACTORS, one underscore) that would otherwise do nothing.
ENV_VARIABLES = (
    "RECSVC_STORE", "RECSVC_REDIS_PASSWORD", "RECSVC_ID_SECRET", "RECSVC_ID_SECRET_FILE",
    "RECSVC_TOKENS", "RECSVC_TOKENS_FILE", "RECSVC_TOKEN", "RECSVC_LOG_LEVEL", "RECSVC_PROGRESS",
)
ENV_PREFIXES = ("RECSVC_TRAIN__", "RECSVC_SERVE__")
ENV_FORMS = ("RECSVC_TRAIN__SECTION__KEY", "RECSVC_SERVE__KEY")  # two underscores between parts


def unknown_environment(environ: typing.Mapping[str, str] | None = None) -> list[str]:
    """One message per RECSVC_* variable that nothing reads, with the likely intended name."""
    env = os.environ if environ is None else environ
    messages = []
    for name in sorted(env):
        if not name.startswith("RECSVC_") or name in ENV_VARIABLES or name.startswith(ENV_PREFIXES):
            continue
        forms = [f for f in ENV_FORMS if name.startswith(f.split("__")[0] + "_")]
        close = difflib.get_close_matches(name, ENV_VARIABLES, n=1, cutoff=0.8)
        hint = (f" (settings are ${forms[0]}, two underscores between parts)" if forms
                else f" (did you mean ${close[0]}?)" if close else "")
        messages.append(f"${name} is not a recsvc variable; it is ignored{hint}")
    return messages


def load_train_config(
    path: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    environ: dict[str, str] | None = None,
) -> TrainConfig:
    """Build the TrainConfig from the packaged defaults, a TOML file, env vars and overrides.

    `overrides` maps dotted keys (`als.factors`) to values; None values are ignored.
    """
    data = packaged_defaults()
    if path:
        data = _merge(data, read_toml(path))
    env = os.environ if environ is None else environ
    for name, value in env.items():
        if name.startswith("RECSVC_TRAIN__"):
            _set_path(data, name[len("RECSVC_TRAIN__"):].lower().replace("__", "."), value)
    for dotted, value in (overrides or {}).items():
        if value is not None:
            _set_path(data, dotted, value)
    config: TrainConfig = _build(TrainConfig, data)
    check_train_config(config)
    return config


# Random seeds go to numpy's RandomState, which takes 0 to 2^32 - 1. Factors: the fits hold
# factors x factors matrices (a million factors asked numpy for 3.6 TiB); far beyond any use.
MAX_SEED = 2**32 - 1
MAX_FACTORS = 10_000

# Ranges of the numeric settings: (lowest, whether the lowest itself is allowed, highest or
# None). Every number must also be finite. `*` stands for any key of a table.
_RANGES: dict[str, tuple[float, bool, float | None]] = {
    "candidates": (1, True, None),
    "events.weights.*": (0, True, None),  # negative strengths break fold-in and the splits
    "events.half_life_days": (0, True, None),
    "als.factors": (1, True, MAX_FACTORS),
    "als.iterations": (1, True, None),
    "als.regularization": (0, True, None),
    "als.alpha": (0, False, None),
    "als.seed": (0, True, MAX_SEED),
    "bpr.factors": (1, True, MAX_FACTORS),
    "bpr.iterations": (1, True, None),
    "bpr.learning_rate": (0, False, None),
    "bpr.regularization": (0, True, None),
    "bpr.seed": (0, True, MAX_SEED),
    "ease.l2": (0, False, None),
    "ease.max_items": (0, True, None),
    "ease.top_n": (0, True, None),
    "ease.local_neighbours": (1, True, None),
    "itemknn.neighbours": (1, True, None),
    "itemknn.shrink": (0, True, None),
    "similar.n": (1, True, None),
    "rules.min_support": (0, False, 1),
    "rules.min_confidence": (0, True, 1),
    "rules.max_len": (2, True, None),  # a rule has at least an antecedent and a consequent
    "rules.window_days": (0, False, None),
    "rules.max_basket_items": (1, True, None),
    "rules.max_rules": (0, True, None),
    "buyagain.min_population_rate": (0, True, 1),
    "buyagain.max_items_per_user": (1, True, None),
    "popularity.trending_half_life_days": (0, False, None),
    "popularity.top_n": (1, True, None),
    "segments.clusters": (1, True, None),
    "segments.seed": (0, True, MAX_SEED),
    "blend.*": (0, True, None),
}


# Models fitted unless `enabled = false` (--no-als ...). BPR is the other way round: `enabled`
# (--bpr) fits it beside the others; named as the default or in the blend, it is fitted anyway.
OPT_OUT_MODELS = ("als", "ease", "itemknn")
# What default_recommender may name (training.models.MODELS builds them); blend parts are the
# others.
RECOMMENDERS = ("als", "bpr", "ease", "itemknn", "popular", "blend")


def model_disabled(config: TrainConfig, name: str) -> bool:
    """Whether the config turns this model off (`[als] enabled = false`, --no-als)."""
    return name in OPT_OUT_MODELS and not getattr(config, name).enabled


def check_train_config(config: TrainConfig) -> None:
    """InvalidInput naming the first setting that is not a finite number in its range, or a
    default recommender that is disabled (before any data is read)."""
    check_ranges(config, _RANGES)
    if config.events.max_bad_rows:  # a typo here named --max-bad-rows, a flag nobody gave
        from recsvc.events import parse_max_bad_rows

        try:
            parse_max_bad_rows(config.events.max_bad_rows)
        except InvalidInput as exc:
            raise InvalidInput("events.max_bad_rows", exc.reason) from None
    default = config.default_recommender
    if default not in RECOMMENDERS:
        raise InvalidInput("default_recommender (--model)",
                           f"unknown model '{default}' (one of {', '.join(RECOMMENDERS)})")
    for part in config.blend:
        if part not in RECOMMENDERS or part == "blend":
            raise InvalidInput(f"blend.{part}", "not a model to blend (one of "
                               f"{', '.join(r for r in RECOMMENDERS if r != 'blend')})")
    if model_disabled(config, default):
        raise InvalidInput(
            f"{default}.enabled",
            f"the default recommender '{default}' is disabled; enable it or choose another "
            "default_recommender (--model)",
        )


def check_ranges(
    config: Any,
    ranges: dict[str, tuple[float, bool, float | None]],
    prefix: str = "",
    names: dict[str, str] | None = None,
) -> None:
    """InvalidInput naming the first numeric setting of the dataclass `config` that is not
    finite or lies outside `ranges` ((lowest, lowest allowed, highest or None) per dotted key;
    `*` for any key of a table). Errors name the key as `prefix.key`, or as `names[key]` (the
    flag that set it)."""
    flat: dict[str, Any] = {}

    def walk(path: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                walk(f"{path}.{key}" if path else str(key), item)
        elif isinstance(value, int | float) and not isinstance(value, bool):
            flat[path] = value

    walk("", dataclasses.asdict(config))
    for key, value in flat.items():
        name = (names or {}).get(key) or (f"{prefix}.{key}" if prefix else key)
        if not math.isfinite(value):
            raise InvalidInput(name, f"must be a finite number, got {value!r}")
        limits = ranges.get(key) or ranges.get(key.rsplit(".", 1)[0] + ".*")
        if limits is None:
            continue
        low, inclusive, high = limits
        if value < low or (value == low and not inclusive) or (high is not None and value > high):
            bound = f"{'at least' if inclusive else 'above'} {_bound_text(low)}"
            if high is not None:
                bound += f" and at most {_bound_text(high)}"
            raise InvalidInput(name, f"must be {bound}, got {value!r}")


def _bound_text(number: float) -> str:
    """A range bound as written: 4294967295, not 4.29497e+09; 0.5 as 0.5."""
    return str(int(number)) if float(number).is_integer() else f"{number:g}"


def to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def to_toml(data: dict[str, Any]) -> str:
    """Serialise a nested dict of scalars and tables as TOML (enough for our configs)."""

    def scalar(value: Any) -> str:
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, int | float):
            return repr(value)
        escaped = str(value).replace("\\", "\\\\").replace('"', '\\"')
        return f'"{escaped}"'

    lines: list[str] = []
    tables: list[tuple[str, dict[str, Any]]] = []
    for key, value in data.items():
        if isinstance(value, dict):
            tables.append((key, value))
        else:
            lines.append(f"{key} = {scalar(value)}")

    def emit(name: str, table: dict[str, Any]) -> None:
        lines.append("")
        lines.append(f"[{name}]")
        nested = []
        for key, value in table.items():
            if isinstance(value, dict):
                nested.append((f"{name}.{key}", value))
            else:
                key_text = key if key.replace("_", "").isalnum() else scalar(key)
                lines.append(f"{key_text} = {scalar(value)}")
        for nested_name, nested_table in nested:
            emit(nested_name, nested_table)

    for name, table in tables:
        emit(name, table)
    return "\n".join(lines) + "\n"
