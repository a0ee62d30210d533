"""The lifespan state is what `State` declares, and every typed accessor of it agrees."""

from __future__ import annotations

import importlib
import pkgutil
import typing

import app
from app.core.rbac import UserLookup
from app.core.state import LifespanItem
from app.main import State
from tests.support.harness import ServedApp


def every_lifespan_item() -> dict[str, LifespanItem[object]]:
    items: dict[str, LifespanItem[object]] = {}
    for module_info in pkgutil.walk_packages(app.__path__, "app."):
        module = importlib.import_module(module_info.name)
        for name, value in vars(module).items():
            if isinstance(value, LifespanItem):
                items[f"{module_info.name}.{name}"] = value
    return items


def test_each_accessor_reads_a_declared_key_as_its_declared_type() -> None:
    declared = typing.get_type_hints(State)
    items = every_lifespan_item()
    assert len(items) >= 8  # the walk found them: settings, engine, sessions, auth, caches ...
    for where, item in items.items():
        assert item.name in declared, f"{where} reads {item.name!r}, which State does not declare"
        (item_type,) = typing.get_args(item.__orig_class__)  # type: ignore[attr-defined]
        assert item_type == declared[item.name], where


def test_the_lifespan_yields_exactly_the_declared_items(served_app: ServedApp) -> None:
    declared = typing.get_type_hints(State)
    assert set(served_app.state) == set(declared)
    for name, value in served_app.state.items():
        expected = declared[name]
        if expected is UserLookup:  # a protocol: what it must do, not a class to be
            assert callable(value.active_user), name
        else:
            assert isinstance(value, typing.get_origin(expected) or expected), name
