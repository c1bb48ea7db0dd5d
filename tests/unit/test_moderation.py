"""Moderation policy logic (``core.moderation``), its settings, the per-organization store
(``accounts.moderation``, SQLite and PostgreSQL) and the image blur (``inference.safety``)."""

from __future__ import annotations

import pytest
from PIL import Image

from stableserve.core.moderation import (
    MESSAGE,
    ModerationPolicy,
    load_classifier,
    validate_patterns,
    validate_words,
)
from stableserve.core.types import GenerationRequest, WeightedPrompt
from stableserve.errors import ContentModerated, InvalidRequest, NotFound
from stableserve.settings import ModerationSettings, Settings


def _request(*prompts: tuple[str, float], mask_prompt: str | None = None) -> GenerationRequest:
    return GenerationRequest(
        engine_id="stable-diffusion-v1-5",
        prompts=tuple(WeightedPrompt(text=t, weight=w) for t, w in prompts),
        mask_prompt=mask_prompt,
    )


class Scores:
    """A classifier plugin: scores 0.9 for texts containing "zorp", 0.1 otherwise."""

    def classify(self, text: str) -> float:
        return 0.9 if "zorp" in text else 0.1


def flags_bananas(text: str) -> bool:
    """A classifier plugin as a plain function."""
    return "banana" in text


class Broken:
    def classify(self, text: str) -> bool:
        raise RuntimeError("model unavailable")


def test_words_match_whole_words_case_insensitively():
    policy = ModerationPolicy(words=("Forbidden", "two  words"))
    assert policy.words == ("forbidden", "two words")
    flagged = ("a FORBIDDEN castle", "forbidden", "(forbidden:1.3) tree", "Two\n words here", "x,forbidden.")
    for text in flagged:
        assert policy.flags(text), text
    for text in ("unforbidden land", "forbiddenness", "two-words", "twowords", "a castle"):
        assert not policy.flags(text), text
    # Fullwidth letters and zero-width characters do not slip through.
    assert policy.flags("ｆｏｒｂｉｄｄｅｎ fruit")
    assert policy.flags("for\u200bbidden fruit")


def test_patterns_search_case_insensitively():
    policy = ModerationPolicy(patterns=(r"\bcat\d+\b", r"^evil"))
    assert policy.flags("a CAT42 sits") and policy.flags("Evil twin")
    assert not policy.flags("cat") and not policy.flags("not evil")


@pytest.mark.parametrize(
    "bad",
    ["(unclosed", "x" * 201, "", r"(a+)+$", r"(\w*\s?)*", r"((ab)*c)+", r"(?:x|y+)*"],
)
def test_bad_patterns_are_rejected_at_configuration(bad):
    with pytest.raises(InvalidRequest) as info:
        validate_patterns([bad])
    assert info.value.param == "patterns"
    with pytest.raises(ValueError):
        ModerationSettings(patterns=[bad])


def test_safe_repeats_are_accepted():
    assert validate_patterns([r"(ab){2}+", r"a+b*", r"(foo|bar)+", r"\d{3}-\d{4}"]) == (
        r"(ab){2}+",
        r"a+b*",
        r"(foo|bar)+",
        r"\d{3}-\d{4}",
    )


def test_bad_words_are_rejected():
    for bad in ([" "], ["x" * 101]):
        with pytest.raises(InvalidRequest):
            validate_words(bad)
    with pytest.raises(ValueError):
        ModerationSettings(words=["ok", "  "])
    assert validate_words(["A", "a", " b  c "]) == ("a", "b c")


def test_settings_from_the_environment(monkeypatch):
    monkeypatch.setenv("STABLESERVE_MODERATION__MODE", "filter")
    monkeypatch.setenv("STABLESERVE_MODERATION__WORDS", '["Foo", "bar baz"]')
    monkeypatch.setenv("STABLESERVE_MODERATION__PATTERNS", '["x\\\\d+"]')
    config = Settings().moderation
    assert config.mode == "filter" and config.words == ["foo", "bar baz"] and config.patterns == [r"x\d+"]
    monkeypatch.setenv("STABLESERVE_MODERATION__MODE", "maybe")
    with pytest.raises(ValueError):
        Settings()


