"""Widgets built from RunConfig's own field metadata (tl_core.config.settings(): default, type, help, choices),
so a setting the engine gains shows in the app with the words the command line gives it, and nothing is
repeated by hand. The Train page's Advanced settings are made this way."""
from __future__ import annotations

import streamlit as st

from tl_core.config import settings

# Settings a newcomer can leave alone; the other pages ask for the rest in their own words.
ADVANCED = ("head", "schedule", "warmup_epochs", "weight_decay", "label_smoothing", "probe_first", "seed")


def key_of(name: str) -> str:
    """The session-state key of a RunConfig setting's widget."""
    return f"setting_{name}"


def setting_widget(name: str, container=st) -> None:
    """One widget for the RunConfig setting `name`, bound to key_of(name): a choice, a switch, a number or text."""
    field = settings()[name]
    kind, help_text, choices = field.metadata["kind"], field.metadata["help"], field.metadata["choices"]
    label, key = name.replace("_", " ").capitalize(), key_of(name)
    if choices:
        container.selectbox(label, list(choices), key=key, help=help_text)
    elif kind is bool:
        container.toggle(label, key=key, help=help_text)
    elif kind is int:
        container.number_input(label, step=1, key=key, help=help_text)
    elif kind is float:
        container.number_input(label, key=key, help=help_text, format="%g")
    else:
        container.text_input(label, key=key, help=help_text)


def form(names=ADVANCED, per_row: int = 3) -> None:
    """The widgets of `names`, `per_row` a row."""
    for start in range(0, len(names), per_row):
        columns = st.columns(per_row)
        for name, column in zip(names[start:start + per_row], columns):
            setting_widget(name, column)


def values(names=ADVANCED) -> dict:
    """The chosen values of `names`, by setting name, for RunConfig(**...)."""
    return {name: st.session_state[key_of(name)] for name in names}


def defaults(names=ADVANCED) -> dict:
    """Each widget's key with RunConfig's default: session.DEFAULTS holds them, so they persist across pages."""
    return {key_of(name): settings()[name].default for name in names}
