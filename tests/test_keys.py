"""The key reference (``crossdiff keys``, ``docs/keys.md``) against the validator itself.

The keys the validator accepts are read from the validator's own "unknown key" errors (which
list what is allowed), not from the reference's generator; every numeric range the reference
states is probed with a value just outside it.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest

from fem_crossdiff.config import ConfigError, parse_config
from fem_crossdiff.config.reference import key_reference, section_keys
from fem_crossdiff.config.sections import (
    FamilyConfig,
    ModelConfig,
    OutputConfig,
    ParticlesConfig,
    ResourcesConfig,
    SolverConfig,
    TimeConfig,
)

ROOT = Path(__file__).resolve().parents[1]
BASE = {"model": {"a": [1.0], "b": [1.0]}, "geometry": {"builder": "disk", "h": 0.2},
        "initial": [{"profile": "uniform", "value": 1.0}], "time": {"T": 1.0, "dt": 0.1},
        "particles": {"N": 10, "eps": 0.3}, "output": {"folder": "out"}}
SECTIONS = [ModelConfig, FamilyConfig, TimeConfig, SolverConfig, ParticlesConfig, OutputConfig,
            ResourcesConfig]


def _accepted(raw: dict, section: str) -> set[str]:
    """The keys of ``section`` the validator accepts, from its own unknown-key error."""
    raw = copy.deepcopy(raw)
    target = raw[section][0] if section == "initial" else raw.setdefault(section, {})
    target["no_such_key"] = 1
    with pytest.raises(ConfigError) as err:
        parse_config(raw, check_files=False)
    assert err.value.key.endswith("no_such_key")
    return set(re.split(r",\s*", err.value.allowed.split("allowed", 1)[1].split(":", 1)[1]
                        .strip()))


def _documented(text: str, heading: str) -> set[str]:
    block = text.split(heading + "\n", 1)[1].split("\n#", 1)[0]
    return set(re.findall(r"^\| `(\w+)` \|", block, re.M))


def test_docs_keys_md_is_generated():
    """docs/keys.md is exactly what ``crossdiff keys`` prints (regenerate it if this fails)."""
    assert (ROOT / "docs" / "keys.md").read_text() == key_reference(library_only=True) + "\n"


@pytest.mark.parametrize("cls", SECTIONS, ids=lambda c: c.section)
def test_section_keys_cover_validator(cls):
    raw = copy.deepcopy(BASE)
    if cls is ModelConfig:
        raw["model"].update(type="nonlocal", eps=0.3)
    assert _documented(key_reference(), f"## [{cls.section}]") == _accepted(raw, cls.section)


def test_geometry_and_initial_keys_cover_validator():
    from fem_crossdiff import meshes

    text = key_reference()
    for name in meshes.BUILDERS:
        raw = copy.deepcopy(BASE)
        raw["geometry"] = {"builder": name}
        documented = _documented(text, f'### builder = "{name}"')
        assert documented == _accepted(raw, "geometry"), name
    from fem_crossdiff.config import PROFILES

    rows = dict(re.findall(r"^\| `(\w+)` \| (.*) \|$", text.split("## [[initial]]")[1], re.M))
    for profile in PROFILES:
        raw = copy.deepcopy(BASE)
        raw["initial"] = [{"profile": profile}]
        with pytest.raises(ConfigError) as err:  # the missing required keys, one by one
            parse_config(raw, check_files=False)
        assert f"`{err.value.key.split('.')[-1]}`" in rows[profile].split("|")[0]
        raw["initial"] = [{"profile": profile, "value": 1.0, "center": [0.0, 0.0],
                           "width": 0.1, "height": 1.0, "radius": 0.1, "normal": [1.0, 0.0],
                           "expr": "1", "no_such_key": 1}]
        with pytest.raises(ConfigError) as err:
            parse_config(raw, check_files=False)
        # the first key of another profile (or no_such_key) is unknown: the error lists the
        # profile's keys
        assert err.value.allowed.startswith("unknown key"), err.value
        allowed = set(re.split(r",\s*", err.value.allowed.split(":", 1)[1].strip()))
        listed = set(re.findall(r"`(\w+)`", rows[profile]))
        assert allowed == listed | {"profile"}, profile


def test_top_level_sections():
    raw = copy.deepcopy(BASE)
    raw["nonsense"] = 1
    with pytest.raises(ConfigError) as err:
        parse_config(raw, check_files=False)
    allowed = set(re.split(r",\s*", err.value.allowed.split(":", 1)[1].strip()))
    line = next(ln for ln in key_reference().splitlines() if ln.startswith("Top-level"))
    assert set(re.findall(r"`(\w+)`", line.split(".")[0])) == allowed


def _outside(bound: str, value: float, is_int: bool):
    """A value just outside ``> value`` / ``>= value``."""
    if is_int:
        return int(value) - (0 if bound == ">" else 1)
    return value if bound == ">" else value - 1e-3


# [family] has lists and tables only (no scalar range to probe): tests/test_family_config.py
@pytest.mark.parametrize("cls", [c for c in SECTIONS if c is not FamilyConfig],
                         ids=lambda c: c.section)
def test_documented_ranges_are_enforced(cls):
    """Every ``> x`` / ``>= x`` of the reference is rejected just outside, naming the key."""
    probed = 0
    for row in section_keys(cls):
        m = re.match(r"^(>=?) (-?[\d.e+-]+)$", row["allowed"].split(",")[0].strip())
        if not m:
            continue
        raw = copy.deepcopy(BASE)
        if cls is ModelConfig and row["key"] in ModelConfig.nonlocal_keys():
            raw["model"].update(type="nonlocal", eps=0.3)
        bad = _outside(m.group(1), float(m.group(2)), row["type"] == "integer")
        raw.setdefault(cls.section, {})[row["key"]] = bad
        with pytest.raises(ConfigError) as err:
            parse_config(raw, check_files=False)
        assert err.value.key == f"{cls.section}.{row['key']}", row
        ok = copy.deepcopy(raw)  # and the bound itself (or just inside) is accepted
        inside = float(m.group(2)) if m.group(1) == ">=" else float(m.group(2)) + 0.5
        ok[cls.section][row["key"]] = int(inside) if row["type"] == "integer" else inside
        if row["key"] not in ("dt",):  # dt_min <= dt couples them; checked above only
            parse_config(ok, check_files=False)
        probed += 1
    assert probed >= 1


def test_cli_keys_and_version(capsys):
    """Both print on rank 0 only."""
    from mpi4py import MPI

    from fem_crossdiff import __version__
    from fem_crossdiff.cli import main

    root = MPI.COMM_WORLD.rank == 0
    assert main(["keys"]) == 0
    assert capsys.readouterr().out == (key_reference() + "\n" if root else "")
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == (f"crossdiff {__version__}\n" if root else "")
