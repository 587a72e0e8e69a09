"""The tactic library: YAML files shipped in emma/tactics, validated on load, plus users' copies in the database."""

from __future__ import annotations

import functools
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from emma.automation.exceptions import TacticInvalid, TacticNotFound
from emma.automation.models import TacticSetting
from emma.automation.schemas import Tactic
from emma.config import Settings


def _errors(exc: ValidationError) -> list[tuple[str, str]]:
    out = []
    for e in exc.errors():
        path = ".".join(str(p) for p in e["loc"])
        reason = e["msg"].removeprefix("Value error, ")
        out.append((path, reason))
    return out


def parse(data: Any, *, source: str) -> Tactic:
    """Validate one tactic definition (already parsed from YAML); TacticInvalid names the path and reason."""
    if not isinstance(data, dict):
        raise TacticInvalid(source, [("", "a tactic is a mapping of fields (id, version, entry, nodes, ...)")])
    try:
        return Tactic.model_validate(data)
    except ValidationError as exc:
        raise TacticInvalid(source, _errors(exc)) from None


def load_text(text: str, *, source: str) -> Tactic:
    """Parse and validate YAML text."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise TacticInvalid(source, [("", f"not valid YAML: {exc}")]) from None
    return parse(data, source=source)


def load_file(path: Path) -> Tactic:
    """Load one YAML file; its name must be the tactic id."""
    tactic = load_text(path.read_text(encoding="utf-8"), source=str(path))
    if path.stem != tactic.id:
        raise TacticInvalid(str(path), [("id", f"{tactic.id!r} differs from the file name {path.stem!r}")])
    return tactic


def library_dir() -> Path:
    """Where the shipped tactics live."""
    return Path(str(resources.files("emma") / "tactics"))


@functools.lru_cache(maxsize=4)
def _library(directory: str) -> dict[str, Tactic]:
    out: dict[str, Tactic] = {}
    for path in sorted(Path(directory).glob("*.yaml")):
        t = load_file(path)
        out[t.id] = t
    return out


def library(directory: Path | None = None) -> dict[str, Tactic]:
    """Every shipped tactic by id (loaded and validated once per process)."""
    return dict(_library(str(directory or library_dir())))


def missing_templates(*, tactic: Tactic, settings: Settings) -> list[tuple[str, str]]:
    """(path, reason) for each content template that does not exist in one of its locales."""
    from emma.channels import content as channel_content

    have = channel_content.available(settings=settings)
    out = []
    for key, c in tactic.content.items():
        if c.channel == "webhook":
            continue
        locales = have.get((c.channel, c.template), set())
        for loc in c.locales:
            if loc not in locales:
                out.append((f"content.{key}", f"template {c.channel}/{c.template} has no {loc} version"))
    return out


def all_tactics(*, session: Session) -> dict[str, tuple[Tactic, bool, str]]:
    """id -> (definition, enabled, source) over the library and the copies; source is 'library' or 'copy'."""
    settings_rows = {r.id: r for r in session.scalars(select(TacticSetting))}
    out: dict[str, tuple[Tactic, bool, str]] = {}
    for tid, t in library().items():
        row = settings_rows.get(tid)
        out[tid] = (t, row.enabled if row is not None else t.enabled_by_default, "library")
    for tid, row in settings_rows.items():
        if row.definition is not None:
            out[tid] = (_copy(tid, row.definition), row.enabled, "copy")
    return out


@functools.lru_cache(maxsize=256)
def _copy_cached(tid: str, frozen: str) -> Tactic:
    import json

    return parse(json.loads(frozen), source=f"copy {tid}")


def _copy(tid: str, definition: dict[str, Any]) -> Tactic:
    import json

    return _copy_cached(tid, json.dumps(definition, sort_keys=True, default=str))


def enabled(*, session: Session) -> dict[str, Tactic]:
    """The tactics the engine runs now."""
    return {tid: t for tid, (t, on, _) in all_tactics(session=session).items() if on}


def get(*, session: Session, tactic_id: str) -> tuple[Tactic, bool, str]:
    """One tactic with its enabled flag and source; TacticNotFound otherwise."""
    found = all_tactics(session=session).get(tactic_id)
    if found is None:
        raise TacticNotFound(tactic_id)
    return found
