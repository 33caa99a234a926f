"""The typed configuration of a build: `FuseConfig` in Python, the same schema as a YAML recipe.

In the idiom of `peft.LoraConfig` and mergekit's pydantic options: every option is a typed field that
validates itself, alternatives are a union of small types (`Transport(k, temperature) | OMP(atoms) |
Linear() | Identity()`), and an option that does not apply cannot be written, or is refused by name.
Options of a target vocabulary live in `VocabularyConfig`, so none of them exists without one.

Recipes written before this schema (flat `tokenizer:`, `output_head:`, `transport_k:` ... keys) load
through `translate_legacy`, which warns and names each new field (docs/api.md, "Older recipes").
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .configuration_embfuse import MIXING_MODES, REGULARIZERS, SOURCE_DTYPES
from .modeling_embfuse import TASKS

# The task names come from the one task table; pydantic validates and documents the Literal as usual.
Task = Literal[tuple(task.name for task in TASKS)]  # type: ignore[valid-type]
PieceRule = Literal["mean", "first", "last"]
# The head may also take no piece rows at all: its new rows then come from the donors alone.
OutputPieceRule = Literal["mean", "first", "last", "none"]
# Roles an added special token can take: the tokenizer attribute it becomes (`additional` = one more
# control token, e.g. a chat marker, in `additional_special_tokens`).
Role = Literal["bos", "eos", "unk", "pad", "mask", "cls", "sep", "additional"]
SPECIAL_ROLES: tuple[str, ...] = get_args(Role)
HUB_ID_PATTERN = r"^[\w.-]+/[\w.-]+$"  # `namespace/name`; the card names such models in `base_model`


class RecipeError(ValueError):
    """A configuration that cannot be used; the message names the field and the fix."""


def resolve_path(path: str, relative_to: Path | None = None) -> str:
    """Expand `$VARS` and `~`, resolve `pkg:NAME/sub/path` inside an installed package, and make a relative path
    relative to the recipe's folder (when it exists there). Anything that is not a local path (a Hub id) is
    returned unchanged."""
    path = os.path.expanduser(os.path.expandvars(path))
    if path.startswith("pkg:"):
        package, _, inner = path[len("pkg:") :].partition("/")
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise RecipeError(f"`{path}`: package {package!r} is not installed (pip install it, see README).")
        return str(Path(spec.submodule_search_locations[0]) / inner)
    if relative_to is not None and not os.path.isabs(path) and (relative_to / path).exists():
        return str(relative_to / path)
    return path


def _path(value: Any) -> Any:
    """A path field: `pathlib.Path` as a string, `~`, `$VARS` and `pkg:` resolved, the same in Python and YAML."""
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    return resolve_path(value) if isinstance(value, str) else value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --- projections: how a source's rows reach the base space -----------------------------------------------


class Identity(_Strict):
    """The source's rows as they are (its width must be the base's)."""

    method: Literal["identity"] = "identity"


class Linear(_Strict):
    """A learnable linear map, fitted on the anchor tokens without training."""

    method: Literal["linear"] = "linear"


class Transport(_Strict):
    """Each row a softmax-weighted average of the base rows of its `k` nearest anchors in the source's space."""

    method: Literal["transport"] = "transport"
    k: int = Field(10, ge=1, description="Nearest anchors per row.")
    temperature: float = Field(0.1, gt=0, description="Softmax temperature over their cosines.")


class OMP(_Strict):
    """Each row sparse-coded over `atoms` anchors (orthogonal matching pursuit, as tokensurgeon's)."""

    method: Literal["omp"] = "omp"
    atoms: int = Field(10, ge=1, description="Anchors each row is coded over.")


Projection = Annotated[Union[Identity, Linear, Transport, OMP], Field(discriminator="method")]  # noqa: UP007
PROJECTIONS = {cls.model_fields["method"].default: cls for cls in (Identity, Linear, Transport, OMP)}


