"""``docs/configuration.md`` is generated from the config dataclasses and the presets: it cannot go stale."""

from __future__ import annotations

from conftest import REPO

from loraprune.report import config_reference as ref

DOC = REPO / "docs" / "configuration.md"
FIX = "regenerate it: python -m loraprune.report.config_reference"


def test_every_field_and_preset_is_in_the_committed_reference():
    text = DOC.read_text(encoding="utf-8")
    keys = [f.key for group, cls in ref.groups().items() for f in ref.fields_of(cls, f"{group}.")]
    missing = [key for key in keys if f"`{key}`" not in text]
    presets = [f"{g}={p.stem}" for g, paths in ref.presets().items() for p in paths]
    missing += [p for p in presets if f"`{p.split('=')[1]}`" not in text]
    assert not missing, f"docs/configuration.md lacks {missing}; {FIX}"
    assert text == ref.render(), f"docs/configuration.md is stale; {FIX}"


def test_descriptions_come_from_comments_and_docstrings():
    model = {f.key: f for f in ref.fields_of(ref.groups()["model"], "model.")}
    assert model["model.tiny.num_kv_heads"].description.startswith("KV heads")  # a nested dataclass
    data = {f.key: f.description for f in ref.fields_of(ref.groups()["data"], "data.")}
    assert data["data.cutoff_len"].startswith("Block length")  # from the docstring's Attributes
    assert (
        ref.first_sentence("FLAP (An et al., AAAI 2024): a score. More.")
        == "FLAP (An et al., AAAI 2024): a score"
    )
    undocumented = [f.key for cls in ref.groups().values() for f in ref.fields_of(cls) if not f.description]
    assert not undocumented, f"add a comment to these config fields: {undocumented}"
