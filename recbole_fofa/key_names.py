"""Refuse unknown config keys: a typo such as ``--epoch=1`` must not start a run that ignores it.

Known keys are RecBole's (:func:`~.recbole_introspect.recbole_config_keys`), the plugin's key
tables and YAML files, and the keys its code reads. docs/usage.md, "Unknown keys".
"""

import difflib
from functools import cache
from pathlib import Path

from recbole_fofa import registry
from recbole_fofa.checks import KEY_TABLES
from recbole_fofa.recbole_introspect import config_keys_read, recbole_config_keys

#: How close (difflib's ratio) an unknown key must be to a known one to count as its typo.
NEAR_MISS = 0.8
#: RecBole's run_recbole.py flags (run_recbole_fofa's too): RecBole's Config reads them from
#: ``sys.argv`` as config keys, though no code reads them from the config.
LAUNCHER_FLAGS = ("model", "dataset", "config_files", "nproc", "ip", "port", "world_size",
                  "group_offset")


@cache
def known_keys():
    """Every config key RecBole or the plugin knows: :func:`recbole_config_keys`, the plugin's
    key tables, the keys of its YAML files and the keys its code reads."""
    package = Path(__file__).resolve().parent
    keys = set(recbole_config_keys()) | config_keys_read(package) | set(LAUNCHER_FLAGS)
    for table in KEY_TABLES.values():
        keys.update(table)
    for path in registry.properties_dir().rglob("*.yaml"):
        keys.update(registry.read_yaml(path))
    return frozenset(keys)


def check_key_names(keys, strict=False, declared=(), also_known=(), source="config key",
                    spell=None):
    """Refuse unknown config keys (docs/usage.md, "Unknown keys").

    ``keys``: the user's keys; ``declared``: keys the user declared for their own model (the
    ``extra_keys`` list; on the command line also the keys of the user's config files);
    ``also_known``: further valid names (the command line's own flags). ``strict`` (the command
    line): every key must be known or declared. Otherwise (config files, ``config_dict``): an
    unknown key is refused only when it is a near-miss of a known key (difflib ratio >=
    :data:`NEAR_MISS`, e.g. ``epoch`` for ``epochs``); any other is the user's own model's key.
    ``spell(key)`` writes a key as the user typed it (e.g. ``--key``). Raises ValueError naming the
    key and the closest known keys.
    """
    spell = spell or (lambda key: f"`{key}`")
    known = known_keys() | frozenset(also_known)
    for key in keys:
        if key in known or key in declared:
            continue
        close = difflib.get_close_matches(key, sorted(known), n=3, cutoff=0.6 if strict
                                          else NEAR_MISS)
        if not strict and not close:
            continue
        hint = (f"did you mean {' or '.join(spell(k) for k in close)}?" if close
                else "no known key is close.")
        own = ("set it in one of your config files (or list it in `extra_keys`)" if strict
               else "list it in the config key `extra_keys`")
        raise ValueError(f"{source} {spell(key)} is unknown to RecBole and recbole_fofa: {hint} "
                         f"If it is a key of your own model, {own}.")


__all__ = ["LAUNCHER_FLAGS", "NEAR_MISS", "check_key_names", "known_keys"]