class SourceConfig(_Strict):
    """One source: an HF checkpoint (folder or Hub id), a GGUF file, or a static word-vector file."""

    path: str = Field(
        description="Folder, Hub id, .gguf file or vector file; `pkg:NAME/sub` = inside a package."
    )
    name: str | None = Field(None, description="Display name; defaults to the path's last part.")
    hub_id: str | None = Field(
        None,
        pattern=HUB_ID_PATTERN,
        description="Hub id (`namespace/name`) it came from, for the model card.",
    )
    kind: Literal["hf", "gguf", "vectors"] | None = Field(None, description="Reader; guessed from the path.")
    revision: str | None = None
    vocab_path: str | None = Field(None, description="Vocabulary file of a `.npy` vector table.")
    projection: Projection = Field(default_factory=Transport, description="How rows reach the base space.")
    weight: float | None = Field(
        None, ge=0, description="Initial mixing weight (sources share 1 - base_weight)."
    )
    decompose: bool = Field(True, description="Rows it has no token for: the mean of its pieces' rows.")
    min_coverage: float = Field(0.01, ge=0, le=1, description="Least share of the target's content tokens.")
    allow_low_coverage: bool = False
    allow_pickle: bool = Field(
        False, description="Allow unpickling `.bin`/`.pt` weights (weights_only=True)."
    )
    trust_remote_code: bool = Field(False, description="Allow a tokenizer that needs custom code.")

    @model_validator(mode="before")
    @classmethod
    def _shorthands(cls, data: Any) -> Any:
        if isinstance(data, (str, os.PathLike)):
            return {"path": data}  # a bare path is a source with every default
        if isinstance(data, dict) and isinstance(data.get("projection"), str):
            # `projection: omp` is `projection: {method: omp}`.
            data = {**data, "projection": {"method": data["projection"]}}
        return data

    @field_validator("path", "vocab_path", mode="before")
    @classmethod
    def _paths(cls, value: Any) -> Any:
        return _path(value)


class AddedToken(_Strict):
    """One token to add to the vocabulary; a special token needs its role."""

    content: str = Field(min_length=1)
    special: bool = False
    role: Role | None = Field(None, description="The special token's role; implies `special`.")

    @model_validator(mode="after")
    def _role(self) -> AddedToken:
        if self.special and self.role is None:
            raise ValueError(
                f"special token {self.content!r} has no role; give `role:` one of {', '.join(SPECIAL_ROLES)}"
            )
        return self

    @property
    def is_special(self) -> bool:
        return self.special or self.role is not None


class VocabularyConfig(_Strict):
    """A target vocabulary: another tokenizer, or the model's own plus added tokens."""

    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)

    tokenizer: Any = Field(
        None,
        description="The target tokenizer: a tokenizer object, folder, Hub id or .gguf file, or `source:N` (the "
        "tokenizer of source N, 1 = the first); the model's own when left out (then add tokens).",
    )
    added_tokens: list[AddedToken] = Field(
        default_factory=list,
        description="Tokens added to it: `TOKEN`, or `{content, role}` for a special one.",
    )
    added_tokens_file: str | None = Field(
        None, description="A UTF-8 file of tokens to add, one per line: `TOKEN`, or `TOKEN<TAB>ROLE`."
    )
    min_overlap: float = Field(
        0.01, ge=0, le=1, description="Least share of target tokens the base must have."
    )
    allow_low_overlap: bool = False
    head: Literal["auto", "tied", "untied"] = Field(
        "auto", description="The LM head: tied to the input table, or untied and rebuilt; auto = untied."
    )
    input_pieces: PieceRule = Field("mean", description="How the base's pieces make a new input row.")
    output_pieces: OutputPieceRule = Field(
        "mean", description="How the base's pieces make a new head row; `none`: the donors' rows alone."
    )
    donor_rows: Literal["new", "all"] = Field(
        "new", description="Rows donors fill: `new` (those the base lacks; its own stay exact) or `all`."
    )

    @field_validator("added_tokens", mode="before")
    @classmethod
    def _bare_tokens(cls, value: Any) -> Any:
        # A bare string is a plain token: `- "photosynthesis"`.
        if isinstance(value, (list, tuple)):
            return [{"content": item} if isinstance(item, str) else item for item in value]
        return value

    @field_validator("tokenizer", mode="before")
    @classmethod
    def _tokenizer(cls, value: Any) -> Any:
        if isinstance(value, os.PathLike):
            value = os.fspath(value)
        if isinstance(value, str):
            if value.startswith("source:"):
                number = value[len("source:") :]
                if not number.isdigit() or int(number) < 1:
                    raise ValueError("`source:N` needs N >= 1, the position of a source in `sources`")
                return value
            return _path(value)
        if value is not None and not hasattr(value, "get_vocab"):
            raise ValueError(
                f"must be a tokenizer, a path, a Hub id or 'source:N', not {type(value).__name__}"
            )
        return value

    @field_validator("added_tokens_file", mode="before")
    @classmethod
    def _file(cls, value: Any) -> Any:
        return _path(value)

    @model_validator(mode="after")
    def _has_a_target(self) -> VocabularyConfig:
        if self.tokenizer is None and not self.added_tokens and self.added_tokens_file is None:
            options = (
                ", ".join(f"vocabulary.{name}" for name in sorted(self.model_fields_set)) or "vocabulary"
            )
            raise ValueError(
                f"{options} applies only to a target vocabulary, and none is given: add `tokenizer`, "
                "`added_tokens` or `added_tokens_file` to `vocabulary`, or leave it out to keep the model's own"
            )
        return self

    @property
    def target_source(self) -> int | None:
        """N of `tokenizer: source:N` (1 = the first source), else `None`."""
        if isinstance(self.tokenizer, str) and self.tokenizer.startswith("source:"):
            return int(self.tokenizer[len("source:") :])
        return None


