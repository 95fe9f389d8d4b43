"""The Connect page through Streamlit's AppTest: demo clinic, shard hints, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def app(workspace: Path) -> AppTest:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    at.run()
    assert not at.exception
    return at


def test_first_screen_says_what_it_does_and_offers_the_demo(app: AppTest) -> None:
    text = " ".join(m.value for m in app.markdown)
    assert "reading only" in text and "demo clinic" in text
    assert app.button(key="use_demo").label == "Use the demo clinic"


def test_demo_clinic_connects_and_shows_rights(app: AppTest) -> None:
    app.button(key="use_demo").click().run()
    assert not app.exception
    assert not app.error
    success = " ".join(s.value for s in app.success)
    assert "Harbourside Physio" in success and "Zoë Adams" in success
    metrics = {m.label: m.value for m in app.metric}
    assert metrics == {"Administrator": "yes", "Active practitioner": "yes", "Shard": "au2"}
    # The demo keys stay in session memory: never shown, never in the URL.
    key = app.session_state["source_key"].get_secret_value()
    assert key not in str(app.query_params)
    assert all(key not in (m.value or "") for m in app.markdown)

    # The destination check refuses an administrator who is not a practitioner.
    app.radio(key="destination_choice").set_value("Another Cliniko account").run()
    app.button(key="verify_dest").click().run()
    assert not app.exception
    assert "Harbourside Physiotherapy" in " ".join(s.value for s in app.success)

    app.button(key="disconnect").click().run()
    assert "source_key" not in app.session_state and "dest_key" not in app.session_state


def test_shard_is_shown_as_the_key_is_typed_and_errors_are_sentences(app: AppTest) -> None:
    app.text_input(key="source_key_input").input("MS0123456789abcdefABCDEF-uk1").run()
    assert any("uk1" in c.value and "United Kingdom" in c.value for c in app.caption)
    app.text_input(key="source_key_input").input("MS0123456789abcdef-unitedkingdom").run()
    assert "not a Cliniko shard" in app.error[0].value
    assert "MS0123456789abcdef" not in app.error[0].value
    assert not app.exception


def test_a_typed_key_leaves_its_box_and_a_malformed_one_is_said_once(app: AppTest) -> None:
    """The eye icon of a password box shows whatever is left in it: a key must not linger there."""
    typed = "MS0123456789abcdefABCDEF-uk1"
    app.text_input(key="source_key_input").input(typed).run()
    app.button(key="use_demo").click().run()
    assert not app.exception and not app.error
    assert app.text_input(key="source_key_input").value == ""

    app.text_input(key="source_key_input").input(typed).run()
    app.radio(key="destination_choice").set_value("Another Cliniko account").run()
    app.text_input(key="dest_key_input").input(typed).run()
    app.button(key="disconnect").click().run()
    assert app.text_input(key="source_key_input").value == ""
    assert [t.value for t in app.text_input if t.key in ("source_key_input", "dest_key_input")] == ["", ""]

    # A verified key is held (masked) in the session, not in the box.
    app.button(key="use_demo").click().run()
    demo_key = app.session_state["source_key"].get_secret_value()
    app.button(key="disconnect").click().run()
    app.text_input(key="source_key_input").input(demo_key).run()
    app.button(key="verify_source").click().run()
    assert app.text_input(key="source_key_input").value == ""

    app.text_input(key="source_key_input").input("MS0123456789abcdef-unitedkingdom").run()
    assert [e.value for e in app.error] == [app.error[0].value] and "not a Cliniko shard" in app.error[
        0
    ].value
    assert app.button(key="verify_source").disabled