def test_block_refuses_prompts_and_mask_prompts_not_negative_prompts():
    policy = ModerationPolicy(mode="block", words=("gore",))
    with pytest.raises(ContentModerated) as info:
        policy.check(_request(("a tree", 1.0), ("lots of gore", 0.5)))
    assert info.value.message == MESSAGE and info.value.code == "content_moderation"
    assert info.value.field == "prompts" and info.value.text == "lots of gore"
    with pytest.raises(ContentModerated) as info:
        policy.check(_request(("a tree", 1.0), mask_prompt="the gore"))
    assert info.value.field == "mask_prompt"
    policy.check(_request(("a tree", 1.0), ("gore, blood", -1.0)))  # negative prompts steer away
    strict = ModerationPolicy(mode="block", words=("gore",), check_negative=True)
    with pytest.raises(ContentModerated) as info:
        strict.check(_request(("a tree", 1.0), ("gore, blood", -1.0)))
    assert info.value.field == "negative_prompts"


def test_filter_and_off_let_prompts_through():
    for mode, safety in (("filter", "blur"), ("off", "off")):
        policy = ModerationPolicy(mode=mode, words=("gore",))
        policy.check(_request(("gore", 1.0)))
        assert policy.image_safety == safety and not policy.checks_prompts
    assert ModerationPolicy(mode="block").image_safety == "blur"
    with pytest.raises(InvalidRequest):
        ModerationPolicy(mode="sometimes")  # type: ignore[arg-type]


def test_organization_override_adds_lists_and_replaces_the_mode():
    server = ModerationPolicy(mode="block", words=("gore",), patterns=(r"x\d",))
    org = server.with_override("filter", ["kittens"], [r"y\d"])
    assert org.mode == "filter" and org.words == ("gore", "kittens") and org.patterns == (r"x\d", r"y\d")
    assert server.with_override(None).mode == "block"
    assert server.with_override("off").image_safety == "off"


def test_classifier_plugins_by_dotted_path():
    scores = load_classifier(f"{__name__}:Scores")
    policy = ModerationPolicy(classifier=scores, threshold=0.5)
    assert policy.flags("a zorp") and not policy.flags("a tree")
    assert not ModerationPolicy(classifier=scores, threshold=0.95).flags("a zorp")
    bananas = ModerationPolicy(classifier=load_classifier(f"{__name__}.flags_bananas"))
    assert bananas.flags("banana split") and not bananas.flags("apple")
    with pytest.raises(RuntimeError):
        ModerationPolicy(classifier=Broken()).check(_request(("a tree", 1.0)))
    for bad in ("no.such.module:Thing", f"{__name__}:Missing", "nodots"):
        with pytest.raises(ValueError):
            load_classifier(bad)


def test_blur_removes_high_frequencies():
    from stableserve.inference.safety import blur, screen

    checker = Image.effect_noise((256, 256), 80).convert("RGB")

    def energy(img: Image.Image) -> float:
        import numpy as np

        a = np.asarray(img.convert("L"), dtype=np.float64)
        return float(np.abs(np.diff(a, axis=0)).mean() + np.abs(np.diff(a, axis=1)).mean())

    blurred = blur(checker)
    assert blurred.size == checker.size and blurred.mode == "RGB"
    assert energy(blurred) < energy(checker) / 10
    rgba = blur(checker.convert("RGBA"))
    assert rgba.mode == "RGBA"

    class Odd:
        def check(self, images):
            return [i % 2 == 1 for i in range(len(images))]

    out, flags = screen([checker, checker, checker], Odd())
    assert flags == [False, True, False] and out[0] is checker and out[1] is not checker
    assert screen([checker], None) == ([checker], [False])


# -- the per-organization store -----------------------------------------------------------------
@pytest.fixture(params=["sqlite", "postgresql"])
def settings(request, tmp_path):
    from tests.unit.test_ledger import migrated_database

    with migrated_database(request.param, tmp_path) as s:
        yield s


def test_org_moderation_table_matches_the_model(settings):
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from stableserve.db.base import Base
    from stableserve.db.session import make_engine

    with make_engine(settings).connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
    assert [d for d in diff if "org_moderation" in repr(d)] == []