class FuseConfig(_Strict):
    """Everything a build takes besides the base: the sources, the mixture, and an optional target vocabulary."""

    sources: list[SourceConfig] = Field(
        default_factory=list,
        description="Donor tables; none with a target vocabulary builds it from the base's own pieces (FVT).",
    )
    vocabulary: VocabularyConfig | None = Field(
        None, description="A target vocabulary; the base's own if left out."
    )
    task: Task = "base"
    num_labels: int | None = Field(None, ge=1, description="For classification tasks.")
    base_hub_id: str | None = Field(
        None, pattern=HUB_ID_PATTERN, description="Hub id of the base, when it is given as a local folder."
    )
    mixing: str = Field("learned", description="`fixed`, `learned` or `gated`.")
    base_weight: float = Field(0.5, gt=0, le=1, description="Initial weight of the base table.")
    mixing_temperature: float = Field(1.0, gt=0)
    regularizer: str = "none"
    reg_lambda: float = Field(0.0, ge=0)
    train_sources: bool = False
    train_projections: bool = True
    source_dtype: str = "float32"
    seed: int = 0

    @model_validator(mode="before")
    @classmethod
    def _older_fields(cls, data: Any) -> Any:
        return translate_legacy(data) if isinstance(data, dict) else data

    @field_validator("mixing")
    @classmethod
    def _mixing(cls, value: str) -> str:
        return _one_of(value, MIXING_MODES)

    @field_validator("regularizer")
    @classmethod
    def _regularizer(cls, value: str) -> str:
        return _one_of(value, REGULARIZERS)

    @field_validator("source_dtype")
    @classmethod
    def _source_dtype(cls, value: str) -> str:
        return _one_of(value, SOURCE_DTYPES)

    @model_validator(mode="after")
    def _consistent(self) -> FuseConfig:
        given = [s.weight for s in self.sources if s.weight is not None]
        if given and len(given) != len(self.sources):
            raise ValueError("give `weight` for every source or for none")
        if given and abs(sum(given) + self.base_weight - 1) > 1e-4:
            raise ValueError(
                f"base_weight + source weights must sum to 1, got {self.base_weight + sum(given):.6g}"
            )
        source = self.target_source
        if source is not None and source > len(self.sources):
            raise ValueError(
                f"vocabulary.tokenizer 'source:{source}': there are only {len(self.sources)} sources"
            )
        if not self.sources and self.vocabulary is None:
            raise ValueError(
                "no sources and no vocabulary: nothing to build; give `sources`, or a `vocabulary` to build from "
                "the base's own pieces"
            )
        return self

    @property
    def target_source(self) -> int | None:
        return None if self.vocabulary is None else self.vocabulary.target_source

    def initial_weights(self) -> list[float]:
        """Initial mixing weights, base first; sources share `1 - base_weight` unless given."""
        if not self.sources:
            return [1.0]
        if self.sources[0].weight is not None:
            return [self.base_weight, *(s.weight for s in self.sources)]
        share = (1.0 - self.base_weight) / len(self.sources)
        return [self.base_weight, *([share] * len(self.sources))]


class Recipe(FuseConfig):
    """A `FuseConfig` with its base: what `hf-embfuse build` and `build_to_folder` take (a YAML recipe)."""

    base: str = Field(description="The base model: a folder, a Hub id or a .gguf file; `pkg:` works too.")

    @field_validator("base", mode="before")
    @classmethod
    def _base(cls, value: Any) -> Any:
        return _path(value)


# Flat fields of recipes written before `vocabulary:` existed, and where they live now.
_VOCABULARY_FIELDS = {
    "tokenizer": "tokenizer",
    "added_tokens": "added_tokens",
    "added_tokens_file": "added_tokens_file",
    "min_overlap": "min_overlap",
    "allow_low_overlap": "allow_low_overlap",
    "output_head": "head",
    "input_pieces": "input_pieces",
    "output_pieces": "output_pieces",
    "donor_rows": "donor_rows",
}


