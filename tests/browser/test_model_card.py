"""The empty page shows what the loaded model can do (its model card, GET /api/model) and only
suggestions that work for it: the starter's committed card, served around the fake assistant."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from omniphi.model_card import read_model_card
from omniphi.presets import STARTER_WEIGHTS_DIR

from .conftest import ASSISTANT_SPEC, EXTERNAL_URL, _load_fake_assistant, new_page, start_server
from .test_page import assert_no_page_errors, open_app, wait_for_answer

pytestmark = pytest.mark.browser


@pytest.fixture()
def starter_card_server(tmp_path):
    if EXTERNAL_URL or ASSISTANT_SPEC != "fake":
        pytest.skip("serves the starter's card around the fake assistant")
    srv = start_server(tmp_path, assistant=_load_fake_assistant()(card=read_model_card(STARTER_WEIGHTS_DIR)))
    yield srv
    srv.stop()


def test_empty_page_shows_the_models_card_and_its_suggestions(browser, starter_card_server, shot):
    card = read_model_card(STARTER_WEIGHTS_DIR)
    page = new_page(browser, starter_card_server)
    open_app(page, starter_card_server)
    expect(page.get_by_test_id("model-summary")).to_have_text(card.summary)
    expect(page.get_by_test_id("model-limits")).to_contain_text("coloured shapes")
    suggestions = page.get_by_test_id("suggestion")
    expect(suggestions).to_have_count(len(card.suggestions))
    for i, suggestion in enumerate(card.suggestions):
        expect(suggestions.nth(i)).to_contain_text(suggestion.title)
        expect(suggestions.nth(i)).not_to_contain_text("Describe")
    thumb = page.get_by_test_id("suggestion-image").first
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=thumb.element_handle())
    shot(page, "01-starter-card")

    # The spoken-question card attaches its picture and its recording; sending asks by voice.
    spoken = next(i for i, s in enumerate(card.suggestions) if "audio" in s.media)
    suggestions.nth(spoken).click()
    expect(page.get_by_test_id("pending-image")).to_have_count(1)
    expect(page.get_by_test_id("pending-audio")).to_have_count(1)
    expect(page.get_by_test_id("send")).to_be_enabled()
    shot(page, "02-spoken-question-attached")
    page.get_by_test_id("send").click()
    user = page.get_by_test_id("message-user").last
    expect(user.get_by_test_id("message-image")).to_have_count(1)
    expect(user.get_by_test_id("audio-chip")).to_have_count(1)
    wait_for_answer(page)

    # A typed card about a picture fills the composer with its prompt and attaches the picture.
    page.get_by_test_id("new-chat").click()
    typed = next(i for i, s in enumerate(card.suggestions) if set(s.media) == {"image"})
    page.get_by_test_id("suggestion").nth(typed).click()
    expect(page.get_by_test_id("composer-input")).to_have_value(card.suggestions[typed].prompt)
    expect(page.get_by_test_id("pending-image")).to_have_count(1)
    expect(page.get_by_test_id("pending-audio")).to_have_count(0)
    assert_no_page_errors(page)
    page.context.close()


def test_a_model_without_a_card_invites_nothing_it_may_not_do(page, server):
    open_app(page, server)  # the session's fake assistant has no card
    expect(page.get_by_test_id("empty-state")).to_be_visible()
    expect(page.get_by_test_id("suggestion")).to_have_count(0)
    expect(page.get_by_test_id("model-limits")).to_be_hidden()
    assert_no_page_errors(page)