def test_get_and_set_policy(settings):
    from stableserve.accounts import create_org
    from stableserve.accounts.moderation import (
        clear_policy,
        effective_policy,
        get_policy,
        server_policy,
        set_policy,
    )
    from stableserve.db.session import session_factory

    sessions = session_factory(settings)
    base = server_policy(ModerationSettings(mode="block", words=["gore"]))
    with sessions.begin() as s:
        org = create_org(s, "moderated")
        assert get_policy(s, org.id).mode is None
        assert effective_policy(s, org.id, base) is base
        own = set_policy(s, org.id, mode="filter", words=["Kittens", "kittens"], patterns=[r"dog\d"])
        assert (own.mode, own.words, own.patterns) == ("filter", ("kittens",), (r"dog\d",))
    with sessions.begin() as s:
        policy = effective_policy(s, org.id, base)
        assert policy.mode == "filter" and policy.words == ("gore", "kittens")
        assert set_policy(s, org.id, inherit_mode=True).mode is None
        assert get_policy(s, org.id).words == ("kittens",)  # untouched
        with pytest.raises(InvalidRequest):
            set_policy(s, org.id, patterns=["(a+)+"])
        with pytest.raises(InvalidRequest):
            set_policy(s, org.id, mode="loud")
        with pytest.raises(NotFound):
            set_policy(s, "org-nope", mode="off")
    with sessions.begin() as s:
        clear_policy(s, org.id)
        assert get_policy(s, org.id).words == ()


def test_moderator_screens_and_sets_image_safety(settings):
    from stableserve.accounts import create_org
    from stableserve.accounts.moderation import set_policy
    from stableserve.api.moderation import Moderator
    from stableserve.db.session import session_factory
    from stableserve.errors import Overloaded

    sessions = session_factory(settings)
    with sessions.begin() as s:
        blocked, off = create_org(s, "blocked").id, create_org(s, "relaxed").id
        set_policy(s, off, mode="off")
    config = settings.model_copy(update={"moderation": ModerationSettings(words=["gore"])})
    moderator = Moderator(config, sessions)
    assert moderator.screen(blocked, _request(("a tree", 1.0))).image_safety == "blur"
    assert moderator.screen(off, _request(("gore", 1.0))).image_safety == "off"
    with pytest.raises(ContentModerated):
        moderator.screen(blocked, _request(("gore", 1.0)))
    broken = settings.model_copy(update={"moderation": ModerationSettings(classifier=f"{__name__}:Broken")})
    with pytest.raises(Overloaded):  # a failing classifier refuses (uncharged), never lets through
        Moderator(broken, sessions).screen(blocked, _request(("a tree", 1.0)))
    missing = settings.model_copy(update={"moderation": ModerationSettings(classifier="nope:X")})
    with pytest.raises(ValueError):
        Moderator(missing, sessions)


def test_orgs_moderation_command(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from stableserve.cli import app

    monkeypatch.setenv("STABLESERVE_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("STABLESERVE_DATABASE_URL", raising=False)
    run = CliRunner().invoke
    assert run(app, ["orgs", "create", "acme"]).exit_code == 0
    shown = run(app, ["orgs", "moderation", "acme"])
    assert shown.exit_code == 0 and "mode      block (server default)" in shown.output
    changed = run(
        app,
        ["orgs", "moderation", "acme", "--mode", "filter", "--word", "Kittens", "--word", "dogs",
         "--pattern", r"cat\d+"],
    )  # fmt: skip
    assert changed.exit_code == 0, changed.output
    assert "mode      filter\n" in changed.output and "kittens, dogs" in changed.output
    removed = run(app, ["orgs", "moderation", "acme", "--remove-word", "DOGS", "--mode", "default"])
    assert "words     kittens\n" in removed.output and "(server default)" in removed.output
    assert "cat\\d+" in removed.output
    bad = run(app, ["orgs", "moderation", "acme", "--pattern", "(a+)+"])
    assert bad.exit_code == 2 and "catastrophic" in bad.output
    assert run(app, ["orgs", "moderation", "nobody"]).exit_code == 2
    cleared = run(app, ["orgs", "moderation", "acme", "--clear"])
    assert "words     -" in cleared.output and "patterns  -" in cleared.output