def translate_legacy(data: dict[str, Any]) -> dict[str, Any]:
    """A recipe (or `fuse` options) in the flat form of earlier versions, in today's schema, with one warning
    that names every moved field. Options that do not apply (a vocabulary option with no vocabulary, a
    temperature for OMP) are left for validation to refuse by name."""
    moved = []
    data = dict(data)
    flat = {key: data.pop(key) for key in list(data) if key in _VOCABULARY_FIELDS}
    if flat:
        if "vocabulary" in data:
            raise ValueError(f"{', '.join(flat)}: give them inside `vocabulary:`, not beside it")
        data["vocabulary"] = {_VOCABULARY_FIELDS[key]: value for key, value in flat.items()}
        moved += [f"{key} -> vocabulary.{_VOCABULARY_FIELDS[key]}" for key in flat]
    sources = data.get("sources")
    if isinstance(sources, list):
        data["sources"] = [_legacy_source(i, source, moved) for i, source in enumerate(sources)]
    if moved:
        warnings.warn(
            "Recipe fields moved (docs/api.md, 'Older recipes'): " + "; ".join(moved),
            FutureWarning,
            stacklevel=4,
        )
    return data


def _legacy_source(index: int, source: Any, moved: list[str]) -> Any:
    if not isinstance(source, dict) or not ({"transport_k", "transport_temperature"} & set(source)):
        return source
    source = dict(source)
    method = source.get("projection", "transport")
    if not isinstance(method, str):
        raise ValueError(f"sources.{index}: give transport_k / transport_temperature inside `projection:`")
    projection: dict[str, Any] = {"method": method}
    if "transport_k" in source:
        key = "atoms" if method == "omp" else "k"
        projection[key] = source.pop("transport_k")
        moved.append(f"sources.{index}.transport_k -> sources.{index}.projection.{key}")
    if "transport_temperature" in source:
        # OMP has no temperature: kept as `temperature` so that validation refuses it by name.
        projection["temperature"] = source.pop("transport_temperature")
        moved.append(f"sources.{index}.transport_temperature -> sources.{index}.projection.temperature")
    source["projection"] = projection
    return source


def _one_of(value: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ValueError(f"must be one of {', '.join(map(repr, allowed))}")
    return value


def validate_recipe(data: Any, what: str = "recipe", schema: type[FuseConfig] = Recipe) -> FuseConfig:
    """`schema.model_validate(data)`, with errors that name each field (`sources.1.projection.temperature:
    unknown field`) instead of pydantic's traceback; `what` names the input in the message."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default", FutureWarning)
            return schema.model_validate(data)
    except ValidationError as error:
        problems = []
        for item in error.errors():
            # Union members show as `projection.omp.temperature`: the method is the discriminator, not a field.
            loc = [
                str(part) for part in item["loc"] if str(part) not in PROJECTIONS or item["loc"][0] == part
            ]
            key = ".".join(loc) or "(recipe)"
            message = "unknown key (not an option here)" if item["type"] == "extra_forbidden" else item["msg"]
            problems.append(f"  {key}: {message}")
        raise RecipeError(f"Invalid {what}:\n" + "\n".join(problems)) from None


def parse_recipe(data: Any, relative_to: Path | None = None) -> Recipe:
    """Validate a recipe given as a mapping; relative paths are taken from `relative_to` (the recipe's folder)."""
    if not isinstance(data, dict):
        raise RecipeError(f"A recipe must be a mapping of keys to values, got {type(data).__name__}.")
    if relative_to is not None:
        data = _relative_paths(data, relative_to)
    return validate_recipe(data)


def _relative_paths(data: dict[str, Any], folder: Path) -> dict[str, Any]:
    """Relative paths of a recipe file, taken from its own folder where they exist there."""

    def local(value: Any) -> Any:
        return (
            resolve_path(value, folder)
            if isinstance(value, str) and not value.startswith("source:")
            else value
        )

    data = {**data, "base": local(data.get("base"))}
    if isinstance(data.get("sources"), list):
        data["sources"] = [
            {**s, **{k: local(s[k]) for k in ("path", "vocab_path") if k in s}}
            if isinstance(s, dict)
            else local(s)
            for s in data["sources"]
        ]
    for holder in (data, data.get("vocabulary")):
        if isinstance(holder, dict):
            for key in ("tokenizer", "added_tokens_file"):
                if key in holder:
                    holder[key] = local(holder[key])
    return data


def load_recipe(path: str | os.PathLike) -> Recipe:
    """Read and validate a YAML recipe file."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"Recipe file {str(path)!r} does not exist.")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise RecipeError(f"Recipe file {str(path)!r} is not valid YAML: {error}") from None
    return parse_recipe(data, relative_to=path.resolve().parent)


# Earlier names, kept importable.
SourceRecipe = SourceConfig
AddedTokenRecipe = AddedToken
